//! Storage deals on chain: placement by price and constraints, possession proofs per epoch,
//! payment for proven epochs, slashing and repair when a replica stops proving, and every kind
//! of bad proof refused without a false slash.

use cairn_state::Params;
use cairn_state::testkit::TestChain;
use cairn_types::storage::{challenged_chunks, prove_from_bytes};
use cairn_types::{
    Address, Amount, ContentId, CreateStorageDeal, DealId, ErrorCode, Event, PossessionProof, ProveStorage,
    Receipt, StorageOffer, TxBody, TxStatus, UpdateProvider,
};

use crate::common::{checks, client, crn, info, market_with, params, provider_key, status};

const EPOCH: u64 = 10;

fn storage_params() -> Params {
    Params { storage_epoch_blocks: EPOCH, ..params() }
}

/// Providers whose storage price per GiB-epoch is `prices[i]` (regions DE, US, SG in turn).
fn storage_market(prices: &[&str]) -> TestChain {
    storage_market_with(storage_params(), prices)
}

fn storage_market_with(params: Params, prices: &[&str]) -> TestChain {
    let wasm: Vec<&str> = prices.iter().map(|_| "1").collect();
    let mut chain = market_with(params, &wasm);
    let regions = ["DE", "US", "SG"];
    for (i, price) in prices.iter().enumerate() {
        let mut info = info(regions[i % 3], "1");
        info.storage = Some(StorageOffer { capacity_gib: 4, price_per_gib_epoch: crn(price) });
        chain.ok(&provider_key(i as u64), TxBody::UpdateProvider(UpdateProvider { info }));
    }
    chain
}

