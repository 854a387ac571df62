//! Leases: the chain picks the provider, pays per probe round, refunds failed rounds, slashes a
//! window below the SLA, moves a failing lease, and refuses bad leases and forged probes.

use cairn_state::Params;
use cairn_state::model::Lease;
use cairn_state::testkit::{TestChain, key};
use cairn_types::{
    Address, Amount, CloseLease, ContentId, ErrorCode, Event, JobSpec, LeaseEnd, LeaseId, OpenLease, Receipt,
    ReportProbe, RoundVerdict, Signature, TxBody, TxStatus, UpdateProvider, WorkloadKind,
};

use crate::common::{checks, client, crn, info, market_with, params, provider_key, status};

const INTERVAL: u64 = 10;

fn lease_params() -> Params {
    Params { probe_interval: INTERVAL, lease_probers: 2, lease_migrate_after: 2, ..params() }
}

fn service(max_per_block: &str, uptime_bps: u32, window: u32) -> JobSpec {
    JobSpec::from_yaml(&format!(
        "kind: service\nworkload: {}\nargs: [/bin/httpd, -f]\nresources: {{ cpu_millis: 1000, memory_mb: 256 }}\nservice:\n  port: 8080\n  max_price_per_block: {max_per_block} CRN\n  sla: {{ uptime_bps: {uptime_bps}, latency_ms: 300, probe_path: /health, window_rounds: {window} }}\n",
        ContentId::of(b"image")
    ))
    .unwrap()
}

/// Three providers; provider i posts `service_prices[i]` per block.
fn chain(service_prices: &[&str]) -> TestChain {
    let wasm: Vec<&str> = service_prices.iter().map(|_| "1").collect();
    let mut chain = market_with(lease_params(), &wasm);
    let regions = ["DE", "US", "SG"];
    for (i, price) in service_prices.iter().enumerate() {
        let mut inf = info(regions[i % 3], "1");
        inf.prices.0.insert(WorkloadKind::Service, crn(price));
        chain.ok(&provider_key(i as u64), TxBody::UpdateProvider(UpdateProvider { info: inf }));
    }
    chain
}

fn lease_of(r: &Receipt) -> LeaseId {
    r.events()
        .iter()
        .find_map(|e| match e {
            Event::LeaseOpened { lease, .. } => Some(*lease),
            _ => None,
        })
        .expect("LeaseOpened")
}

fn open(chain: &mut TestChain, spec: JobSpec, deposit: &str) -> LeaseId {
    let r = chain.ok(&client(), TxBody::OpenLease(OpenLease { spec, deposit: crn(deposit) }));
    lease_of(&r)
}

fn lease(chain: &TestChain, id: &LeaseId) -> Lease {
    chain.state.lease(id).unwrap().unwrap()
}

fn owner(addr: &Address) -> cairn_types::SecretKey {
    (0..3).map(provider_key).find(|k| k.address() == *addr).expect("a provider")
}

/// Every drawn prober of the current round reports `ok` (latency 20 ms) in one block.
fn probe_all(chain: &mut TestChain, id: &LeaseId, ok: bool) {
    let l = lease(chain, id);
    for p in &l.probers {
        chain.send(
            &owner(p),
            TxBody::ReportProbe(ReportProbe { lease: *id, round: l.round, ok, latency_ms: 20 }),
        );
    }
    chain.next_block();
}

/// Advance to the end of the current round (its end-of-block work done).
fn finish_round(chain: &mut TestChain, id: &LeaseId) -> Vec<Receipt> {
    let end = lease(chain, id).round_end;
    let n = end.saturating_sub(chain.height());
    chain.advance(n)
}

