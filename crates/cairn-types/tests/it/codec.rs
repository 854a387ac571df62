use std::collections::BTreeMap;
use std::path::PathBuf;

use cairn_types::*;
use proptest::prelude::*;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/codec").join(name)
}

fn spec() -> JobSpec {
    let mut env = BTreeMap::new();
    env.insert("MODE".to_string(), "fast".to_string());
    JobSpec {
        kind: WorkloadKind::Wasm,
        workload: ContentId::of(b"module"),
        inputs: vec![InputRef { name: "scene.svg".into(), id: ContentId::of(b"scene"), size: 5 }],
        task_inputs: vec![],
        args: vec!["--frames".into(), "4".into()],
        env,
        tasks: 4,
        resources: Resources::default(),
        limits: Limits::default(),
        max_price_per_task: "0.25 CRN".parse().unwrap(),
        deadline_blocks: 60,
        bid_window: 2,
        max_attempts: 3,
        constraints: Constraints { regions: vec!["DE".parse().unwrap()], attributes: BTreeMap::new() },
        verification: VerificationLevel::Standard,
        hints: vec!["http://127.0.0.1:7000".into()],
        train: None,
        deterministic: true,
        network: false,
        service: None,
        render: None,
    }
}

fn service_spec() -> JobSpec {
    JobSpec::from_yaml(&format!(
        "kind: service\nworkload: {}\nargs: [/bin/httpd, -f, -p, '8080']\nservice:\n  port: 8080\n  max_price_per_block: 0.0001 CRN\n  sla: {{ uptime_bps: 9500, latency_ms: 250, probe_path: /health, window_rounds: 6 }}\n  volume: {{ path: /data, max_mb: 16 }}\n",
        ContentId::of(b"svc")
    ))
    .unwrap()
}

fn train_spec() -> JobSpec {
    JobSpec::from_yaml(&format!(
        "kind: train\nworkload: {}\nmax_price_per_task: 0.05 CRN\ntasks: 9\ntrain:\n  model: {{ arch: gpt, layers: 2, d_model: 64, heads: 4, context: 32 }}\n  optimizer: {{ learning_rate: 3e-3, weight_decay: 0.01 }}\n  rounds: 3\n  width: 2\n  local_steps: 20\n  batch_size: 16\n  seed: 7\n",
        ContentId::of(b"shakespeare.txt")
    ))
    .unwrap()
}

fn render_spec() -> JobSpec {
    JobSpec::from_yaml(&format!(
        "kind: render\nworkload: {}\nmax_price_per_task: 0.2 CRN\ninputs: [{{ name: wood.png, id: {}, size: 5 }}]\nresources: {{ cpu_millis: 2000, memory_mb: 1024 }}\nrender:\n  blender: '3.4.1'\n  frames: {{ start: 1, end: 24 }}\n  resolution: {{ width: 320, height: 180 }}\n  samples: 16\n  seed: 3\n  tiles: 2\n  fps: 12\n",
        ContentId::of(b"scene.blend"),
        ContentId::of(b"wood!")
    ))
    .unwrap()
}

