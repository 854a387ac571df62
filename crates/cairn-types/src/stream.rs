//! Live token streams. A provider streams a reply's tokens as it makes them, before the task
//! commits. Each token extends a hash chain over the reply's token ids, and the provider signs
//! the chain at every event, so a client holds, at every point, the provider's signed word for
//! exactly what it was shown. The committed result carries the token ids: recomputing the chain
//! from them and comparing it with the last signed event shows whether the provider committed
//! what it streamed.
//!
//! The commitment also carries each reply's chain end ([`StreamEnd`]), so the chain itself can
//! judge a signed event against it: a [`crate::ReportStream`] whose signed chain is not a
//! prefix of the committed reply slashes the provider. Auditors recompute the ends with the
//! output, so a provider cannot commit ends that differ from its own output either.

use borsh::{BorshDeserialize, BorshSerialize};
use serde::{Deserialize, Serialize};

use crate::{Address, ContentId, Hash32, Result, Signature, TaskId, hash_domain};

/// Replies past this position in a task are neither streamed nor covered by the commitment.
pub const MAX_STREAM_ENDS: usize = 1024;

/// Longest reply, in tokens, that stream evidence can carry.
pub const MAX_EVIDENCE_TOKENS: usize = 16_384;

/// Where one committed reply's stream ends: its token count and the chain over all its tokens.
/// Requests that stream nothing (embeddings, errors) end at `n = 0` with the chain's start.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize, Serialize, Deserialize)]
pub struct StreamEnd {
    /// Tokens in the committed reply.
    pub n: u64,
    /// The chain over them.
    pub chain: Hash32,
}

/// What audits compare: the output alone when nothing streams, otherwise the output bound to
/// its stream ends (so an auditor that re-runs reports a mismatch for forged ends).
pub fn claim(output: &ContentId, ends: &[StreamEnd]) -> ContentId {
    if ends.is_empty() {
        return *output;
    }
    let mut parts: Vec<u8> = Vec::with_capacity(ends.len().saturating_mul(40));
    for e in ends {
        parts.extend_from_slice(&e.n.to_le_bytes());
        parts.extend_from_slice(&e.chain.0);
    }
    ContentId(hash_domain("cairn claim with streams v1", &[&output.0, &parts]))
}

/// The stream ends of a task's replies, in request order, given each reply's token ids
/// (`None` or empty for requests that stream nothing); at most [`MAX_STREAM_ENDS`].
pub fn ends_of<'a>(task: &TaskId, replies: impl IntoIterator<Item = Option<&'a [u32]>>) -> Vec<StreamEnd> {
    replies
        .into_iter()
        .take(MAX_STREAM_ENDS)
        .enumerate()
        .map(|(i, ids)| {
            let ids = ids.unwrap_or(&[]);
            StreamEnd { n: ids.len() as u64, chain: chain_of(task, i as u64, ids) }
        })
        .collect()
}

/// What a signed event shows against a committed reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// The event is a point of the committed reply: no fault.
    Consistent,
    /// The provider signed tokens it did not commit.
    Mismatch,
    /// The evidence is not enough to decide (the committed tokens given do not match the
    /// committed end).
    BadEvidence,
}

/// Judge a signed point `(n, chain, last)` of reply `index` against its committed end, with
/// the committed reply's tokens where the point is neither the end nor past it.
pub fn judge(
    task: &TaskId,
    index: u64,
    end: &StreamEnd,
    n: u64,
    chain: &Hash32,
    last: bool,
    tokens: &[u32],
) -> Judgement {
    if last || n >= end.n {
        // The end, or past it: the signed point must be the committed end itself.
        let same = n == end.n && *chain == end.chain;
        return if same { Judgement::Consistent } else { Judgement::Mismatch };
    }
    if tokens.len() as u64 != end.n || chain_of(task, index, tokens) != end.chain {
        return Judgement::BadEvidence;
    }
    let Ok(n) = usize::try_from(n) else { return Judgement::BadEvidence };
    match tokens.get(..n) {
        Some(prefix) if chain_of(task, index, prefix) == *chain => Judgement::Consistent,
        Some(_) => Judgement::Mismatch,
        None => Judgement::BadEvidence,
    }
}

/// The chain of a reply before any token: bound to its task and its index in the task.
pub fn chain_start(task: &TaskId, index: u64) -> Hash32 {
    Hash32(hash_domain("cairn stream chain v1", &[&task.0, &index.to_le_bytes()]))
}

/// The chain after one more token.
pub fn chain_next(chain: &Hash32, id: u32) -> Hash32 {
    Hash32(hash_domain("cairn stream token v1", &[&chain.0, &id.to_le_bytes()]))
}

/// The chain of a whole list of token ids.
pub fn chain_of(task: &TaskId, index: u64, ids: &[u32]) -> Hash32 {
    ids.iter().fold(chain_start(task, index), |c, id| chain_next(&c, *id))
}

