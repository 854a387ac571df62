//! Deterministic simulations: validators on the deterministic runtime over a simulated
//! network, with real consensus, the real state machine and the real state database, under
//! loss, crashes and partitions. Each scenario runs over several seeds, twice per seed, and
//! must replay identically.

use std::sync::Arc;
use std::time::Duration;

use cairn_node::block::{BlockCfg, CairnBlock, digest_bytes, public_key_bytes};
use cairn_node::engine::{self, Channels, Marshal, Timing, ValidatorConfig};
use cairn_node::mempool::{Mempool, MempoolConfig};
use cairn_node::node::NodeShared;
use cairn_node::state::Dbs;
use cairn_state::{Genesis, GenesisAccount, GenesisValidator, Params};
use cairn_types::{Address, Amount, SecretKey, Transfer, Tx, TxBody};
use commonware_consensus::types::{Epoch, Height, Round, View};
use commonware_cryptography::{Signer as _, ed25519};
use commonware_glue::simulate::{
    action::{Action, Crash, Schedule},
    engine::{EngineDefinition, InitContext},
    exit::ProcessedHeightAtLeast,
    plan::PlanBuilder,
    processed::ProcessedHeight,
    property::Property,
    reporter::MonitorReporter,
    tracker::ProgressTracker,
};
use commonware_glue::stateful::db::DatabaseSet;
use commonware_p2p::simulated::Link;
use commonware_runtime::{Clock as _, Handle, Quota, Spawner as _, Supervisor as _, deterministic};
use commonware_utils::{NZU32, TryCollect as _, ordered::Set, probability};

const CHAIN: &str = "cairn-sim";

fn sender(i: usize) -> SecretKey {
    SecretKey::from_seed([200u8.wrapping_add(i as u8); 32])
}

#[derive(Clone)]
struct Node {
    marshal: Marshal,
    shared: Arc<NodeShared>,
}

impl ProcessedHeight for Node {
    async fn processed_height(&self) -> u64 {
        self.marshal.get_processed().await.map_or(0, |p| p.height().get())
    }
}

#[derive(Clone)]
struct Cairn {
    keys: Vec<ed25519::PrivateKey>,
    genesis: Genesis,
    block_cfg: BlockCfg,
}

impl Cairn {
    fn new(n: u64) -> Self {
        let keys: Vec<ed25519::PrivateKey> = (0..n).map(ed25519::PrivateKey::from_seed).collect();
        let validators = keys
            .iter()
            .map(|k| GenesisValidator {
                address: Address(public_key_bytes(&k.public_key())),
                stake: Amount::from_crn(1_000).unwrap(),
            })
            .collect();
        let accounts = (0..n as usize)
            .map(|i| GenesisAccount {
                address: sender(i).address(),
                balance: Amount::from_crn(1_000_000).unwrap(),
            })
            .collect();
        let genesis = Genesis { chain_id: CHAIN.into(), params: Params::default(), accounts, validators };
        Cairn { keys, genesis, block_cfg: BlockCfg { max_txs: 512, max_tx_bytes_total: 1 << 20 } }
    }

    fn genesis_block() -> CairnBlock {
        let t = <Dbs<deterministic::Context> as DatabaseSet<deterministic::Context>>::initial_sync_targets();
        CairnBlock::genesis(t.root, t.range, CHAIN)
    }
}

impl EngineDefinition for Cairn {
    type PublicKey = ed25519::PublicKey;
    type Engine = Handle<()>;
    type State = Node;

    fn participants(&self) -> Vec<ed25519::PublicKey> {
        self.keys.iter().map(|k| k.public_key()).collect()
    }

    fn channels(&self) -> Vec<(u64, Quota)> {
        engine::channels::ALL.iter().map(|id| (*id, Quota::per_second(NZU32!(1024)))).collect()
    }

    fn max_message_size(&self) -> u32 {
        engine::max_message_size(self.keys.len() as u32, &self.block_cfg)
    }

    async fn init(&self, ctx: InitContext<'_, ed25519::PublicKey>) -> (Handle<()>, Node) {
        let InitContext { context, index, public_key, oracle, channels, monitor, .. } = ctx;
        let mut ch = channels.into_iter();
        let channels = Channels {
            votes: ch.next().unwrap(),
            certs: ch.next().unwrap(),
            resolver: ch.next().unwrap(),
            backfill: ch.next().unwrap(),
            broadcast: ch.next().unwrap(),
            txs: ch.next().unwrap(),
        };
        let participants: Set<_> = self.participants().into_iter().try_collect().unwrap();
        let mempool = Mempool::new(MempoolConfig::new(CHAIN, self.genesis.params.min_tx_fee));
        let shared = Arc::new(NodeShared::new(
            self.genesis.clone(),
            Self::genesis_block(),
            self.block_cfg.clone(),
            mempool,
        ));

        // Load: this node's own sender transfers to a fixed account every 40 ms.
        let load = shared.clone();
        let fee = self.genesis.params.min_tx_fee;
        context.child("load").spawn(move |ctx| async move {
            let key = sender(index);
            let to = SecretKey::from_seed([9; 32]).address();
            loop {
                ctx.sleep(Duration::from_millis(40)).await;
                if !load.ready() {
                    continue;
                }
                let account = load.account_view(&key.address());
                let nonce = load.mempool.lock().unwrap().next_nonce(&key.address(), account);
                let tx = Tx::sign(
                    &key,
                    CHAIN,
                    nonce,
                    fee,
                    TxBody::Transfer(Transfer { to, amount: Amount::from_base_units(1) }),
                );
                let _ = load.submit(tx);
            }
        });

        let pk = public_key.clone();
        let (handle, marshal) = engine::start_validator(
            context,
            ValidatorConfig {
                namespace: format!("{CHAIN}-consensus").into_bytes(),
                signer: self.keys[index].clone(),
                participants,
                partition_prefix: format!("validator-{index}"),
                timing: Timing { empty_block_wait: Duration::from_millis(50), ..Timing::default() },
            },
            shared.clone(),
            channels,
            oracle.manager(),
            oracle.control(public_key.clone()),
            move |stateful| MonitorReporter::new(pk, monitor, stateful),
        )
        .await;
        (handle, Node { marshal, shared })
    }