fn golden_values() -> Vec<(&'static str, Vec<u8>)> {
    let k = SecretKey::from_seed([1; 32]);
    let to = SecretKey::from_seed([2; 32]).address();
    let fee = Amount::from_base_units(1_000);
    let transfer = Tx::sign(
        &k,
        "cairn-devnet",
        7,
        fee,
        TxBody::Transfer(Transfer { to, amount: "12.5 CRN".parse().unwrap() }),
    );
    let submit = Tx::sign(&k, "cairn-devnet", 8, fee, TxBody::SubmitJob(SubmitJob { spec: spec() }));
    let block = Block {
        height: 3,
        parent: BlockHash([4; 32]),
        proposer: to,
        beacon: Hash32([5; 32]),
        txs: vec![transfer.clone()],
        faults: vec![Fault { validator: to, view: 9, kind: FaultKind::ConflictingNotarize }],
    };
    let mut out = vec![
        ("transfer_tx.hex", transfer.encode()),
        ("submit_job_tx.hex", submit.encode()),
        ("job_spec.hex", spec().encode()),
        ("train_job_spec.hex", train_spec().encode()),
        ("render_job_spec.hex", render_spec().encode()),
        ("block.hex", block.encode()),
    ];
    // Every other transaction body, one signed transaction each.
    let info = ProviderInfo {
        endpoint: "http://10.0.0.7:7100".into(),
        region: "SG".parse().unwrap(),
        attributes: [("gpu.model".to_string(), "H100".to_string())].into(),
        capacity: Capacity {
            cpu_millis: 16_000,
            memory_mb: 65_536,
            gpus: vec![Gpu { model: "H100".into(), vram_mb: 81_920 }],
        },
        prices: PriceSheet([(WorkloadKind::Wasm, "0.05 CRN".parse().unwrap())].into()),
        storage: None,
    };
    let task = TaskId([6; 32]);
    let metering = Metering { units: 123_456, output_bytes: 789 };
    let bodies: Vec<(&'static str, TxBody)> = vec![
        ("bond_tx.hex", TxBody::Bond(Bond { amount: "1000 CRN".parse().unwrap() })),
        ("unbond_tx.hex", TxBody::Unbond(Unbond { amount: "1 CRN".parse().unwrap() })),
        ("register_provider_tx.hex", TxBody::RegisterProvider(RegisterProvider { info: info.clone() })),
        ("update_provider_tx.hex", TxBody::UpdateProvider(UpdateProvider { info })),
        ("heartbeat_tx.hex", TxBody::Heartbeat(Heartbeat {})),
        ("bid_tx.hex", TxBody::Bid(Bid { task, offer: Offer::Sealed(Hash32([3; 32])) })),
        (
            "reveal_bid_tx.hex",
            TxBody::Bid(Bid {
                task,
                offer: Offer::Reveal { price: "0.04 CRN".parse().unwrap(), salt: Hash32([4; 32]) },
            }),
        ),
        ("cancel_job_tx.hex", TxBody::CancelJob(CancelJob { job: JobId([7; 32]) })),
        (
            "commit_result_tx.hex",
            TxBody::CommitResult(CommitResult {
                task,
                output: ContentId::of(b"out"),
                metering: metering.clone(),
                streams: vec![cairn_types::stream::StreamEnd { n: 3, chain: Hash32([6; 32]) }],
            }),
        ),
        (
            "submit_audit_tx.hex",
            TxBody::SubmitAudit(SubmitAudit {
                task,
                output: ContentId::of(b"out"),
                metering,
                streams: Vec::new(),
            }),
        ),
        ("open_dispute_tx.hex", TxBody::OpenDispute(OpenDispute { task, bond: "0.5 CRN".parse().unwrap() })),
        (
            "create_storage_deal_tx.hex",
            TxBody::CreateStorageDeal(CreateStorageDeal {
                blob: ContentId::of(b"blob"),
                size: 1 << 20,
                replicas: 3,
                epochs: 12,
                max_price_per_gib_epoch: "0.001 CRN".parse().unwrap(),
                regions: vec!["DE".parse().unwrap()],
                distinct_operators: true,
            }),
        ),
        (
            "prove_storage_tx.hex",
            TxBody::ProveStorage(ProveStorage {
                deal: DealId([8; 32]),
                epoch: 2,
                proof: cairn_types::PossessionProof {
                    chunks: vec![cairn_types::ChunkProof {
                        index: 7,
                        data: vec![1, 2, 3],
                        siblings: vec![[4; 32]],
                    }],
                },
            }),
        ),
        (
            "open_lease_tx.hex",
            TxBody::OpenLease(OpenLease { spec: service_spec(), deposit: "5 CRN".parse().unwrap() }),
        ),
        ("close_lease_tx.hex", TxBody::CloseLease(CloseLease { lease: LeaseId([9; 32]) })),
        (
            "report_stream_tx.hex",
            TxBody::ReportStream(ReportStream {
                task,
                index: 1,
                n: 2,
                chain: Hash32([5; 32]),
                last: false,
                sig: k.sign(b"point"),
                tokens: vec![7, 8, 9],
            }),
        ),
        (
            "report_probe_tx.hex",
            TxBody::ReportProbe(ReportProbe { lease: LeaseId([9; 32]), round: 4, ok: true, latency_ms: 31 }),
        ),
        (
            "save_volume_tx.hex",
            TxBody::SaveVolume(SaveVolume {
                lease: LeaseId([9; 32]),
                blob: ContentId::of(b"volume"),
                size: 10_240,
            }),
        ),
    ];
    for (i, (name, body)) in bodies.into_iter().enumerate() {
        out.push((name, Tx::sign(&k, "cairn-devnet", 100 + i as u64, fee, body).encode()));
    }
    out
}

