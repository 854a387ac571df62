//! The chain's block: the consensus context it was proposed in, its parent and the parent's
//! consensus certificate (the source of the block's beacon), height, the transactions, and the
//! state it leads to (the canonical root of the state database plus the operation range the
//! database's sync target names).

use cairn_types::{
    Address, BlockHash, Canonical, Fault, FaultKind, Hash32, MAX_BLOCK_FAULTS, MAX_TX_BYTES, Tx, hash_domain,
};
use commonware_codec::{
    Buf, Encode, EncodeSize, Error as CodecError, FixedSize, MaxEncodeSize, RangeCfg, Read, ReadExt as _,
    Write,
};
use commonware_consensus::{
    Block as ConsensusBlock, BoundedBlock, CertifiableBlock, Heightable, Viewable as _,
    simplex::{
        scheme::ed25519::Scheme,
        types::{
            Attributable as _, ConflictingFinalize, ConflictingNotarize, Context, Finalization, Notarization,
            NullifyFinalize,
        },
    },
    types::{Epoch, Height, Round, View},
};
use commonware_cryptography::{
    Digest as _, Digestible, Hasher as _, Sha256, Signer, ed25519, ed25519::certificate::Certificate, sha256,
};
use commonware_runtime::BufMut;
use commonware_storage::mmr::Location;
use commonware_utils::ordered::Set;
use commonware_utils::range::NonEmptyRange;

/// The consensus context embedded in each block: round (epoch, view), leader, parent.
pub type Ctx = Context<sha256::Digest, ed25519::PublicKey>;

/// The most validators a block's embedded parent certificate may name when decoding. Part of
/// the block format's size bound: never lower it on a running chain.
pub const MAX_VALIDATORS: usize = 1024;

/// A notarization of a block (its proposal and the notarize signatures of a quorum).
pub type BlockNotarization = Notarization<Scheme, sha256::Digest>;
/// A finalization of a block (its proposal and the finalize signatures of a quorum).
pub type BlockFinalization = Finalization<Scheme, sha256::Digest>;

/// The consensus certificate of a block's parent, embedded in the block so that every node
/// derives the block's beacon from the block's own bytes (any quorum of signatures makes a
/// valid certificate, so it cannot be re-derived from local consensus state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParentCert {
    /// The parent is the genesis block (which has no certificate); also the genesis block's own
    /// value.
    Genesis,
    /// The parent's notarization.
    Notarized(BlockNotarization),
    /// The parent's finalization.
    Finalized(BlockFinalization),
}

impl ParentCert {
    /// The certified proposal and its certificate, unless genesis.
    pub fn parts(
        &self,
    ) -> Option<(&commonware_consensus::simplex::types::Proposal<sha256::Digest>, &Certificate)> {
        match self {
            ParentCert::Genesis => None,
            ParentCert::Notarized(n) => Some((&n.proposal, &n.certificate)),
            ParentCert::Finalized(f) => Some((&f.proposal, &f.certificate)),
        }
    }

    /// Whether the certificate is valid for `verifier`'s participants.
    pub fn verify<R: rand_core::CryptoRng>(&self, rng: &mut R, verifier: &Scheme) -> bool {
        let strategy = commonware_parallel::Sequential;
        match self {
            ParentCert::Genesis => false,
            ParentCert::Notarized(n) => n.verify(rng, verifier, &strategy),
            ParentCert::Finalized(f) => f.verify(rng, verifier, &strategy),
        }
    }

    /// The largest encoding of a parent certificate.
    pub fn max_encode_size() -> usize {
        1 + BlockNotarization::max_encode_size(MAX_VALIDATORS as u32)
            .max(BlockFinalization::max_encode_size(MAX_VALIDATORS as u32))
    }
}

