//! The chain's block: the consensus context it was proposed in, its parent, height, the
//! transactions, and the state it leads to (the canonical root of the state database plus the
//! operation range the database's sync target names).

use cairn_types::{Address, BlockHash, Canonical, Hash32, MAX_TX_BYTES, Tx, hash_domain};
use commonware_codec::{
    Buf, Encode, EncodeSize, Error as CodecError, FixedSize, MaxEncodeSize, RangeCfg, Read, ReadExt as _,
    Write,
};
use commonware_consensus::{
    Block as ConsensusBlock, BoundedBlock, CertifiableBlock, Heightable,
    simplex::types::Context,
    types::{Epoch, Height, Round, View},
};
use commonware_cryptography::{Digest as _, Digestible, Hasher as _, Sha256, Signer, ed25519, sha256};
use commonware_runtime::BufMut;
use commonware_storage::mmr::Location;
use commonware_utils::range::NonEmptyRange;

/// The consensus context embedded in each block: round (epoch, view), leader, parent.
pub type Ctx = Context<sha256::Digest, ed25519::PublicKey>;

/// Size limits every node applies when decoding blocks. Never lower them on a running chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockCfg {
    /// Transactions per block.
    pub max_txs: usize,
    /// Encoded transaction bytes per block.
    pub max_tx_bytes_total: usize,
}

impl Default for BlockCfg {
    fn default() -> Self {
        BlockCfg { max_txs: 20_000, max_tx_bytes_total: 8 * 1024 * 1024 }
    }
}

/// A block of the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CairnBlock {
    /// Consensus context at proposal (committed to by the digest).
    pub context: Ctx,
    /// Parent block's digest.
    pub parent: sha256::Digest,
    /// Height (genesis is 0).
    pub height: Height,
    /// Canonical root of the state after this block: proves current values and absences.
    pub state_root: sha256::Digest,
    /// Root of the state database's operation log (its sync target, with `range`).
    pub ops_root: sha256::Digest,
    /// Operation range of the state database after this block.
    pub range: NonEmptyRange<Location>,
    /// Transactions, in order.
    pub txs: Vec<Tx>,
}

impl Write for CairnBlock {
    fn write(&self, buf: &mut impl BufMut) {
        self.context.write(buf);
        self.parent.write(buf);
        self.height.write(buf);
        self.state_root.write(buf);
        self.ops_root.write(buf);
        self.range.write(buf);
        let txs: Vec<Vec<u8>> = self.txs.iter().map(Canonical::encode).collect();
        txs.write(buf);
    }
}

impl EncodeSize for CairnBlock {
    fn encode_size(&self) -> usize {
        let txs: Vec<Vec<u8>> = self.txs.iter().map(Canonical::encode).collect();
        self.context.encode_size()
            + self.parent.encode_size()
            + self.height.encode_size()
            + self.state_root.encode_size()
            + self.ops_root.encode_size()
            + self.range.encode_size()
            + txs.encode_size()
    }
}

impl Read for CairnBlock {
    type Cfg = BlockCfg;

    fn read_cfg(buf: &mut impl Buf, cfg: &BlockCfg) -> Result<Self, CodecError> {
        let context = Ctx::read(buf)?;
        let parent = sha256::Digest::read(buf)?;
        let height = Height::read(buf)?;
        let state_root = sha256::Digest::read(buf)?;
        let ops_root = sha256::Digest::read(buf)?;
        let range = NonEmptyRange::<Location>::read(buf)?;
        let txs_cfg = (RangeCfg::from(0..=cfg.max_txs), (RangeCfg::from(0..=MAX_TX_BYTES), ()));
        let raw = Vec::<Vec<u8>>::read_cfg(buf, &txs_cfg)?;
        let total: usize = raw.iter().map(Vec::len).sum();
        if total > cfg.max_tx_bytes_total {
            return Err(CodecError::Invalid("CairnBlock", "transactions exceed the block byte limit"));
        }
        let txs = raw
            .iter()
            .map(|b| Tx::decode(b))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CodecError::Invalid("CairnBlock", "a transaction is not canonically encoded"))?;
        Ok(CairnBlock { context, parent, height, state_root, ops_root, range, txs })
    }
}

impl Digestible for CairnBlock {
    type Digest = sha256::Digest;

    fn digest(&self) -> sha256::Digest {
        // Commits to everything, the embedded context included.
        Sha256::hash(&[self.encode().as_ref()])
    }
}

impl Heightable for CairnBlock {
    fn height(&self) -> Height {
        self.height
    }
}

impl ConsensusBlock for CairnBlock {
    fn parent(&self) -> sha256::Digest {
        self.parent
    }
}

impl CertifiableBlock for CairnBlock {
    type Context = Ctx;

    fn context(&self) -> Ctx {
        self.context.clone()
    }
}

