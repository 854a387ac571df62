//! Wiring one validator: p2p channels → block broadcast and backfill → marshal (finalized
//! blocks, certificates) → the stateful application over the state database → simplex
//! consensus. Generic over the runtime and the p2p network, so production (tokio, authenticated
//! p2p) and simulations (deterministic runtime, simulated p2p) run the same code.

use std::sync::Arc;
use std::time::Duration;

use commonware_actor::Feedback;
use commonware_broadcast::buffered;
use commonware_codec::Encode as _;
use commonware_consensus::{
    Reporter, Reporters,
    marshal::{
        self,
        core::{Actor as MarshalActor, Mailbox as MarshalMailbox},
        resolver::p2p as marshal_resolver,
        standard::{Deferred, Standard},
    },
    simplex::{
        self,
        config::{ForwardPolicy, SkipPolicy},
        elector::RoundRobin,
        scheme::{ed25519 as simplex_ed25519, reporter::AttributableReporter},
        types::Activity,
    },
    types::{Epoch, FixedEpocher, ViewDelta},
};
use commonware_cryptography::certificate::Verifier as _;
use commonware_cryptography::{
    Digested, Digestible as _, Sha256, certificate::ConstantProvider, ed25519, sha256,
};
use commonware_glue::stateful::{
    Config as StatefulConfig, Mailbox as StatefulMailbox, PruneConfig, Stateful, SyncPlan,
    db::{AttachableResolver, Shared, SyncEngineConfig},
};
use commonware_p2p::{Blocker, Provider, Receiver, Sender};
use commonware_parallel::Sequential;
use commonware_runtime::{Clock, Handle, Metrics, Spawner, Storage, buffer::paged::CacheRef};
use commonware_storage::{
    archive::prunable,
    journal::contiguous::variable::Config as VariableLogConfig,
    mmr::{self, full::Config as MmrConfig},
    qmdb::current::VariableConfig,
    translator::{EightCap, TwoCap},
};
use commonware_utils::{NZDuration, NZU16, NZU64, NZUsize, ordered::Set};
use rand_core::CryptoRng;

use crate::app::App;
use crate::block::{BlockCfg, CairnBlock};
use crate::certs::CertCache;
use crate::node::{Evidence, NodeShared};
use crate::state::StateDb;

/// The consensus signing scheme: attributable ed25519 votes and certificates.
pub type Scheme = simplex_ed25519::Scheme;
/// The marshal variant.
pub type Variant = Standard<CairnBlock>;
/// A handle to marshal (finalized blocks and certificates by height).
pub type Marshal = MarshalMailbox<Scheme, Variant>;

/// p2p channel ids, the same on every node.
pub mod channels {
    /// Consensus votes.
    pub const VOTES: u64 = 0;
    /// Consensus certificates.
    pub const CERTS: u64 = 1;
    /// Consensus certificate fetches.
    pub const RESOLVER: u64 = 2;
    /// Block backfill.
    pub const BACKFILL: u64 = 3;
    /// Block broadcast.
    pub const BROADCAST: u64 = 4;
    /// Transaction gossip.
    pub const TXS: u64 = 5;
    /// Every channel id.
    pub const ALL: [u64; 6] = [VOTES, CERTS, RESOLVER, BACKFILL, BROADCAST, TXS];
}

/// One validator's registered channels, in [`channels::ALL`] order.
#[derive(Debug)]
pub struct Channels<S, R> {
    /// Votes.
    pub votes: (S, R),
    /// Certificates.
    pub certs: (S, R),
    /// Certificate fetches.
    pub resolver: (S, R),
    /// Block backfill.
    pub backfill: (S, R),
    /// Block broadcast.
    pub broadcast: (S, R),
    /// Transaction gossip.
    pub txs: (S, R),
}

/// Consensus timing.
#[derive(Clone, Debug)]
pub struct Timing {
    /// How long to wait for a leader's proposal.
    pub leader_timeout: Duration,
    /// How long to wait for a notarized block to be certified.
    pub certification_timeout: Duration,
    /// How often to rebroadcast when stuck.
    pub timeout_retry: Duration,
    /// When the mempool is empty, how long a leader waits for transactions before proposing
    /// an empty block.
    pub empty_block_wait: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            leader_timeout: Duration::from_secs(2),
            certification_timeout: Duration::from_secs(3),
            timeout_retry: Duration::from_secs(5),
            empty_block_wait: Duration::from_millis(250),
        }
    }
}

