//! Property tests over random sequences of valid and invalid transactions.
//!
//! After every block: (a) supply is conserved; (b) every job's escrow holds exactly its
//! unfinished tasks' reserve; for every transaction alone in its block, (c) a refused one
//! changes nothing but the fee (and nothing at all when it is rejected before execution),
//! with a typed code. After the run, every task ends settled or refunded, and (d) replaying
//! the same blocks from genesis gives the same roots and receipts.

use std::collections::BTreeSet;

use cairn_state::model::TaskState;
use cairn_state::testkit::{CHAIN_ID, TestChain, key};
use cairn_state::{MemStore, Params, State, keys};
use cairn_types::{
    Amount, Bid, Bond, CancelJob, CloseLease, CommitResult, ContentId, CreateStorageDeal, Event, Hash32,
    Heartbeat, JobId, LeaseId, Metering, Offer, OpenDispute, OpenLease, ProveStorage, Receipt, SecretKey,
    Signature, SubmitAudit, SubmitJob, TaskId, Transfer, Tx, TxBody, TxStatus, Unbond, VerificationLevel,
};
use proptest::prelude::*;

use crate::common::{crn, info, provider_key, spec};

const CLIENTS: u64 = 3;
const PROVIDERS: u64 = 3;

#[derive(Clone, Debug)]
enum Action {
    Transfer { from: u64, to: u64, amount: u64 },
    TransferAll { from: u64 },
    BadSignature { from: u64 },
    WrongChain { from: u64 },
    Replay { from: u64 },
    NonceGap { from: u64 },
    HugeFee { from: u64 },
    Bond { who: u64, amount: u64 },
    Unbond { who: u64, amount: u64 },
    Submit { client: u64, tasks: u32, price: u64, window: u32, attempts: u32, none: bool },
    SubmitInvalid { client: u64 },
    SubmitTrain { client: u64, rounds: u32, width: u32, attempts: u32, none: bool },
    Bid { provider: u64, pick: usize, price: u64 },
    Commit { pick: usize, honest: bool, liar: u64 },
    Cancel { who: u64, job: usize },
    Heartbeat { who: u64 },
    OpenLease { client: u64, blocks: u64 },
    Probe { who: u64, lease: usize, ok: bool, slow: bool },
    CloseLease { who: u64, lease: usize },
    Deal { client: u64, epochs: u32, replicas: u32 },
    Prove { who: u64, deal: usize, honest: bool, epoch_off: u32 },
    Audit { pick: usize, honest: bool, stranger: Option<u64> },
    Dispute { pick: usize, bond: u64 },
}

fn actor(n: u64) -> SecretKey {
    // 0..CLIENTS are clients, the next PROVIDERS are providers.
    if n < CLIENTS { key(1 + n) } else { provider_key(n - CLIENTS) }
}

fn action() -> impl Strategy<Value = Action> {
    let who = 0..CLIENTS + PROVIDERS;
    let c = 0..CLIENTS;
    let p = 0..PROVIDERS;
    prop_oneof![
        3 => (who.clone(), who.clone(), 0u64..2_000).prop_map(|(from, to, amount)| Action::Transfer { from, to, amount }),
        1 => who.clone().prop_map(|from| Action::TransferAll { from }),
        1 => who.clone().prop_map(|from| Action::BadSignature { from }),
        1 => who.clone().prop_map(|from| Action::WrongChain { from }),
        1 => who.clone().prop_map(|from| Action::Replay { from }),
        1 => who.clone().prop_map(|from| Action::NonceGap { from }),
        1 => who.clone().prop_map(|from| Action::HugeFee { from }),
        1 => (who.clone(), 0u64..600).prop_map(|(who, amount)| Action::Bond { who, amount }),
        1 => (who.clone(), 0u64..1_500).prop_map(|(who, amount)| Action::Unbond { who, amount }),
        4 => (c.clone(), 1u32..5, 1u64..80, 0u32..3, 1u32..4, any::<bool>())
            .prop_map(|(client, tasks, price, window, attempts, none)| Action::Submit { client, tasks, price, window, attempts, none }),
        1 => c.clone().prop_map(|client| Action::SubmitInvalid { client }),
        2 => (c.clone(), 1u32..4, 1u32..3, 1u32..4, any::<bool>())
            .prop_map(|(client, rounds, width, attempts, none)| Action::SubmitTrain { client, rounds, width, attempts, none }),
        3 => (p.clone(), 0usize..16, 1u64..100).prop_map(|(provider, pick, price)| Action::Bid { provider, pick, price }),
        8 => (0usize..16, prop::bool::weighted(0.8), p.clone()).prop_map(|(pick, honest, liar)| Action::Commit { pick, honest, liar }),
        1 => (who.clone(), 0usize..8).prop_map(|(who, job)| Action::Cancel { who, job }),
        1 => who.clone().prop_map(|who| Action::Heartbeat { who }),
        1 => (c.clone(), 0u64..40).prop_map(|(client, blocks)| Action::OpenLease { client, blocks }),
        3 => (who.clone(), 0usize..4, any::<bool>(), prop::bool::weighted(0.2)).prop_map(|(who, lease, ok, slow)| Action::Probe { who, lease, ok, slow }),
        1 => (who.clone(), 0usize..4).prop_map(|(who, lease)| Action::CloseLease { who, lease }),
        2 => (c, 0u32..4, 0u32..3).prop_map(|(client, epochs, replicas)| Action::Deal { client, epochs, replicas }),
        4 => (who.clone(), 0usize..4, prop::bool::weighted(0.8), prop::bool::weighted(0.1).prop_map(u32::from))
            .prop_map(|(who, deal, honest, epoch_off)| Action::Prove { who, deal, honest, epoch_off }),
        6 => (0usize..8, prop::bool::weighted(0.7), prop::option::weighted(0.2, p.clone()))
            .prop_map(|(pick, honest, stranger)| Action::Audit { pick, honest, stranger }),
        1 => (0usize..16, 0u64..60).prop_map(|(pick, bond)| Action::Dispute { pick, bond }),
    ]
}