fn settled(receipts: &[Receipt]) -> Vec<(RoundVerdict, u64, Amount, Amount)> {
    receipts
        .iter()
        .flat_map(Receipt::events)
        .filter_map(|e| match e {
            Event::LeaseRoundSettled { verdict, blocks, paid, refunded, .. } => {
                Some((*verdict, *blocks, *paid, *refunded))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn the_cheapest_live_provider_gets_the_lease_and_is_paid_per_round_to_the_block() {
    let mut chain = chain(&["0.03", "0.01", "0.02"]);
    let cheap = provider_key(1).address();
    let id = open(&mut chain, service("0.05", 9000, 10), "1");
    let l = lease(&chain, &id);
    assert_eq!((l.provider, l.price_per_block), (cheap, crn("0.01")));
    assert_eq!(l.probers.len(), 2);
    assert!(!l.probers.contains(&cheap) && !l.probers.contains(&client().address()));
    assert_eq!(l.round_end - l.round_start, INTERVAL);
    let reserved = chain.state.provider(&cheap).unwrap().unwrap().reserved;
    assert_eq!((reserved.cpu_millis, reserved.memory_mb), (1000, 256));

    probe_all(&mut chain, &id, true);
    let before = chain.state.account(&cheap).unwrap().balance;
    let rounds = settled(&finish_round(&mut chain, &id));
    assert_eq!(rounds, vec![(RoundVerdict::Passed, INTERVAL, crn("0.1"), Amount::ZERO)]);
    // 10 blocks × 0.01, less the 2% protocol fee.
    assert_eq!(chain.state.account(&cheap).unwrap().balance.checked_sub(before).unwrap(), crn("0.098"));

    // The client closes 4 blocks into the next (unprobed) round: those 4 blocks are paid.
    chain.advance(3);
    let r = chain.ok(&client(), TxBody::CloseLease(CloseLease { lease: id }));
    let closed = r.events().iter().find_map(|e| match e {
        Event::LeaseClosed { paid, refunded, reason, .. } => Some((*paid, *refunded, *reason)),
        _ => None,
    });
    assert_eq!(closed, Some((crn("0.14"), crn("0.86"), LeaseEnd::Client)));
    let l = lease(&chain, &id);
    assert_eq!((l.paid_blocks, l.refunded_blocks, l.escrow), (14, 0, Amount::ZERO));
    assert_eq!(chain.state.provider(&cheap).unwrap().unwrap().reserved.cpu_millis, 0, "capacity released");
    let again = chain.run(&client(), TxBody::CloseLease(CloseLease { lease: id }));
    assert_eq!(status(&again), TxStatus::Failed(ErrorCode::LeaseClosed));
    checks(&chain);
}

#[test]
fn failed_rounds_are_refunded_exactly_and_the_lease_moves_after_two_in_a_row() {
    let mut chain = chain(&["0.01", "0.02", "0.03"]);
    let first = provider_key(0).address();
    let id = open(&mut chain, service("0.05", 5000, 10), "5");
    // Round 0 passes; then the provider dies: rounds 1 and 2 fail.
    probe_all(&mut chain, &id, true);
    let mut rounds = settled(&finish_round(&mut chain, &id));
    let client_before = chain.state.account(&client().address()).unwrap().balance;
    for _ in 0..2 {
        probe_all(&mut chain, &id, false);
        rounds.extend(settled(&finish_round(&mut chain, &id)));
    }
    let refund = crn("0.1");
    assert_eq!(
        rounds,
        vec![
            (RoundVerdict::Passed, INTERVAL, crn("0.1"), Amount::ZERO),
            (RoundVerdict::Failed, INTERVAL, Amount::ZERO, refund),
            (RoundVerdict::Failed, INTERVAL, Amount::ZERO, refund),
        ]
    );
    assert_eq!(
        chain.state.account(&client().address()).unwrap().balance.checked_sub(client_before).unwrap(),
        crn("0.2"),
        "the client gets the two failed rounds back, to the base unit"
    );
    let l = lease(&chain, &id);
    assert_ne!(l.provider, first, "moved");
    assert_eq!((l.provider, l.price_per_block, l.migrations), (provider_key(1).address(), crn("0.02"), 1));
    assert!(l.fresh && l.left == vec![first]);
    assert!(!l.probers.contains(&l.provider));
    assert_eq!(chain.state.provider(&first).unwrap().unwrap().reserved.cpu_millis, 0);

    // The new provider's first round fails (still starting): refunded, not held against it.
    probe_all(&mut chain, &id, false);
    let r = settled(&finish_round(&mut chain, &id));
    assert_eq!(r, vec![(RoundVerdict::Failed, INTERVAL, Amount::ZERO, crn("0.2"))]);
    probe_all(&mut chain, &id, true);
    let r = settled(&finish_round(&mut chain, &id));
    assert_eq!(r, vec![(RoundVerdict::Passed, INTERVAL, crn("0.2"), Amount::ZERO)]);
    let l = lease(&chain, &id);
    assert_eq!((l.provider, l.paid_blocks, l.refunded_blocks), (provider_key(1).address(), 20, 30));
    assert_eq!(l.paid, crn("0.3"));
    checks(&chain);
}

#[test]
fn a_window_below_the_sla_slashes_the_provider_and_moves_the_lease() {
    let mut chain = chain(&["0.01", "0.02", "0.03"]);
    let first = provider_key(0).address();
    let stake_before = chain.state.stake(&first).unwrap().bonded;
    // A 4-round window at 80%: pass, pass, fail, pass (fresh round 0 is not counted) = 2/3.
    let id = open(&mut chain, service("0.05", 8000, 4), "5");
    let mut receipts = Vec::new();
    for ok in [true, true, false, true] {
        probe_all(&mut chain, &id, ok);
        receipts.extend(finish_round(&mut chain, &id));
    }
    let breach = receipts.iter().flat_map(Receipt::events).find_map(|e| match e {
        Event::SlaBreached { provider, uptime_bps, slashed, to_client, burned, .. } => {
            Some((*provider, *uptime_bps, *slashed, *to_client, *burned))
        }
        _ => None,
    });
    let (who, uptime, slashed, to_client, burned) = breach.expect("an SLA breach");
    assert_eq!((who, uptime), (first, 6666));
    // 20 × (4 rounds × 10 blocks × 0.01) = 8 CRN; 20% to the client, the rest burned.
    assert_eq!((slashed, to_client, burned), (crn("8"), crn("1.6"), crn("6.4")));
    assert_eq!(stake_before.checked_sub(chain.state.stake(&first).unwrap().bonded).unwrap(), crn("8"));
    let l = lease(&chain, &id);
    assert_eq!((l.provider, l.migrations), (provider_key(1).address(), 1));
    checks(&chain);
}

#[test]
fn a_lease_never_runs_unpaid_and_a_provider_leaving_hands_it_on() {
    let mut chain = chain(&["0.01", "0.02", "0.03"]);
    // 0.25 CRN covers 25 blocks at 0.01: rounds of 10, 10 and 5, then it closes itself.
    let id = open(&mut chain, service("0.05", 5000, 10), "0.25");
    let mut rounds = Vec::new();
    for _ in 0..3 {
        rounds.extend(settled(&finish_round(&mut chain, &id)));
    }
    assert_eq!(rounds.iter().map(|r| r.1).collect::<Vec<_>>(), vec![10, 10, 5]);
    let l = lease(&chain, &id);
    assert_eq!((l.end, l.paid, l.escrow), (Some(LeaseEnd::Escrow), crn("0.25"), Amount::ZERO));

    // A provider closing its lease does not end the client's service: it moves.
    let id = open(&mut chain, service("0.05", 5000, 10), "5");
    let p = lease(&chain, &id).provider;
    chain.advance(3);
    chain.ok(&owner(&p), TxBody::CloseLease(CloseLease { lease: id }));
    let l = lease(&chain, &id);
    assert!(l.closed_at.is_none() && l.provider != p && l.left == vec![p]);
    assert_eq!(l.paid_blocks, 4, "the leaving provider is paid to the block it left");
    // With no provider left to take it, it closes and refunds the rest.
    for _ in 0..2 {
        let p = lease(&chain, &id).provider;
        chain.ok(&owner(&p), TxBody::CloseLease(CloseLease { lease: id }));
    }
    let l = lease(&chain, &id);
    assert_eq!(l.end, Some(LeaseEnd::NoProvider));
    checks(&chain);
}

#[test]
fn bad_leases_and_forged_or_stray_probes_are_refused_and_change_nothing() {
    let mut chain = chain(&["0.01", "0.02", "0.03"]);
    let spec = service("0.05", 9000, 10);
    let fail = |chain: &mut TestChain, body: TxBody| status(&chain.run(&client(), body));
    let zero = OpenLease { spec: spec.clone(), deposit: Amount::ZERO };
    assert_eq!(fail(&mut chain, TxBody::OpenLease(zero)), TxStatus::Failed(ErrorCode::ZeroAmount));
    let small = OpenLease { spec: spec.clone(), deposit: crn("0.09") };
    assert_eq!(fail(&mut chain, TxBody::OpenLease(small)), TxStatus::Failed(ErrorCode::LeaseDepositTooSmall));
    let cheap = OpenLease { spec: service("0.001", 9000, 10), deposit: crn("1") };
    assert_eq!(fail(&mut chain, TxBody::OpenLease(cheap)), TxStatus::Failed(ErrorCode::NoServiceProvider));
    let mut wasm = crate::common::spec(1, "1", 0);
    wasm.kind = WorkloadKind::Wasm;
    let not_service = OpenLease { spec: wasm, deposit: crn("1") };
    assert_eq!(fail(&mut chain, TxBody::OpenLease(not_service)), TxStatus::Failed(ErrorCode::InvalidJobSpec));
    let mut huge = spec.clone();
    huge.resources.cpu_millis = 64_000;
    let too_big = OpenLease { spec: huge, deposit: crn("1") };
    assert_eq!(fail(&mut chain, TxBody::OpenLease(too_big)), TxStatus::Failed(ErrorCode::NoServiceProvider));
    assert!(chain.state.account(&client().address()).unwrap().balance > crn("99999"));

    let id = open(&mut chain, spec, "1");
    let l = lease(&chain, &id);
    let report = |round, ok| TxBody::ReportProbe(ReportProbe { lease: id, round, ok, latency_ms: 5 });
    // The lease's own provider, the client and a stranger are not drawn.
    for k in [owner(&l.provider), client(), key(77)] {
        let r = chain.run(&k, report(l.round, false));
        assert!(matches!(status(&r), TxStatus::Failed(ErrorCode::ProbeNotAssigned) | TxStatus::Rejected(_)));
    }
    let prober = owner(&l.probers[0]);
    assert_eq!(
        status(&chain.run(&prober, report(l.round + 1, false))),
        TxStatus::Failed(ErrorCode::ProbeRoundClosed)
    );
    let missing = TxBody::ReportProbe(ReportProbe {
        lease: LeaseId(ContentId::of(b"x").0),
        round: 0,
        ok: true,
        latency_ms: 1,
    });
    assert_eq!(status(&chain.run(&prober, missing)), TxStatus::Failed(ErrorCode::LeaseNotFound));
    // A probe signed by someone else in the prober's name is rejected before it runs.
    let mut forged = chain.sign(&key(77), report(l.round, false));
    forged.sender = prober.address();
    forged.signature = Signature::EMPTY;
    chain.push(forged);
    let r = chain.next_block().swap_remove(0);
    assert!(matches!(status(&r), TxStatus::Rejected(_)), "{r:?}");
    assert!(lease(&chain, &id).reports.is_empty());
    chain.ok(&prober, report(l.round, true));
    assert_eq!(
        status(&chain.run(&prober, report(l.round, false))),
        TxStatus::Failed(ErrorCode::ProbeDuplicate)
    );
    assert_eq!(lease(&chain, &id).reports.len(), 1);
    let r = chain.run(&owner(&l.probers[1]), TxBody::CloseLease(CloseLease { lease: id }));
    assert_eq!(status(&r), TxStatus::Failed(ErrorCode::NotLeaseParty));
    checks(&chain);
}

#[test]
fn a_service_asking_for_network_goes_only_to_a_provider_that_offers_egress() {
    let mut chain = chain(&["0.01", "0.02", "0.03"]);
    let mut spec = service("0.05", 9000, 10);
    spec.network = true;
    let open = |spec: &JobSpec| TxBody::OpenLease(OpenLease { spec: spec.clone(), deposit: crn("1") });
    assert_eq!(status(&chain.run(&client(), open(&spec))), TxStatus::Failed(ErrorCode::NoServiceProvider));
    // The dearest provider offers egress: the lease goes there, not to the cheapest.
    let mut inf = info("SG", "1");
    inf.prices.0.insert(WorkloadKind::Service, crn("0.03"));
    inf.attributes.insert(cairn_types::NETWORK_ATTRIBUTE.into(), "egress".into());
    chain.ok(&provider_key(2), TxBody::UpdateProvider(UpdateProvider { info: inf }));
    let r = chain.ok(&client(), open(&spec));
    assert_eq!(lease(&chain, &lease_of(&r)).provider, provider_key(2).address());
    checks(&chain);
}

#[test]
fn only_the_serving_provider_saves_a_volume_within_its_cap_and_the_save_moves_with_the_lease() {
    let mut chain = chain(&["0.01", "0.02", "0.03"]);
    let spec = service("0.05", 5000, 10);
    let mut volume_spec = spec.clone();
    volume_spec.service.as_mut().unwrap().volume =
        Some(cairn_types::VolumeSpec { path: "/data".into(), max_mb: 1 });
    let plain = open(&mut chain, spec.clone(), "5");
    let id = open(&mut chain, volume_spec.clone(), "5");
    let l = lease(&chain, &id);
    let serving = owner(&l.provider);
    let save = |lease, blob: &[u8], size| {
        TxBody::SaveVolume(cairn_types::SaveVolume { lease, blob: ContentId::of(blob), size })
    };
    let fail = |chain: &mut TestChain, who: &cairn_types::SecretKey, body| status(&chain.run(who, body));
    // The client and a prober may not save; nor may anyone save a volume the spec
    // does not have, one over its cap, an empty one, or one of a lease that does not exist.
    for k in [client(), owner(&l.probers[0])] {
        assert_eq!(
            fail(&mut chain, &k, save(id, b"v1", 10_240)),
            TxStatus::Failed(ErrorCode::NotLeaseProvider)
        );
    }
    let plain_provider = owner(&lease(&chain, &plain).provider);
    assert_eq!(
        fail(&mut chain, &plain_provider, save(plain, b"v1", 10_240)),
        TxStatus::Failed(ErrorCode::NoVolume)
    );
    let cap = volume_spec.service.as_ref().unwrap().volume.as_ref().unwrap().max_archive_bytes();
    assert_eq!(
        fail(&mut chain, &serving, save(id, b"v1", cap + 1)),
        TxStatus::Failed(ErrorCode::VolumeTooLarge)
    );
    assert_eq!(fail(&mut chain, &serving, save(id, b"v1", 0)), TxStatus::Failed(ErrorCode::VolumeTooLarge));
    let nowhere = LeaseId(ContentId::of(b"none").0);
    assert_eq!(
        fail(&mut chain, &serving, save(nowhere, b"v1", 10)),
        TxStatus::Failed(ErrorCode::LeaseNotFound)
    );
    assert!(lease(&chain, &id).volume.is_none());

    // The serving provider saves twice: the lease keeps the last.
    chain.ok(&serving, save(id, b"v1", 10_240));
    let r = chain.ok(&serving, save(id, b"v2", cap));
    assert!(r.events().iter().any(|e| matches!(e, Event::VolumeSaved { blob, size, .. } if *blob == ContentId::of(b"v2") && *size == cap)));
    let v = lease(&chain, &id).volume.unwrap();
    assert_eq!((v.blob, v.size, v.by), (ContentId::of(b"v2"), cap, serving.address()));

    // The provider dies: the lease moves and keeps the save; the old provider may save no more,
    // the new one may.
    for _ in 0..2 {
        probe_all(&mut chain, &id, false);
        finish_round(&mut chain, &id);
    }
    let moved = lease(&chain, &id);
    assert_ne!(moved.provider, serving.address());
    assert_eq!(moved.volume.as_ref().unwrap().blob, ContentId::of(b"v2"));
    assert_eq!(
        fail(&mut chain, &serving, save(id, b"v3", 10)),
        TxStatus::Failed(ErrorCode::NotLeaseProvider)
    );
    chain.ok(&owner(&moved.provider), save(id, b"v3", 10));
    // Closed, the lease keeps its last save for the client; no one saves any more.
    chain.ok(&client(), TxBody::CloseLease(CloseLease { lease: id }));
    let closed = lease(&chain, &id);
    assert_eq!(closed.volume.unwrap().blob, ContentId::of(b"v3"));
    assert_eq!(
        fail(&mut chain, &owner(&moved.provider), save(id, b"v4", 10)),
        TxStatus::Failed(ErrorCode::LeaseClosed)
    );
    checks(&chain);
}
