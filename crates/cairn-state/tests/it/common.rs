use std::collections::BTreeMap;

use cairn_state::Params;
use cairn_state::testkit::{TestChain, key};
use cairn_types::{
    Amount, Bond, Capacity, ContentId, Event, JobId, JobSpec, PriceSheet, ProviderInfo, Receipt,
    RegisterProvider, SecretKey, SubmitJob, TxBody, TxStatus, WorkloadKind,
};

pub(crate) fn crn(s: &str) -> Amount {
    format!("{s} CRN").parse().unwrap()
}

pub(crate) fn params() -> Params {
    Params {
        challenge_window: 5,
        audit_window: 3,
        unbonding_blocks: 10,
        reward_epoch_blocks: 10,
        heartbeat_timeout: 10_000,
        max_wait_blocks: 12,
        ..Params::default()
    }
}

pub(crate) fn client() -> SecretKey {
    key(1)
}

pub(crate) fn provider_key(i: u64) -> SecretKey {
    key(100 + i)
}

pub(crate) fn info(region: &str, wasm_price: &str) -> ProviderInfo {
    let mut prices = BTreeMap::new();
    prices.insert(WorkloadKind::Wasm, crn(wasm_price));
    prices.insert(WorkloadKind::Service, crn("0.01"));
    prices.insert(WorkloadKind::Train, crn(wasm_price));
    prices.insert(WorkloadKind::Container, crn(wasm_price));
    ProviderInfo {
        endpoint: "http://127.0.0.1:9000".into(),
        region: region.parse().unwrap(),
        attributes: BTreeMap::new(),
        capacity: Capacity { cpu_millis: 4_000, memory_mb: 8_192, gpus: vec![] },
        prices: PriceSheet(prices),
        storage: Some(cairn_types::StorageOffer { capacity_gib: 1, price_per_gib_epoch: crn("1000") }),
    }
}

/// A chain with a funded client and `prices.len()` registered providers (each with 1,000 CRN
/// bonded), provider i at `prices[i]` in region `regions[i % len]`.
pub(crate) fn market(prices: &[&str]) -> TestChain {
    market_with(params(), prices)
}

/// [`market`] with other parameters.
pub(crate) fn market_with(params: Params, prices: &[&str]) -> TestChain {
    let c = client();
    let provs: Vec<SecretKey> = (0..prices.len() as u64).map(provider_key).collect();
    let mut funded: Vec<(&SecretKey, Amount)> = vec![(&c, crn("100000"))];
    for p in &provs {
        funded.push((p, crn("5000")));
    }
    let mut chain = TestChain::new(params, &funded);
    let regions = ["DE", "US", "SG"];
    for (i, p) in provs.iter().enumerate() {
        chain.send(p, TxBody::Bond(Bond { amount: crn("1000") }));
        chain.next_block();
        let info = info(regions[i % regions.len()], prices[i]);
        chain.ok(p, TxBody::RegisterProvider(RegisterProvider { info }));
    }
    chain
}

pub(crate) fn spec(tasks: u32, max_price: &str, bid_window: u32) -> JobSpec {
    let mut s = JobSpec::from_yaml(&format!(
        "kind: wasm\nworkload: {}\nmax_price_per_task: {max_price} CRN\ntasks: {tasks}\nbid_window: {bid_window}\ndeadline_blocks: 4\n",
        ContentId::of(b"module")
    ))
    .unwrap();
    s.resources.cpu_millis = 1_000;
    s
}

pub(crate) fn submit(chain: &mut TestChain, spec: JobSpec) -> JobId {
    let r = chain.ok(&client(), TxBody::SubmitJob(SubmitJob { spec }));
    job_of(&r)
}

pub(crate) fn job_of(r: &Receipt) -> JobId {
    r.events()
        .iter()
        .find_map(|e| match e {
            Event::JobSubmitted { job, .. } => Some(*job),
            _ => None,
        })
        .expect("JobSubmitted event")
}

pub(crate) fn status(r: &Receipt) -> TxStatus {
    match r {
        Receipt::Tx { status, .. } => *status,
        Receipt::EndBlock { .. } => panic!("not a tx receipt"),
    }
}

pub(crate) fn checks(chain: &TestChain) {
    chain.check_supply().unwrap();
    chain.check_escrow().unwrap();
}
