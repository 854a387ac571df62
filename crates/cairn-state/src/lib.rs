//! Cairn's deterministic state machine.
//!
//! One module per protocol component — [`bank`](crate::model::Account), staking, registry,
//! market, escrow, verify, storage, rewards — over an [`AuthenticatedKv`] store. The state
//! machine is sans-I/O and knows nothing of consensus: a [`Block`] in, a new [`StateRoot`]
//! and receipts out. Same blocks in ⇒ same root out: arithmetic is checked, there are no
//! floats, no clocks, no OS randomness, and every collection iterated is ordered.
//!
//! ```
//! use cairn_state::{Genesis, MemStore, State};
//! use cairn_types::{Amount, Block, Hash32, SecretKey, Transfer, Tx, TxBody, TxStatus, Receipt};
//!
//! let alice = SecretKey::from_seed([1; 32]);
//! let bob = SecretKey::from_seed([2; 32]).address();
//! let genesis = Genesis::from_toml(&format!(r#"
//!     chain_id = "cairn-doc"
//!     [[accounts]]
//!     address = "{a}"
//!     balance = "100 CRN"
//!     [[validators]]
//!     address = "{a}"
//!     stake = "10 CRN"
//! "#, a = alice.address())).unwrap();
//! let mut state = State::genesis(MemStore::new(), &genesis).unwrap();
//!
//! let tx = Tx::sign(&alice, "cairn-doc", 0, "0.001 CRN".parse().unwrap(),
//!     TxBody::Transfer(Transfer { to: bob, amount: "2.5 CRN".parse().unwrap() }));
//! let block = Block { height: 1, parent: Default::default(), proposer: alice.address(),
//!     beacon: Hash32::ZERO, txs: vec![tx], faults: vec![] };
//! let (_root, receipts) = state.apply_block(&block).unwrap();
//! assert!(matches!(receipts[0], Receipt::Tx { status: TxStatus::Ok, .. }));
//! assert_eq!(state.account(&bob).unwrap().balance.to_string(), "2.5 CRN");
//! ```

#![deny(clippy::unwrap_used, clippy::arithmetic_side_effects, clippy::float_arithmetic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::arithmetic_side_effects))]

mod bank;
mod ctx;
mod dispute;
mod escrow;
mod exec;
mod faults;
mod genesis;
pub mod keys;
mod lease;
mod market;
pub mod model;
mod params;
mod penalty;
mod registry;
mod render;
mod rewards;
mod sortition;
mod staking;
mod storage;
pub mod store;
mod streams;
pub mod testkit;
mod verify;
mod waiting;

use borsh::BorshDeserialize;
use cairn_types::{
    Address, Amount, Block, Canonical, DealId, JobId, JobSpec, LeaseId, Receipt, StateRoot, TaskId, Tx,
};

pub use exec::{Execution, execute, simulate};
pub use genesis::{Genesis, GenesisAccount, GenesisValidator};
pub use params::Params;
pub use sortition::audit_probability_bps;
pub use store::{AuthenticatedKv, MemProof, MemStore, StateView, StoreError, WriteSet, commit_writes};

use model::{Account, Audit, Deal, Job, KnownAnswer, Lease, Meta, Provider, Stake, Task, Totals};

pub use store::Layered;

/// Errors that stop a block: the store failed, the block does not follow the state, or an
/// invariant broke. Transaction content never causes one; it ends up in receipts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The store failed or holds corrupt data.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The block's height does not follow the state's.
    #[error("block height {got} does not follow state height (expected {expected})")]
    WrongHeight {
        /// The height the state expects next.
        expected: u64,
        /// The block's height.
        got: u64,
    },
    /// The store holds no chain (genesis was never applied).
    #[error("the store holds no chain state; initialise it from a genesis file")]
    NotInitialised,
    /// Genesis applied to a store that already holds a chain.
    #[error("the store already holds chain state")]
    AlreadyInitialised,
    /// The genesis file is invalid.
    #[error("genesis: {0}")]
    Genesis(String),
    /// A protocol invariant broke: a bug, reported rather than carried forward.
    #[error("invariant broken: {0}")]
    Invariant(String),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The chain state over a store.
#[derive(Debug)]
pub struct State<S> {
    store: S,
    meta: Meta,
}

fn read<T: BorshDeserialize>(view: &dyn StateView, key: &[u8]) -> Result<Option<T>> {
    match view.get(key)? {
        None => Ok(None),
        Some(bytes) => borsh::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Store(StoreError::Corrupt { key: format!("{key:02x?}"), reason: e.to_string() })
        }),
    }
}

impl<S: AuthenticatedKv> State<S> {
    /// Initialise an empty store from a genesis file.
    ///
    /// # Errors
    /// [`Error::Genesis`] if the genesis is invalid, [`Error::AlreadyInitialised`] if the
    /// store holds a chain, [`Error::Store`] if it fails.
    pub fn genesis(mut store: S, genesis: &Genesis) -> Result<Self> {
        genesis.validate()?;
        if store.get(keys::META)?.is_some() {
            return Err(Error::AlreadyInitialised);
        }
        let writes = genesis.writes()?;
        let meta = Meta { chain_id: genesis.chain_id.clone(), height: 0 };
        commit_writes(&mut store, writes)?;
        Ok(State { store, meta })
    }