/// One event of a live stream: a token, or the end of a reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEvent {
    /// The request's index in its task.
    pub index: u64,
    /// Tokens streamed so far, this one included.
    pub n: u64,
    /// The token (absent on the final event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    /// Text new since the previous event.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub delta: String,
    /// On the final event: `stop` or `length`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish: Option<String>,
    /// The chain over the first `n` tokens.
    pub chain: Hash32,
    /// The provider's signature over [`StreamEvent::signed_bytes`].
    pub sig: Signature,
}

impl StreamEvent {
    /// What the provider signs: the task, the request, the count, the chain, and whether the
    /// reply ended there.
    pub fn signed_bytes(task: &TaskId, index: u64, n: u64, chain: &Hash32, last: bool) -> Vec<u8> {
        let mut m = b"cairn stream event v1".to_vec();
        m.extend_from_slice(&task.0);
        m.extend_from_slice(&index.to_le_bytes());
        m.extend_from_slice(&n.to_le_bytes());
        m.extend_from_slice(&chain.0);
        m.push(u8::from(last));
        m
    }

    /// Check the provider's signature.
    ///
    /// # Errors
    /// [`crate::Error::BadSignature`] when it is not `provider`'s over this event.
    pub fn verify(&self, task: &TaskId, provider: &Address) -> Result<()> {
        let bytes = Self::signed_bytes(task, self.index, self.n, &self.chain, self.finish.is_some());
        provider.verify(&bytes, &self.sig)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKey;

    #[test]
    fn a_signed_event_verifies_only_for_its_task_provider_and_chain() {
        let key = SecretKey::from_seed([3; 32]);
        let task = TaskId([9; 32]);
        let chain = chain_of(&task, 0, &[5, 6, 7]);
        assert_eq!(chain, chain_next(&chain_of(&task, 0, &[5, 6]), 7));
        assert_ne!(chain, chain_of(&task, 1, &[5, 6, 7]));
        let sig = key.sign(&StreamEvent::signed_bytes(&task, 0, 3, &chain, false));
        let e = StreamEvent { index: 0, n: 3, id: Some(7), delta: "x".into(), finish: None, chain, sig };
        e.verify(&task, &key.address()).unwrap();
        assert!(e.verify(&TaskId([8; 32]), &key.address()).is_err());
        assert!(e.verify(&task, &SecretKey::from_seed([4; 32]).address()).is_err());
        let forged = StreamEvent { chain: chain_of(&task, 0, &[5, 6, 8]), ..e.clone() };
        assert!(forged.verify(&task, &key.address()).is_err());
        let ended = StreamEvent { finish: Some("stop".into()), ..e };
        assert!(ended.verify(&task, &key.address()).is_err(), "the end flag is signed");
        let json = serde_json::to_string(&ended).unwrap();
        assert_eq!(serde_json::from_str::<StreamEvent>(&json).unwrap(), ended);
    }

    #[test]
    fn a_signed_point_is_judged_against_the_committed_end() {
        let task = TaskId([1; 32]);
        let ids = [10, 11, 12, 13];
        let ends = ends_of(&task, [Some(&ids[..]), None]);
        assert_eq!(ends.len(), 2);
        assert_eq!(ends[1], StreamEnd { n: 0, chain: chain_start(&task, 1) });
        let end = &ends[0];
        let at = |n: usize| chain_of(&task, 0, &ids[..n]);
        // Prefixes and the end of the committed reply are consistent.
        for n in 0..=4 {
            assert_eq!(judge(&task, 0, end, n as u64, &at(n), false, &ids), Judgement::Consistent, "n = {n}");
        }
        assert_eq!(judge(&task, 0, end, 4, &at(4), true, &[]), Judgement::Consistent);
        // A different token at 2, an early end, a longer reply: mismatches.
        let other = chain_of(&task, 0, &[10, 11, 99]);
        assert_eq!(judge(&task, 0, end, 3, &other, false, &ids), Judgement::Mismatch);
        assert_eq!(judge(&task, 0, end, 2, &at(2), true, &[]), Judgement::Mismatch);
        let longer = chain_next(&at(4), 7);
        assert_eq!(judge(&task, 0, end, 5, &longer, false, &[]), Judgement::Mismatch);
        // Tokens that are not the committed reply decide nothing.
        assert_eq!(judge(&task, 0, end, 3, &other, false, &[10, 11, 99, 13]), Judgement::BadEvidence);
        assert_eq!(judge(&task, 0, end, 3, &other, false, &[]), Judgement::BadEvidence);
        // The claim binds the ends, and is the output alone when nothing streams.
        let out = ContentId([5; 32]);
        assert_eq!(claim(&out, &[]), out);
        assert_ne!(claim(&out, &ends), out);
        assert_ne!(claim(&out, &ends), claim(&out, &ends[..1]));
    }
}