fn blob() -> Vec<u8> {
    (0..50_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

fn deal_tx(replicas: u32, epochs: u32, max: &str) -> CreateStorageDeal {
    let data = blob();
    CreateStorageDeal {
        blob: ContentId::of(&data),
        size: data.len() as u64,
        replicas,
        epochs,
        max_price_per_gib_epoch: crn(max),
        regions: Vec::new(),
        distinct_operators: false,
    }
}

fn created(r: &Receipt) -> (DealId, Vec<Address>) {
    let mut id = None;
    let mut holders = Vec::new();
    for e in r.events() {
        match e {
            Event::DealCreated { deal, .. } => id = Some(*deal),
            Event::ReplicaAssigned { provider, .. } => holders.push(*provider),
            _ => {}
        }
    }
    (id.expect("deal created"), holders)
}

fn key_of(chain: &TestChain, who: &Address) -> cairn_types::SecretKey {
    let _ = chain;
    (0..16).map(provider_key).find(|k| k.address() == *who).expect("a provider key")
}

/// The proof `who` owes for `deal`'s current epoch, from the blob's bytes.
fn proof_for(chain: &TestChain, deal: &DealId, who: &Address, data: &[u8]) -> ProveStorage {
    let d = chain.state.deal(deal).unwrap().unwrap();
    let picks =
        challenged_chunks(&d.seed, &d.id, who, d.epoch, d.size, chain.genesis().params.storage_challenges);
    ProveStorage { deal: *deal, epoch: d.epoch, proof: prove_from_bytes(data, &picks) }
}

fn prove(chain: &mut TestChain, deal: &DealId, who: &Address) -> Receipt {
    let p = proof_for(chain, deal, who, &blob());
    chain.run(&key_of(chain, who), TxBody::ProveStorage(p))
}

fn balance(chain: &TestChain, who: &Address) -> Amount {
    chain.state.account(who).unwrap().balance
}

fn bonded(chain: &TestChain, who: &Address) -> Amount {
    chain.state.stake(who).unwrap().bonded
}

/// Advance to the end of the deal's current epoch (its settlement runs in the last block).
fn finish_epoch(chain: &mut TestChain, deal: &DealId) -> Vec<Receipt> {
    let end = chain.state.deal(deal).unwrap().unwrap().epoch_end;
    chain.advance(end - chain.height())
}

#[test]
fn replicas_go_to_the_cheapest_providers_and_are_paid_per_proven_epoch() {
    let mut chain = storage_market(&["300", "100", "200", "400"]);
    let before = balance(&chain, &client().address());
    let r = chain.ok(&client(), TxBody::CreateStorageDeal(deal_tx(2, 3, "350")));
    let (id, holders) = created(&r);
    let cheapest = vec![provider_key(1).address(), provider_key(2).address()];
    assert_eq!(holders, cheapest, "the two cheapest within the price hold it");
    let d = chain.state.deal(&id).unwrap().unwrap();
    assert_eq!(d.escrow, d.reserve_per_epoch.checked_mul(6).unwrap(), "2 replicas × 3 epochs at the max");
    for epoch in 0..3 {
        for h in &holders {
            assert_eq!(status(&prove(&mut chain, &id, h)), TxStatus::Ok, "epoch {epoch}");
        }
        finish_epoch(&mut chain, &id);
        checks(&chain);
    }
    let d = chain.state.deal(&id).unwrap().unwrap();
    assert!(d.ended && d.escrow.is_zero());
    let p1 = chain.state.provider(&holders[0]).unwrap().unwrap();
    assert_eq!(p1.reserved.storage_bytes, 0, "room is freed at the end");
    assert!(p1.open_value.is_zero());
    // The client paid the providers' prices for 6 replica-epochs, and fees, and nothing else.
    let per_epoch: Vec<Amount> = ["100", "200"]
        .iter()
        .map(|p| cairn_types::storage::replica_epoch_price(crn(p), blob().len() as u64).unwrap())
        .collect();
    let spent = before.checked_sub(balance(&chain, &client().address())).unwrap();
    let expected = per_epoch[0]
        .checked_add(per_epoch[1])
        .unwrap()
        .checked_mul(3)
        .unwrap()
        .checked_add(chain.fee)
        .unwrap();
    assert_eq!(spent, expected);
    assert_eq!(d.paid, per_epoch[0].checked_add(per_epoch[1]).unwrap().checked_mul(3).unwrap());
}

#[test]
fn a_replica_that_stops_proving_is_slashed_and_its_slot_repaired_from_a_survivor() {
    let mut chain = storage_market(&["100", "100", "100", "100"]);
    let (id, holders) = created(&chain.ok(&client(), TxBody::CreateStorageDeal(deal_tx(2, 6, "100"))));
    for h in &holders {
        assert_eq!(status(&prove(&mut chain, &id, h)), TxStatus::Ok);
    }
    finish_epoch(&mut chain, &id);
    // Epoch 1: the second holder has dropped the data and proves nothing.
    let (honest, dropper) = (holders[0], holders[1]);
    assert_eq!(status(&prove(&mut chain, &id, &honest)), TxStatus::Ok);
    let stake_before = bonded(&chain, &dropper);
    let client_before = balance(&chain, &client().address());
    let receipts = finish_epoch(&mut chain, &id);
    let events: Vec<&Event> = receipts.iter().flat_map(|r| r.events()).collect();
    let slashed = events
        .iter()
        .find_map(|e| match e {
            Event::ReplicaFailed { provider, slashed, to_client, .. } if *provider == dropper => {
                Some((*slashed, *to_client))
            }
            _ => None,
        })
        .expect("the dropper fails within the epoch it stopped proving in");
    let d = chain.state.deal(&id).unwrap().unwrap();
    let price = d.holders.iter().find(|r| r.provider == honest).unwrap().price_per_epoch;
    assert_eq!(slashed.0, price.checked_mul(20).unwrap(), "collateral = exposure_multiplier × epoch price");
    assert_eq!(bonded(&chain, &dropper), stake_before.checked_sub(slashed.0).unwrap());
    assert!(balance(&chain, &client().address()) > client_before, "the client gets its share and refund");
    // The slot is re-offered at once, to a provider that never held it, sourced from the survivor.
    let (new, sources) = events
        .iter()
        .find_map(|e| match e {
            Event::ReplicaAssigned { provider, sources, .. } => Some((*provider, sources.clone())),
            _ => None,
        })
        .expect("repair");
    assert!(!holders.contains(&new));
    assert_eq!(sources, vec![honest]);
    assert_eq!(d.holders.len(), 2);
    assert!(d.failed.contains(&dropper));
    // Epoch 2: the new replica proves; the deal is whole again.
    assert_eq!(status(&prove(&mut chain, &id, &new)), TxStatus::Ok);
    assert_eq!(status(&prove(&mut chain, &id, &honest)), TxStatus::Ok);
    let receipts = finish_epoch(&mut chain, &id);
    assert!(
        receipts
            .iter()
            .flat_map(|r| r.events())
            .any(|e| matches!(e, Event::DealEpochSettled { proven: 2, .. }))
    );
    // The dropper is never placed again, and cannot prove for the deal.
    assert_eq!(status(&prove(&mut chain, &id, &dropper)), TxStatus::Failed(ErrorCode::NotReplica));
    checks(&chain);
}

#[test]
fn a_replica_never_sent_the_data_is_dropped_without_a_slash_and_a_deal_nobody_holds_ends() {
    let mut chain = storage_market(&["100", "100", "100"]);
    let before = balance(&chain, &client().address());
    let (id, holders) = created(&chain.ok(&client(), TxBody::CreateStorageDeal(deal_tx(2, 5, "100"))));
    let stakes: Vec<Amount> = holders.iter().map(|h| bonded(&chain, h)).collect();
    let receipts = finish_epoch(&mut chain, &id);
    let events: Vec<&Event> = receipts.iter().flat_map(|r| r.events()).collect();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::ReplicaFailed { slashed, .. } if slashed.is_zero()))
            .count(),
        2
    );
    assert!(events.iter().any(|e| matches!(e, Event::DealEnded { lost: true, .. })));
    assert_eq!(holders.iter().map(|h| bonded(&chain, h)).collect::<Vec<_>>(), stakes, "no slash");
    let d = chain.state.deal(&id).unwrap().unwrap();
    assert!(d.ended && d.escrow.is_zero() && d.paid.is_zero());
    assert_eq!(before.checked_sub(balance(&chain, &client().address())).unwrap(), chain.fee, "all refunded");
    checks(&chain);
}

