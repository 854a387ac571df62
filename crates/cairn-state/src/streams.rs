//! Live-stream evidence: a provider that signed a token stream other than the reply it
//! committed is slashed on the strength of its own signature.
//!
//! A committed inference result carries each reply's stream end (token count and hash chain,
//! [`cairn_types::stream`]). While the task is committed, anyone holding a point of the
//! provider's signed stream may report it with the committed reply's token ids. The chain
//! checks the signature, checks that the tokens given are the committed reply (their chain is
//! the committed end), and judges the point: a prefix of the committed reply is consistent
//! (the report fails, nothing changes but the fee); anything else is a mismatch. A mismatch
//! slashes the provider as a lost dispute does (a share to the reporter, a share to the client,
//! the rest burned), ends any audit of the task, and re-runs or refunds the task.

use cairn_types::stream::{Judgement, MAX_EVIDENCE_TOKENS, StreamEvent, judge};
use cairn_types::{Address, ErrorCode, Event, ReportStream, SlashReason};

use crate::ctx::{Ctx, Exec, invariant};
use crate::keys;
use crate::market;
use crate::model::{KnownAnswer, TaskState};
use crate::penalty::slash;
use crate::verify;

pub(crate) fn report(ctx: &mut Ctx<'_>, who: &Address, r: &ReportStream) -> Exec<()> {
    if r.tokens.len() > MAX_EVIDENCE_TOKENS {
        return Err(ErrorCode::InvalidBody.into());
    }
    let t = market::task(ctx, &r.task)?.ok_or(ErrorCode::TaskNotFound)?;
    let TaskState::Committed { provider, price, streams, .. } = t.state.clone() else {
        return Err(ErrorCode::DisputeNotAllowed.into());
    };
    let end =
        usize::try_from(r.index).ok().and_then(|i| streams.get(i)).ok_or(ErrorCode::StreamNotCommitted)?;
    let signed = StreamEvent::signed_bytes(&r.task, r.index, r.n, &r.chain, r.last);
    provider.verify(&signed, &r.sig).map_err(|_| ErrorCode::BadSignature)?;
    match judge(&r.task, r.index, end, r.n, &r.chain, r.last, &r.tokens) {
        Judgement::Consistent => return Err(ErrorCode::StreamConsistent.into()),
        Judgement::BadEvidence => return Err(ErrorCode::StreamEvidenceInvalid.into()),
        Judgement::Mismatch => {}
    }
    let j = market::job(ctx, &t.job)?.ok_or_else(|| invariant("task without job"))?;
    let spec = market::spec(ctx, &t.job)?;
    // The evidence decides: an audit or dispute in progress ends here, its bond returned.
    if let Some(a) = verify::audit(ctx, &r.task)? {
        verify::delete_record(ctx, &a);
        crate::dispute::return_bond(ctx, &a)?;
    }
    let mut known: Vec<KnownAnswer> = ctx.get_or_default(keys::KNOWN_ANSWERS)?;
    if known.iter().any(|k| k.task == r.task) {
        known.retain(|k| k.task != r.task);
        ctx.put(keys::KNOWN_ANSWERS.to_vec(), &known)?;
    }
    let finders: Vec<Address> = if *who == provider { Vec::new() } else { vec![*who] };
    slash(ctx, &provider, &r.task, SlashReason::StreamMismatch, price, &finders, Some(j.client))?;
    ctx.emit(Event::StreamMismatch { task: r.task, provider, index: r.index, reporter: *who });
    crate::dispute::abandon(ctx, t, &j, &spec)
}