impl Write for ParentCert {
    fn write(&self, buf: &mut impl BufMut) {
        match self {
            ParentCert::Genesis => 0u8.write(buf),
            ParentCert::Notarized(n) => {
                1u8.write(buf);
                n.write(buf);
            }
            ParentCert::Finalized(f) => {
                2u8.write(buf);
                f.write(buf);
            }
        }
    }
}

impl EncodeSize for ParentCert {
    fn encode_size(&self) -> usize {
        1 + match self {
            ParentCert::Genesis => 0,
            ParentCert::Notarized(n) => n.encode_size(),
            ParentCert::Finalized(f) => f.encode_size(),
        }
    }
}

impl Read for ParentCert {
    type Cfg = ();

    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        match u8::read(buf)? {
            0 => Ok(ParentCert::Genesis),
            1 => Ok(ParentCert::Notarized(BlockNotarization::read_cfg(buf, &MAX_VALIDATORS)?)),
            2 => Ok(ParentCert::Finalized(BlockFinalization::read_cfg(buf, &MAX_VALIDATORS)?)),
            t => Err(CodecError::InvalidEnum(t)),
        }
    }
}

/// Signed proof of a validator's consensus fault: two messages it signed for one view that an
/// honest validator never signs together. Carried in blocks so the chain can slash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultProof {
    /// Notarize votes for two different blocks.
    ConflictingNotarize(ConflictingNotarize<Scheme, sha256::Digest>),
    /// Finalize votes for two different blocks.
    ConflictingFinalize(ConflictingFinalize<Scheme, sha256::Digest>),
    /// A nullify and a finalize vote.
    NullifyFinalize(NullifyFinalize<Scheme, sha256::Digest>),
}

/// Largest encoding of one fault proof (two votes: proposals, signer indices, signatures).
const MAX_FAULT_PROOF_BYTES: usize = 1024;

impl FaultProof {
    /// What the validator did.
    pub fn kind(&self) -> FaultKind {
        match self {
            FaultProof::ConflictingNotarize(_) => FaultKind::ConflictingNotarize,
            FaultProof::ConflictingFinalize(_) => FaultKind::ConflictingFinalize,
            FaultProof::NullifyFinalize(_) => FaultKind::NullifyFinalize,
        }
    }

    /// The signer's index among the participants.
    pub fn signer(&self) -> u32 {
        match self {
            FaultProof::ConflictingNotarize(c) => c.signer().get(),
            FaultProof::ConflictingFinalize(c) => c.signer().get(),
            FaultProof::NullifyFinalize(c) => c.signer().get(),
        }
    }

    /// The view both messages are for.
    pub fn view(&self) -> u64 {
        match self {
            FaultProof::ConflictingNotarize(c) => c.view().get(),
            FaultProof::ConflictingFinalize(c) => c.view().get(),
            FaultProof::NullifyFinalize(c) => c.view().get(),
        }
    }

    /// Whether both signatures verify for `verifier`'s participants.
    pub fn verify<R: rand_core::CryptoRng>(&self, rng: &mut R, verifier: &Scheme) -> bool {
        let strategy = commonware_parallel::Sequential;
        match self {
            FaultProof::ConflictingNotarize(c) => c.verify(rng, verifier, &strategy),
            FaultProof::ConflictingFinalize(c) => c.verify(rng, verifier, &strategy),
            FaultProof::NullifyFinalize(c) => c.verify(rng, verifier, &strategy),
        }
    }

    /// The fault as the state machine sees it; `None` if the signer is not a participant.
    pub fn fault(&self, participants: &Set<ed25519::PublicKey>) -> Option<Fault> {
        let pk = participants.get(self.signer() as usize)?;
        Some(Fault { validator: Address(public_key_bytes(pk)), view: self.view(), kind: self.kind() })
    }
}

impl Write for FaultProof {
    fn write(&self, buf: &mut impl BufMut) {
        match self {
            FaultProof::ConflictingNotarize(c) => {
                0u8.write(buf);
                c.write(buf);
            }
            FaultProof::ConflictingFinalize(c) => {
                1u8.write(buf);
                c.write(buf);
            }
            FaultProof::NullifyFinalize(c) => {
                2u8.write(buf);
                c.write(buf);
            }
        }
    }
}

