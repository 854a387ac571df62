//! Block execution: signatures, per-transaction checks and fees, dispatch to the modules,
//! then the end-of-block work.

use cairn_types::{Block, Canonical, ErrorCode, MAX_TX_BYTES, Receipt, Tx, TxBody, TxStatus};

use crate::ctx::{Ctx, Exec, Fail};
use crate::model::{Account, Due, Meta};
use crate::store::{StateView, WriteSet};
use crate::{
    Error, Params, Result, bank, dispute, keys, lease, market, registry, rewards, staking, storage, streams,
    verify,
};

/// What executing a block produced, before it is committed to a store.
#[derive(Debug)]
pub struct Execution {
    /// Ordered writes.
    pub writes: WriteSet,
    /// One receipt per transaction, then the end-of-block receipt.
    pub receipts: Vec<Receipt>,
}

/// Check every signature: one batch verification, and one by one only if the batch fails.
fn signatures_ok(txs: &[Tx], messages: &[Vec<u8>]) -> Vec<bool> {
    let items: Vec<_> =
        txs.iter().zip(messages).map(|(tx, m)| (tx.sender, m.as_slice(), tx.signature)).collect();
    if cairn_types::verify_batch(&items).is_ok() {
        return vec![true; txs.len()];
    }
    items.iter().map(|(a, m, s)| a.verify(m, s).is_ok()).collect()
}

pub(crate) fn read_meta(view: &dyn StateView) -> Result<Meta> {
    let bytes = view.get(keys::META)?.ok_or(Error::NotInitialised)?;
    borsh::from_slice(&bytes).map_err(|e| Error::Invariant(format!("chain metadata does not decode: {e}")))
}

pub(crate) fn read_params(view: &dyn StateView) -> Result<Params> {
    let bytes = view.get(keys::PARAMS)?.ok_or(Error::NotInitialised)?;
    borsh::from_slice(&bytes).map_err(|e| Error::Invariant(format!("parameters do not decode: {e}")))
}

fn fatal(f: Fail) -> Error {
    match f {
        Fail::Fatal(e) => e,
        Fail::Code(c) => Error::Invariant(format!("unexpected {c} outside a transaction")),
    }
}

/// Execute `block` on top of `view` without writing anything.
///
/// # Errors
/// [`Error::WrongHeight`] if the block does not follow the state; [`Error::Store`] or
/// [`Error::Invariant`] if the store is corrupt. Transaction content never causes an error:
/// it ends up in the receipts.
pub fn execute(view: &dyn StateView, block: &Block) -> Result<Execution> {
    let mut meta = read_meta(view)?;
    let expected = meta.height.checked_add(1).ok_or_else(|| Error::Invariant("height overflow".into()))?;
    if block.height != expected {
        return Err(Error::WrongHeight { expected, got: block.height });
    }
    let params = read_params(view)?;
    let mut ctx = Ctx::new(view, block.height, block.beacon, params);

    let encoded: Vec<Vec<u8>> = block.txs.iter().map(Canonical::encode).collect();
    let messages: Vec<Vec<u8>> = block.txs.iter().map(Tx::signing_bytes).collect();
    let sigs = signatures_ok(&block.txs, &messages);
    let mut receipts = Vec::with_capacity(block.txs.len().saturating_add(1));
    for ((tx, bytes), sig_ok) in block.txs.iter().zip(&encoded).zip(sigs) {
        receipts.push(apply_tx(&mut ctx, &meta.chain_id, tx, bytes, sig_ok)?);
    }

    crate::faults::apply(&mut ctx, &block.faults).map_err(fatal)?;
    end_block(&mut ctx).map_err(fatal)?;
    let events = ctx.take_events();
    receipts.push(Receipt::EndBlock { events });
    meta.height = block.height;
    ctx.put(keys::META.to_vec(), &meta).map_err(fatal)?;
    Ok(Execution { writes: ctx.into_writes(), receipts })
}

/// Execute one transaction as if it were alone in the next block, without end-of-block work.
///
/// # Errors
/// As [`execute`].
pub fn simulate(view: &dyn StateView, tx: &Tx) -> Result<(Receipt, WriteSet)> {
    let meta = read_meta(view)?;
    let params = read_params(view)?;
    let height = meta.height.checked_add(1).ok_or_else(|| Error::Invariant("height overflow".into()))?;
    let mut ctx = Ctx::new(view, height, cairn_types::Hash32::ZERO, params);
    let bytes = tx.encode();
    let sig_ok = tx.verify_signature().is_ok();
    let receipt = apply_tx(&mut ctx, &meta.chain_id, tx, &bytes, sig_ok)?;
    Ok((receipt, ctx.into_writes()))
}