impl BoundedBlock for CairnBlock {
    fn max_encode_size(cfg: &BlockCfg) -> usize {
        // Length prefixes are varints of at most 5 bytes.
        Ctx::MAX_ENCODE_SIZE
            + 3 * sha256::Digest::SIZE
            + Height::MAX_ENCODE_SIZE
            + NonEmptyRange::<Location>::MAX_ENCODE_SIZE
            + 5
            + cfg.max_txs.saturating_mul(5)
            + cfg.max_tx_bytes_total
    }
}

impl CairnBlock {
    /// The genesis block: height 0, committing to the empty state database. Genesis accounts
    /// and validators are written by the first block's execution.
    pub fn genesis(ops_root: sha256::Digest, range: NonEmptyRange<Location>, chain_id: &str) -> Self {
        // The genesis "leader" is a key derived from the chain id, so two chains never share a
        // genesis digest.
        let seed = u64::from_le_bytes(
            hash_domain("cairn genesis leader v1", &[chain_id.as_bytes()])[..8].try_into().unwrap_or([0; 8]),
        );
        let leader = <ed25519::PrivateKey as Signer>::from_seed(seed).public_key();
        CairnBlock {
            context: Context {
                round: Round::new(Epoch::zero(), View::zero()),
                leader,
                parent: (View::zero(), sha256::Digest::EMPTY),
            },
            parent: sha256::Digest::EMPTY,
            height: Height::zero(),
            state_root: sha256::Digest::EMPTY,
            ops_root,
            range,
            txs: Vec::new(),
        }
    }

    /// The block as the state machine sees it. The beacon is derived from the parent digest
    /// and the round, which the proposer does not choose.
    pub fn to_state_block(&self) -> cairn_types::Block {
        let round = self.context.round;
        let beacon = hash_domain(
            "cairn beacon v1",
            &[self.parent.as_ref(), &round.epoch().get().to_le_bytes(), &round.view().get().to_le_bytes()],
        );
        cairn_types::Block {
            height: self.height.get(),
            parent: BlockHash(digest_bytes(&self.parent)),
            proposer: Address(public_key_bytes(&self.context.leader)),
            beacon: Hash32(beacon),
            txs: self.txs.clone(),
        }
    }
}

/// The 32 bytes of a digest.
pub fn digest_bytes(d: &sha256::Digest) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The 32 bytes of an ed25519 public key (the same bytes as a Cairn address).
pub fn public_key_bytes(k: &ed25519::PublicKey) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(k.as_ref());
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use cairn_types::{Amount, Heartbeat, SecretKey, TxBody};
    use commonware_codec::Decode as _;

    fn block(txs: Vec<Tx>) -> CairnBlock {
        let mut b = CairnBlock::genesis(
            sha256::Digest::EMPTY,
            commonware_utils::non_empty_range!(Location::new(0), Location::new(1)),
            "cairn-test",
        );
        b.height = Height::new(1);
        b.txs = txs;
        b
    }

    fn tx(n: u64) -> Tx {
        Tx::sign(
            &SecretKey::from_seed([1; 32]),
            "cairn-test",
            n,
            Amount::from_base_units(1000),
            TxBody::Heartbeat(Heartbeat {}),
        )
    }

    #[test]
    fn blocks_round_trip_and_the_digest_covers_the_transactions() {
        let b = block(vec![tx(0), tx(1)]);
        let bytes = b.encode();
        let back = CairnBlock::decode_cfg(bytes.clone(), &BlockCfg::default()).unwrap();
        assert_eq!(back, b);
        assert_ne!(block(vec![tx(0)]).digest(), b.digest());
        assert!(bytes.len() <= CairnBlock::max_encode_size(&BlockCfg::default()));
    }

    #[test]
    fn blocks_over_the_limits_or_with_bad_transactions_do_not_decode() {
        let b = block(vec![tx(0), tx(1), tx(2)]);
        let tight = BlockCfg { max_txs: 2, max_tx_bytes_total: 1 << 20 };
        assert!(CairnBlock::decode_cfg(b.encode(), &tight).is_err());
        let tiny = BlockCfg { max_txs: 10, max_tx_bytes_total: 100 };
        assert!(CairnBlock::decode_cfg(b.encode(), &tiny).is_err());
        let mut bytes = b.encode().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff; // the last signature byte: still decodes as bytes, not as the same tx
        let decoded = CairnBlock::decode_cfg(bytes, &BlockCfg::default()).unwrap();
        assert!(decoded.txs[2].verify_signature().is_err());
        let mut trailing = b.encode().to_vec();
        trailing.push(0);
        assert!(CairnBlock::decode_cfg(trailing, &BlockCfg::default()).is_err());
    }

    #[test]
    fn genesis_differs_per_chain() {
        let r = commonware_utils::non_empty_range!(Location::new(0), Location::new(1));
        assert_ne!(
            CairnBlock::genesis(sha256::Digest::EMPTY, r.clone(), "a").digest(),
            CairnBlock::genesis(sha256::Digest::EMPTY, r, "b").digest()
        );
    }
}
