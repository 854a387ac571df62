//! The waiting room: posted-price tasks that found no provider with room when they opened.
//!
//! Such a task reopens for bids (`rematch_blocks`, then the reveal window) as before, and is also
//! queued here. At the end of every block the first [`SCAN`] queued tasks are matched again
//! against posted prices, so a task takes the first room that frees up — a provider's commit in
//! this block — instead of waiting out an auction nobody needed. The queue is FIFO by the order
//! tasks began waiting, kept as numbered entries between a head and a tail counter; an entry
//! whose task was matched, refunded or moved to another attempt is dropped when reached.

use borsh::{BorshDeserialize, BorshSerialize};
use cairn_types::TaskId;

use crate::ctx::{Ctx, Exec, invariant};
use crate::market;
use crate::model::TaskState;

/// Queued tasks tried per block.
pub(crate) const SCAN: u64 = 16;

use crate::keys::{WAITING_ENDS as ENDS, waiting as entry_key};

#[derive(Clone, Copy, Debug, Default, BorshSerialize, BorshDeserialize)]
struct Ends {
    head: u64,
    tail: u64,
}

#[derive(Clone, Copy, Debug, BorshSerialize, BorshDeserialize)]
struct Entry {
    task: TaskId,
    attempt: u32,
}

/// Queue attempt `attempt` of `task`, which just failed to find room at posted prices.
pub(crate) fn push(ctx: &mut Ctx<'_>, task: TaskId, attempt: u32) -> Exec<()> {
    let mut ends: Ends = ctx.get_or_default(ENDS)?;
    ctx.put(entry_key(ends.tail), &Entry { task, attempt })?;
    ends.tail = ends.tail.checked_add(1).ok_or_else(|| invariant("waiting queue overflow"))?;
    ctx.put(ENDS.to_vec(), &ends)
}

/// Match the first [`SCAN`] waiting tasks against posted prices where room has freed up.
pub(crate) fn end_block(ctx: &mut Ctx<'_>) -> Exec<()> {
    let mut ends: Ends = ctx.get_or_default(ENDS)?;
    if ends.head == ends.tail {
        return Ok(());
    }
    let stop = ends.tail.min(ends.head.saturating_add(SCAN));
    for seq in ends.head..stop {
        let key = entry_key(seq);
        let Some(e) = ctx.get::<Entry>(&key)? else { continue };
        let Some(mut t) = market::task(ctx, &e.task)? else {
            ctx.delete(key);
            continue;
        };
        if t.attempt != e.attempt || !matches!(t.state, TaskState::Open { .. }) {
            ctx.delete(key);
            continue;
        }
        if market::match_posted(ctx, &mut t)? {
            market::put_task(ctx, &t)?;
            ctx.delete(key);
        }
    }
    // Move the head past the entries dropped at the front.
    while ends.head < ends.tail && ctx.get_raw(&entry_key(ends.head))?.is_none() {
        ends.head = ends.head.saturating_add(1);
    }
    ctx.put(ENDS.to_vec(), &ends)
}