/// The blob the property tests' deals store (3 chunks and a tail).
fn deal_blob() -> Vec<u8> {
    (0..3_100u32).map(|i| (i % 251) as u8).collect()
}

fn prop_params() -> Params {
    Params {
        challenge_window: 3,
        audit_window: 3,
        unbonding_blocks: 4,
        reward_epoch_blocks: 5,
        storage_epoch_blocks: 3,
        rematch_blocks: 2,
        max_wait_blocks: 10,
        min_provider_stake: crn("100"),
        probe_interval: 3,
        lease_probers: 2,
        ..Params::default()
    }
}

struct World {
    chain: TestChain,
    jobs: Vec<JobId>,
    leases: Vec<LeaseId>,
    deals: Vec<cairn_types::DealId>,
}

impl World {
    fn new() -> Self {
        let mut funded: Vec<(SecretKey, Amount)> = (0..CLIENTS).map(|i| (actor(i), crn("3000"))).collect();
        funded.extend((0..PROVIDERS).map(|i| (provider_key(i), crn("3000"))));
        let refs: Vec<(&SecretKey, Amount)> = funded.iter().map(|(k, a)| (k, *a)).collect();
        let mut chain = TestChain::new(prop_params(), &refs);
        let regions = ["DE", "US", "SG"];
        for i in 0..PROVIDERS {
            let k = provider_key(i);
            chain.send(&k, TxBody::Bond(Bond { amount: crn("1000") }));
            let price = ["5", "20", "40"][i as usize];
            chain.send(
                &k,
                TxBody::RegisterProvider(cairn_types::RegisterProvider {
                    info: info(regions[i as usize], price),
                }),
            );
        }
        chain.next_block();
        World { chain, jobs: Vec::new(), leases: Vec::new(), deals: Vec::new() }
    }

    /// The `pick`-th task (cyclically) among those whose state passes `want`.
    fn pick(&self, pick: usize, want: impl Fn(&TaskState) -> bool) -> Option<TaskId> {
        let tasks: Vec<TaskId> =
            self.chain.all_tasks().into_iter().filter(|t| want(&t.state)).map(|t| t.id).collect();
        if tasks.is_empty() { None } else { Some(tasks[pick % tasks.len()]) }
    }

    fn job(&self, i: usize) -> Option<JobId> {
        if self.jobs.is_empty() { None } else { Some(self.jobs[i % self.jobs.len()]) }
    }