#[test]
fn regions_and_distinct_operators_constrain_placement() {
    let mut chain = storage_market(&["100", "100", "100", "100", "100", "100"]);
    // Providers 0 and 3 are in DE (regions go DE, US, SG in turn).
    let mut tx = deal_tx(2, 2, "100");
    tx.regions = vec!["DE".parse().unwrap()];
    let (_, holders) = created(&chain.ok(&client(), TxBody::CreateStorageDeal(tx.clone())));
    let mut sorted = holders.clone();
    sorted.sort();
    let mut want = vec![provider_key(0).address(), provider_key(3).address()];
    want.sort();
    assert_eq!(sorted, want);
    // Providers 0 and 3 declare one operator: a deal asking for distinct operators cannot place
    // two replicas in DE.
    for i in [0u64, 3] {
        let mut info = info("DE", "1");
        info.storage = Some(StorageOffer { capacity_gib: 4, price_per_gib_epoch: crn("100") });
        info.attributes.insert(cairn_types::OPERATOR_ATTRIBUTE.into(), "acme".into());
        chain.ok(&provider_key(i), TxBody::UpdateProvider(UpdateProvider { info }));
    }
    tx.distinct_operators = true;
    assert_eq!(
        status(&chain.run(&client(), TxBody::CreateStorageDeal(tx.clone()))),
        TxStatus::Failed(ErrorCode::NoStorageProvider)
    );
    tx.regions.push("US".parse().unwrap());
    let (_, holders) = created(&chain.ok(&client(), TxBody::CreateStorageDeal(tx)));
    let acme = [provider_key(0).address(), provider_key(3).address()];
    assert!(holders.iter().filter(|h| acme.contains(h)).count() <= 1, "one operator, one replica");
    checks(&chain);
}

