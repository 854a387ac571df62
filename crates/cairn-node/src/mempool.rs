//! The mempool: transactions waiting for a block.
//!
//! Entry checks what can be checked without executing: size, chain id, signature, minimum fee,
//! nonce not already used, and that the sender can pay the fees of what it has queued. Each
//! sender's transactions are kept in nonce order; block building takes the highest fee among
//! each sender's next ready transaction, so fee priority never breaks nonce order. The pool is
//! bounded in bytes and per sender; when full, a higher-fee transaction evicts the lowest-fee
//! one from the back of another sender's queue. After a block, included and stale transactions
//! (nonce already used) leave, as do transactions that waited too long.
//!
//! A transaction leaves the pool only once a finalized block holds it or it can never apply,
//! so nothing acknowledged is lost while the node runs; clients resubmit after a restart.

use std::collections::{BTreeMap, BinaryHeap, HashMap};

use cairn_types::{Address, Amount, Canonical, MAX_TX_BYTES, Tx, TxHash};

/// Why the pool refused a transaction. Each has a stable code for the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MempoolError {
    /// Over the transaction size limit.
    #[error("transaction is {0} bytes, over the {MAX_TX_BYTES}-byte limit")]
    TooLarge(usize),
    /// For another chain.
    #[error("transaction is for chain {found:?}, this is {expected:?}")]
    WrongChainId {
        /// Its chain id.
        found: String,
        /// This chain's id.
        expected: String,
    },
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// Below the minimum fee.
    #[error("fee {fee} is below the minimum {min}")]
    FeeTooLow {
        /// Fee offered.
        fee: Amount,
        /// Minimum.
        min: Amount,
    },
    /// The nonce was used by a committed transaction.
    #[error("nonce {nonce} already used (next is {next})")]
    NonceReplayed {
        /// Nonce given.
        nonce: u64,
        /// The account's next nonce.
        next: u64,
    },
    /// The nonce is too far ahead of the account's next nonce.
    #[error("nonce {nonce} is too far ahead (next is {next}, at most {max_ahead} ahead)")]
    NonceTooFarAhead {
        /// Nonce given.
        nonce: u64,
        /// The account's next nonce.
        next: u64,
        /// How far ahead is allowed.
        max_ahead: u64,
    },
    /// Already in the pool.
    #[error("transaction already in the pool")]
    Duplicate,
    /// Another transaction with this nonce is queued and this one does not pay enough more.
    #[error("a transaction with nonce {0} is queued; a replacement must pay at least 10% more fee")]
    Underpriced(u64),
    /// The sender cannot pay the fees of everything it queued.
    #[error("balance does not cover the fees of the queued transactions")]
    CannotPayFees,
    /// The sender has too many queued transactions.
    #[error("sender has {0} queued transactions, the most allowed")]
    SenderFull(usize),
    /// The pool is full of better-paying transactions.
    #[error("mempool is full")]
    PoolFull,
}

impl MempoolError {
    /// A stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            MempoolError::TooLarge(_) => "too_large",
            MempoolError::WrongChainId { .. } => "wrong_chain_id",
            MempoolError::BadSignature => "bad_signature",
            MempoolError::FeeTooLow { .. } => "fee_too_low",
            MempoolError::NonceReplayed { .. } => "nonce_replayed",
            MempoolError::NonceTooFarAhead { .. } => "nonce_too_far_ahead",
            MempoolError::Duplicate => "duplicate",
            MempoolError::Underpriced(_) => "underpriced",
            MempoolError::CannotPayFees => "cannot_pay_fees",
            MempoolError::SenderFull(_) => "sender_full",
            MempoolError::PoolFull => "mempool_full",
        }
    }
}

/// Limits of the pool.
#[derive(Clone, Debug)]
pub struct MempoolConfig {
    /// The chain id transactions must name.
    pub chain_id: String,
    /// Minimum fee.
    pub min_fee: Amount,
    /// Total encoded bytes held.
    pub max_bytes: usize,
    /// Transactions per sender.
    pub max_per_sender: usize,
    /// How far past the account's next nonce a transaction may be queued.
    pub max_nonce_ahead: u64,
    /// Blocks a transaction may wait before it is dropped.
    pub max_age_blocks: u64,
}

impl MempoolConfig {
    /// Defaults for a chain.
    pub fn new(chain_id: &str, min_fee: Amount) -> Self {
        MempoolConfig {
            chain_id: chain_id.to_owned(),
            min_fee,
            max_bytes: 64 * 1024 * 1024,
            max_per_sender: 256,
            max_nonce_ahead: 256,
            max_age_blocks: 600,
        }
    }
}

