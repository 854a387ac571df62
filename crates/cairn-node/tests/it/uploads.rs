//! The validator's upload gate, as an anonymous client found it open (FINDINGS #9): over HTTP
//! with the real blob endpoint, a chain stand-in for balances and the transactions that name
//! blobs, and a clock the test moves.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cairn_blobs::{BlobStore, Fetcher};
use cairn_node::uploads::{ChainView, Named, UploadLimits, Uploads};
use cairn_types::upload::UploadAuth;
use cairn_types::{Address, Amount, ContentId, SecretKey};

const CHAIN: &str = "cairn-uploads-test";

#[derive(Default)]
struct Chain {
    funded: Mutex<BTreeSet<Address>>,
    named: Mutex<BTreeSet<ContentId>>,
    volumes: Mutex<BTreeSet<ContentId>>,
}

impl ChainView for Chain {
    fn balance(&self, who: &Address) -> Amount {
        if self.funded.lock().unwrap().contains(who) { Amount::from_crn(100).unwrap() } else { Amount::ZERO }
    }
    fn named(&self, ids: &BTreeSet<ContentId>) -> Named {
        Named {
            held: self.named.lock().unwrap().intersection(ids).copied().collect(),
            volumes: self.volumes.lock().unwrap().intersection(ids).copied().collect(),
        }
    }
}

struct Setup {
    dir: std::path::PathBuf,
    chain: Arc<Chain>,
    store: Arc<BlobStore>,
    clock: Arc<AtomicU64>,
    limits: UploadLimits,
}

impl Setup {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("cairn-node-uploads-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let limits = UploadLimits {
            quota_bytes: 10_000,
            quota_blobs: 3,
            min_balance: Amount::from_crn(1).unwrap(),
            ttl_secs: 60,
        };
        Setup {
            store: Arc::new(BlobStore::open(dir.join("blobs")).unwrap()),
            dir,
            chain: Arc::default(),
            clock: Arc::new(AtomicU64::new(1_000)),
            limits,
        }
    }

    /// The gate (opened afresh, as after a restart) and its endpoint.
    async fn open(&self) -> (Arc<Uploads>, String) {
        let clock = self.clock.clone();
        let gate = Arc::new(
            Uploads::open_with_clock(
                CHAIN,
                self.chain.clone(),
                self.store.clone(),
                self.dir.join("uploads"),
                self.limits.clone(),
                Box::new(move || clock.load(Ordering::SeqCst)),
            )
            .unwrap(),
        );
        let app = cairn_blobs::router_with_uploads(self.store.clone(), 1 << 20, gate.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
        (gate, url)
    }
}

fn signed(seed: u8) -> (Fetcher, Address) {
    let key = SecretKey::from_seed([seed; 32]);
    let who = key.address();
    (Fetcher::new().with_uploader(UploadAuth { key, chain_id: CHAIN.into() }), who)
}

fn blob(n: usize, tag: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
}

#[tokio::test]
async fn anonymous_forged_and_unfunded_uploads_store_nothing() {
    let s = Setup::new("refused");
    let (gate, url) = s.open().await;
    // Anonymous, as the finding's client sent them.
    for i in 0..50u8 {
        let err = Fetcher::new().upload(&url, blob(100, i)).await.unwrap_err().to_string();
        assert!(err.contains("401") && err.contains("unsigned"), "{err}");
    }
    // Signed for another chain, or by a key that is not the one named.
    let key = SecretKey::from_seed([1; 32]);
    s.chain.funded.lock().unwrap().insert(key.address());
    let other_chain =
        Fetcher::new().with_uploader(UploadAuth { key: key.clone(), chain_id: "elsewhere".into() });
    let err = other_chain.upload(&url, blob(100, 1)).await.unwrap_err().to_string();
    assert!(err.contains("bad_signature"), "{err}");
    // Signed, but the account holds nothing.
    let (broke, _) = signed(2);
    let err = broke.upload(&url, blob(100, 2)).await.unwrap_err().to_string();
    assert!(err.contains("403") && err.contains("unfunded"), "{err}");
    // A large body is refused just as clearly (read and dropped, not cut off mid-send).
    let err = broke.upload(&url, blob(900_000, 3)).await.unwrap_err().to_string();
    assert!(err.contains("unfunded"), "{err}");
    assert_eq!(gate.pending(), (0, 0));
    let stored = std::fs::read_dir(s.store.root().join("blobs")).unwrap().count();
    assert_eq!(stored, 0, "nothing was kept");
    assert_eq!(gate.metrics.refused.get(), 53);
}