impl EncodeSize for FaultProof {
    fn encode_size(&self) -> usize {
        1 + match self {
            FaultProof::ConflictingNotarize(c) => c.encode_size(),
            FaultProof::ConflictingFinalize(c) => c.encode_size(),
            FaultProof::NullifyFinalize(c) => c.encode_size(),
        }
    }
}

impl Read for FaultProof {
    type Cfg = ();

    fn read_cfg(buf: &mut impl Buf, _: &()) -> Result<Self, CodecError> {
        let proof = match u8::read(buf)? {
            0 => FaultProof::ConflictingNotarize(ConflictingNotarize::read(buf)?),
            1 => FaultProof::ConflictingFinalize(ConflictingFinalize::read(buf)?),
            2 => FaultProof::NullifyFinalize(NullifyFinalize::read(buf)?),
            t => return Err(CodecError::InvalidEnum(t)),
        };
        if proof.encode_size() > MAX_FAULT_PROOF_BYTES {
            return Err(CodecError::Invalid("FaultProof", "too large"));
        }
        Ok(proof)
    }
}

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
    /// The parent's consensus certificate (the source of this block's beacon).
    pub parent_cert: ParentCert,
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
    /// Proven consensus faults (at most [`MAX_BLOCK_FAULTS`]).
    pub faults: Vec<FaultProof>,
}

impl Write for CairnBlock {
    fn write(&self, buf: &mut impl BufMut) {
        self.context.write(buf);
        self.parent.write(buf);
        self.parent_cert.write(buf);
        self.height.write(buf);
        self.state_root.write(buf);
        self.ops_root.write(buf);
        self.range.write(buf);
        let txs: Vec<Vec<u8>> = self.txs.iter().map(Canonical::encode).collect();
        txs.write(buf);
        self.faults.write(buf);
    }
}

impl EncodeSize for CairnBlock {
    fn encode_size(&self) -> usize {
        let txs: Vec<Vec<u8>> = self.txs.iter().map(Canonical::encode).collect();
        self.context.encode_size()
            + self.parent.encode_size()
            + self.parent_cert.encode_size()
            + self.height.encode_size()
            + self.state_root.encode_size()
            + self.ops_root.encode_size()
            + self.range.encode_size()
            + txs.encode_size()
            + self.faults.encode_size()
    }
}

impl Read for CairnBlock {
    type Cfg = BlockCfg;