    /// Open a store that already holds a chain.
    ///
    /// # Errors
    /// [`Error::NotInitialised`] for an empty store; [`Error::Store`] if it fails.
    pub fn open(store: S) -> Result<Self> {
        let meta = exec::read_meta(&store)?;
        Ok(State { store, meta })
    }

    /// Apply a block: execute it, write the result and commit.
    ///
    /// # Errors
    /// See [`execute`]; on error nothing is written.
    pub fn apply_block(&mut self, block: &Block) -> Result<(StateRoot, Vec<Receipt>)> {
        let Execution { writes, receipts } = execute(&self.store, block)?;
        let root = commit_writes(&mut self.store, writes)?;
        self.meta.height = block.height;
        Ok((root, receipts))
    }

    /// Run a transaction against the next block's state without changing anything.
    ///
    /// # Errors
    /// See [`simulate`].
    pub fn simulate(&self, tx: &Tx) -> Result<(Receipt, WriteSet)> {
        simulate(&self.store, tx)
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Give back the store.
    pub fn into_store(self) -> S {
        self.store
    }

    /// The chain id.
    pub fn chain_id(&self) -> &str {
        &self.meta.chain_id
    }

    /// Height of the last applied block.
    pub fn height(&self) -> u64 {
        self.meta.height
    }

    /// The committed root.
    pub fn root(&self) -> StateRoot {
        self.store.root()
    }
}

impl<S: StateView> State<S> {
    /// A read-only handle over any view, for queries. Height and chain id read as empty if the
    /// view holds no chain.
    pub fn from_view(store: S) -> Self {
        let meta = exec::read_meta(&store).unwrap_or(Meta { chain_id: String::new(), height: 0 });
        State { store, meta }
    }

    /// Height of the last applied block, as the view records it.
    pub fn view_height(&self) -> u64 {
        self.meta.height
    }

    /// Parameters.
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails.
    pub fn params(&self) -> Result<Params> {
        exec::read_params(&self.store)
    }

    /// An account (default if never used).
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails.
    pub fn account(&self, a: &Address) -> Result<Account> {
        Ok(read(&self.store, &keys::account(a))?.unwrap_or_default())
    }

    /// A stake (default if none).
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails.
    pub fn stake(&self, a: &Address) -> Result<Stake> {
        Ok(read(&self.store, &keys::stake(a))?.unwrap_or_default())
    }

    /// A provider.
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails.
    pub fn provider(&self, a: &Address) -> Result<Option<Provider>> {
        read(&self.store, &keys::provider(a))
    }

    /// All providers, by address.
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails.
    pub fn providers(&self) -> Result<Vec<Provider>> {
        let idx: Vec<Address> = read(&self.store, keys::PROVIDER_INDEX)?.unwrap_or_default();
        idx.iter().filter_map(|a| self.provider(a).transpose()).collect()
    }

    /// Validator addresses.
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails.
    pub fn validators(&self) -> Result<Vec<Address>> {
        Ok(read(&self.store, keys::VALIDATORS)?.unwrap_or_default())
    }

    /// A job.
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails.
    pub fn job(&self, id: &JobId) -> Result<Option<Job>> {
        read(&self.store, &keys::job(id))
    }

    /// A job's spec.
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails or the stored spec is corrupt.
    pub fn job_spec(&self, id: &JobId) -> Result<Option<JobSpec>> {
        match self.store.get(&keys::job_spec(id))? {
            None => Ok(None),
            Some(b) => JobSpec::decode(&b).map(Some).map_err(|e| {
                Error::Store(StoreError::Corrupt { key: "job spec".into(), reason: e.to_string() })
            }),
        }
    }

    /// The escrow a job still holds.
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails.
    pub fn escrow(&self, id: &JobId) -> Result<Amount> {
        Ok(read(&self.store, &keys::escrow(id))?.unwrap_or_default())
    }

    /// A task.
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails.
    pub fn task(&self, id: &TaskId) -> Result<Option<Task>> {
        read(&self.store, &keys::task(id))
    }

    /// All tasks of a job, by index.
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails.
    pub fn tasks(&self, job: &Job) -> Result<Vec<Task>> {
        (0..job.tasks).filter_map(|i| self.task(&TaskId::derive(&job.id, i)).transpose()).collect()
    }

    /// A task's audit or dispute in progress.
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails.
    pub fn audit(&self, id: &TaskId) -> Result<Option<Audit>> {
        read(&self.store, &keys::audit(id))
    }

    /// A canary in progress on a task with a known answer.
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails.
    pub fn canary(&self, id: &TaskId) -> Result<Option<Audit>> {
        read(&self.store, &keys::canary(id))
    }

    /// Verified results kept as canaries' known answers, oldest first.
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails.
    pub fn known_answers(&self) -> Result<Vec<KnownAnswer>> {
        Ok(read(&self.store, keys::KNOWN_ANSWERS)?.unwrap_or_default())
    }

    /// A lease.
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails.
    pub fn lease(&self, id: &LeaseId) -> Result<Option<Lease>> {
        read(&self.store, &keys::lease(id))
    }

    /// A storage deal.
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails.
    pub fn deal(&self, id: &DealId) -> Result<Option<Deal>> {
        read(&self.store, &keys::deal(id))
    }

    /// Supply counters and pools.
    ///
    /// # Errors
    /// [`Error::Store`] if the store fails.
    pub fn totals(&self) -> Result<Totals> {
        Ok(read(&self.store, keys::TOTALS)?.unwrap_or_default())
    }
}
