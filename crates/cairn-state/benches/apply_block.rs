//! `apply_block` throughput in signed transactions per second, signature checks included.
//!
//! Run: `cargo bench -p cairn-state --bench apply_block`. Prints a Markdown table. Each row is
//! the median of several runs on a fresh copy of the same prepared state, on one thread.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_state::model::TaskState;
use cairn_state::testkit::{TestChain, key};
use cairn_state::{MemStore, Params, State};
use cairn_types::{
    Amount, Bid, Block, Bond, Capacity, CommitResult, ContentId, Event, JobSpec, Metering, PriceSheet,
    ProviderInfo, Receipt, RegisterProvider, SecretKey, SubmitJob, TaskId, Transfer, Tx, TxBody, TxStatus,
    WorkloadKind,
};

const RUNS: usize = 5;

fn crn(n: u128) -> Amount {
    Amount::from_crn(n).unwrap()
}

fn measure(store: &MemStore, block: &Block) -> (Duration, usize) {
    let mut times = Vec::with_capacity(RUNS);
    let mut ok = 0;
    for _ in 0..RUNS {
        let mut state = State::open(store.clone()).unwrap();
        let start = Instant::now();
        let (_, receipts) = state.apply_block(block).unwrap();
        times.push(start.elapsed());
        ok = receipts.iter().filter(|r| matches!(r, Receipt::Tx { status: TxStatus::Ok, .. })).count();
    }
    times.sort();
    (times[RUNS / 2], ok)
}

fn next_block(chain: &TestChain, txs: Vec<Tx>) -> Block {
    let height = chain.height() + 1;
    Block {
        height,
        parent: chain.blocks.last().unwrap().hash(),
        proposer: key(0).address(),
        beacon: TestChain::beacon(height),
        txs,
        faults: vec![],
    }
}

fn transfers(n: usize) -> (MemStore, Block) {
    let senders: Vec<SecretKey> = (0..n as u64).map(|i| key(10_000 + i)).collect();
    let funded: Vec<(&SecretKey, Amount)> = senders.iter().map(|k| (k, crn(1_000))).collect();
    let mut chain = TestChain::new(Params::default(), &funded);
    chain.advance(1);
    let txs = senders
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let to = senders[(i + 1) % n].address();
            chain.sign(k, TxBody::Transfer(Transfer { to, amount: crn(1) }))
        })
        .collect();
    let block = next_block(&chain, txs);
    (chain.state.into_store(), block)
}

fn provider_info(price: &str) -> ProviderInfo {
    let mut prices = BTreeMap::new();
    prices.insert(WorkloadKind::Wasm, format!("{price} CRN").parse().unwrap());
    ProviderInfo {
        endpoint: "http://127.0.0.1:9000".into(),
        region: "DE".parse().unwrap(),
        attributes: BTreeMap::new(),
        capacity: Capacity { cpu_millis: u64::MAX / 4, memory_mb: u64::MAX / 4, gpus: vec![] },
        prices: PriceSheet(prices),
        storage: None,
    }
}

fn job(bid_window: u32) -> JobSpec {
    let mut s = JobSpec::from_yaml(&format!(
        "kind: wasm\nworkload: {}\nmax_price_per_task: 1 CRN\ndeadline_blocks: 1000\n",
        ContentId::of(b"bench module")
    ))
    .unwrap();
    s.bid_window = bid_window;
    s
}

/// A block of `n` transactions, a third each submit (matched at once), bid and commit, with
/// `n / 3` earlier commits settling in the same block's end-of-block work.
fn market_mix(n: usize) -> (MemStore, Block) {
    let third = n / 3;
    let providers: Vec<SecretKey> = (0..20).map(|i| key(500 + i)).collect();
    let clients: Vec<SecretKey> = (0..third as u64).map(|i| key(100_000 + i)).collect();
    let mut funded: Vec<(&SecretKey, Amount)> = providers.iter().map(|k| (k, crn(100_000_000))).collect();
    funded.extend(clients.iter().map(|k| (k, crn(1_000_000))));
    let params = Params { challenge_window: 2, heartbeat_timeout: 1_000_000, ..Params::default() };
    let mut chain = TestChain::new(params, &funded);
    for (i, p) in providers.iter().enumerate() {
        chain.send(p, TxBody::Bond(Bond { amount: crn(90_000_000) }));
        chain.send(
            p,
            TxBody::RegisterProvider(RegisterProvider { info: provider_info(&format!("0.{}", 10 + i)) }),
        );
    }
    chain.next_block();

    // Jobs to commit in the measured block (assigned), and jobs to settle in it (committed
    // two blocks before), and auctions to bid on.
    let submit_all = |chain: &mut TestChain, window: u32| -> Vec<TaskId> {
        for c in &clients {
            chain.send(c, TxBody::SubmitJob(SubmitJob { spec: job(window) }));
        }
        chain
            .next_block()
            .iter()
            .flat_map(Receipt::events)
            .filter_map(|e| match e {
                Event::JobSubmitted { job, .. } => Some(TaskId::derive(job, 0)),
                _ => None,
            })
            .collect()
    };
    let to_commit = submit_all(&mut chain, 0);
    let to_settle = submit_all(&mut chain, 0);
    let to_bid = submit_all(&mut chain, 50);
    let owner = |chain: &TestChain, t: &TaskId| match chain.state.task(t).unwrap().unwrap().state {
        TaskState::Assigned { provider, .. } => {
            providers.iter().find(|k| k.address() == provider).unwrap().clone()
        }
        s => panic!("not assigned: {s:?}"),
    };
    let commit = |t: TaskId| {
        TxBody::CommitResult(CommitResult {
            task: t,
            output: ContentId::of(&t.0),
            metering: Metering::default(),
            streams: Vec::new(),
        })
    };
    for t in &to_settle {
        let k = owner(&chain, t);
        chain.send(&k, commit(*t));
    }
    chain.next_block();
    chain.next_block();

    let mut txs = Vec::with_capacity(n);
    for c in &clients {
        txs.push(chain.sign(c, TxBody::SubmitJob(SubmitJob { spec: job(0) })));
    }
    for (i, t) in to_bid.iter().enumerate() {
        let p = &providers[i % providers.len()];
        let sealed =
            Bid::commitment(t, &p.address(), crn(1).checked_div(2).unwrap(), &cairn_types::Hash32([7; 32]));
        txs.push(chain.sign(p, TxBody::Bid(Bid { task: *t, offer: cairn_types::Offer::Sealed(sealed) })));
    }
    for t in &to_commit {
        let k = owner(&chain, t);
        txs.push(chain.sign(&k, commit(*t)));
    }
    let block = next_block(&chain, txs);
    (chain.state.into_store(), block)
}

fn main() {
    let mut rows = Vec::new();
    for (name, build) in
        [("transfers", transfers as fn(usize) -> (MemStore, Block)), ("market mix", market_mix)]
    {
        for n in [1_000, 10_000] {
            let (store, block) = build(n);
            let txs = block.txs.len();
            let (t, ok) = measure(&store, &block);
            assert_eq!(ok, txs, "every transaction in the benchmark block must succeed");
            let rate = txs as f64 / t.as_secs_f64();
            rows.push(format!("| {name} | {txs} | {:.1} | {:.0} |", t.as_secs_f64() * 1e3, rate));
            eprintln!("{name} {txs}: {:.1} ms", t.as_secs_f64() * 1e3);
        }
    }
    println!("| block | txs | apply_block (ms, median of {RUNS}) | signed tx/s (1 core) |");
    println!("|---|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
}
