//! The application consensus drives: it builds blocks from the mempool, verifies peers'
//! blocks by executing them, and publishes finalized blocks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use cairn_state::StateView;
use cairn_types::{Address, TxHash};
use commonware_consensus::{
    Heightable as _,
    marshal::ancestry::Ancestry,
    simplex,
    types::{Height, Round, View},
};
use commonware_cryptography::{Digestible as _, certificate::Scheme as _, sha256};
use commonware_glue::stateful::db::{Merkleized as _, Unmerkleized as _};
use commonware_glue::stateful::{Application, Finality, Input, Proposed, db::DatabaseSet};
use commonware_runtime::{Clock, Metrics, Spawner};
use commonware_utils::non_empty_range;
use futures::StreamExt as _;
use tracing::{debug, error, info, warn};

use crate::block::{CairnBlock, Ctx, ParentCert, digest_bytes};
use crate::certs::CertCache;
use crate::engine::Scheme;
use crate::node::{NodeShared, ProofSource};
use crate::state::{Dbs, Merk, Overlay, Unmerk, execute_on, execute_via_batch, write_batch};

/// How long a leader waits for its parent's certificate to reach the certificate cache (the
/// voter may ask for a proposal just before it reports the certificate).
pub const PARENT_CERT_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// The application: all its state is shared with the API through [`NodeShared`].
#[derive(Clone, Debug)]
pub struct App {
    /// Shared node state.
    pub shared: Arc<NodeShared>,
    /// With an empty mempool, how long a leader waits for transactions before proposing.
    pub empty_block_wait: std::time::Duration,
    /// Recent consensus certificates, fed by the consensus reporter.
    pub certs: Arc<CertCache>,
    /// Verifies parent certificates (and names the validator set the beacon indexes).
    pub verifier: Scheme,
}

impl App {
    /// Execute `block` on its parent's state: through the mirror when it reaches the parent,
    /// otherwise through the batch.
    async fn execute<E>(
        &self,
        batch: &Unmerk<E>,
        block: &CairnBlock,
    ) -> Result<Overlay, crate::state::ExecError>
    where
        E: Spawner + commonware_storage::Context,
    {
        let genesis = &self.shared.genesis;
        let participants = self.verifier.participants();
        let fast = {
            let mirror = self.shared.mirror.read().unwrap_or_else(|p| p.into_inner());
            mirror.with_view(&block.parent, |view| execute_on(view, block, genesis, participants))
        };
        let (writes, receipts) = match fast {
            Some(r) => r?,
            None => execute_via_batch::<E>(batch, block, genesis, participants).await?,
        };
        Ok(Overlay { parent: block.parent, height: block.height.get(), writes, receipts })
    }

    /// Nonces as of the parent's state, so a proposal never repeats a transaction an
    /// unfinalized ancestor already holds.
    fn parent_nonces(&self, parent: &sha256::Digest, senders: &[Address]) -> BTreeMap<Address, u64> {
        let mirror = self.shared.mirror.read().unwrap_or_else(|p| p.into_inner());
        let read = |view: &dyn StateView| {
            senders
                .iter()
                .map(|a| {
                    let n = view
                        .get(&cairn_state::keys::account(a))
                        .ok()
                        .flatten()
                        .and_then(|b| borsh::from_slice::<cairn_state::model::Account>(&b).ok())
                        .map_or(0, |acct| acct.nonce);
                    (*a, n)
                })
                .collect()
        };
        mirror.with_view(parent, read).unwrap_or_else(|| read(&*mirror))
    }

    /// Whether the state after `parent` has work scheduled for the end of block `height`.
    fn work_due(&self, parent: &sha256::Digest, height: u64) -> bool {
        let mirror = self.shared.mirror.read().unwrap_or_else(|p| p.into_inner());
        let key = cairn_state::keys::due_count(height);
        let read = |view: &dyn StateView| view.get(&key).ok().flatten().is_some();
        mirror.with_view(parent, read).unwrap_or_else(|| read(&*mirror))
    }