    fn read_cfg(buf: &mut impl Buf, cfg: &BlockCfg) -> Result<Self, CodecError> {
        let context = Ctx::read(buf)?;
        let parent = sha256::Digest::read(buf)?;
        let parent_cert = ParentCert::read(buf)?;
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
        let faults = Vec::<FaultProof>::read_cfg(buf, &(RangeCfg::from(0..=MAX_BLOCK_FAULTS), ()))?;
        Ok(CairnBlock { context, parent, parent_cert, height, state_root, ops_root, range, txs, faults })
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
            + ParentCert::max_encode_size()
            + Height::MAX_ENCODE_SIZE
            + NonEmptyRange::<Location>::MAX_ENCODE_SIZE
            + 5
            + cfg.max_txs.saturating_mul(5)
            + cfg.max_tx_bytes_total
            + 5
            + MAX_BLOCK_FAULTS * MAX_FAULT_PROOF_BYTES
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
            parent_cert: ParentCert::Genesis,
            height: Height::zero(),
            state_root: sha256::Digest::EMPTY,
            ops_root,
            range,
            txs: Vec::new(),
            faults: Vec::new(),
        }
    }

    /// The block's beacon, a function of the block's bytes and the validator set only.
    ///
    /// With a parent certificate, it hashes ONE signature of it: that of the first signer, in
    /// cyclic index order after this block's leader (its proposer), present in the certificate.
    /// The proposer chooses which quorum of signatures to embed (and whether a notarization or
    /// a finalization), so it can make any of the first `f + 1` signers after itself the
    /// designated one, but it cannot change what an honest signer signed (ed25519 signatures
    /// are deterministic and unpredictable without the signer's key; a Byzantine designated
    /// signer colluding with the proposer can re-sign with other nonces). With a single validator the only signature is the proposer's own,
    /// which it then hashes: a one-validator chain trusts its validator. A child of genesis
    /// hashes the genesis digest and its round.
    pub fn beacon(&self, participants: &Set<ed25519::PublicKey>) -> [u8; 32] {
        let round = self.context.round;
        let epoch = round.epoch().get().to_le_bytes();
        let view = round.view().get().to_le_bytes();
        let designated = self
            .parent_cert
            .parts()
            .and_then(|(_, cert)| designated_signature(cert, participants, &self.context.leader));
        match designated {
            Some((index, signature)) => {
                let kind: &[u8] = match self.parent_cert {
                    ParentCert::Finalized(_) => b"finalize",
                    _ => b"notarize",
                };
                hash_domain(
                    "cairn beacon v2",
                    &[self.parent.as_ref(), &epoch, &view, kind, &index.to_le_bytes(), &signature],
                )
            }
            // Genesis parent (or, for a certificate no valid block carries, no signer found).
            None => hash_domain("cairn beacon v2 genesis", &[self.parent.as_ref(), &epoch, &view]),
        }
    }

    /// The block as the state machine sees it, with its beacon (see [`CairnBlock::beacon`]).
    pub fn to_state_block(&self, participants: &Set<ed25519::PublicKey>) -> cairn_types::Block {
        cairn_types::Block {
            height: self.height.get(),
            parent: BlockHash(digest_bytes(&self.parent)),
            proposer: Address(public_key_bytes(&self.context.leader)),
            beacon: Hash32(self.beacon(participants)),
            txs: self.txs.clone(),
            faults: self.faults.iter().filter_map(|f| f.fault(participants)).collect(),
        }
    }

    /// Check the carried fault proofs: each verifies, names a participant, and no validator's
    /// view appears twice.
    ///
    /// # Errors
    /// Why a proof does not hold.
    pub fn check_faults<R: rand_core::CryptoRng>(
        &self,
        verifier: &Scheme,
        rng: &mut R,
    ) -> Result<(), &'static str> {
        use commonware_cryptography::certificate::Scheme as _;
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.faults {
            if f.signer() as usize >= verifier.participants().len() {
                return Err("a fault proof names a signer outside the validator set");
            }
            if !seen.insert((f.signer(), f.view())) {
                return Err("a validator's fault in one view is carried twice");
            }
            if !f.verify(rng, verifier) {
                return Err("a fault proof does not verify");
            }
        }
        Ok(())
    }

    /// Check the embedded parent certificate against the block's own context (the rules a
    /// vote depends on): genesis exactly when the parent is `genesis`, otherwise a certificate
    /// of the parent digest in the parent's round, valid for `verifier`'s participants.
    ///
    /// # Errors
    /// Why the certificate does not fit the block.
    pub fn check_parent_cert<R: rand_core::CryptoRng>(
        &self,
        genesis: &sha256::Digest,
        verifier: &Scheme,
        rng: &mut R,
    ) -> Result<(), &'static str> {
        let (parent_view, parent_digest) = self.context.parent;
        if parent_digest != self.parent {
            return Err("the context's parent is not the block's parent");
        }
        if self.parent == *genesis {
            return match self.parent_cert {
                ParentCert::Genesis if parent_view == View::zero() => Ok(()),
                ParentCert::Genesis => Err("the genesis parent is not at view 0"),
                _ => Err("a child of genesis carries a certificate"),
            };
        }
        let Some((proposal, _)) = self.parent_cert.parts() else {
            return Err("the parent certificate is missing");
        };
        if proposal.payload != self.parent {
            return Err("the parent certificate certifies another block");
        }
        if proposal.round != Round::new(self.context.round.epoch(), parent_view) {
            return Err("the parent certificate is for another round");
        }
        if !self.parent_cert.verify(rng, verifier) {
            return Err("the parent certificate does not verify");
        }
        Ok(())
    }
}