#[test]
fn bad_deals_and_bad_proofs_get_typed_errors_and_change_nothing() {
    // Epochs long enough for every bad try to land in the first one.
    let mut chain =
        storage_market_with(Params { storage_epoch_blocks: 200, ..storage_params() }, &["100", "100", "100"]);
    let cases: Vec<(CreateStorageDeal, ErrorCode)> = vec![
        (deal_tx(0, 3, "100"), ErrorCode::InvalidDeal),
        (deal_tx(2, 0, "100"), ErrorCode::InvalidDeal),
        (deal_tx(17, 3, "100"), ErrorCode::InvalidDeal),
        (deal_tx(2, u32::MAX, "100"), ErrorCode::InvalidDeal),
        (CreateStorageDeal { size: (64 << 30) + 1, ..deal_tx(1, 1, "100") }, ErrorCode::BlobTooLarge),
        (CreateStorageDeal { size: 0, ..deal_tx(1, 1, "100") }, ErrorCode::InvalidDeal),
        (deal_tx(2, 3, "0"), ErrorCode::ZeroAmount),
        (deal_tx(2, 3, "99"), ErrorCode::NoStorageProvider),
        (deal_tx(4, 3, "100"), ErrorCode::NoStorageProvider),
    ];
    for (tx, code) in cases {
        let before = balance(&chain, &client().address());
        let r = chain.run(&client(), TxBody::CreateStorageDeal(tx.clone()));
        assert_eq!(status(&r), TxStatus::Failed(code), "{tx:?}");
        assert!(r.events().is_empty(), "{tx:?}");
        assert_eq!(before.checked_sub(balance(&chain, &client().address())).unwrap(), chain.fee);
    }
    // An epoch count whose end height overflows.
    let mut far = TestChain::new(
        Params { storage_epoch_blocks: u64::MAX / 2, ..storage_params() },
        &[(&client(), crn("1000"))],
    );
    assert_eq!(
        status(&far.run(&client(), TxBody::CreateStorageDeal(deal_tx(1, 3, "100")))),
        TxStatus::Failed(ErrorCode::InvalidDeal)
    );

    let (a, holders_a) = created(&chain.ok(&client(), TxBody::CreateStorageDeal(deal_tx(1, 4, "100"))));
    let (b, holders_b) = created(&chain.ok(&client(), TxBody::CreateStorageDeal(deal_tx(1, 4, "100"))));
    let who = holders_a[0];
    let key = key_of(&chain, &who);
    let good = proof_for(&chain, &a, &who, &blob());
    let run = |chain: &mut TestChain, p: ProveStorage| status(&chain.run(&key, TxBody::ProveStorage(p)));
    // Wrong epoch.
    assert_eq!(
        run(&mut chain, ProveStorage { epoch: 1, ..good.clone() }),
        TxStatus::Failed(ErrorCode::WrongEpoch)
    );
    // Chunks that were not challenged.
    let d = chain.state.deal(&a).unwrap().unwrap();
    let chunks = cairn_types::storage::chunk_count(d.size);
    let other: Vec<u64> = good.proof.chunks.iter().map(|c| (c.index + 1) % chunks).collect();
    let unchallenged = ProveStorage { proof: prove_from_bytes(&blob(), &other), ..good.clone() };
    assert_eq!(run(&mut chain, unchallenged), TxStatus::Failed(ErrorCode::ChunksNotChallenged));
    // A forged path, and forged data.
    let mut forged = good.clone();
    forged.proof.chunks[0].siblings[0][5] ^= 0x40;
    assert_eq!(run(&mut chain, forged), TxStatus::Failed(ErrorCode::ProofInvalid));
    let mut forged = good.clone();
    forged.proof.chunks[1].data[7] ^= 1;
    assert_eq!(run(&mut chain, forged), TxStatus::Failed(ErrorCode::ProofInvalid));
    // An empty proof.
    let empty = ProveStorage { proof: PossessionProof::default(), ..good.clone() };
    assert_eq!(run(&mut chain, empty), TxStatus::Failed(ErrorCode::ChunksNotChallenged));
    // The same blob's proof from another deal (replayed), and from another provider.
    if holders_b[0] != who {
        let theirs = proof_for(&chain, &b, &holders_b[0], &blob());
        assert_eq!(
            run(&mut chain, ProveStorage { deal: a, ..theirs.clone() }),
            TxStatus::Failed(ErrorCode::ChunksNotChallenged)
        );
    }
    let replay = ProveStorage { deal: b, ..good.clone() };
    let expect = if holders_b[0] == who { ErrorCode::ChunksNotChallenged } else { ErrorCode::NotReplica };
    assert_eq!(run(&mut chain, replay), TxStatus::Failed(expect));
    // A stranger's proof.
    let stranger = (0..3).map(provider_key).find(|k| k.address() != who).unwrap();
    let theirs = proof_for(&chain, &a, &stranger.address(), &blob());
    assert_eq!(
        status(&chain.run(&stranger, TxBody::ProveStorage(theirs))),
        TxStatus::Failed(ErrorCode::NotReplica)
    );
    // A deal that does not exist.
    assert_eq!(
        run(&mut chain, ProveStorage { deal: DealId([9; 32]), ..good.clone() }),
        TxStatus::Failed(ErrorCode::DealNotFound)
    );
    // None of it counted against the honest replica: it proves, once.
    assert_eq!(run(&mut chain, good.clone()), TxStatus::Ok);
    assert_eq!(run(&mut chain, good), TxStatus::Failed(ErrorCode::AlreadyProven));
    let stake = bonded(&chain, &who);
    finish_epoch(&mut chain, &a);
    assert_eq!(bonded(&chain, &who), stake, "no false slash");
    checks(&chain);
}
