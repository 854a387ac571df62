//! Live token streams. A provider streams a reply's tokens as it makes them, before the task
//! commits. Each token extends a hash chain over the reply's token ids, and the provider signs
//! the chain at every event, so a client holds, at every point, the provider's signed word for
//! exactly what it was shown. The committed result carries the token ids: recomputing the chain
//! from them and comparing it with the last signed event shows whether the provider committed
//! what it streamed.

use serde::{Deserialize, Serialize};

use crate::{Address, Hash32, Result, Signature, TaskId, hash_domain};

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
}
