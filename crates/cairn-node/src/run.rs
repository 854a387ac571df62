//! Running a node from its home directory: tokio runtime, authenticated p2p on the configured
//! ports, the validator, and the API server.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use cairn_state::Genesis;
use cairn_types::Address;
use commonware_codec::DecodeExt as _;
use commonware_cryptography::{ChaCha20Poly1305, Signer as _, ed25519};
use commonware_glue::stateful::db::DatabaseSet;
use commonware_p2p::{Address as P2pAddress, AddressableManager as _, authenticated::lookup};
use commonware_runtime::{
    Metrics as _, Quota, Runner as _, Spawner as _, Supervisor as _, tokio as cw_tokio,
};
use commonware_stream::{
    cups::{self, Cups},
    sake::{self, Sake},
};
use commonware_utils::{NZU32, NZUsize, TryCollect as _, ordered::Map};
use tracing::info;

use crate::api::{ApiState, router};
use crate::block::CairnBlock;
use crate::config::{ConfigError, Home};
use crate::engine::{self, Channels, ValidatorConfig};
use crate::mempool::{Mempool, MempoolConfig};
use crate::node::NodeShared;
use crate::state::Dbs;

/// Why a node could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Home directory problems.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Another process runs a node from this home.
    #[error("another node is already running from {0} (its lock file is held)")]
    Locked(String),
    /// The key is not one of the validators.
    #[error("this node's key ({0}) is not among the validators in config.toml")]
    NotAValidator(Address),
    /// A validator address is not a valid ed25519 key.
    #[error("validator {0} in config.toml is not a valid ed25519 public key")]
    BadValidatorKey(Address),
    /// The blob store could not be opened.
    #[error("cannot open the blob store: {0}")]
    Blobs(#[from] cairn_blobs::Error),
    /// The API port could not be opened.
    #[error("cannot listen for the API on {addr}: {source}")]
    ApiBind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The consensus namespace of a chain.
pub fn namespace(chain_id: &str) -> Vec<u8> {
    format!("cairn/{chain_id}/consensus").into_bytes()
}

/// The genesis block of a chain (committing to the empty state database, and through its
/// derived leader to the whole genesis: nodes given different genesis files never agree on a
/// block, not even the first).
pub fn genesis_block(genesis: &Genesis) -> CairnBlock {
    let t = <Dbs<cw_tokio::Context> as DatabaseSet<cw_tokio::Context>>::initial_sync_targets();
    let bytes = serde_json::to_vec(genesis).unwrap_or_default();
    let id = format!("{}/{}", genesis.chain_id, blake3::hash(&bytes).to_hex());
    CairnBlock::genesis(t.root, t.range, &id)
}

/// Convert a Cairn secret key into the consensus key type (the same ed25519 key).
pub fn consensus_key(key: &cairn_types::SecretKey) -> ed25519::PrivateKey {
    match ed25519::PrivateKey::decode(key.seed().to_vec()) {
        Ok(k) => k,
        Err(e) => panic!("a 32-byte seed always decodes: {e}"),
    }
}

/// Make a panic anywhere in the node stop the process with one clear line instead of a
/// backtrace: a node that cannot trust its store must stop, not limp on.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown failure");
        let store = ["init failed", "Corruption", "cannot open", "InvalidChecksum", "diverged", "database"]
            .iter()
            .any(|w| msg.contains(w));
        if store {
            eprintln!(
                "error: the node's store is damaged or inconsistent, so it refuses to run: {msg}\n\
                 hint: restore the home directory from a backup, or remove its db/ directory to replay the chain from its peers"
            );
        } else {
            let at = info.location().map(|l| format!(" ({}:{})", l.file(), l.line())).unwrap_or_default();
            eprintln!("error: the node stopped: {msg}{at}");
        }
        std::process::exit(2);
    }));
}

