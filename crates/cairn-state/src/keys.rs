//! The state's key layout. One prefix byte per record kind, then the record's id (a hash, so
//! the bytes after the prefix are high-entropy); the node's API reads and proves values by
//! these keys.

use cairn_types::{Address, DealId, JobId, LeaseId, TaskId, hash_domain};

/// Chain metadata ([`crate::model::Meta`]).
pub const META: &[u8] = b"Mmeta";
/// Genesis parameters ([`crate::Params`]).
pub const PARAMS: &[u8] = b"Mparams";
/// Supply and pool counters ([`crate::model::Totals`]).
pub const TOTALS: &[u8] = b"Mtotals";
/// Sorted addresses of all providers.
pub const PROVIDER_INDEX: &[u8] = b"Mproviders";
/// Sorted addresses of the validators.
pub const VALIDATORS: &[u8] = b"Mvalidators";

/// Prefix of accounts.
pub const ACCOUNT: u8 = b'a';
/// Prefix of stakes.
pub const STAKE: u8 = b's';
/// Prefix of provider records.
pub const PROVIDER: u8 = b'p';
/// Prefix of jobs.
pub const JOB: u8 = b'j';
/// Prefix of job specs.
pub const JOB_SPEC: u8 = b'J';
/// Prefix of job escrows.
pub const ESCROW: u8 = b'e';
/// Prefix of tasks.
pub const TASK: u8 = b't';
/// Prefix of leases.
pub const LEASE: u8 = b'l';
/// Prefix of storage deals.
pub const DEAL: u8 = b'g';
/// Prefix of audits and disputes in progress.
pub const AUDIT: u8 = b'u';
/// Prefix of canaries in progress.
pub const CANARY: u8 = b'c';
/// Verified results kept as canaries' known answers.
pub const KNOWN_ANSWERS: &[u8] = b"Mknown";

/// Prefix of an open auction's sealed bids.
pub const SEALED: u8 = b'b';
/// Prefix of punished consensus faults (validator, view).
pub const FAULT: u8 = b'f';

/// Head and tail counters of the waiting room (posted-price tasks waiting for room).
pub const WAITING_ENDS: &[u8] = b"Mwaiting";
/// Prefix of waiting-room entries.
pub const WAITING: u8 = b'w';

/// Prefix of the per-height count of scheduled work.
pub const DUE_COUNT: u8 = b'D';
/// Prefix of scheduled work items.
pub const DUE: u8 = b'd';

fn with(prefix: u8, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(id.len().saturating_add(1));
    k.push(prefix);
    k.extend_from_slice(id);
    k
}

/// Key of an account.
pub fn account(a: &Address) -> Vec<u8> {
    with(ACCOUNT, &a.0)
}
/// Key of a task's sealed, not yet revealed, bids.
pub fn sealed(id: &TaskId) -> Vec<u8> {
    with(SEALED, &id.0)
}
/// Key of a punished consensus fault: one per validator and view.
pub fn fault(validator: &Address, view: u64) -> Vec<u8> {
    let mut id = validator.0.to_vec();
    id.extend_from_slice(&view.to_be_bytes());
    with(FAULT, &id)
}
/// Key of a stake.
pub fn stake(a: &Address) -> Vec<u8> {
    with(STAKE, &a.0)
}
/// Key of a provider record.
pub fn provider(a: &Address) -> Vec<u8> {
    with(PROVIDER, &a.0)
}
/// Key of a job.
pub fn job(id: &JobId) -> Vec<u8> {
    with(JOB, &id.0)
}
/// Key of a job's spec.
pub fn job_spec(id: &JobId) -> Vec<u8> {
    with(JOB_SPEC, &id.0)
}
/// Key of a job's escrow balance.
pub fn escrow(id: &JobId) -> Vec<u8> {
    with(ESCROW, &id.0)
}
/// Key of a task.
pub fn task(id: &TaskId) -> Vec<u8> {
    with(TASK, &id.0)
}
/// Key of a task's audit or dispute.
pub fn audit(id: &TaskId) -> Vec<u8> {
    with(AUDIT, &id.0)
}
/// Key of a canary handed out on a task with a known answer.
pub fn canary(id: &TaskId) -> Vec<u8> {
    with(CANARY, &id.0)
}
/// Key of a lease.
pub fn lease(id: &LeaseId) -> Vec<u8> {
    with(LEASE, &id.0)
}
/// Key of a storage deal.
pub fn deal(id: &DealId) -> Vec<u8> {
    with(DEAL, &id.0)
}
/// Key of the number of items scheduled at `height`. Hashed so that keys spread over the
/// whole key space: the node's ordered store indexes keys by their first bytes.
pub fn due_count(height: u64) -> Vec<u8> {
    with(DUE_COUNT, &hash_domain("cairn due count key v1", &[&height.to_be_bytes()])[..16])
}
/// Key of item `seq` scheduled at `height` (hashed, as [`due_count`]).
pub fn due(height: u64, seq: u32) -> Vec<u8> {
    with(DUE, &hash_domain("cairn due key v1", &[&height.to_be_bytes(), &seq.to_be_bytes()])[..16])
}
/// Key of waiting-room entry `seq` (hashed, as [`due_count`]).
pub fn waiting(seq: u64) -> Vec<u8> {
    with(WAITING, &hash_domain("cairn waiting key v1", &[&seq.to_be_bytes()])[..16])
}