/// What the pool knows of an account from committed state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccountView {
    /// Next nonce.
    pub nonce: u64,
    /// Balance.
    pub balance: Amount,
}

#[derive(Clone, Debug)]
struct Entry {
    tx: Tx,
    hash: TxHash,
    size: usize,
    added_at: u64,
}

/// The pool.
#[derive(Debug)]
pub struct Mempool {
    cfg: MempoolConfig,
    senders: HashMap<Address, BTreeMap<u64, Entry>>,
    hashes: HashMap<TxHash, (Address, u64)>,
    bytes: usize,
    height: u64,
}

impl Mempool {
    /// An empty pool.
    pub fn new(cfg: MempoolConfig) -> Self {
        Mempool { cfg, senders: HashMap::new(), hashes: HashMap::new(), bytes: 0, height: 0 }
    }

    /// Transactions held.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Encoded bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Every sender with queued transactions.
    pub fn senders(&self) -> Vec<Address> {
        self.senders.keys().copied().collect()
    }

    /// True if the pool holds this transaction.
    pub fn contains(&self, hash: &TxHash) -> bool {
        self.hashes.contains_key(hash)
    }

    /// The next nonce a sender should use, counting what it has queued contiguously.
    pub fn next_nonce(&self, sender: &Address, account: AccountView) -> u64 {
        let mut next = account.nonce;
        if let Some(q) = self.senders.get(sender) {
            while q.contains_key(&next) {
                next = next.saturating_add(1);
            }
        }
        next
    }

    /// Check and add a transaction; `account` is the sender's committed state.
    ///
    /// # Errors
    /// A [`MempoolError`] saying why it was refused; the pool is unchanged then.
    pub fn insert(&mut self, tx: Tx, account: AccountView) -> Result<TxHash, MempoolError> {
        let encoded = tx.encode();
        let size = encoded.len();
        if size > MAX_TX_BYTES {
            return Err(MempoolError::TooLarge(size));
        }
        if tx.chain_id != self.cfg.chain_id {
            return Err(MempoolError::WrongChainId {
                found: tx.chain_id.clone(),
                expected: self.cfg.chain_id.clone(),
            });
        }
        if tx.fee < self.cfg.min_fee {
            return Err(MempoolError::FeeTooLow { fee: tx.fee, min: self.cfg.min_fee });
        }
        if tx.nonce < account.nonce {
            return Err(MempoolError::NonceReplayed { nonce: tx.nonce, next: account.nonce });
        }
        if tx.nonce > account.nonce.saturating_add(self.cfg.max_nonce_ahead) {
            return Err(MempoolError::NonceTooFarAhead {
                nonce: tx.nonce,
                next: account.nonce,
                max_ahead: self.cfg.max_nonce_ahead,
            });
        }
        let hash = TxHash(*blake3::hash(&encoded).as_bytes());
        if self.hashes.contains_key(&hash) {
            return Err(MempoolError::Duplicate);
        }
        tx.verify_signature().map_err(|_| MempoolError::BadSignature)?;

        let sender = tx.sender;
        let queue = self.senders.get(&sender);
        let replacing = queue.and_then(|q| q.get(&tx.nonce)).map(|e| (e.tx.fee, e.size));
        if let Some((old_fee, _)) = replacing {
            let needed = old_fee.checked_add(old_fee.checked_bps(1_000).unwrap_or(Amount::MAX));
            if needed.is_none_or(|n| tx.fee < n) {
                return Err(MempoolError::Underpriced(tx.nonce));
            }
        } else if queue.map_or(0, BTreeMap::len) >= self.cfg.max_per_sender {
            return Err(MempoolError::SenderFull(self.cfg.max_per_sender));
        }
        // Fees of everything this sender would have queued must be payable.
        let queued_fees = queue
            .map(|q| {
                q.values().filter(|e| e.tx.nonce != tx.nonce).map(|e| e.tx.fee.base_units()).sum::<u128>()
            })
            .unwrap_or(0);
        if queued_fees.checked_add(tx.fee.base_units()).is_none_or(|f| f > account.balance.base_units()) {
            return Err(MempoolError::CannotPayFees);
        }
        let freed = replacing.map_or(0, |(_, s)| s);
        while self.bytes.saturating_sub(freed).saturating_add(size) > self.cfg.max_bytes {
            if !self.evict_cheaper_than(tx.fee, &sender) {
                return Err(MempoolError::PoolFull);
            }
        }
        if replacing.is_some() {
            self.remove(&sender, tx.nonce);
        }
        let entry = Entry { tx, hash, size, added_at: self.height };
        self.bytes = self.bytes.saturating_add(size);
        self.hashes.insert(hash, (sender, entry.tx.nonce));
        self.senders.entry(sender).or_default().insert(entry.tx.nonce, entry);
        Ok(hash)
    }

