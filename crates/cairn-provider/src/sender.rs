//! Signs and submits the provider's transactions one at a time, so nonces never collide.

use std::time::Duration;

use cairn_client::Client;
use cairn_types::{Amount, Receipt, SecretKey, Tx, TxBody, TxHash, TxStatus};
use tokio::sync::Mutex;
use tracing::warn;

/// A transaction sender for one account.
#[derive(Debug)]
pub struct Sender {
    client: Client,
    key: SecretKey,
    chain_id: String,
    fee: Amount,
    nonce: Mutex<Option<u64>>,
}

impl Sender {
    /// A sender.
    pub fn new(client: Client, key: SecretKey, chain_id: String, fee: Amount) -> Self {
        Sender { client, key, chain_id, fee, nonce: Mutex::new(None) }
    }

    /// Sign and submit; returns the hash once the mempool accepted it.
    ///
    /// # Errors
    /// The node's refusal after one retry with a fresh nonce.
    pub async fn submit(&self, body: TxBody) -> Result<TxHash, cairn_client::Error> {
        let mut nonce = self.nonce.lock().await;
        for attempt in 0..2 {
            let n = match *nonce {
                Some(n) if attempt == 0 => n,
                _ => self.client.account(&self.key.address()).await?.next_nonce,
            };
            let tx = Tx::sign(&self.key, &self.chain_id, n, self.fee, body.clone());
            match self.client.submit(&tx).await {
                Ok(h) => {
                    *nonce = Some(n.saturating_add(1));
                    return Ok(h);
                }
                Err(e)
                    if attempt == 0
                        && matches!(
                            e.code(),
                            Some("nonce_replayed" | "nonce_too_far_ahead" | "duplicate")
                        ) =>
                {
                    warn!(error = %e, "refreshing nonce");
                    *nonce = None;
                }
                Err(e) => {
                    *nonce = None;
                    return Err(e);
                }
            }
        }
        Err(cairn_client::Error::Decode("could not find a usable nonce".into()))
    }

    /// Submit and wait until a finalized block holds it; returns its status.
    ///
    /// # Errors
    /// As [`Sender::submit`], or a timeout.
    pub async fn submit_and_wait(
        &self,
        body: TxBody,
        timeout: Duration,
    ) -> Result<TxStatus, cairn_client::Error> {
        let hash = self.submit(body).await?;
        let (_, receipt) = self.client.wait_for(&hash, timeout).await?;
        Ok(match receipt {
            Receipt::Tx { status, .. } => status,
            Receipt::EndBlock { .. } => TxStatus::Ok,
        })
    }
}
