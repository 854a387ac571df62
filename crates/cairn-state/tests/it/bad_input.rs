//! Bad input gets a typed error and changes nothing (beyond the fee, where one is charged).

use cairn_state::testkit::{CHAIN_ID, TestChain, key};
use cairn_state::{AuthenticatedKv, Error, Genesis, MemStore, State, StoreError, keys};
use cairn_types::{
    Amount, Block, Bond, ErrorCode, Hash32, Heartbeat, ProveStorage, Receipt, Signature, SubmitJob, Transfer,
    Tx, TxBody, TxStatus,
};

use crate::common::*;

fn chain() -> TestChain {
    TestChain::new(params(), &[(&client(), crn("100"))])
}

fn transfer(amount: Amount) -> TxBody {
    TxBody::Transfer(Transfer { to: key(50).address(), amount })
}

#[test]
fn a_bad_signature_is_rejected_and_changes_nothing_at_all() {
    let mut chain = chain();
    let before = chain.state.account(&client().address()).unwrap();
    let mut tx = chain.sign(&client(), transfer(crn("1")));
    tx.signature = Signature([3; 64]);
    chain.push(tx);
    let r = chain.next_block();
    assert_eq!(status(&r[0]), TxStatus::Rejected(ErrorCode::BadSignature));
    assert!(matches!(r[0], Receipt::Tx { fee, .. } if fee.is_zero()));
    assert_eq!(chain.state.account(&client().address()).unwrap(), before);
    assert!(chain.state.account(&key(50).address()).unwrap().balance.is_zero());
}

#[test]
fn one_bad_signature_in_a_large_block_is_found_and_the_rest_apply() {
    let senders: Vec<_> = (0..40).map(|i| key(200 + i)).collect();
    let funded: Vec<_> = senders.iter().map(|k| (k, crn("10"))).collect();
    let mut chain = TestChain::new(params(), &funded);
    for (i, k) in senders.iter().enumerate() {
        let mut tx = chain.sign(k, transfer(crn("1")));
        if i == 17 {
            tx.signature.0[10] ^= 0x40;
        }
        chain.push(tx);
    }
    let receipts = chain.next_block();
    for (i, r) in receipts.iter().take(40).enumerate() {
        let want = if i == 17 { TxStatus::Rejected(ErrorCode::BadSignature) } else { TxStatus::Ok };
        assert_eq!(status(r), want, "tx {i}");
    }
    assert_eq!(chain.state.account(&key(50).address()).unwrap().balance, crn("39"));
}

#[test]
fn wrong_chain_replayed_gapped_and_underpaying_transactions_are_rejected() {
    let mut chain = chain();
    let c = client();
    let fee = chain.fee;
    let cases = [
        (Tx::sign(&c, "other-chain", 0, fee, transfer(crn("1"))), ErrorCode::WrongChainId),
        (Tx::sign(&c, CHAIN_ID, 1, fee, transfer(crn("1"))), ErrorCode::NonceGap),
        (Tx::sign(&c, CHAIN_ID, 0, Amount::from_base_units(1), transfer(crn("1"))), ErrorCode::FeeTooLow),
        (Tx::sign(&c, CHAIN_ID, 0, crn("1000"), transfer(crn("1"))), ErrorCode::CannotPayFee),
    ];
    let before = chain.state.account(&c.address()).unwrap();
    for (tx, code) in cases {
        chain.push(tx);
        let r = chain.next_block();
        assert_eq!(status(&r[0]), TxStatus::Rejected(code));
        assert_eq!(chain.state.account(&c.address()).unwrap(), before);
    }
    // A good transaction, then its replay, in the next block and in the same block.
    let good = Tx::sign(&c, CHAIN_ID, 0, fee, transfer(crn("1")));
    chain.push(good.clone());
    chain.push(good.clone());
    let r = chain.next_block();
    assert_eq!(status(&r[0]), TxStatus::Ok);
    assert_eq!(status(&r[1]), TxStatus::Rejected(ErrorCode::NonceReplayed));
    chain.push(good);
    assert_eq!(status(&chain.next_block()[0]), TxStatus::Rejected(ErrorCode::NonceReplayed));
    assert_eq!(chain.state.account(&key(50).address()).unwrap().balance, crn("1"));
}