/// What a validator needs to start.
#[derive(Debug)]
pub struct ValidatorConfig {
    /// Consensus namespace (distinct per chain).
    pub namespace: Vec<u8>,
    /// This validator's key.
    pub signer: ed25519::PrivateKey,
    /// Every validator's key.
    pub participants: Set<ed25519::PublicKey>,
    /// Storage partition prefix (the same across restarts).
    pub partition_prefix: String,
    /// Consensus timing.
    pub timing: Timing,
}

/// Makes an evidence record out of verified consensus faults, and keeps recent certificates
/// for the proposer (see [`CertCache`]).
#[derive(Clone, Debug)]
pub struct FaultSink {
    shared: Arc<NodeShared>,
    participants: Set<ed25519::PublicKey>,
    certs: Arc<CertCache>,
}

impl FaultSink {
    fn record(&self, kind: &'static str, signer: u32, view: u64, evidence: Vec<u8>) {
        let validator = self
            .participants
            .get(signer as usize)
            .map(|pk| cairn_types::Address(crate::block::public_key_bytes(pk)).to_string())
            .unwrap_or_else(|| format!("participant #{signer}"));
        tracing::warn!(kind, %validator, view, "consensus fault evidence");
        self.shared.metrics.faults.inc();
        let mut list = self.shared.evidence.lock().unwrap_or_else(|p| p.into_inner());
        if list.len() < 10_000 {
            list.push(Evidence { kind, validator, view, evidence: hex::encode(evidence) });
        }
    }
}

impl Reporter for FaultSink {
    type Activity = Activity<Scheme, sha256::Digest>;

    fn report(&mut self, activity: Self::Activity) -> Feedback {
        use commonware_consensus::{Viewable as _, simplex::types::Attributable as _};
        match &activity {
            // The engine reports verified faults; each is also queued to be carried in a block,
            // where every validator checks it again and the chain slashes.
            Activity::ConflictingNotarize(c) => {
                self.record("conflicting_notarize", c.signer().get(), c.view().get(), c.encode().to_vec());
                self.shared.add_fault(crate::block::FaultProof::ConflictingNotarize(c.clone()));
            }
            Activity::ConflictingFinalize(c) => {
                self.record("conflicting_finalize", c.signer().get(), c.view().get(), c.encode().to_vec());
                self.shared.add_fault(crate::block::FaultProof::ConflictingFinalize(c.clone()));
            }
            Activity::NullifyFinalize(c) => {
                self.record("nullify_finalize", c.signer().get(), c.view().get(), c.encode().to_vec());
                self.shared.add_fault(crate::block::FaultProof::NullifyFinalize(c.clone()));
            }
            Activity::Notarization(n) | Activity::Certification(n) => self.certs.notarized(n.clone()),
            Activity::Finalization(f) => self.certs.finalized(f.clone()),
            _ => {}
        }
        Feedback::Ok
    }
}

fn archive_cfg<C>(prefix: &str, name: &str, page_cache: CacheRef, codec: C) -> prunable::Config<TwoCap, C> {
    prunable::Config {
        translator: TwoCap,
        metadata_partition: format!("{prefix}-{name}-metadata"),
        key_partition: format!("{prefix}-{name}-key"),
        key_page_cache: page_cache,
        value_partition: format!("{prefix}-{name}-value"),
        compression: None,
        codec_config: codec,
        items_per_section: NZU64!(4096),
        key_write_buffer: NZUsize!(1 << 20),
        value_write_buffer: NZUsize!(1 << 20),
        replay_buffer: NZUsize!(1 << 20),
    }
}

/// The state database's configuration. The page size is part of the on-disk format.
fn state_db_cfg(prefix: &str, page_cache: CacheRef) -> StateDbConfig {
    VariableConfig {
        merkle_config: MmrConfig {
            journal_partition: format!("{prefix}-state-mmr-journal"),
            metadata_partition: format!("{prefix}-state-mmr-metadata"),
            items_per_blob: NZU64!(65_536),
            write_buffer: NZUsize!(1 << 20),
            replay_buffer: NZUsize!(1 << 20),
            strategy: Sequential,
            page_cache: page_cache.clone(),
        },
        journal_config: VariableLogConfig {
            partition: format!("{prefix}-state-log"),
            items_per_section: NZU64!(16_384),
            compression: None,
            codec_config: (((0..=256).into(), ()), ((0..=(1 << 20)).into(), ())),
            page_cache,
            write_buffer: NZUsize!(1 << 20),
            replay_buffer: NZUsize!(1 << 20),
        },
        grafted_metadata_partition: format!("{prefix}-state-grafted-metadata"),
        translator: EightCap,
        init_cache: Some(NZUsize!(1 << 16)),
        init_buffer: NZUsize!(1 << 21),
        init_concurrency: (),
    }
}

