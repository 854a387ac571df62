//! The simulation itself: providers and clients acting on the real state machine, block by
//! block, and the accounting of what each strategy spent and earned.

use std::collections::BTreeMap;

use crate::{SimConfig, SimReport, StrategyRow};
use cairn_state::model::TaskState;
use cairn_state::testkit::{TestChain, key};
use cairn_types::{
    Address, Amount, AuditOutcome, Behaviour, Bond, Capacity, CommitResult, ContentId, Event, Heartbeat,
    JobId, JobSpec, Metering, PriceSheet, ProviderInfo, Receipt, RegisterProvider, SecretKey, SlashReason,
    SubmitAudit, SubmitJob, TaskId, TxBody, WorkloadKind, hash_domain,
};

/// Metered units of one task (the sim's unit of compute).
const UNITS: u64 = 1_000;

/// A deterministic stream of numbers from the seed.
struct Rng {
    seed: u64,
    n: u64,
}

impl Rng {
    fn next(&mut self) -> u64 {
        self.n = self.n.wrapping_add(1);
        let h = hash_domain("cairn sim rng v1", &[&self.seed.to_le_bytes(), &self.n.to_le_bytes()]);
        u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
    }
}

/// A task and the worker it was given to.
type Assignment = (TaskId, Address);
/// A task, the auditor assigned, and the output it is checked against.
type AuditAssignment = (TaskId, Address, ContentId);

fn truth(task: &TaskId) -> ContentId {
    ContentId(hash_domain("cairn sim truth v1", &[&task.0]))
}

fn lie(task: &TaskId) -> ContentId {
    ContentId(hash_domain("cairn sim lie v1", &[&task.0]))
}

pub(crate) struct Sim {
    cfg: SimConfig,
    chain: TestChain,
    keys: BTreeMap<Address, SecretKey>,
    behaviour: BTreeMap<Address, Behaviour>,
    clients: Vec<SecretKey>,
    /// Results committed per provider (for `cheat_after`).
    committed: BTreeMap<Address, u64>,
    /// Cheated tasks per provider so far, and the count at its first slash.
    cheated: BTreeMap<Address, u64>,
    first_caught: BTreeMap<Address, u64>,
    /// Providers that cheated once and stopped (`commit_then_vanish`).
    vanished: BTreeMap<Address, bool>,
    costs: BTreeMap<Address, u128>,
    tasks_of: BTreeMap<Address, u64>,
    slashes: BTreeMap<Address, u64>,
    /// Task → (worker, lied) for committed results.
    lies: BTreeMap<TaskId, (Address, bool)>,
    /// A cheated task → which of its worker's lies it was (1 = the first).
    lie_seq: BTreeMap<TaskId, u64>,
    submitted_at: BTreeMap<JobId, u64>,
    settle_times: Vec<u64>,
    report: SimReport,
    useful_units: u64,
    audit_units: u64,
    useful_established: u64,
    audit_established: u64,
    established_tasks: BTreeMap<TaskId, bool>,
}

fn provider_info(cfg: &SimConfig) -> ProviderInfo {
    let mut prices = BTreeMap::new();
    prices.insert(WorkloadKind::Wasm, Amount::from_base_units(cfg.price));
    ProviderInfo {
        endpoint: "http://127.0.0.1:9000".into(),
        region: "DE".parse().expect("a valid region"),
        attributes: BTreeMap::new(),
        capacity: Capacity { cpu_millis: 1_000, memory_mb: 1_024, gpus: vec![] },
        prices: PriceSheet(prices),
        storage: None,
    }
}

fn job_spec(cfg: &SimConfig) -> JobSpec {
    let mut s = JobSpec::from_yaml(&format!(
        "kind: wasm\nworkload: {}\nmax_price_per_task: {}\ntasks: {}\nbid_window: 0\ndeadline_blocks: 4\nmax_attempts: 3\n",
        ContentId::of(b"sim workload"),
        Amount::from_base_units(cfg.price),
        cfg.tasks_per_job.max(1)
    ))
    .expect("the simulator's job spec is valid");
    s.resources.cpu_millis = 1_000;
    s.resources.memory_mb = 256;
    s.limits.fuel = UNITS;
    s
}