/// The designated signature of a certificate for a block led by `leader`: the first signer
/// present after the leader in cyclic index order (the leader itself last). Returns the signer
/// index and the encoded signature.
pub fn designated_signature(
    cert: &Certificate,
    participants: &Set<ed25519::PublicKey>,
    leader: &ed25519::PublicKey,
) -> Option<(u32, Vec<u8>)> {
    let n = participants.len();
    if n == 0 {
        return None;
    }
    let leader = participants.position(leader).unwrap_or(n - 1);
    let signers: Vec<u32> = cert.signers.iter().map(|p| p.get()).collect();
    (1..=n).find_map(|offset| {
        let want = u32::try_from((leader + offset) % n).ok()?;
        let at = signers.binary_search(&want).ok()?;
        let signature = cert.signatures.get(at)?;
        Some((want, signature.encode().to_vec()))
    })
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
    use commonware_consensus::simplex::types::{Notarize, Proposal};
    use commonware_cryptography::certificate::Signers;
    use commonware_parallel::Sequential;
    use commonware_utils::Participant;

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
        // The last signature byte (before the empty fault list's length): still decodes as
        // bytes, not as the same tx.
        let last = bytes.len() - 2;
        bytes[last] ^= 0xff;
        let decoded = CairnBlock::decode_cfg(bytes, &BlockCfg::default()).unwrap();
        assert!(decoded.txs[2].verify_signature().is_err());
        let mut trailing = b.encode().to_vec();
        trailing.push(0);
        assert!(CairnBlock::decode_cfg(trailing, &BlockCfg::default()).is_err());
    }

    /// `n` validators' signing schemes, in participant order, and the participant set.
    fn committee(n: u64) -> (Vec<Scheme>, Set<ed25519::PublicKey>) {
        let keys: Vec<ed25519::PrivateKey> =
            (0..n).map(|i| ed25519::PrivateKey::from_seed(100 + i)).collect();
        let participants = Set::from_iter_dedup(keys.iter().map(|k| k.public_key()));
        let mut schemes: Vec<(usize, Scheme)> = keys
            .into_iter()
            .map(|k| {
                let at = participants.position(&k.public_key()).unwrap();
                (at, Scheme::signer(NAMESPACE, participants.clone(), k).unwrap())
            })
            .collect();
        schemes.sort_by_key(|(at, _)| *at);
        (schemes.into_iter().map(|(_, s)| s).collect(), participants)
    }

    const NAMESPACE: &[u8] = b"cairn-test-consensus";

    fn parent_proposal(parent: sha256::Digest) -> Proposal<sha256::Digest> {
        Proposal::new(Round::new(Epoch::zero(), View::new(4)), View::new(3), parent)
    }

    fn notarization(schemes: &[Scheme], signers: &[usize], parent: sha256::Digest) -> BlockNotarization {
        let votes: Vec<_> =
            signers.iter().map(|i| Notarize::sign(&schemes[*i], parent_proposal(parent)).unwrap()).collect();
        BlockNotarization::from_notarizes(
            &schemes[0],
            commonware_utils::non_empty![@votes.iter()],
            &Sequential,
        )
        .unwrap()
    }

    /// A block at view 5 led by validator `leader`, on a parent notarized at view 4.
    fn child(participants: &Set<ed25519::PublicKey>, leader: usize, cert: ParentCert) -> CairnBlock {
        let mut b = block(vec![tx(0)]);
        let parent = Sha256::hash(&[b"parent"]);
        b.context = Context {
            round: Round::new(Epoch::zero(), View::new(5)),
            leader: participants.get(leader).unwrap().clone(),
            parent: (View::new(4), parent),
        };
        b.parent = parent;
        b.height = Height::new(7);
        b.parent_cert = cert;
        b
    }

    /// Validator `who` notarizes two different blocks in one view.
    fn equivocation(schemes: &[Scheme], who: usize) -> FaultProof {
        let a = Notarize::sign(&schemes[who], parent_proposal(Sha256::hash(&[b"one"]))).unwrap();
        let b = Notarize::sign(&schemes[who], parent_proposal(Sha256::hash(&[b"two"]))).unwrap();
        FaultProof::ConflictingNotarize(ConflictingNotarize::new(a, b))
    }

    #[test]
    fn a_block_carries_verified_fault_proofs_to_the_state_machine() {
        let (schemes, participants) = committee(4);
        let verifier = Scheme::verifier(NAMESPACE, participants.clone());
        let mut rng = commonware_utils::sys_rng();
        let mut b = child(
            &participants,
            0,
            ParentCert::Notarized(notarization(&schemes, &[0, 1, 2], Sha256::hash(&[b"parent"]))),
        );
        b.faults = vec![equivocation(&schemes, 2)];
        let bytes = b.encode();
        assert!(bytes.len() <= CairnBlock::max_encode_size(&BlockCfg::default()));
        let back = CairnBlock::decode_cfg(bytes, &BlockCfg::default()).unwrap();
        assert_eq!(back, b);
        assert_eq!(back.check_faults(&verifier, &mut rng), Ok(()));
        let state = back.to_state_block(&participants);
        let offender = Address(public_key_bytes(participants.get(2).unwrap()));
        assert_eq!(
            state.faults,
            vec![Fault { validator: offender, view: 4, kind: FaultKind::ConflictingNotarize }]
        );
        // The same fault twice, or a proof signed for another committee, is refused.
        let mut twice = b.clone();
        twice.faults.push(equivocation(&schemes, 2));
        assert!(twice.check_faults(&verifier, &mut rng).is_err());
        let (strangers, _) = committee(5);
        let mut forged = b.clone();
        forged.faults = vec![equivocation(&strangers, 2)];
        assert!(forged.check_faults(&verifier, &mut rng).is_err());
        // More than a block may carry does not decode.
        let mut many = b.clone();
        many.faults = (0..=MAX_BLOCK_FAULTS).map(|_| equivocation(&schemes, 1)).collect();
        assert!(CairnBlock::decode_cfg(many.encode(), &BlockCfg::default()).is_err());
    }

    #[test]
    fn blocks_with_a_parent_certificate_round_trip_and_verify() {
        let (schemes, participants) = committee(4);
        let parent = Sha256::hash(&[b"parent"]);
        let verifier = Scheme::verifier(NAMESPACE, participants.clone());
        let genesis = sha256::Digest::EMPTY;
        let mut rng = commonware_utils::sys_rng();
        for cert in [
            ParentCert::Notarized(notarization(&schemes, &[0, 1, 2], parent)),
            ParentCert::Notarized(notarization(&schemes, &[0, 1, 2, 3], parent)),
        ] {
            let b = child(&participants, 0, cert);
            let bytes = b.encode();
            assert!(bytes.len() <= CairnBlock::max_encode_size(&BlockCfg::default()));
            let back = CairnBlock::decode_cfg(bytes, &BlockCfg::default()).unwrap();
            assert_eq!(back, b);
            assert_eq!(back.beacon(&participants), b.beacon(&participants));
            assert_eq!(back.check_parent_cert(&genesis, &verifier, &mut rng), Ok(()));
        }
        let good = child(&participants, 0, ParentCert::Notarized(notarization(&schemes, &[0, 1, 2], parent)));
        // A certificate of another block, of another round, or without a quorum is rejected.
        let other = child(
            &participants,
            0,
            ParentCert::Notarized(notarization(&schemes, &[0, 1, 2], Sha256::hash(&[b"other"]))),
        );
        assert!(other.check_parent_cert(&genesis, &verifier, &mut rng).is_err());
        let mut wrong_round = good.clone();
        wrong_round.context.parent.0 = View::new(3);
        assert!(wrong_round.check_parent_cert(&genesis, &verifier, &mut rng).is_err());
        let mut short = good.clone();
        if let ParentCert::Notarized(n) = &mut short.parent_cert {
            n.certificate.signers = Signers::new(4, [Participant::new(0), Participant::new(1)]).unwrap();
            n.certificate.signatures.truncate(2);
        }
        assert!(short.check_parent_cert(&genesis, &verifier, &mut rng).is_err());
        // A signature over another message does not verify.
        let mut forged = good.clone();
        if let ParentCert::Notarized(n) = &mut forged.parent_cert {
            n.certificate.signatures[1] =
                notarization(&schemes, &[0, 1, 2], Sha256::hash(&[b"other"])).certificate.signatures[1]
                    .clone();
        }
        assert!(forged.check_parent_cert(&genesis, &verifier, &mut rng).is_err());
        // A certificate from another validator set does not verify.
        let (strangers, _) = committee(5);
        let foreign =
            child(&participants, 0, ParentCert::Notarized(notarization(&strangers, &[0, 1, 2, 3], parent)));
        assert!(foreign.check_parent_cert(&genesis, &verifier, &mut rng).is_err());
        // Genesis exactly when the parent is genesis.
        let mut missing = good.clone();
        missing.parent_cert = ParentCert::Genesis;
        assert!(missing.check_parent_cert(&genesis, &verifier, &mut rng).is_err());
        let mut first = good.clone();
        first.parent = genesis;
        first.context.parent = (View::zero(), genesis);
        assert!(first.check_parent_cert(&genesis, &verifier, &mut rng).is_err());
        first.parent_cert = ParentCert::Genesis;
        assert_eq!(first.check_parent_cert(&genesis, &verifier, &mut rng), Ok(()));
        first.context.parent.0 = View::new(1);
        assert!(first.check_parent_cert(&genesis, &verifier, &mut rng).is_err());
    }

    #[test]
    fn the_beacon_follows_the_designated_signature_only() {
        let (schemes, participants) = committee(4);
        let parent = Sha256::hash(&[b"parent"]);
        let beacon = |leader: usize, signers: &[usize]| {
            child(&participants, leader, ParentCert::Notarized(notarization(&schemes, signers, parent)))
                .beacon(&participants)
        };
        // Leader 0: the designated signer is the first present among 1, 2, 3, then 0.
        let base = beacon(0, &[0, 1, 2]);
        assert_eq!(beacon(0, &[0, 1, 3]), base);
        assert_eq!(beacon(0, &[1, 2, 3]), base);
        assert_eq!(beacon(0, &[0, 1, 2, 3]), base);
        assert_ne!(beacon(0, &[0, 2, 3]), base);
        // Cyclic order: leader 2's designated signer is 3, then 0.
        assert_eq!(beacon(2, &[0, 1, 3]), beacon(2, &[1, 2, 3]));
        assert_ne!(beacon(2, &[0, 1, 2]), beacon(2, &[0, 1, 3]));
        // The proposer's own signature does not count; the designated one does.
        let mut b =
            child(&participants, 0, ParentCert::Notarized(notarization(&schemes, &[0, 1, 2], parent)));
        let other = notarization(&schemes, &[0, 1, 2], Sha256::hash(&[b"other"]));
        let ParentCert::Notarized(n) = &mut b.parent_cert else { unreachable!() };
        n.certificate.signatures[0] = other.certificate.signatures[0].clone();
        assert_eq!(b.beacon(&participants), base);
        let ParentCert::Notarized(n) = &mut b.parent_cert else { unreachable!() };
        n.certificate.signatures[1] = other.certificate.signatures[1].clone();
        assert_ne!(b.beacon(&participants), base);
        // The beacon differs between rounds on the same certificate, and from a child of genesis.
        let mut later =
            child(&participants, 0, ParentCert::Notarized(notarization(&schemes, &[0, 1, 2], parent)));
        later.context.round = Round::new(Epoch::zero(), View::new(6));
        assert_ne!(later.beacon(&participants), base);
        let mut genesis_child = later.clone();
        genesis_child.parent_cert = ParentCert::Genesis;
        assert_ne!(genesis_child.beacon(&participants), later.beacon(&participants));
        assert_eq!(later.to_state_block(&participants).beacon.0, later.beacon(&participants));
    }

    #[test]
    fn a_single_validator_beacon_hashes_its_own_signature() {
        let (schemes, participants) = committee(1);
        let parent = Sha256::hash(&[b"parent"]);
        let b = child(&participants, 0, ParentCert::Notarized(notarization(&schemes, &[0], parent)));
        let ParentCert::Notarized(n) = &b.parent_cert else { unreachable!() };
        let (index, signature) =
            designated_signature(&n.certificate, &participants, &b.context.leader).unwrap();
        assert_eq!((index, signature), (0, n.certificate.signatures[0].encode().to_vec()));
        let mut other = b.clone();
        let ParentCert::Notarized(n) = &mut other.parent_cert else { unreachable!() };
        n.certificate.signatures[0] =
            notarization(&schemes, &[0], Sha256::hash(&[b"other"])).certificate.signatures[0].clone();
        assert_ne!(other.beacon(&participants), b.beacon(&participants));
    }

    #[test]
    fn oversized_parent_certificates_do_not_decode() {
        let (schemes, participants) = committee(4);
        let parent = Sha256::hash(&[b"parent"]);
        let mut b =
            child(&participants, 0, ParentCert::Notarized(notarization(&schemes, &[0, 1, 2], parent)));
        let ParentCert::Notarized(n) = &mut b.parent_cert else { unreachable!() };
        let sig = n.certificate.signatures[0].clone();
        // A signer bitmap over more than MAX_VALIDATORS participants.
        n.certificate.signers = Signers::new(MAX_VALIDATORS as u32 + 1, [Participant::new(0)]).unwrap();
        n.certificate.signatures = vec![sig.clone()];
        assert!(CairnBlock::decode_cfg(b.encode(), &BlockCfg::default()).is_err());
        // More signatures than MAX_VALIDATORS.
        let ParentCert::Notarized(n) = &mut b.parent_cert else { unreachable!() };
        n.certificate.signers =
            Signers::new(MAX_VALIDATORS as u32, (0..MAX_VALIDATORS as u32).map(Participant::new)).unwrap();
        n.certificate.signatures = vec![sig.clone(); MAX_VALIDATORS];
        let at_limit = b.encode();
        assert!(at_limit.len() <= CairnBlock::max_encode_size(&BlockCfg::default()));
        assert!(CairnBlock::decode_cfg(at_limit, &BlockCfg::default()).is_ok());
        let ParentCert::Notarized(n) = &mut b.parent_cert else { unreachable!() };
        n.certificate.signers =
            Signers::new(MAX_VALIDATORS as u32 + 1, (0..=MAX_VALIDATORS as u32).map(Participant::new))
                .unwrap();
        n.certificate.signatures = vec![sig; MAX_VALIDATORS + 1];
        assert!(CairnBlock::decode_cfg(b.encode(), &BlockCfg::default()).is_err());
        // An unknown certificate kind.
        let good = child(&participants, 0, ParentCert::Genesis);
        let mut bytes = good.encode().to_vec();
        let at = Ctx::encode_size(&good.context) + sha256::Digest::SIZE;
        assert_eq!(bytes[at], 0);
        bytes[at] = 3;
        assert!(CairnBlock::decode_cfg(bytes, &BlockCfg::default()).is_err());
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