/// The encodings are frozen: a change here is a consensus change and needs a new codec
/// version. Regenerate deliberately with `CAIRN_BLESS=1`.
#[test]
fn encodings_match_the_golden_vectors() {
    for (name, bytes) in golden_values() {
        let path = testdata(name);
        if std::env::var_os("CAIRN_BLESS").is_some() {
            std::fs::write(&path, hex::encode(&bytes) + "\n").unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(hex::encode(&bytes), want.trim(), "{name} changed");
    }
}

/// Error codes are part of the protocol (receipts carry the number): frozen like encodings.
#[test]
fn error_codes_match_the_golden_list() {
    let now: String = ErrorCode::ALL.iter().map(|c| format!("{} {}\n", c.code(), c.name())).collect();
    let path = testdata("error_codes.txt");
    if std::env::var_os("CAIRN_BLESS").is_some() {
        std::fs::write(&path, &now).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // New codes may be added at the end; existing ones never change number or name.
    assert!(now.starts_with(&want), "an existing error code changed:\nwas:\n{want}\nnow:\n{now}");
}

#[test]
fn golden_vectors_decode_to_their_values_and_verify() {
    let values = golden_values();
    let [(_, t), (_, s), (_, j), (_, tj), (_, rj), (_, b)] =
        <[_; 6]>::try_from(values[..6].to_vec()).unwrap();
    for (name, bytes) in &values[6..] {
        assert!(Tx::decode(bytes).unwrap().verify_signature().is_ok(), "{name}");
    }
    let tx = Tx::decode(&t).unwrap();
    assert!(tx.verify_signature().is_ok());
    assert_eq!(tx.nonce, 7);
    assert!(Tx::decode(&s).unwrap().verify_signature().is_ok());
    assert_eq!(JobSpec::decode(&j).unwrap(), spec());
    assert_eq!(JobSpec::decode(&tj).unwrap(), train_spec());
    assert_eq!(JobSpec::decode(&rj).unwrap(), render_spec());
    assert_eq!(Block::decode(&b).unwrap().txs, vec![tx]);
}

#[test]
fn a_map_with_unsorted_keys_is_not_canonical() {
    let mut s = spec();
    s.env.insert("A".into(), "1".into());
    let bytes = s.encode();
    // Swap the two env entries in place: same content, wrong order.
    let a = bytes.windows(6).position(|w| w == [1, 0, 0, 0, b'A', 1]).unwrap();
    let m = bytes.windows(7).position(|w| w == [4, 0, 0, 0, b'M', b'O', b'D']).unwrap();
    assert!(a < m);
    let entry_a = bytes[a..a + 4 + 1 + 4 + 1].to_vec();
    let entry_m = bytes[m..m + 4 + 4 + 4 + 4].to_vec();
    let mut swapped = bytes[..a].to_vec();
    swapped.extend_from_slice(&entry_m);
    swapped.extend_from_slice(&entry_a);
    swapped.extend_from_slice(&bytes[m + entry_m.len()..]);
    assert_eq!(swapped.len(), bytes.len());
    assert!(matches!(JobSpec::decode(&swapped), Err(Error::Malformed(_))));
}

fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._-]{1,24}"
}

fn id() -> impl Strategy<Value = ContentId> {
    any::<[u8; 32]>().prop_map(ContentId)
}

fn amount() -> impl Strategy<Value = Amount> {
    any::<u128>().prop_map(Amount::from_base_units)
}

fn addr() -> impl Strategy<Value = Address> {
    any::<[u8; 32]>().prop_map(Address)
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    (
        id(),
        prop::collection::vec((text(), id(), any::<u64>()), 0..4),
        prop::collection::vec(text(), 0..4),
        prop::collection::btree_map(text(), text(), 0..4),
        1u32..100,
        amount(),
        any::<(u64, u32, u32)>(),
        prop::collection::vec("[A-Z]{2}", 0..3),
    )
        .prop_map(
            |(workload, inputs, args, env, tasks, price, (deadline, window, attempts), regions)| JobSpec {
                kind: WorkloadKind::Inference,
                workload,
                inputs: inputs.into_iter().map(|(name, id, size)| InputRef { name, id, size }).collect(),
                task_inputs: vec![],
                args,
                env,
                tasks,
                resources: Resources::default(),
                limits: Limits::default(),
                max_price_per_task: price,
                deadline_blocks: deadline,
                bid_window: window,
                max_attempts: attempts,
                constraints: Constraints {
                    regions: regions.iter().map(|r| r.parse().unwrap()).collect(),
                    attributes: BTreeMap::new(),
                },
                verification: VerificationLevel::Strict,
                hints: vec![],
                train: None,
                deterministic: true,
                network: false,
                service: None,
                render: None,
            },
        )
}