/// Run the node in `home` until the process is stopped.
///
/// # Errors
/// [`RunError`] for configuration problems found before start. Failures of the stores at
/// start (a corrupt or truncated file) stop the process with a message naming the store.
pub fn run(home: &Path) -> Result<(), RunError> {
    let home = Home(home.to_path_buf());
    install_panic_hook();
    let cfg = home.load_config()?;
    let genesis = home.load_genesis()?;
    let key = home.load_key()?;
    let me = key.address();
    if !cfg.validators.iter().any(|p| p.address == me) {
        return Err(RunError::NotAValidator(me));
    }
    let mut peers = Vec::new();
    for p in &cfg.validators {
        let pk = ed25519::PublicKey::decode(p.address.0.to_vec())
            .map_err(|_| RunError::BadValidatorKey(p.address))?;
        peers.push((pk, P2pAddress::from(p.p2p)));
    }

    std::fs::create_dir_all(home.db()).map_err(|source| ConfigError::Io { path: home.db(), source })?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(home.lock())
        .map_err(|source| ConfigError::Io { path: home.lock(), source })?;
    if lock.try_lock().is_err() {
        return Err(RunError::Locked(home.0.display().to_string()));
    }
    let blobs = Arc::new(cairn_blobs::BlobStore::open(home.blobs())?);
    let api_listener = std::net::TcpListener::bind(cfg.api_listen)
        .map_err(|source| RunError::ApiBind { addr: cfg.api_listen, source })?;
    api_listener
        .set_nonblocking(true)
        .map_err(|source| RunError::ApiBind { addr: cfg.api_listen, source })?;

    let runtime = cw_tokio::Config::new()
        .with_storage_directory(home.db())
        .with_worker_threads(cfg.worker_threads.max(1));
    let chain_id = genesis.chain_id.clone();
    cw_tokio::Runner::new(runtime).start(|context| async move {
        let signer = consensus_key(&key);
        let peers: Map<ed25519::PublicKey, P2pAddress> = match peers.into_iter().try_collect() {
            Ok(m) => m,
            Err(_) => panic!("config.toml lists a validator twice"),
        };
        let participants = peers.keys().clone();
        let block_cfg = cfg.block_cfg();
        let n = u32::try_from(participants.len()).unwrap_or(u32::MAX);
        let p2p_cfg = lookup::Config::local(
            Cups::<_, ChaCha20Poly1305>::new(
                Sake {
                    signer: signer.clone(),
                    synchrony_bound: std::time::Duration::from_secs(5),
                    max_handshake_age: std::time::Duration::from_secs(10),
                    version: sake::Version::V1,
                },
                cups::Version::V1,
            ),
            format!("cairn/{chain_id}/p2p").as_bytes(),
            cfg.p2p_listen,
            commonware_p2p::authenticated::peer_set_limit(participants.iter(), &signer.public_key()),
            engine::max_message_size(n, &block_cfg),
            NZUsize!(4096),
        );
        let (mut network, mut oracle) = lookup::Network::new(context.child("network"), p2p_cfg);
        let _ = oracle.track(0, peers);
        let q = |n| Quota::per_second(n);
        let votes = network.register(engine::channels::VOTES, q(NZU32!(1024)));
        let certs = network.register(engine::channels::CERTS, q(NZU32!(1024)));
        let resolver = network.register(engine::channels::RESOLVER, q(NZU32!(256)));
        let backfill = network.register(engine::channels::BACKFILL, q(NZU32!(256)));
        let broadcast = network.register(engine::channels::BROADCAST, q(NZU32!(256)));
        let txs = network.register(engine::channels::TXS, q(NZU32!(512)));
        network.start();

        let mut mcfg = MempoolConfig::new(&chain_id, genesis.params.min_tx_fee);
        mcfg.max_bytes = cfg.mempool.max_bytes;
        mcfg.max_per_sender = cfg.mempool.max_per_sender;
        let shared = Arc::new(NodeShared::new(genesis.clone(), genesis_block(&genesis), block_cfg, Mempool::new(mcfg)));
        if let Err(e) = shared.attach_receipt_log(&home.receipts()) {
            panic!("cannot open the receipt log {}: {e}", home.receipts().display());
        }
        {
            let m = &shared.metrics;
            let ctx = context.child("cairn");
            std::mem::forget(ctx.register("height", "finalized height", m.height.clone()));
            std::mem::forget(ctx.register("txs_finalized", "transactions finalized", m.txs.clone()));
            std::mem::forget(ctx.register("mempool_txs", "transactions in the mempool", m.mempool.clone()));
            std::mem::forget(ctx.register("blocks_proposed", "blocks this node proposed", m.proposed.clone()));
            std::mem::forget(ctx.register("block_exec_ms", "block execution time (ms)", m.exec_ms.clone()));
            std::mem::forget(ctx.register("consensus_faults", "consensus faults seen", m.faults.clone()));
        }

        let uploads = match crate::uploads::Uploads::open(
            &chain_id,
            shared.clone(),
            blobs.clone(),
            home.uploads(),
            cfg.uploads.clone(),
        ) {
            Ok(u) => Arc::new(u),
            Err(e) => panic!("cannot open {}: {e}", home.uploads().display()),
        };
        {
            let m = &uploads.metrics;
            let ctx = context.child("cairn");
            std::mem::forget(ctx.register("uploads_refused", "blob uploads refused", m.refused.clone()));
            std::mem::forget(ctx.register("uploads_stored", "blob uploads stored", m.stored.clone()));
            std::mem::forget(ctx.register("uploads_expired", "blob uploads deleted unnamed", m.expired.clone()));
            std::mem::forget(ctx.register(
                "uploads_superseded",
                "saved service volumes deleted after a newer save",
                m.superseded.clone(),
            ));
            let sweeper = uploads.clone();
            let every = std::time::Duration::from_secs((cfg.uploads.ttl_secs / 4).clamp(1, 60));
            context.child("uploads").spawn(move |_| async move {
                loop {
                    tokio::time::sleep(every).await;
                    let u = sweeper.clone();
                    let _ = tokio::task::spawn_blocking(move || u.sweep()).await;
                }
            });
        }

        let metrics_ctx = context.child("metrics_export");
        let metrics: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(move || metrics_ctx.encode());
        let api_shared = shared.clone();
        let validator_ctx = context.child("validator");
        let (handle, marshal) = engine::start_validator(
            validator_ctx,
            ValidatorConfig {
                namespace: namespace(&chain_id),
                signer,
                participants,
                partition_prefix: "cairn".into(),
                timing: cfg.consensus.timing(),
            },
            shared,
            Channels { votes, certs, resolver, backfill, broadcast, txs },
            oracle.clone(),
            oracle,
            |stateful| stateful,
        )
        .await;

        let app = router(ApiState { shared: api_shared, marshal, metrics }).merge(cairn_blobs::router_with_uploads(
            blobs,
            cfg.blob_upload_limit as u64,
            uploads,
        ));
        context.child("api").spawn(move |_| async move {
            let listener = match tokio::net::TcpListener::from_std(api_listener) {
                Ok(l) => l,
                Err(e) => panic!("cannot use the API socket: {e}"),
            };
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "API server stopped");
            }
        });
        info!(moniker = %cfg.moniker, api = %cfg.api_listen, p2p = %cfg.p2p_listen, chain = %chain_id, "node started");
        let _ = handle.await;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use commonware_codec::Encode as _;
    use commonware_cryptography::Digestible as _;

    #[test]
    fn two_genesis_files_of_one_chain_id_give_different_genesis_blocks() {
        let g = |balance: &str| {
            Genesis::from_toml(&format!(
                "chain_id = \"cairn-local\"\n[[accounts]]\naddress = \"{a}\"\nbalance = \"{balance}\"\n\
                 [[validators]]\naddress = \"{a}\"\nstake = \"5 CRN\"\n",
                a = cairn_types::SecretKey::from_seed([1; 32]).address()
            ))
            .unwrap()
        };
        assert_eq!(genesis_block(&g("10 CRN")).digest(), genesis_block(&g("10 CRN")).digest());
        assert_ne!(genesis_block(&g("10 CRN")).digest(), genesis_block(&g("11 CRN")).digest());
    }

    #[test]
    fn a_cairn_key_and_its_consensus_key_are_the_same_ed25519_key() {
        let k = cairn_types::SecretKey::from_seed([42; 32]);
        let ck = consensus_key(&k);
        assert_eq!(ck.public_key().encode().to_vec(), k.address().0.to_vec());
    }
}