    /// Build the transaction for an action (or `None` when it has nothing to act on).
    fn tx(&mut self, a: &Action) -> Option<Tx> {
        let fee = self.chain.fee;
        let signed = |chain: &mut TestChain, k: &SecretKey, body| chain.sign(k, body);
        Some(match a.clone() {
            Action::Transfer { from, to, amount } => signed(
                &mut self.chain,
                &actor(from),
                TxBody::Transfer(Transfer {
                    to: actor(to).address(),
                    amount: Amount::from_base_units(u128::from(amount) * 1_000_000),
                }),
            ),
            Action::TransferAll { from } => {
                let bal = self.chain.state.account(&actor(from).address()).unwrap().balance;
                let to = key(99).address();
                signed(&mut self.chain, &actor(from), TxBody::Transfer(Transfer { to, amount: bal }))
            }
            Action::BadSignature { from } => {
                let mut tx = signed(&mut self.chain, &actor(from), TxBody::Heartbeat(Heartbeat {}));
                tx.signature = Signature([7; 64]);
                tx
            }
            Action::WrongChain { from } => {
                let k = actor(from);
                let nonce = self.chain.state.account(&k.address()).unwrap().nonce;
                Tx::sign(&k, "another-chain", nonce, fee, TxBody::Heartbeat(Heartbeat {}))
            }
            Action::Replay { from } => {
                let k = actor(from);
                let nonce = self.chain.state.account(&k.address()).unwrap().nonce;
                Tx::sign(&k, CHAIN_ID, nonce.saturating_sub(1), fee, TxBody::Heartbeat(Heartbeat {}))
            }
            Action::NonceGap { from } => {
                let k = actor(from);
                let nonce = self.chain.state.account(&k.address()).unwrap().nonce;
                Tx::sign(&k, CHAIN_ID, nonce + 2, fee, TxBody::Heartbeat(Heartbeat {}))
            }
            Action::HugeFee { from } => {
                let k = actor(from);
                let nonce = self.chain.state.account(&k.address()).unwrap().nonce;
                Tx::sign(&k, CHAIN_ID, nonce, Amount::MAX, TxBody::Heartbeat(Heartbeat {}))
            }
            Action::Bond { who, amount } => {
                signed(&mut self.chain, &actor(who), TxBody::Bond(Bond { amount: crn(&amount.to_string()) }))
            }
            Action::Unbond { who, amount } => signed(
                &mut self.chain,
                &actor(who),
                TxBody::Unbond(Unbond { amount: crn(&amount.to_string()) }),
            ),
            Action::Submit { client, tasks, price, window, attempts, none } => {
                let mut s = spec(tasks, &price.to_string(), window);
                s.max_attempts = attempts;
                s.deadline_blocks = 4;
                if none {
                    s.verification = VerificationLevel::None;
                }
                signed(&mut self.chain, &actor(client), TxBody::SubmitJob(SubmitJob { spec: s }))
            }
            Action::SubmitTrain { client, rounds, width, attempts, none } => {
                let s = cairn_types::JobSpec::from_yaml(&format!(
                    "kind: train\nworkload: {}\nmax_price_per_task: 30 CRN\ntasks: {}\ndeadline_blocks: 4\nmax_attempts: {attempts}\nverification: {}\ntrain:\n  model: {{ arch: mlp, hidden: 8 }}\n  optimizer: {{ learning_rate: 0.01 }}\n  rounds: {rounds}\n  width: {width}\n",
                    ContentId::of(b"data.csv"),
                    rounds * (width + 1),
                    if none { "none" } else { "standard" },
                ))
                .unwrap();
                signed(&mut self.chain, &actor(client), TxBody::SubmitJob(SubmitJob { spec: s }))
            }
            Action::SubmitInvalid { client } => {
                let mut s = spec(1, "1", 0);
                s.tasks = 0;
                signed(&mut self.chain, &actor(client), TxBody::SubmitJob(SubmitJob { spec: s }))
            }
            Action::Bid { provider, pick, price } => {
                // Mostly open tasks, sometimes any task.
                let task = self.pick(pick, |s| matches!(s, TaskState::Open { .. }) || pick % 4 == 0)?;
                // Seal while the auction seals, reveal after (sometimes with the wrong salt).
                let key = provider_key(provider);
                let price = crn(&price.to_string());
                let salt = Hash32([(pick % 3) as u8; 32]);
                let sealing = match self.chain.state.task(&task).unwrap().map(|t| t.state) {
                    Some(TaskState::Open { auction_end, .. }) => self.chain.height() < auction_end,
                    _ => pick % 2 == 0,
                };
                let offer = if sealing {
                    Offer::Sealed(Bid::commitment(&task, &key.address(), price, &Hash32([0; 32])))
                } else {
                    Offer::Reveal { price, salt }
                };
                signed(&mut self.chain, &key, TxBody::Bid(Bid { task, offer }))
            }
            Action::Commit { pick, honest, liar } => {
                let id = self.pick(pick, |s| matches!(s, TaskState::Assigned { .. }) || pick % 5 == 0)?;
                let assigned = match self.chain.state.task(&id).unwrap().map(|t| t.state) {
                    Some(TaskState::Assigned { provider, .. }) => Some(provider),
                    _ => None,
                };
                let who = match (honest, assigned) {
                    (true, Some(p)) => (0..PROVIDERS).map(provider_key).find(|k| k.address() == p)?,
                    _ => provider_key(liar),
                };
                let c = CommitResult {
                    task: id,
                    output: ContentId::of(&id.0),
                    metering: Metering { units: 5, output_bytes: 5 },
                    streams: Vec::new(),
                };
                signed(&mut self.chain, &who, TxBody::CommitResult(c))
            }
            Action::Cancel { who, job } => {
                let job = self.job(job)?;
                signed(&mut self.chain, &actor(who), TxBody::CancelJob(CancelJob { job }))
            }
            Action::Heartbeat { who } => {
                signed(&mut self.chain, &actor(who), TxBody::Heartbeat(Heartbeat {}))
            }
            Action::OpenLease { client, blocks } => {
                let spec = cairn_types::JobSpec::from_yaml(&format!(
                    "kind: service\nworkload: {}\nargs: [/srv]\nservice:\n  port: 80\n  max_price_per_block: 0.02 CRN\n  sla: {{ uptime_bps: 7000, latency_ms: 100, probe_path: /, window_rounds: 3 }}\n",
                    ContentId::of(b"svc")
                ))
                .unwrap();
                let o = OpenLease { spec, deposit: crn("0.01").checked_mul(u128::from(blocks)).unwrap() };
                signed(&mut self.chain, &actor(client), TxBody::OpenLease(o))
            }
            Action::Probe { who, lease, ok, slow } => {
                if self.leases.is_empty() {
                    return None;
                }
                let lease = self.leases[lease % self.leases.len()];
                let round = self.chain.state.lease(&lease).unwrap().map_or(0, |l| l.round);
                let latency_ms = if slow { 500 } else { 20 };
                let r = cairn_types::ReportProbe { lease, round, ok, latency_ms };
                signed(&mut self.chain, &actor(who), TxBody::ReportProbe(r))
            }
            Action::CloseLease { who, lease } => {
                if self.leases.is_empty() {
                    return None;
                }
                let lease = self.leases[lease % self.leases.len()];
                signed(&mut self.chain, &actor(who), TxBody::CloseLease(CloseLease { lease }))
            }
            Action::Deal { client, epochs, replicas } => signed(
                &mut self.chain,
                &actor(client),
                TxBody::CreateStorageDeal(CreateStorageDeal {
                    blob: ContentId::of(&deal_blob()),
                    size: deal_blob().len() as u64,
                    replicas,
                    epochs,
                    max_price_per_gib_epoch: crn("2000"),
                    regions: Vec::new(),
                    distinct_operators: false,
                }),
            ),
            Action::Prove { who, deal, honest, epoch_off } => {
                if self.deals.is_empty() {
                    return None;
                }
                let id = self.deals[deal % self.deals.len()];
                let d = self.chain.state.deal(&id).unwrap()?;
                let prover = actor(who).address();
                let picks = cairn_types::storage::challenged_chunks(
                    &d.seed,
                    &d.id,
                    &prover,
                    d.epoch,
                    d.size,
                    prop_params().storage_challenges,
                );
                let mut proof = cairn_types::storage::prove_from_bytes(&deal_blob(), &picks);
                if !honest {
                    proof.chunks[0].data[0] ^= 1;
                }
                signed(
                    &mut self.chain,
                    &actor(who),
                    TxBody::ProveStorage(ProveStorage { deal: id, epoch: d.epoch + epoch_off, proof }),
                )
            }
            Action::Audit { pick, honest, stranger } => {
                let audits = self.chain.audits();
                if audits.is_empty() {
                    return None;
                }
                let a = &audits[pick % audits.len()];
                let who = match stranger {
                    Some(p) => provider_key(p),
                    None => {
                        let auditor = a.auditors[pick % a.auditors.len()];
                        (0..PROVIDERS).map(provider_key).find(|k| k.address() == auditor)?
                    }
                };
                // An honest auditor reports the true root: the worker's (workers here are
                // honest) or a canary's known answer.
                let output = match (honest, a.answer) {
                    (true, Some(answer)) => answer,
                    (true, None) => a.claimed,
                    (false, _) => ContentId::of(b"a wrong root"),
                };
                let body = TxBody::SubmitAudit(SubmitAudit {
                    task: a.task,
                    output,
                    metering: Metering { units: 5, output_bytes: 5 },
                    streams: Vec::new(),
                });
                signed(&mut self.chain, &who, body)
            }
            Action::Dispute { pick, bond } => {
                let id = self.pick(pick, |s| matches!(s, TaskState::Committed { .. }) || pick % 5 == 0)?;
                let task = self.chain.state.task(&id).unwrap()?;
                let client = self.chain.state.job(&task.job).unwrap()?.client;
                let who = (0..CLIENTS).map(actor).find(|k| k.address() == client)?;
                let body = TxBody::OpenDispute(OpenDispute { task: id, bond: crn(&bond.to_string()) });
                signed(&mut self.chain, &who, body)
            }
        })
    }