fn apply_tx(ctx: &mut Ctx<'_>, chain_id: &str, tx: &Tx, bytes: &[u8], sig_ok: bool) -> Result<Receipt> {
    let hash = cairn_types::TxHash(*blake3::hash(bytes).as_bytes());
    let rejected = |code| Receipt::Tx {
        hash,
        status: TxStatus::Rejected(code),
        fee: cairn_types::Amount::ZERO,
        events: Vec::new(),
    };

    // Checks that cost the sender nothing: the transaction is not theirs to pay for, or
    // cannot be paid for.
    if bytes.len() > MAX_TX_BYTES {
        return Ok(rejected(ErrorCode::TooLarge));
    }
    if tx.chain_id != chain_id {
        return Ok(rejected(ErrorCode::WrongChainId));
    }
    if !sig_ok {
        return Ok(rejected(ErrorCode::BadSignature));
    }
    if tx.fee < ctx.params.min_tx_fee {
        return Ok(rejected(ErrorCode::FeeTooLow));
    }
    let acct: Account = bank::account(ctx, &tx.sender).map_err(fatal)?;
    if tx.nonce < acct.nonce {
        return Ok(rejected(ErrorCode::NonceReplayed));
    }
    if tx.nonce > acct.nonce {
        return Ok(rejected(ErrorCode::NonceGap));
    }
    let Some(balance) = acct.balance.checked_sub(tx.fee) else {
        return Ok(rejected(ErrorCode::CannotPayFee));
    };

    // From here the fee is charged and the nonce used, whatever the body does.
    let nonce = acct.nonce.checked_add(1).ok_or_else(|| Error::Invariant("nonce overflow".into()))?;
    bank::set_account(ctx, &tx.sender, &Account { balance, nonce }).map_err(fatal)?;
    bank::add_fees(ctx, tx.fee).map_err(fatal)?;
    ctx.settle_journal();
    let cp = ctx.checkpoint();
    let status = match dispatch(ctx, tx) {
        Ok(()) => TxStatus::Ok,
        Err(Fail::Code(code)) => {
            ctx.rollback(cp);
            TxStatus::Failed(code)
        }
        Err(Fail::Fatal(e)) => return Err(e),
    };
    ctx.settle_journal();
    Ok(Receipt::Tx { hash, status, fee: tx.fee, events: ctx.take_events() })
}

fn dispatch(ctx: &mut Ctx<'_>, tx: &Tx) -> Exec<()> {
    let who = &tx.sender;
    match &tx.body {
        TxBody::Transfer(t) => bank::transfer(ctx, who, t),
        TxBody::Bond(b) => staking::bond(ctx, who, b.amount),
        TxBody::Unbond(u) => staking::unbond(ctx, who, u.amount),
        TxBody::RegisterProvider(r) => registry::register(ctx, who, &r.info),
        TxBody::UpdateProvider(u) => registry::update(ctx, who, &u.info),
        TxBody::Heartbeat(_) => registry::heartbeat(ctx, who),
        TxBody::SubmitJob(s) => market::submit_job(ctx, who, tx.nonce, &s.spec),
        TxBody::Bid(b) => market::bid(ctx, who, b),
        TxBody::CancelJob(c) => market::cancel_job(ctx, who, &c.job),
        TxBody::CommitResult(c) => verify::commit(ctx, who, c),
        TxBody::SubmitAudit(a) => verify::submit_audit(ctx, who, a),
        TxBody::OpenDispute(d) => dispute::open_dispute(ctx, who, d),
        TxBody::CreateStorageDeal(d) => storage::create(ctx, who, tx.nonce, d),
        TxBody::ProveStorage(p) => storage::prove(ctx, who, p),
        TxBody::OpenLease(o) => lease::open(ctx, who, tx.nonce, o),
        TxBody::CloseLease(c) => lease::close_by(ctx, who, c),
        TxBody::ReportProbe(r) => lease::report_probe(ctx, who, r),
        TxBody::SaveVolume(v) => lease::save_volume(ctx, who, v),
        TxBody::ReportStream(r) => streams::report(ctx, who, r),
    }
}

fn end_block(ctx: &mut Ctx<'_>) -> Exec<()> {
    for item in ctx.take_due()? {
        match item {
            Due::AuctionClose { task, attempt } => market::on_auction_close(ctx, &task, attempt)?,
            Due::Deadline { task, attempt } => market::on_deadline(ctx, &task, attempt)?,
            Due::AuditDraw { task } => verify::on_audit_draw(ctx, &task)?,
            Due::AuditDue { task, canary, round } => verify::on_audit_due(ctx, &task, canary, round)?,
            Due::Settle { task } => verify::on_settle(ctx, &task)?,
            Due::Unbond { who } => staking::release(ctx, &who)?,
            Due::LeaseRound { lease, round } => lease::on_round_end(ctx, &lease, round)?,
            Due::DealEpoch { deal, epoch } => storage::on_epoch_end(ctx, &deal, epoch)?,
        }
    }
    crate::waiting::end_block(ctx)?;
    rewards::end_block(ctx)
}