    fn remove(&mut self, sender: &Address, nonce: u64) -> Option<Entry> {
        let q = self.senders.get_mut(sender)?;
        let e = q.remove(&nonce)?;
        if q.is_empty() {
            self.senders.remove(sender);
        }
        self.hashes.remove(&e.hash);
        self.bytes = self.bytes.saturating_sub(e.size);
        Some(e)
    }

    /// Drop the lowest-fee transaction at the back of another sender's queue, if it pays less
    /// than `fee`. Taking from the back keeps every queue contiguous.
    fn evict_cheaper_than(&mut self, fee: Amount, not: &Address) -> bool {
        let victim = self
            .senders
            .iter()
            .filter(|(a, _)| *a != not)
            .filter_map(|(a, q)| q.last_key_value().map(|(n, e)| (e.tx.fee, *a, *n)))
            .filter(|(f, _, _)| *f < fee)
            .min();
        match victim {
            Some((_, a, n)) => self.remove(&a, n).is_some(),
            None => false,
        }
    }

    /// Transactions for a block: each sender's queue in nonce order from its committed nonce,
    /// highest fee first across senders, up to `max_txs` and `max_bytes`.
    pub fn select(&self, max_txs: usize, max_bytes: usize, nonce_of: impl Fn(&Address) -> u64) -> Vec<Tx> {
        // (fee, sender, nonce) of each sender's next ready transaction.
        let mut heap = BinaryHeap::new();
        for (a, q) in &self.senders {
            let next = nonce_of(a);
            if let Some(e) = q.get(&next) {
                heap.push((e.tx.fee, std::cmp::Reverse(*a), next));
            }
        }
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some((_, std::cmp::Reverse(a), n)) = heap.pop() {
            if out.len() >= max_txs {
                break;
            }
            let Some(q) = self.senders.get(&a) else { continue };
            let Some(e) = q.get(&n) else { continue };
            if bytes.saturating_add(e.size) > max_bytes {
                continue;
            }
            bytes = bytes.saturating_add(e.size);
            out.push(e.tx.clone());
            let next = n.saturating_add(1);
            if let Some(e) = q.get(&next) {
                heap.push((e.tx.fee, std::cmp::Reverse(a), next));
            }
        }
        out
    }

    /// A block was finalized at `height`: drop what it included, what can no longer apply
    /// (nonces below the account's), and what waited more than `max_age_blocks`.
    pub fn on_finalized(&mut self, height: u64, included: &[TxHash], nonce_of: impl Fn(&Address) -> u64) {
        self.height = height;
        for h in included {
            if let Some((a, n)) = self.hashes.get(h).copied() {
                self.remove(&a, n);
            }
        }
        let max_age = self.cfg.max_age_blocks;
        let mut drop = Vec::new();
        for (a, q) in &self.senders {
            let next = nonce_of(a);
            for (n, e) in q {
                if *n < next || height.saturating_sub(e.added_at) > max_age {
                    drop.push((*a, *n));
                }
            }
        }
        for (a, n) in drop {
            self.remove(&a, n);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::arithmetic_side_effects)]

    use super::*;
    use cairn_types::{Heartbeat, SecretKey, TxBody};

    const CHAIN: &str = "cairn-test";

    fn key(i: u8) -> SecretKey {
        SecretKey::from_seed([i; 32])
    }

    fn tx(k: &SecretKey, nonce: u64, fee: u128) -> Tx {
        Tx::sign(k, CHAIN, nonce, Amount::from_base_units(fee), TxBody::Heartbeat(Heartbeat {}))
    }

    fn rich() -> AccountView {
        AccountView { nonce: 0, balance: Amount::from_base_units(1_000_000_000) }
    }

    fn pool() -> Mempool {
        Mempool::new(MempoolConfig::new(CHAIN, Amount::from_base_units(10)))
    }