#[test]
fn overflowing_amounts_fail_with_a_code_and_only_cost_the_fee() {
    let mut chain = chain();
    let c = client();
    let before = chain.state.account(&c.address()).unwrap();
    for body in [transfer(Amount::MAX), TxBody::Bond(Bond { amount: Amount::MAX }), transfer(Amount::ZERO)] {
        let r = chain.run(&c, body);
        assert!(matches!(status(&r), TxStatus::Failed(ErrorCode::InsufficientFunds | ErrorCode::ZeroAmount)));
    }
    let mut s = spec(4_096, "1", 0);
    s.max_price_per_task = Amount::MAX;
    let r = chain.run(&c, TxBody::SubmitJob(SubmitJob { spec: s }));
    assert_eq!(status(&r), TxStatus::Failed(ErrorCode::InvalidJobSpec));
    let after = chain.state.account(&c.address()).unwrap();
    assert_eq!(after.nonce, before.nonce + 4);
    assert_eq!(before.balance.checked_sub(after.balance).unwrap(), chain.fee.checked_mul(4).unwrap());
    chain.check_supply().unwrap();
}

#[test]
fn an_oversized_transaction_is_rejected() {
    let mut chain = chain();
    let body = TxBody::ProveStorage(ProveStorage {
        deal: Default::default(),
        epoch: 0,
        proof: cairn_types::PossessionProof {
            chunks: vec![cairn_types::ChunkProof { index: 0, data: vec![0; 200_000], siblings: vec![] }],
        },
    });
    let r = chain.run(&client(), body);
    assert_eq!(status(&r), TxStatus::Rejected(ErrorCode::TooLarge));
}

#[test]
fn a_block_at_the_wrong_height_is_refused_and_nothing_is_written() {
    let mut chain = chain();
    let root = chain.state.root();
    let block = Block {
        height: 5,
        parent: Default::default(),
        proposer: key(0).address(),
        beacon: Hash32::ZERO,
        txs: vec![],
        faults: vec![],
    };
    assert_eq!(chain.state.apply_block(&block).unwrap_err(), Error::WrongHeight { expected: 1, got: 5 });
    assert_eq!(chain.state.root(), root);
    assert_eq!(chain.state.height(), 0);
}

#[test]
fn a_corrupt_store_value_stops_the_block_with_a_clear_error_instead_of_forking() {
    let chain = chain();
    let mut store = chain.state.into_store();
    store.put(keys::account(&client().address()), vec![0xff; 3]).unwrap();
    store.commit().unwrap();
    let mut state = State::open(store).unwrap();
    let tx = Tx::sign(&client(), CHAIN_ID, 0, params().min_tx_fee, TxBody::Heartbeat(Heartbeat {}));
    let block = Block {
        height: 1,
        parent: Default::default(),
        proposer: key(0).address(),
        beacon: Hash32::ZERO,
        txs: vec![tx],
        faults: vec![],
    };
    let err = state.apply_block(&block).unwrap_err();
    assert!(matches!(err, Error::Store(StoreError::Corrupt { .. })), "{err}");
    assert_eq!(state.height(), 0);
}

#[test]
fn an_empty_store_cannot_be_opened_and_genesis_cannot_be_applied_twice() {
    assert_eq!(State::open(MemStore::new()).unwrap_err(), Error::NotInitialised);
    let chain = chain();
    let genesis = chain.genesis().clone();
    let store = chain.state.into_store();
    assert_eq!(State::genesis(store, &genesis).unwrap_err(), Error::AlreadyInitialised);
}

#[test]
fn invalid_genesis_files_are_refused_with_a_reason() {
    let a = key(1).address();
    // `{a}` stays a placeholder until each case is built.
    let ok = "chain_id = \"c\"\n[[accounts]]\naddress = \"{a}\"\nbalance = \"1 CRN\"\n[[validators]]\naddress = \"{a}\"\nstake = \"1 CRN\"\n".to_string();
    assert!(Genesis::from_toml(&ok.replace("{a}", &a.to_string())).is_ok());
    let cases = [
        ok.replace("chain_id = \"c\"", "chain_id = \"Bad Chain\""),
        ok.replace("[[validators]]\naddress = \"{a}\"\nstake = \"1 CRN\"\n", ""),
        format!("{ok}[[accounts]]\naddress = \"{a}\"\nbalance = \"1 CRN\"\n"),
        format!("{ok}colour = \"blue\"\n"),
        ok.replace("stake = \"1 CRN\"", "stake = \"0 CRN\""),
        ok.replace("balance = \"1 CRN\"", "balance = \"1\""),
        format!("{ok}[params]\nprotocol_fee_bps = 20000\n"),
        format!("{ok}[params]\nexposure_multiplier = 2\n"),
        format!("{ok}[params]\nwhatever = 1\n"),
        "not toml at all [".to_string(),
    ];
    for (i, text) in cases.iter().enumerate() {
        let text = text.replace("{a}", &a.to_string());
        assert!(matches!(Genesis::from_toml(&text), Err(Error::Genesis(_))), "case {i} accepted:\n{text}");
    }
    let json = serde_json::json!({ "chain_id": "c", "validators": [{ "address": a.to_string(), "stake": "5 CRN" }] });
    assert!(Genesis::from_json(&json.to_string()).is_ok());
}