impl Sim {
    pub(crate) fn new(cfg: SimConfig) -> Self {
        let mut rng = Rng { seed: cfg.seed, n: 0 };
        let clients: Vec<SecretKey> = (0..4).map(|i| key(10 + i)).collect();
        let provs: Vec<SecretKey> = (0..u64::from(cfg.providers)).map(|i| key(1_000 + i)).collect();
        let mut funded: Vec<(&SecretKey, Amount)> =
            clients.iter().map(|k| (k, Amount::from_base_units(1_000_000_000_000_000))).collect();
        let fund = Amount::from_base_units(cfg.stake.saturating_mul(2));
        funded.extend(provs.iter().map(|k| (k, fund)));
        let mut chain = TestChain::new(cfg.params.clone(), &funded);

        // Behaviours: a seeded shuffle, then the mix's shares in order.
        let mut order: Vec<usize> = (0..provs.len()).collect();
        for i in (1..order.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let n = provs.len() as u64;
        let count = |bps: u32| (n * u64::from(bps) / 10_000) as usize;
        let m = &cfg.mix;
        let mut plan: Vec<Behaviour> = Vec::new();
        plan.extend(std::iter::repeat_n(Behaviour::WrongAlways, count(m.wrong_always)));
        plan.extend(std::iter::repeat_n(
            Behaviour::WrongSometimes { rate_bps: cfg.wrong_sometimes_bps },
            count(m.wrong_sometimes),
        ));
        plan.extend(std::iter::repeat_n(Behaviour::SkipWork, count(m.skip_work)));
        plan.extend(std::iter::repeat_n(Behaviour::LazyAuditor, count(m.lazy_auditor)));
        let colluders = count(m.colluder) & !1;
        plan.extend(std::iter::repeat_n(Behaviour::Colluder { ring: vec![] }, colluders));
        plan.extend(std::iter::repeat_n(Behaviour::CommitThenVanish, count(m.vanish)));
        let mut behaviour = BTreeMap::new();
        let mut keys = BTreeMap::new();
        for (slot, &i) in order.iter().enumerate() {
            let b = plan.get(slot).cloned().unwrap_or_default();
            behaviour.insert(provs[i].address(), b);
            keys.insert(provs[i].address(), provs[i].clone());
        }
        // Colluders in rings of two, in shuffled order.
        let ring_members: Vec<Address> = order
            .iter()
            .map(|&i| provs[i].address())
            .filter(|a| matches!(behaviour.get(a), Some(Behaviour::Colluder { .. })))
            .collect();
        for pair in ring_members.chunks(2) {
            for a in pair {
                behaviour.insert(*a, Behaviour::Colluder { ring: pair.to_vec() });
            }
        }
        let info = provider_info(&cfg);
        for k in &provs {
            chain.send(k, TxBody::Bond(Bond { amount: Amount::from_base_units(cfg.stake) }));
        }
        chain.next_block();
        for k in &provs {
            chain.send(k, TxBody::RegisterProvider(RegisterProvider { info: info.clone() }));
        }
        chain.next_block();
        Sim {
            cfg,
            chain,
            keys,
            behaviour,
            clients,
            committed: BTreeMap::new(),
            cheated: BTreeMap::new(),
            first_caught: BTreeMap::new(),
            vanished: BTreeMap::new(),
            costs: BTreeMap::new(),
            tasks_of: BTreeMap::new(),
            slashes: BTreeMap::new(),
            lies: BTreeMap::new(),
            lie_seq: BTreeMap::new(),
            submitted_at: BTreeMap::new(),
            settle_times: Vec::new(),
            report: SimReport { invariants_held: true, ..SimReport::default() },
            useful_units: 0,
            audit_units: 0,
            useful_established: 0,
            audit_established: 0,
            established_tasks: BTreeMap::new(),
        }
    }

    fn cost(&self) -> u128 {
        self.cfg.price.saturating_mul(u128::from(self.cfg.cost_bps)) / 10_000
    }

    fn behaviour(&self, a: &Address) -> Behaviour {
        self.behaviour.get(a).cloned().unwrap_or_default()
    }

    fn worth(&self, a: &Address) -> u128 {
        let bal = self.chain.state.account(a).map(|x| x.balance.base_units()).unwrap_or(0);
        let st = self.chain.state.stake(a).unwrap_or_default();
        bal + st.bonded.base_units() + st.unbonding.iter().map(|u| u.amount.base_units()).sum::<u128>()
    }

    /// The worker's answer to an assignment: commit a root (true or a lie).
    fn commit(&mut self, task: TaskId, worker: Address) {
        if self.vanished.get(&worker).copied().unwrap_or(false) {
            return;
        }
        let b = self.behaviour(&worker);
        let done = self.committed.get(&worker).copied().unwrap_or(0);
        let lied = done >= self.cfg.cheat_after && b.cheats_on(&task);
        let output = if lied { lie(&task) } else { truth(&task) };
        if !lied || b.runs_work() {
            *self.costs.entry(worker).or_default() += self.cost();
        }
        *self.committed.entry(worker).or_default() += 1;
        *self.tasks_of.entry(worker).or_default() += 1;
        if lied {
            let n = self.cheated.entry(worker).or_default();
            *n += 1;
            self.lie_seq.insert(task, *n);
        }
        self.useful_units += UNITS;
        // Established: the provider's streak already puts it at p_min.
        let streak =
            self.chain.state.provider(&worker).ok().flatten().map_or(0, |p| p.reputation.consecutive_valid);
        let floor = 10_000 / u64::from(self.cfg.params.audit_p_min_bps.max(1));
        let established = done >= self.cfg.params.audit_first_results && streak.saturating_add(1) >= floor;
        if established {
            self.useful_established += UNITS;
        }
        self.established_tasks.insert(task, established);
        self.lies.insert(task, (worker, lied));
        let Some(k) = self.keys.get(&worker).cloned() else { return };
        self.chain.send(
            &k,
            TxBody::CommitResult(CommitResult {
                task,
                output,
                metering: Metering { units: UNITS, output_bytes: 32 },
                streams: Vec::new(),
            }),
        );
        if lied && b == Behaviour::CommitThenVanish {
            self.vanished.insert(worker, true);
        }
    }

    /// An auditor's answer: re-run (the true root) or echo the claim.
    fn answer(&mut self, task: TaskId, auditor: Address, claimed: ContentId) {
        if self.vanished.get(&auditor).copied().unwrap_or(false) {
            return;
        }
        let b = self.behaviour(&auditor);
        let worker = match self.chain.state.task(&task).ok().flatten().map(|t| t.state) {
            Some(TaskState::Committed { provider, .. } | TaskState::Settled { provider, .. }) => {
                Some(provider)
            }
            _ => None,
        };
        let output = if b.reruns_audit(worker.as_ref()) {
            *self.costs.entry(auditor).or_default() += self.cost();
            self.audit_units += UNITS;
            if self.established_tasks.get(&task).copied().unwrap_or(false) {
                self.audit_established += UNITS;
            }
            truth(&task)
        } else {
            claimed
        };
        let Some(k) = self.keys.get(&auditor).cloned() else { return };
        self.chain.send(
            &k,
            TxBody::SubmitAudit(SubmitAudit {
                task,
                output,
                metering: Metering { units: UNITS, output_bytes: 32 },
                streams: Vec::new(),
            }),
        );
    }

    fn record(&mut self, receipts: &[Receipt]) -> (Vec<Assignment>, Vec<AuditAssignment>) {
        let mut assigned = Vec::new();
        let mut audits = Vec::new();
        let height = self.chain.height();
        for e in receipts.iter().flat_map(Receipt::events) {
            match e {
                Event::JobSubmitted { job, .. } => {
                    self.submitted_at.insert(*job, height);
                }
                Event::TaskAssigned { task, provider, .. } => assigned.push((*task, *provider)),
                Event::AuditAssigned { task, auditor, claimed, .. } => {
                    audits.push((*task, *auditor, *claimed))
                }
                Event::DisputeOpened { .. } => self.report.disputes += 1,
                Event::AuditResolved { outcome, .. } => {
                    self.report.audits += 1;
                    if matches!(outcome, AuditOutcome::CanaryPassed | AuditOutcome::CanaryFailed) {
                        self.report.canaries += 1;
                    }
                }
                Event::TaskSettled { task, job, .. } => {
                    if let Some(at) = self.submitted_at.get(job) {
                        self.settle_times.push(height.saturating_sub(*at));
                    }
                    if self.lies.get(task).is_some_and(|(_, lied)| *lied) {
                        self.report.cheats_paid += 1;
                    }
                }
                Event::Slashed { who, reason, task, .. } => {
                    *self.slashes.entry(*who).or_default() += 1;
                    if self.behaviour(who) == Behaviour::Honest {
                        self.report.false_slashes += 1;
                    }
                    if *reason == SlashReason::WrongResult {
                        self.report.cheats_caught += 1;
                        // Caught within K cheated tasks: K is the caught lie's place among
                        // the worker's lies.
                        let k = self.lie_seq.get(task).copied().unwrap_or(0);
                        self.first_caught.entry(*who).and_modify(|f| *f = (*f).min(k)).or_insert(k);
                    }
                }
                _ => {}
            }
        }
        (assigned, audits)
    }

    pub(crate) fn run(mut self, progress: &mut dyn FnMut(u64, u64)) -> SimReport {
        let mut rng = Rng { seed: self.cfg.seed ^ 0x5eed, n: 0 };
        let start: BTreeMap<Address, u128> = self.keys.keys().map(|a| (*a, self.worth(a))).collect();
        let spec = job_spec(&self.cfg);
        let jobs_per_block = self.cfg.tasks_per_block.div_ceil(self.cfg.tasks_per_job.max(1));
        let mut pending_commits: Vec<Assignment> = Vec::new();
        let mut pending_audits: Vec<AuditAssignment> = Vec::new();
        let mut block = 0u64;
        let limit = self.cfg.blocks.saturating_add(2_000);
        loop {
            let demand = block < self.cfg.blocks;
            if !demand
                && pending_commits.is_empty()
                && pending_audits.is_empty()
                && self.chain.all_tasks_final()
            {
                break;
            }
            if block >= limit {
                break;
            }
            if demand {
                for _ in 0..jobs_per_block {
                    let c = self.clients[(rng.next() % self.clients.len() as u64) as usize].clone();
                    self.chain.send(&c, TxBody::SubmitJob(SubmitJob { spec: spec.clone() }));
                    self.report.tasks += u64::from(self.cfg.tasks_per_job);
                }
            }
            for (task, worker) in std::mem::take(&mut pending_commits) {
                self.commit(task, worker);
            }
            for (task, auditor, claimed) in std::mem::take(&mut pending_audits) {
                self.answer(task, auditor, claimed);
            }
            if block.is_multiple_of(40) {
                let live: Vec<SecretKey> = self
                    .keys
                    .iter()
                    .filter(|(a, _)| !self.vanished.get(*a).copied().unwrap_or(false))
                    .map(|(_, k)| k.clone())
                    .collect();
                for k in live {
                    self.chain.send(&k, TxBody::Heartbeat(Heartbeat {}));
                }
            }
            let receipts = self.chain.next_block();
            let (assigned, audits) = self.record(&receipts);
            pending_commits = assigned;
            pending_audits = audits;
            if block.is_multiple_of(25)
                && (self.chain.check_supply().is_err() || self.chain.check_escrow().is_err())
            {
                self.report.invariants_held = false;
            }
            block += 1;
            progress(block, self.cfg.blocks);
        }
        if self.chain.check_supply().is_err() || self.chain.check_escrow().is_err() {
            self.report.invariants_held = false;
        }
        self.finish(start, block)
    }

    fn finish(mut self, start: BTreeMap<Address, u128>, blocks: u64) -> SimReport {
        let mut rows: BTreeMap<&'static str, StrategyRow> = BTreeMap::new();
        for (a, b) in &self.behaviour {
            let row = rows
                .entry(b.name())
                .or_insert_with(|| StrategyRow { behaviour: b.name().to_string(), ..StrategyRow::default() });
            let end = self.worth(a);
            let cost = self.costs.get(a).copied().unwrap_or(0);
            let profit = end as i128 - start.get(a).copied().unwrap_or(0) as i128 - cost as i128;
            row.providers += 1;
            row.tasks += self.tasks_of.get(a).copied().unwrap_or(0);
            row.cheated += self.cheated.get(a).copied().unwrap_or(0);
            row.slashed += self.slashes.get(a).copied().unwrap_or(0);
            row.profit_per_provider += profit;
        }
        for row in rows.values_mut() {
            let total = row.profit_per_provider;
            row.profit_per_provider = total / i128::from(row.providers.max(1));
            row.profit_per_task = total / i128::from(row.tasks.max(1));
            row.gain_per_cheat = Some(total); // the total, until the honest rate is known
        }
        let honest_rate = rows.get("honest").map_or(0, |h| h.profit_per_task);
        for row in rows.values_mut() {
            let total = row.gain_per_cheat.take().unwrap_or(0);
            if row.cheated > 0 {
                let as_honest = honest_rate * i128::from(row.tasks);
                row.gain_per_cheat = Some((total - as_honest) / i128::from(row.cheated));
            }
        }
        // Detection of persistent cheaters (every task a lie once they start).
        for (a, b) in &self.behaviour {
            if matches!(b, Behaviour::WrongAlways | Behaviour::SkipWork | Behaviour::Colluder { .. })
                && self.cheated.get(a).copied().unwrap_or(0) > 0
            {
                self.report.detection.push(self.first_caught.get(a).copied());
            }
        }
        // q = p_min × P(the auditor re-runs): lazy auditors echo (a ring partner too, rarely).
        let lazy = u64::from(self.cfg.mix.lazy_auditor);
        self.report.q_bps = u64::from(self.cfg.params.audit_p_min_bps) * (10_000 - lazy.min(10_000)) / 10_000;
        self.report.overhead_bps = self.audit_units * 10_000 / self.useful_units.max(1);
        self.report.overhead_established_bps =
            self.audit_established * 10_000 / self.useful_established.max(1);
        self.settle_times.sort_unstable();
        let n = self.settle_times.len();
        if n > 0 {
            let mean = self.settle_times.iter().sum::<u64>() / n as u64;
            self.report.settle_blocks =
                (self.settle_times[n / 2], self.settle_times[(n * 99 / 100).min(n - 1)], mean);
        }
        self.report.blocks = blocks;
        self.report.strategies = rows.into_values().collect();
        self.report.config = Some(self.cfg);
        self.report
    }
}
