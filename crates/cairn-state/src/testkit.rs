//! A chain in memory for tests, benchmarks and simulations: deterministic keys, signed
//! transactions with tracked nonces, blocks on demand, and independent checks of the
//! protocol's invariants (supply conservation, escrow balance).
//!
//! This is test support: it panics with a message when the chain refuses a block, which in
//! a test is the failure you want to see.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;

use borsh::BorshDeserialize;
use cairn_types::{
    Address, Amount, Block, BlockHash, Hash32, Receipt, SecretKey, StateRoot, Tx, TxBody, TxStatus,
    hash_domain,
};

use crate::model::{Deal, Job, Lease, Stake, Task, TaskState, Totals};
use crate::{Genesis, GenesisAccount, GenesisValidator, MemStore, Params, State, keys};

/// The chain id test chains use.
pub const CHAIN_ID: &str = "cairn-test";

/// The deterministic key number `n`.
pub fn key(n: u64) -> SecretKey {
    let seed = hash_domain("cairn testkit key v1", &[&n.to_le_bytes()]);
    SecretKey::from_seed(seed)
}

/// A chain in memory.
#[derive(Debug)]
pub struct TestChain {
    /// The state.
    pub state: State<MemStore>,
    /// Blocks applied, in order.
    pub blocks: Vec<Block>,
    /// Roots after each block.
    pub roots: Vec<StateRoot>,
    genesis: Genesis,
    nonces: BTreeMap<Address, u64>,
    pending: Vec<Tx>,
    /// Consensus faults the next block carries.
    pub faults: Vec<cairn_types::Fault>,
    validator: Address,
    /// Fee every transaction pays.
    pub fee: Amount,
}

impl TestChain {
    /// A chain whose validator is key 0 (1,000 CRN stake) and where each `(key, balance)` is
    /// funded.
    pub fn new(params: Params, funded: &[(&SecretKey, Amount)]) -> Self {
        let validator = key(0).address();
        let genesis = Genesis {
            chain_id: CHAIN_ID.into(),
            params,
            accounts: funded
                .iter()
                .map(|(k, b)| GenesisAccount { address: k.address(), balance: *b })
                .collect(),
            validators: vec![GenesisValidator {
                address: validator,
                stake: Amount::from_crn(1_000).unwrap(),
            }],
        };
        Self::from_genesis(genesis)
    }

    /// A chain from a genesis.
    pub fn from_genesis(genesis: Genesis) -> Self {
        let state = State::genesis(MemStore::new(), &genesis).expect("valid genesis");
        let fee = genesis.params.min_tx_fee;
        let validator = genesis.validators[0].address;
        let root = state.root();
        TestChain {
            state,
            blocks: Vec::new(),
            roots: vec![root],
            genesis,
            nonces: BTreeMap::new(),
            pending: Vec::new(),
            faults: Vec::new(),
            validator,
            fee,
        }
    }

    /// The genesis this chain started from.
    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    /// Height of the last block.
    pub fn height(&self) -> u64 {
        self.state.height()
    }

    /// Sign `body` from `who` with its next nonce.
    pub fn sign(&mut self, who: &SecretKey, body: TxBody) -> Tx {
        let addr = who.address();
        let nonce = match self.nonces.get(&addr) {
            Some(n) => *n,
            None => self.state.account(&addr).unwrap().nonce,
        };
        self.nonces.insert(addr, nonce + 1);
        Tx::sign(who, CHAIN_ID, nonce, self.fee, body)
    }

    /// Queue a transaction for the next block.
    pub fn push(&mut self, tx: Tx) {
        self.pending.push(tx);
    }

    /// Sign and queue.
    pub fn send(&mut self, who: &SecretKey, body: TxBody) {
        let tx = self.sign(who, body);
        self.push(tx);
    }

    /// The beacon the harness uses at `height`.
    pub fn beacon(height: u64) -> Hash32 {
        Hash32(hash_domain("cairn testkit beacon v1", &[&height.to_le_bytes()]))
    }

    /// Apply the queued transactions as the next block.
    pub fn next_block(&mut self) -> Vec<Receipt> {
        let txs = std::mem::take(&mut self.pending);
        let height = self.height() + 1;
        let block = Block {
            height,
            parent: self.blocks.last().map(Block::hash).unwrap_or(BlockHash::ZERO),
            proposer: self.validator,
            beacon: Self::beacon(height),
            txs,
            faults: std::mem::take(&mut self.faults),
        };
        let (root, receipts) = self.state.apply_block(&block).expect("block applies");
        self.blocks.push(block);
        self.roots.push(root);
        // Resynchronise nonces: rejected transactions did not use theirs.
        self.nonces.clear();
        receipts
    }

    /// Sign `body`, apply it alone in a block, and return its receipt.
    pub fn run(&mut self, who: &SecretKey, body: TxBody) -> Receipt {
        self.send(who, body);
        self.next_block().swap_remove(0)
    }