fn body() -> impl Strategy<Value = TxBody> {
    prop_oneof![
        (addr(), amount()).prop_map(|(to, amount)| TxBody::Transfer(Transfer { to, amount })),
        amount().prop_map(|amount| TxBody::Bond(Bond { amount })),
        amount().prop_map(|amount| TxBody::Unbond(Unbond { amount })),
        Just(TxBody::Heartbeat(Heartbeat {})),
        job_spec().prop_map(|spec| TxBody::SubmitJob(SubmitJob { spec })),
        (any::<[u8; 32]>(), any::<[u8; 32]>())
            .prop_map(|(t, c)| TxBody::Bid(Bid { task: TaskId(t), offer: Offer::Sealed(Hash32(c)) })),
        (any::<[u8; 32]>(), amount(), any::<[u8; 32]>()).prop_map(|(t, price, salt)| TxBody::Bid(Bid {
            task: TaskId(t),
            offer: Offer::Reveal { price, salt: Hash32(salt) }
        })),
        any::<[u8; 32]>().prop_map(|j| TxBody::CancelJob(CancelJob { job: JobId(j) })),
        (any::<[u8; 32]>(), id(), any::<(u64, u64)>()).prop_map(|(t, output, (units, output_bytes))| {
            TxBody::CommitResult(CommitResult {
                task: TaskId(t),
                output,
                metering: Metering { units, output_bytes },
                streams: Vec::new(),
            })
        }),
        (job_spec(), amount()).prop_map(|(spec, deposit)| TxBody::OpenLease(OpenLease { spec, deposit })),
        (any::<[u8; 32]>(), any::<(u32, bool, u32)>()).prop_map(|(l, (round, ok, latency_ms))| {
            TxBody::ReportProbe(ReportProbe { lease: LeaseId(l), round, ok, latency_ms })
        }),
        (
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..64),
            prop::collection::vec(any::<[u8; 32]>(), 0..4)
        )
            .prop_map(|(index, data, siblings)| TxBody::ProveStorage(ProveStorage {
                deal: DealId([1; 32]),
                epoch: 2,
                proof: cairn_types::PossessionProof {
                    chunks: vec![cairn_types::ChunkProof { index, data, siblings }]
                },
            })),
    ]
}

proptest! {
    #[test]
    fn transactions_round_trip_and_keep_their_signature(seed in any::<[u8; 32]>(), nonce in any::<u64>(), fee in amount(), body in body()) {
        let tx = Tx::sign(&SecretKey::from_seed(seed), "cairn-prop", nonce, fee, body);
        let bytes = tx.encode();
        let back = Tx::decode(&bytes).unwrap();
        prop_assert_eq!(&back, &tx);
        prop_assert!(back.verify_signature().is_ok());
        prop_assert_eq!(back.hash(), tx.hash());
        let json = serde_json::to_string(&tx).unwrap();
        prop_assert_eq!(serde_json::from_str::<Tx>(&json).unwrap(), tx);
    }

    #[test]
    fn hostile_bytes_never_panic_and_only_canonical_bytes_decode(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(tx) = Tx::decode(&bytes) {
            prop_assert_eq!(tx.encode(), bytes.clone());
        }
        if let Ok(spec) = JobSpec::decode(&bytes) {
            prop_assert_eq!(spec.encode(), bytes.clone());
        }
        // Again behind a valid version byte, so the body decoder sees the noise.
        let mut versioned = vec![CODEC_VERSION];
        versioned.extend_from_slice(&bytes);
        if let Ok(tx) = Tx::decode(&versioned) {
            prop_assert_eq!(tx.encode(), versioned.clone());
        }
        if let Ok(block) = Block::decode(&versioned) {
            prop_assert_eq!(block.encode(), versioned);
        }
    }

    #[test]
    fn flipping_any_byte_of_a_signed_transaction_is_caught(body in body(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let tx = Tx::sign(&SecretKey::from_seed([3; 32]), "cairn-prop", 1, Amount::from_base_units(5), body);
        let mut bytes = tx.encode();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        match Tx::decode(&bytes) {
            Err(_) => {}
            Ok(changed) => prop_assert!(changed.verify_signature().is_err(), "byte {} flipped and still verifies", i),
        }
    }
}