    fn record(&mut self, receipts: &[Receipt]) {
        for e in receipts.iter().flat_map(Receipt::events) {
            match e {
                Event::JobSubmitted { job, .. } => self.jobs.push(*job),
                Event::LeaseOpened { lease, .. } => self.leases.push(*lease),
                Event::DealCreated { deal, .. } => self.deals.push(*deal),
                _ => {}
            }
        }
    }
}

/// (c): what a lone transaction may change, judged from its simulated write set.
fn check_refusal(world: &World, tx: &Tx) -> Result<(), TestCaseError> {
    let (receipt, writes) = world.chain.state.simulate(tx).unwrap();
    let Receipt::Tx { status, fee, .. } = receipt else { unreachable!() };
    match status {
        TxStatus::Ok => {}
        TxStatus::Rejected(_) => {
            prop_assert!(writes.is_empty(), "a rejected tx wrote {} keys", writes.len());
            prop_assert!(fee.is_zero());
        }
        TxStatus::Failed(code) => {
            let allowed: BTreeSet<Vec<u8>> = [keys::account(&tx.sender), keys::TOTALS.to_vec()].into();
            let touched: BTreeSet<Vec<u8>> = writes.keys().cloned().collect();
            prop_assert!(touched.is_subset(&allowed), "failed tx ({code}) touched more than fee and nonce");
            let before = world.chain.state.account(&tx.sender).unwrap();
            let after: cairn_state::model::Account = writes
                .get(&keys::account(&tx.sender))
                .and_then(|v| v.as_ref())
                .map(|b| borsh::from_slice(b).unwrap())
                .unwrap_or_default();
            prop_assert_eq!(after.nonce, before.nonce + 1);
            prop_assert_eq!(before.balance.checked_sub(after.balance), Some(tx.fee));
            prop_assert_eq!(fee, tx.fee);
        }
    }
    Ok(())
}