#[tokio::test]
async fn a_funded_account_uploads_within_its_quota_and_unnamed_uploads_expire() {
    let s = Setup::new("quota");
    let (gate, url) = s.open().await;
    let (alice, a) = signed(7);
    let (bob, b) = signed(8);
    s.chain.funded.lock().unwrap().extend([a, b]);
    // Three blobs is Alice's limit; a fourth is refused until one is named or expires.
    let first = alice.upload(&url, blob(1_000, 1)).await.unwrap();
    let second = alice.upload(&url, blob(1_000, 2)).await.unwrap();
    alice.upload(&url, blob(1_000, 3)).await.unwrap();
    let err = alice.upload(&url, blob(1_000, 4)).await.unwrap_err().to_string();
    assert!(err.contains("429") && err.contains("upload_quota"), "{err}");
    // Bytes count too: Bob may not send more than 10,000 pending bytes.
    bob.upload(&url, blob(6_000, 5)).await.unwrap();
    let err = bob.upload(&url, blob(6_000, 6)).await.unwrap_err().to_string();
    assert!(err.contains("upload_quota"), "{err}");
    assert_eq!(gate.pending(), (4, 9_000));
    // A job names Alice's first blob: it stays, and no longer counts against her.
    s.chain.named.lock().unwrap().insert(first);
    assert_eq!(gate.sweep(), 0);
    assert_eq!(gate.pending(), (3, 8_000));
    alice.upload(&url, blob(1_000, 4)).await.unwrap();
    // A restart forgets nothing: the pending uploads are read back.
    drop(gate);
    let (gate, url) = s.open().await;
    assert_eq!(gate.pending(), (4, 9_000));
    let err = alice.upload(&url, blob(1_000, 9)).await.unwrap_err().to_string();
    assert!(err.contains("upload_quota"), "{err}");
    // Past the time limit, what no transaction named is deleted; what one named stays.
    s.clock.fetch_add(61, Ordering::SeqCst);
    assert_eq!(gate.sweep(), 4);
    assert_eq!(gate.pending(), (0, 0));
    assert!(s.store.has(&first));
    assert!(!s.store.has(&second));
    assert_eq!(gate.metrics.expired.get(), 4);
    alice.upload(&url, blob(1_000, 9)).await.unwrap();
}

#[tokio::test]
async fn a_saved_volume_is_kept_while_it_is_its_lease_s_last_save() {
    let s = Setup::new("volumes");
    let (gate, url) = s.open().await;
    let (provider, p) = signed(9);
    s.chain.funded.lock().unwrap().insert(p);
    let first = provider.upload(&url, blob(1_000, 1)).await.unwrap();
    // Recorded by SaveVolume: it no longer counts against the provider, and stays past the
    // time limit while it is the lease's last save, across a restart too.
    s.chain.volumes.lock().unwrap().insert(first);
    assert_eq!(gate.sweep(), 0);
    assert_eq!((gate.pending(), gate.volumes()), ((0, 0), 1));
    drop(gate);
    let (gate, url) = s.open().await;
    assert_eq!(gate.volumes(), 1);
    s.clock.fetch_add(61, Ordering::SeqCst);
    assert_eq!(gate.sweep(), 0);
    assert!(s.store.has(&first));
    // A newer save replaces it: the old one is deleted, the new one kept.
    let second = provider.upload(&url, blob(1_000, 2)).await.unwrap();
    {
        let mut v = s.chain.volumes.lock().unwrap();
        v.remove(&first);
        v.insert(second);
    }
    assert_eq!(gate.sweep(), 1);
    assert!(!s.store.has(&first) && s.store.has(&second));
    assert_eq!((gate.volumes(), gate.metrics.superseded.get()), (1, 1));
    // A save that a job also names is kept for good.
    s.chain.named.lock().unwrap().insert(second);
    s.chain.volumes.lock().unwrap().clear();
    assert_eq!(gate.sweep(), 0);
    assert!(s.store.has(&second));
    assert_eq!(gate.volumes(), 0);
}

#[test]
fn the_documented_uploads_section_parses_and_defaults_hold_without_it() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/validator.md")).unwrap();
    let toml_block = doc.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).unwrap();
    #[derive(serde::Deserialize)]
    struct Section {
        uploads: UploadLimits,
    }
    let s: Section = toml::from_str(toml_block).unwrap();
    assert_eq!(s.uploads, UploadLimits::default());
    assert_eq!(s.uploads.min_balance, Amount::from_crn(1).unwrap());
}

/// The chain side of the gate on a real node's committed state: which blobs a committed job
/// names (so they are kept, not expired) and what an account holds.
#[test]
fn the_node_sees_the_blobs_a_committed_job_names_and_each_accounts_balance() {
    use cairn_node::mempool::{Mempool, MempoolConfig};
    use cairn_node::node::NodeShared;
    use cairn_state::testkit::{TestChain, key};
    let client = key(1);
    let mut chain =
        TestChain::new(cairn_state::Params::default(), &[(&client, Amount::from_crn(1_000).unwrap())]);
    let [workload, input, per_task, other] =
        [&b"module"[..], b"input", b"task input", b"nobody names this"].map(ContentId::of);
    let yaml = format!(
        "kind: wasm\nworkload: {workload}\ntasks: 1\nmax_price_per_task: 1 CRN\ninputs:\n  - name: a\n    id: {input}\n    size: 5\ntask_inputs:\n  - name: b\n    id: {per_task}\n    size: 10\n"
    );
    let spec = cairn_types::JobSpec::from_yaml(&yaml).unwrap();
    chain.ok(&client, cairn_types::TxBody::SubmitJob(cairn_types::SubmitJob { spec }));
    let genesis = chain.genesis().clone();
    let shared = NodeShared::new(
        genesis.clone(),
        cairn_node::run::genesis_block(&genesis),
        cairn_node::block::BlockCfg::default(),
        Mempool::new(MempoolConfig::new(&genesis.chain_id, genesis.params.min_tx_fee)),
    );
    shared.mirror.write().unwrap().committed =
        chain.state.store().scan_prefix(&[]).map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
    let asked: BTreeSet<ContentId> = [workload, input, per_task, other].into_iter().collect();
    let named: BTreeSet<ContentId> = [workload, input, per_task].into_iter().collect();
    assert_eq!(shared.named(&asked).held, named);
    let held = chain.state.account(&client.address()).unwrap().balance;
    assert!(held > Amount::ZERO);
    assert_eq!(shared.balance(&client.address()), held);
    assert_eq!(shared.balance(&key(9).address()), Amount::ZERO);
}
