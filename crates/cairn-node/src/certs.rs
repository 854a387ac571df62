//! Recent consensus certificates, so a proposer can embed its parent's certificate in the
//! block it builds (the application's `propose` is not handed it).
//!
//! The consensus reporter feeds the cache synchronously with every notarization, certification
//! and finalization the voter reports (live, and on journal replay after a restart). A leader's
//! parent is never below the last finalized view, so older entries are dropped; a cap bounds
//! the cache when nothing finalizes.

use std::collections::BTreeMap;
use std::sync::Mutex;

use commonware_consensus::types::{Round, View};
use commonware_cryptography::sha256;

use crate::block::{BlockFinalization, BlockNotarization, ParentCert};

/// The most views the cache holds.
pub const MAX_CACHED_VIEWS: usize = 256;

#[derive(Debug, Default)]
struct Entry {
    notarization: Option<BlockNotarization>,
    finalization: Option<BlockFinalization>,
}

#[derive(Debug, Default)]
struct Inner {
    by_view: BTreeMap<View, Entry>,
    finalized: View,
}

/// Certificates of recent views.
#[derive(Debug, Default)]
pub struct CertCache {
    inner: Mutex<Inner>,
}

impl CertCache {
    /// Remember a notarization (also what a certification carries).
    pub fn notarized(&self, n: BlockNotarization) {
        let view = n.proposal.round.view();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if view < inner.finalized {
            return;
        }
        let e = inner.by_view.entry(view).or_default();
        if e.notarization.is_none() {
            e.notarization = Some(n);
        }
        Self::prune(&mut inner);
    }

    /// Remember a finalization.
    pub fn finalized(&self, f: BlockFinalization) {
        let view = f.proposal.round.view();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if view < inner.finalized {
            return;
        }
        inner.finalized = view;
        let e = inner.by_view.entry(view).or_default();
        if e.finalization.is_none() {
            e.finalization = Some(f);
        }
        Self::prune(&mut inner);
    }

    fn prune(inner: &mut Inner) {
        let floor = inner.finalized;
        inner.by_view.retain(|v, _| *v >= floor);
        while inner.by_view.len() > MAX_CACHED_VIEWS {
            inner.by_view.pop_first();
        }
    }

    /// The certificate of `payload` in `round`, a notarization if known, else a finalization.
    pub fn get(&self, round: Round, payload: &sha256::Digest) -> Option<ParentCert> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = inner.by_view.get(&round.view())?;
        let fits = |r: Round, p: &sha256::Digest| r == round && p == payload;
        if let Some(n) = e.notarization.as_ref().filter(|n| fits(n.proposal.round, &n.proposal.payload)) {
            return Some(ParentCert::Notarized(n.clone()));
        }
        e.finalization
            .as_ref()
            .filter(|f| fits(f.proposal.round, &f.proposal.payload))
            .map(|f| ParentCert::Finalized(f.clone()))
    }

    /// How many views are cached.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).by_view.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use commonware_consensus::simplex::{
        scheme::ed25519::Scheme,
        types::{Finalize, Notarize, Proposal},
    };
    use commonware_consensus::types::Epoch;
    use commonware_cryptography::{Hasher as _, Sha256, Signer as _, ed25519};
    use commonware_parallel::Sequential;
    use commonware_utils::ordered::Set;

    fn scheme() -> Scheme {
        let key = ed25519::PrivateKey::from_seed(7);
        Scheme::signer(b"ns", Set::from_iter_dedup([key.public_key()]), key).unwrap()
    }

    fn round(v: u64) -> Round {
        Round::new(Epoch::zero(), View::new(v))
    }

    fn digest(v: u64) -> sha256::Digest {
        Sha256::hash(&[&v.to_le_bytes()])
    }

    fn notarization(s: &Scheme, v: u64) -> BlockNotarization {
        let p = Proposal::new(round(v), View::new(v - 1), digest(v));
        let votes = [Notarize::sign(s, p).unwrap()];
        BlockNotarization::from_notarizes(s, commonware_utils::non_empty![@votes.iter()], &Sequential)
            .unwrap()
    }

    fn finalization(s: &Scheme, v: u64) -> BlockFinalization {
        let p = Proposal::new(round(v), View::new(v - 1), digest(v));
        let votes = [Finalize::sign(s, p).unwrap()];
        BlockFinalization::from_finalizes(s, commonware_utils::non_empty![@votes.iter()], &Sequential)
            .unwrap()
    }

    #[test]
    fn the_cache_prefers_notarizations_and_forgets_below_finalization() {
        let s = scheme();
        let cache = CertCache::default();
        assert!(cache.get(round(1), &digest(1)).is_none());
        cache.finalized(finalization(&s, 1));
        assert!(matches!(cache.get(round(1), &digest(1)), Some(ParentCert::Finalized(_))));
        cache.notarized(notarization(&s, 1));
        assert!(matches!(cache.get(round(1), &digest(1)), Some(ParentCert::Notarized(_))));
        assert!(cache.get(round(1), &digest(2)).is_none());
        for v in 2..=400 {
            cache.notarized(notarization(&s, v));
        }
        assert_eq!(cache.len(), MAX_CACHED_VIEWS);
        assert!(cache.get(round(400), &digest(400)).is_some());
        cache.finalized(finalization(&s, 390));
        assert_eq!(cache.len(), 11);
        assert!(cache.get(round(389), &digest(389)).is_none());
        assert!(matches!(cache.get(round(390), &digest(390)), Some(ParentCert::Notarized(_))));
        cache.notarized(notarization(&s, 5));
        assert!(cache.get(round(5), &digest(5)).is_none());
    }
}