fn run(blocks: Vec<Vec<Action>>) -> Result<(), TestCaseError> {
    let mut world = World::new();
    for actions in &blocks {
        let txs: Vec<Tx> = actions.iter().filter_map(|a| world.tx(a)).collect();
        if let [only] = txs.as_slice() {
            check_refusal(&world, only)?;
        }
        for tx in txs {
            world.chain.push(tx);
        }
        let receipts = world.chain.next_block();
        world.record(&receipts);
        world.chain.check_supply().map_err(TestCaseError::fail)?;
        world.chain.check_escrow().map_err(TestCaseError::fail)?;
    }
    // Let every deadline, window and lease run out: every task must end paid or refunded.
    world.chain.advance(60);
    world.chain.check_supply().map_err(TestCaseError::fail)?;
    world.chain.check_escrow().map_err(TestCaseError::fail)?;
    prop_assert!(
        world.chain.all_tasks_final(),
        "a task is stuck: {:?}",
        world.chain.all_tasks().iter().find(|t| !t.state.is_final())
    );
    for j in world.chain.jobs() {
        prop_assert!(world.chain.state.escrow(&j.id).unwrap().is_zero());
    }

    // (d) Replay from genesis: same roots, same receipts.
    let mut replay = State::genesis(MemStore::new(), world.chain.genesis()).unwrap();
    prop_assert_eq!(replay.root(), world.chain.roots[0]);
    let mut first = TestChain::from_genesis(world.chain.genesis().clone());
    for (i, b) in world.chain.blocks.iter().enumerate() {
        let (root, receipts) = replay.apply_block(b).unwrap();
        prop_assert_eq!(root, world.chain.roots[i + 1], "root differs at height {}", b.height);
        for tx in &b.txs {
            first.push(tx.clone());
        }
        let again = first.next_block();
        prop_assert_eq!(receipts, again);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, max_shrink_iters: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn supply_escrow_refusals_and_replay_hold_over_random_transactions(
        blocks in prop::collection::vec(prop::collection::vec(action(), 0..4), 1..40)
    ) {
        run(blocks)?;
    }
}