    fn start(engine: Handle<()>) -> Handle<()> {
        engine
    }
}

/// Every running node's executed state root matches the root the agreed block at its height
/// carries, and transactions were actually finalized.
#[derive(Clone)]
struct SameState;

impl Property<ed25519::PublicKey, Node> for SameState {
    fn name(&self) -> &str {
        "same_state"
    }

    fn check<'a>(
        &'a self,
        _tracker: &'a ProgressTracker<ed25519::PublicKey>,
        states: &'a [&'a Node],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let mut txs = 0;
            for node in states {
                let status = node.shared.status.read().unwrap().clone();
                if status.height == 0 {
                    continue;
                }
                txs += status.txs_finalized;
                for other in states {
                    let Some(block) = other.marshal.get_block(Height::new(status.height)).await else {
                        continue;
                    };
                    if hex::encode(digest_bytes(&block.inner().state_root)) != status.state_root {
                        return Err(format!("state roots differ at height {}", status.height));
                    }
                }
            }
            if txs == 0 {
                return Err("no transactions were finalized".into());
            }
            Ok(())
        })
    }
}

fn good() -> Link {
    Link {
        latency: Duration::from_millis(10),
        jitter: Duration::from_millis(5),
        success_rate: probability!(1.0),
    }
}

/// Run a plan over `seeds`, twice per seed, and require identical runs.
fn run_twice(make: impl Fn() -> PlanBuilder<Cairn>, seeds: std::ops::Range<u64>) {
    let first = make().seeds(seeds.clone()).run().unwrap();
    let second = make().seeds(seeds).run().unwrap();
    assert_eq!(first.len(), second.len());
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.state, b.state, "the same seed must replay identically");
    }
}

#[test]
fn one_validator_finalizes_transactions_deterministically() {
    run_twice(
        || {
            PlanBuilder::new(Cairn::new(1))
                .link(good())
                .exit_condition(ProcessedHeightAtLeast::new(15))
                .property(SameState)
                .timeout(Duration::from_secs(120))
        },
        0..3,
    );
}

#[test]
fn four_validators_agree_over_lossy_links() {
    run_twice(
        || {
            PlanBuilder::new(Cairn::new(4))
                .link(Link {
                    latency: Duration::from_millis(40),
                    jitter: Duration::from_millis(20),
                    success_rate: probability!(0.9),
                })
                .exit_condition(ProcessedHeightAtLeast::new(15))
                .property(SameState)
                .timeout(Duration::from_secs(300))
        },
        0..3,
    );
}

#[test]
fn seven_validators_agree() {
    run_twice(
        || {
            PlanBuilder::new(Cairn::new(7))
                .link(good())
                .exit_condition(ProcessedHeightAtLeast::new(10))
                .property(SameState)
                .timeout(Duration::from_secs(300))
        },
        0..2,
    );
}

#[test]
fn a_crashed_validator_restarts_and_a_partition_heals() {
    let make = || {
        let engine = Cairn::new(4);
        let p = engine.participants();
        let dead =
            Link { latency: Duration::from_secs(1), jitter: Duration::ZERO, success_rate: probability!(0.0) };
        let mut schedule = Schedule::new()
            .at(Duration::from_millis(1500), Action::Crash(p[0].clone()))
            .at(Duration::from_millis(4000), Action::Restart(p[0].clone()));
        for peer in &p[2..] {
            schedule = schedule.at(
                Duration::from_millis(5000),
                Action::UpdateLink { from: p[1].clone(), to: peer.clone(), link: dead.clone() },
            );
            schedule = schedule.at(
                Duration::from_millis(5000),
                Action::UpdateLink { from: peer.clone(), to: p[1].clone(), link: dead.clone() },
            );
        }
        schedule = schedule.at(Duration::from_millis(8000), Action::Heal(good()));
        PlanBuilder::new(engine)
            .link(good())
            .crash(Crash::Schedule(schedule))
            .crash(Crash::DelayRound {
                participants: vec![p[3].clone()],
                round: Round::new(Epoch::zero(), View::new(8)),
            })
            .exit_condition(ProcessedHeightAtLeast::new(30))
            .property(SameState)
            .timeout(Duration::from_secs(600))
    };
    run_twice(make, 0..2);
}