    /// Like [`TestChain::run`], but panics unless the transaction succeeded.
    pub fn ok(&mut self, who: &SecretKey, body: TxBody) -> Receipt {
        let name = body.name();
        let r = self.run(who, body);
        match &r {
            Receipt::Tx { status: TxStatus::Ok, .. } => r,
            other => panic!("{name} failed: {other:?}"),
        }
    }

    /// Apply `n` empty blocks.
    pub fn advance(&mut self, n: u64) -> Vec<Receipt> {
        let mut all = Vec::new();
        for _ in 0..n {
            all.extend(self.next_block());
        }
        all
    }

    fn scan<T: BorshDeserialize>(&self, prefix: u8) -> Vec<T> {
        self.state
            .store()
            .scan_prefix(&[prefix])
            .map(|(_, v)| T::try_from_slice(v).expect("record decodes"))
            .collect()
    }

    /// Every job, in key order.
    pub fn jobs(&self) -> Vec<Job> {
        self.scan(keys::JOB)
    }

    /// Every audit, dispute and canary in progress, in key order.
    pub fn audits(&self) -> Vec<crate::model::Audit> {
        let mut all: Vec<crate::model::Audit> = self.scan(keys::AUDIT);
        all.extend(self.scan::<crate::model::Audit>(keys::CANARY));
        all
    }

    /// Every task, in key order.
    pub fn all_tasks(&self) -> Vec<Task> {
        self.scan(keys::TASK)
    }

    /// Supply conservation, summed independently from every record in the store:
    /// balances + stakes + escrows + pools + burned = genesis supply + emitted.
    pub fn check_supply(&self) -> Result<(), String> {
        let mut held: u128 = 0;
        for a in self.scan::<crate::model::Account>(keys::ACCOUNT) {
            held += a.balance.base_units();
        }
        for s in self.scan::<Stake>(keys::STAKE) {
            held += s.bonded.base_units();
            held += s.unbonding.iter().map(|u| u.amount.base_units()).sum::<u128>();
        }
        for e in self.scan::<Amount>(keys::ESCROW) {
            held += e.base_units();
        }
        for l in self.scan::<Lease>(keys::LEASE) {
            held += l.escrow.base_units();
        }
        for d in self.scan::<Deal>(keys::DEAL) {
            held += d.escrow.base_units();
        }
        for a in self.scan::<crate::model::Audit>(keys::AUDIT) {
            held += a.challenger.map_or(0, |(_, bond)| bond.base_units());
        }
        let t: Totals = self.state.totals().unwrap();
        held += t.fee_pool.base_units()
            + t.provider_pool.base_units()
            + t.audit_pool.base_units()
            + t.burned.base_units();
        let expected = t.genesis_supply.base_units() + t.emitted.base_units();
        if held == expected {
            Ok(())
        } else {
            Err(format!("supply not conserved: held {held}, expected {expected}"))
        }
    }

    /// Every job's escrow holds exactly its reserve for each unfinished task, and the task
    /// states agree with the job's count.
    pub fn check_escrow(&self) -> Result<(), String> {
        for l in self.scan::<Lease>(keys::LEASE) {
            let accounted = l.paid.base_units() + l.refunded.base_units() + l.escrow.base_units();
            if accounted != l.deposit.base_units() {
                return Err(format!(
                    "lease {}: paid {} + refunded {} + escrow {} != deposit {}",
                    l.id.short(),
                    l.paid,
                    l.refunded,
                    l.escrow,
                    l.deposit
                ));
            }
            if l.closed_at.is_some() && !l.escrow.is_zero() {
                return Err(format!("closed lease {} still holds escrow", l.id.short()));
            }
        }
        let tasks = self.all_tasks();
        for j in self.jobs() {
            let held = self.state.escrow(&j.id).unwrap();
            let want = j.reserve_per_task.base_units() * u128::from(j.unfinished);
            if held.base_units() != want {
                return Err(format!(
                    "job {} escrow {} != {} unfinished × reserve",
                    j.id.short(),
                    held.base_units(),
                    want
                ));
            }
            let open = tasks.iter().filter(|t| t.job == j.id && !t.state.is_final()).count();
            if open != j.unfinished as usize {
                return Err(format!(
                    "job {} counts {} unfinished, tasks say {open}",
                    j.id.short(),
                    j.unfinished
                ));
            }
        }
        Ok(())
    }

    /// True when every task is settled or refunded.
    pub fn all_tasks_final(&self) -> bool {
        self.all_tasks().iter().all(|t| t.state.is_final())
    }

    /// The state of a task by job and index.
    pub fn task_state(&self, job: &cairn_types::JobId, index: u32) -> TaskState {
        self.state.task(&cairn_types::TaskId::derive(job, index)).unwrap().expect("task exists").state
    }
}