/// The state database's config type.
pub type StateDbConfig = VariableConfig<
    EightCap,
    ((commonware_codec::RangeCfg<usize>, ()), (commonware_codec::RangeCfg<usize>, ())),
    Sequential,
>;

/// The most bytes one p2p message may carry for `n` validators.
pub fn max_message_size(n: u32, block_cfg: &BlockCfg) -> u32 {
    commonware_p2p::max_message_size(&[
        simplex::max_payload_size::<Scheme, sha256::Digest>(n),
        marshal::max_payload_size::<Variant, Scheme>(n, block_cfg),
        crate::gossip::MAX_GOSSIP_BYTES + 64 * 1024,
    ])
}

/// Build and start a validator. Everything runs under `context`; the returned handle is the
/// consensus engine, which supervises the rest, so aborting it stops the whole validator.
pub async fn start_validator<E, S, R, Pp, Bl, W, Rep>(
    context: E,
    cfg: ValidatorConfig,
    shared: Arc<NodeShared>,
    channels: Channels<S, R>,
    peer_provider: Pp,
    blocker: Bl,
    wrap_marshal_reporter: W,
) -> (Handle<()>, Marshal)
where
    W: FnOnce(StatefulMailbox<E, App>) -> Rep,
    Rep: Reporter<Activity = marshal::Update<CairnBlock>>,
    E: Spawner + Clock + Storage + Metrics + CryptoRng + commonware_storage::Context,
    S: Sender<PublicKey = ed25519::PublicKey>,
    R: Receiver<PublicKey = ed25519::PublicKey>,
    Pp: Provider<PublicKey = ed25519::PublicKey>,
    Bl: Blocker<PublicKey = ed25519::PublicKey>,
{
    let me = commonware_cryptography::Signer::public_key(&cfg.signer);
    let prefix = cfg.partition_prefix.clone();
    let page_cache = CacheRef::new(NZU16!(16_384), NZUsize!(10_000));
    let block_cfg = shared.block_cfg.clone();
    let genesis = shared.genesis_block.clone();
    crate::gossip::start(context.child("gossip"), shared.clone(), channels.txs);

    let scheme = match Scheme::signer(&cfg.namespace, cfg.participants.clone(), cfg.signer.clone()) {
        Some(s) => s,
        None => panic!("this node's key is not among the validators"),
    };
    let provider = ConstantProvider::<Scheme, Epoch>::new(scheme.clone());

    let (resolver_rx, resolver) = marshal_resolver::init(
        context.child("marshal_resolver"),
        marshal_resolver::Config {
            public_key: me.clone(),
            peer_provider: peer_provider.clone(),
            blocker: blocker.clone(),
            mailbox_size: NZUsize!(1024),
            fetch_timeout: NZDuration!(Duration::from_secs(2)),
            fetch_retry_delay: Duration::from_millis(100),
            priority_requests: false,
            priority_responses: false,
        },
        channels.backfill,
    );

    let (broadcast, buffer) = buffered::Engine::<_, _, CairnBlock, _, _>::new(
        context.child("broadcast"),
        buffered::Config {
            public_key: me.clone(),
            mailbox_size: NZUsize!(1024),
            deque_size: 16,
            priority: false,
            codec_config: block_cfg.clone(),
            peer_provider: peer_provider.clone(),
            strategy: Sequential,
        },
    );
    broadcast.start(channels.broadcast);

    let finalizations = match prunable::Archive::init(
        context.child("finalizations"),
        archive_cfg(&prefix, "finalizations", page_cache.clone(), scheme.certificate_codec_config()),
    )
    .await
    {
        Ok(a) => a,
        Err(e) => panic!("cannot open the finalization store: {e}"),
    };
    let blocks = match prunable::Archive::init(
        context.child("blocks"),
        archive_cfg(&prefix, "blocks", page_cache.clone(), block_cfg.clone()),
    )
    .await
    {
        Ok(a) => a,
        Err(e) => panic!("cannot open the block store: {e}"),
    };

    // No peer state sync: new nodes replay from genesis through marshal, so history is kept.
    let plan = SyncPlan::init(context.child("plan"), prefix.clone()).await;
    let _ = plan.should_sync(false);

    let (marshal_actor, marshal_mailbox, floor) = MarshalActor::<_, Variant, _, _, _, _, _>::init(
        context.child("marshal"),
        finalizations,
        blocks,
        marshal::Config {
            provider: provider.clone(),
            epocher: FixedEpocher::new(NZU64!(u64::MAX)),
            start: plan.marshal_start(Digested::precomputed(genesis.clone(), genesis.digest())),
            partition_prefix: format!("{prefix}-marshal"),
            mailbox_size: NZUsize!(1024),
            view_retention: ViewDelta::new(256),
            prunable_items_per_section: NZU64!(4096),
            page_cache: page_cache.clone(),
            replay_buffer: NZUsize!(1 << 20),
            key_write_buffer: NZUsize!(1 << 20),
            value_write_buffer: NZUsize!(1 << 20),
            block_codec_config: block_cfg.clone(),
            max_repair: NZUsize!(16),
            max_pending_acks: NZUsize!(16),
            strategy: Sequential,
        },
    )
    .await;

    let certs = Arc::new(CertCache::default());
    let (stateful, stateful_mailbox) = Stateful::new(
        context.child("stateful"),
        StatefulConfig {
            application: App {
                shared: shared.clone(),
                empty_block_wait: cfg.timing.empty_block_wait,
                certs: certs.clone(),
                verifier: Scheme::verifier(&cfg.namespace, cfg.participants.clone()),
            },
            db_config: state_db_cfg(&prefix, page_cache.clone()),
            provider: (),
            marshal: (marshal_mailbox.clone(), floor),
            mailbox_size: NZUsize!(1024),
            plan,
            resolvers: NoStateSync,
            sync_config: SyncEngineConfig {
                fetch_batch_size: NZU64!(256),
                apply_batch_size: NZU64!(1024),
                max_outstanding_requests: NZUsize!(8),
            },
            prune_config: None::<PruneConfig>,
            strategy: Sequential,
        },
    );

    let deferred = Deferred::new(
        context.child("deferred"),
        stateful_mailbox.clone(),
        marshal_mailbox.clone(),
        FixedEpocher::new(NZU64!(u64::MAX)),
    );
    marshal_actor.start(wrap_marshal_reporter(stateful_mailbox), buffer, (resolver_rx, resolver));
    stateful.start();

    let faults = AttributableReporter::new(
        context.child("fault_rng"),
        scheme.clone(),
        FaultSink { shared, participants: cfg.participants.clone(), certs },
        Sequential,
        true,
    );
    let reporter = Reporters::from((deferred.clone(), faults));
    let t = &cfg.timing;
    let engine = simplex::Engine::new(
        context,
        simplex::Config {
            scheme,
            elector: RoundRobin::<Sha256>::default(),
            blocker,
            automaton: deferred.clone(),
            relay: deferred,
            reporter,
            strategy: Sequential,
            partition: format!("{prefix}-simplex-epoch0"),
            mailbox_size: NZUsize!(1024),
            epoch: Epoch::zero(),
            floor: simplex::config::Floor::Genesis(genesis.digest()),
            replay_buffer: NZUsize!(1 << 20),
            write_buffer: NZUsize!(1 << 20),
            page_cache,
            leader_timeout: t.leader_timeout,
            certification_timeout: t.certification_timeout,
            timeout_retry: t.timeout_retry,
            view_retention: ViewDelta::new(256),
            skip: SkipPolicy::Enabled {
                timeout: t.timeout_retry.max(t.certification_timeout) + Duration::from_secs(1),
                budget: simplex::SkipBudget::Participants,
            },
            fetch_timeout: NZDuration!(Duration::from_secs(2)),
            fetch_retry_delay: Duration::from_millis(200),
            forward: ForwardPolicy::SilentLeader,
            track_historical_votes: true,
        },
    );
    let handle = engine.start(channels.votes, channels.certs, channels.resolver);
    (handle, marshal_mailbox)
}

/// State sync source that never answers: Cairn's state has variable-size values, which the
/// generic sync resolver does not serve; new nodes replay blocks from genesis instead.
#[derive(Clone, Debug)]
pub struct NoStateSync;

impl commonware_storage::qmdb::sync::Source for NoStateSync {
    type Family = mmr::Family;
    type Digest = sha256::Digest;
    type Op = commonware_storage::qmdb::any::ordered::variable::Operation<mmr::Family, Vec<u8>, Vec<u8>>;
    type Error = std::convert::Infallible;

    fn serve(
        &self,
        _request: commonware_storage::qmdb::sync::Request<mmr::Family>,
    ) -> impl std::future::Future<Output = commonware_storage::qmdb::sync::source::Result<Self>> + Send {
        std::future::pending()
    }
}

impl<E: Spawner + commonware_storage::Context> AttachableResolver<StateDb<E>> for NoStateSync {
    async fn attach_database(&self, _db: Shared<StateDb<E>>) {}
}