    #[test]
    fn entry_checks_refuse_what_could_never_apply() {
        let mut p = pool();
        let k = key(1);
        let mut bad = tx(&k, 0, 100);
        bad.signature.0[0] ^= 1;
        assert_eq!(p.insert(bad, rich()), Err(MempoolError::BadSignature));
        let other = Tx::sign(&k, "other", 0, Amount::from_base_units(100), TxBody::Heartbeat(Heartbeat {}));
        assert!(matches!(p.insert(other, rich()), Err(MempoolError::WrongChainId { .. })));
        assert!(matches!(p.insert(tx(&k, 0, 1), rich()), Err(MempoolError::FeeTooLow { .. })));
        let used = AccountView { nonce: 5, ..rich() };
        assert!(matches!(p.insert(tx(&k, 4, 100), used), Err(MempoolError::NonceReplayed { .. })));
        assert!(matches!(p.insert(tx(&k, 5 + 257, 100), used), Err(MempoolError::NonceTooFarAhead { .. })));
        let poor = AccountView { nonce: 0, balance: Amount::from_base_units(150) };
        assert!(p.insert(tx(&k, 0, 100), poor).is_ok());
        assert_eq!(p.insert(tx(&k, 1, 100), poor), Err(MempoolError::CannotPayFees));
        assert_eq!(p.insert(tx(&k, 0, 100), poor), Err(MempoolError::Duplicate));
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn selection_keeps_nonce_order_per_sender_and_prefers_higher_fees() {
        let mut p = pool();
        let (a, b) = (key(1), key(2));
        p.insert(tx(&a, 1, 900), rich()).unwrap(); // high fee but waits for nonce 0
        p.insert(tx(&a, 0, 20), rich()).unwrap();
        p.insert(tx(&b, 0, 500), rich()).unwrap();
        p.insert(tx(&b, 2, 999), rich()).unwrap(); // gap: not ready
        let picked: Vec<(u8, u64)> = p
            .select(10, usize::MAX, |_| 0)
            .iter()
            .map(|t| (if t.sender == a.address() { 1 } else { 2 }, t.nonce))
            .collect();
        assert_eq!(picked, vec![(2, 0), (1, 0), (1, 1)]);
        assert_eq!(p.select(1, usize::MAX, |_| 0).len(), 1);
    }

    #[test]
    fn a_replacement_must_pay_ten_percent_more() {
        let mut p = pool();
        let k = key(1);
        p.insert(tx(&k, 0, 100), rich()).unwrap();
        let same_nonce =
            Tx::sign(&k, CHAIN, 0, Amount::from_base_units(105), TxBody::Heartbeat(Heartbeat {}));
        assert_eq!(p.insert(same_nonce, rich()), Err(MempoolError::Underpriced(0)));
        let better = Tx::sign(&k, CHAIN, 0, Amount::from_base_units(110), TxBody::Heartbeat(Heartbeat {}));
        let h = p.insert(better, rich()).unwrap();
        assert_eq!(p.len(), 1);
        assert!(p.contains(&h));
    }

    #[test]
    fn a_full_pool_evicts_the_cheapest_tail_for_a_better_fee_and_stays_bounded() {
        let size = tx(&key(1), 0, 100).encode().len();
        let mut cfg = MempoolConfig::new(CHAIN, Amount::from_base_units(10));
        cfg.max_bytes = size * 3;
        let mut p = Mempool::new(cfg);
        for i in 0..3 {
            p.insert(tx(&key(1), i, 100 + u128::from(i as u8)), rich()).unwrap();
        }
        assert_eq!(p.insert(tx(&key(2), 0, 50), rich()), Err(MempoolError::PoolFull));
        p.insert(tx(&key(2), 0, 500), rich()).unwrap();
        assert!(p.bytes() <= size * 3);
        // The evicted one was sender 1's last (nonce 2), so its queue stays contiguous.
        let picked = p.select(10, usize::MAX, |_| 0);
        assert_eq!(picked.len(), 3);
    }

    #[test]
    fn a_flood_from_one_sender_is_capped() {
        let mut cfg = MempoolConfig::new(CHAIN, Amount::from_base_units(10));
        cfg.max_per_sender = 8;
        let mut p = Mempool::new(cfg);
        for i in 0..8 {
            p.insert(tx(&key(1), i, 100), rich()).unwrap();
        }
        assert_eq!(p.insert(tx(&key(1), 8, 100), rich()), Err(MempoolError::SenderFull(8)));
        assert!(p.insert(tx(&key(2), 0, 100), rich()).is_ok());
    }

    #[test]
    fn finalized_blocks_remove_included_stale_and_old_transactions() {
        let mut p = pool();
        let k = key(1);
        let h0 = p.insert(tx(&k, 0, 100), rich()).unwrap();
        p.insert(tx(&k, 1, 100), rich()).unwrap();
        p.insert(tx(&k, 2, 100), rich()).unwrap();
        p.insert(tx(&key(2), 7, 100), rich()).unwrap();
        // Block 1 included nonce 0 and, through another node, nonce 1.
        p.on_finalized(1, &[h0], |a| if *a == k.address() { 2 } else { 0 });
        assert_eq!(p.len(), 2);
        p.on_finalized(1_000, &[], |_| 0);
        assert!(p.is_empty(), "waited too long");
        assert_eq!(p.bytes(), 0);
    }
}