    /// The certificate to embed for the parent named by `ctx`: none for genesis, otherwise
    /// from the certificate cache, waiting up to [`PARENT_CERT_WAIT`] for it to arrive.
    async fn parent_cert<E: Clock>(&self, rt: &E, ctx: &Ctx) -> Option<ParentCert> {
        let (view, digest) = ctx.parent;
        if view == View::zero() {
            return (digest == self.shared.genesis_block.digest()).then_some(ParentCert::Genesis);
        }
        let round = Round::new(ctx.round.epoch(), view);
        let deadline = rt.current() + PARENT_CERT_WAIT;
        loop {
            if let Some(cert) = self.certs.get(round, &digest) {
                return Some(cert);
            }
            if rt.current() >= deadline {
                return None;
            }
            rt.sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

impl<E> Application<E> for App
where
    E: Spawner + Clock + Metrics + commonware_storage::Context + rand_core::CryptoRng,
{
    type SigningScheme = simplex::scheme::ed25519::Scheme;
    type Context = Ctx;
    type Block = CairnBlock;
    type Databases = Dbs<E>;
    type Captured = ();
    type Provider = ();
    type Input = ();

    fn sync_targets(block: &CairnBlock) -> <Dbs<E> as DatabaseSet<E>>::SyncTargets {
        commonware_storage::qmdb::sync::Target::new(block.ops_root, block.range.clone())
    }

    async fn genesis(&mut self) -> CairnBlock {
        self.shared.genesis_block.clone()
    }

    async fn propose(
        &mut self,
        (_rt, ctx): (E, Ctx),
        mut ancestry: impl Ancestry<CairnBlock>,
        batches: Unmerk<E>,
        _input: Input<(), ()>,
    ) -> Option<Proposed<Self, E>> {
        let parent = ancestry.next().await?;
        let height = parent.height().get().checked_add(1)?;
        let Some(parent_cert) = self.parent_cert(&_rt, &ctx).await else {
            warn!(height, parent_view = ctx.parent.0.get(), "parent certificate not seen: not proposing");
            return None;
        };
        // Empty blocks cost every node a database commit: give transactions a moment to
        // arrive, but propose as soon as one does — or at once when the state has work due at
        // this height (an audit draw after a commit, an auction close, a deadline), which
        // clients are waiting on (a training round opens only after its inputs' audit draw).
        let wait_until = _rt.current() + self.empty_block_wait;
        let work_due = self.work_due(&parent.digest(), height);
        loop {
            let empty = self.shared.mempool.lock().unwrap_or_else(|p| p.into_inner()).is_empty();
            if !empty || work_due || _rt.current() >= wait_until {
                break;
            }
            _rt.sleep(std::time::Duration::from_millis(5)).await;
        }
        let started = Instant::now();
        let txs = {
            let pool = self.shared.mempool.lock().unwrap_or_else(|p| p.into_inner());
            let senders = pool.senders();
            drop(pool);
            let nonces = self.parent_nonces(&parent.digest(), &senders);
            let pool = self.shared.mempool.lock().unwrap_or_else(|p| p.into_inner());
            let cfg = &self.shared.block_cfg;
            pool.select(cfg.max_txs, cfg.max_tx_bytes_total, |a| nonces.get(a).copied().unwrap_or(0))
        };
        let mut block = CairnBlock {
            context: ctx,
            parent: parent.digest(),
            parent_cert,
            height: Height::new(height),
            state_root: sha256::Digest::from([0u8; 32]),
            ops_root: sha256::Digest::from([0u8; 32]),
            range: non_empty_range!(
                commonware_storage::mmr::Location::new(0),
                commonware_storage::mmr::Location::new(1)
            ),
            txs,
            faults: self.shared.pending_faults(),
        };
        let overlay = match self.execute::<E>(&batches, &block).await {
            Ok(o) => o,
            Err(e) => {
                error!(height, error = %e, "cannot execute own proposal");
                return None;
            }
        };
        let merkleized = match write_batch::<E>(batches, &overlay.writes).merkleize().await {
            Ok(m) => m,
            Err(e) => panic!("state database failed while merkleizing a proposal: {e:?}"),
        };
        block.state_root = merkleized.root();
        block.ops_root = merkleized.ops_root();
        block.range = non_empty_range!(merkleized.sync_boundary(), merkleized.bounds().tip.size);
        let digest = block.digest();
        debug!(height, txs = block.txs.len(), ms = started.elapsed().as_millis() as u64, "proposed");
        self.shared.metrics.proposed.inc();
        self.shared.mirror.write().unwrap_or_else(|p| p.into_inner()).insert(digest, Arc::new(overlay));
        Some(Proposed { block, merkleized })
    }

    async fn process(
        &mut self,
        (mut rt, _ctx): (E, Ctx),
        ancestry: impl Ancestry<CairnBlock>,
        batches: Unmerk<E>,
        finality: Finality,
    ) -> Option<Merk<E>> {
        let digested = ancestry.peek()?.clone();
        let block = digested.inner();
        let height = block.height.get();
        // The beacon hashes the embedded certificate, so a candidate's must be the real one.
        // (A finalized block was checked by the voters that finalized it.)
        if finality == Finality::Candidate {
            let genesis = self.shared.genesis_block.digest();
            if let Err(why) = block.check_parent_cert(&genesis, &self.verifier, &mut rt) {
                warn!(height, why, "rejecting block with a bad parent certificate");
                return None;
            }
            if let Err(why) = block.check_faults(&self.verifier, &mut rt) {
                warn!(height, why, "rejecting block with a bad fault proof");
                return None;
            }
        }
        let started = Instant::now();
        let overlay = match self.execute::<E>(&batches, block).await {
            Ok(o) => o,
            Err(e) => {
                if finality == Finality::Finalized {
                    panic!("cannot execute finalized block {height}: {e}");
                }
                warn!(height, error = %e, "rejecting block that does not execute");
                return None;
            }
        };
        let merkleized = match write_batch::<E>(batches, &overlay.writes).merkleize().await {
            Ok(m) => m,
            Err(e) => panic!("state database failed while merkleizing block {height}: {e:?}"),
        };
        // The sync target (operations root and range) is checked like the state root: a node
        // that later syncs state from this block trusts it.
        let range = non_empty_range!(merkleized.sync_boundary(), merkleized.bounds().tip.size);
        if merkleized.root() != block.state_root
            || merkleized.ops_root() != block.ops_root
            || range != block.range
        {
            if finality == Finality::Finalized {
                panic!(
                    "finalized block {height} does not reproduce its state root and sync target: this node's state has diverged"
                );
            }
            warn!(height, "rejecting block whose state root or sync target does not match its execution");
            return None;
        }
        self.shared.metrics.exec_ms.observe(started.elapsed().as_secs_f64() * 1e3);
        self.shared
            .mirror
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digested.digest(), Arc::new(overlay));
        Some(merkleized)
    }

    async fn capture(
        &mut self,
        _context: (E, Ctx),
        _block: &CairnBlock,
        _batches: &Merk<E>,
        _readers: <Dbs<E> as DatabaseSet<E>>::Readers,
    ) {
    }

    async fn finalized(
        &mut self,
        _context: (E, Ctx),
        block: &CairnBlock,
        _captured: (),
        reader: <Dbs<E> as DatabaseSet<E>>::Readers,
    ) {
        let digest = block.digest();
        let height = block.height.get();
        let overlay = {
            let mut mirror = self.shared.mirror.write().unwrap_or_else(|p| p.into_inner());
            let overlay = mirror.overlay(&digest);
            let folded = mirror.finalize(&digest, &block.parent, height);
            (overlay, folded)
        };
        let (overlay, folded) = overlay;
        if !folded {
            // First finalization since start (or a gap): load the committed state from disk.
            let started = Instant::now();
            let mut committed = BTreeMap::new();
            {
                let db = reader.read().await;
                let mut stream = Box::pin(db.stream_range(..));
                while let Some(item) = stream.next().await {
                    match item {
                        Ok((k, v)) => {
                            committed.insert(k, v);
                        }
                        Err(e) => panic!("cannot read the state database: {e:?}"),
                    }
                }
            }
            info!(
                height,
                keys = committed.len(),
                ms = started.elapsed().as_millis() as u64,
                "loaded state into memory"
            );
            self.shared.mirror.write().unwrap_or_else(|p| p.into_inner()).reload((digest, height), committed);
        }
        if self.shared.proofs.get().is_none() {
            let _ = self.shared.proofs.set(Arc::new(DbProofs::<E> { reader }));
        }
        let receipts = overlay.map(|o| o.receipts.clone()).unwrap_or_default();
        self.shared.on_finalized(block, digest_bytes(&digest), receipts);
    }
}

/// Proofs served from the state database.
struct DbProofs<E>
where
    E: Spawner + Clock + Metrics + commonware_storage::Context,
{
    reader: <Dbs<E> as DatabaseSet<E>>::Readers,
}

impl<E> ProofSource for DbProofs<E>
where
    E: Spawner + Clock + Metrics + commonware_storage::Context,
{
    fn prove(&self, key: Vec<u8>) -> futures::future::BoxFuture<'_, Result<crate::node::StateProof, String>> {
        Box::pin(async move {
            let db = self.reader.read().await;
            let root = db.root();
            let value = db.get(&key).await.map_err(|e| e.to_string())?;
            let proof = match &value {
                Some(_) => {
                    let p = db.key_value_proof(key.clone()).await.map_err(|e| e.to_string())?;
                    commonware_codec::Encode::encode(&p).to_vec()
                }
                None => {
                    let p = db.exclusion_proof(&key).await.map_err(|e| e.to_string())?;
                    commonware_codec::Encode::encode(&p).to_vec()
                }
            };
            Ok(crate::node::StateProof { key, value, root: digest_bytes(&root), proof })
        })
    }
}

/// Hashes of the transactions in a block, in order.
pub fn tx_hashes(block: &CairnBlock) -> Vec<TxHash> {
    block.txs.iter().map(cairn_types::Tx::hash).collect()
}
