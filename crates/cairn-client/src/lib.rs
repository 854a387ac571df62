//! A typed client for the Cairn node API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_client::Error> {
//! let client = cairn_client::Client::new("http://127.0.0.1:8080");
//! let status = client.status().await?;
//! println!("{} at height {}", status.chain_id, status.height);
//! # Ok(()) }
//! ```

pub mod keystore;

use std::time::Duration;

use cairn_types::api::{AccountView, ErrorBody, StatusView, TxLookup};
use cairn_types::{Address, Canonical, Receipt, Tx, TxHash};
use serde::de::DeserializeOwned;

/// What can go wrong talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node could not be reached.
    #[error("cannot reach the node at {url}: {source}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        source: reqwest::Error,
    },
    /// The node answered with an error.
    #[error("node refused ({status}): {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable code.
        code: String,
        /// Message.
        message: String,
    },
    /// The node's answer did not parse.
    #[error("unexpected answer from the node: {0}")]
    Decode(String),
    /// Waiting timed out.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
}

impl Error {
    /// The API error code, if the node answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether trying again later may succeed: the node was unreachable, slow, overloaded or
    /// failed internally. A refusal of the request itself (a 4xx answer) is not transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Timeout(..) => true,
            Error::Api { status, .. } => *status >= 500 || *status == 429,
            Error::Decode(_) => false,
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A client of one node.
#[derive(Clone, Debug)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for the node at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap_or_default();
        Client { base: base.trim_end_matches('/').to_owned(), http }
    }

    /// The node's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    async fn handle<T: DeserializeOwned>(
        &self,
        url: &str,
        resp: reqwest::Result<reqwest::Response>,
    ) -> Result<T> {
        let resp = resp.map_err(|source| Error::Unreachable { url: url.to_owned(), source })?;
        let status = resp.status();
        let bytes =
            resp.bytes().await.map_err(|source| Error::Unreachable { url: url.to_owned(), source })?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => Error::Api { status: status.as_u16(), code: b.error.code, message: b.error.message },
                Err(_) => Error::Api {
                    status: status.as_u16(),
                    code: "http_error".into(),
                    message: String::from_utf8_lossy(&bytes).into_owned(),
                },
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))
    }

    /// `GET` a path as JSON.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let resp = self.http.get(&url).send().await;
        self.handle(&url, resp).await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: &serde_json::Value) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let resp = self.http.post(&url).json(body).send().await;
        self.handle(&url, resp).await
    }

    /// Chain id, height and state root.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn status(&self) -> Result<StatusView> {
        self.get("/api/status").await
    }

    /// The chain's parameters.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn params(&self) -> Result<serde_json::Value> {
        let v: serde_json::Value = self.get("/api/params").await?;
        v.get("params").cloned().ok_or_else(|| Error::Decode("no params".into()))
    }

    /// An account.
    ///
    /// # Errors
    /// [`Error`].
    pub async fn account(&self, address: &Address) -> Result<AccountView> {
        self.get(&format!("/api/accounts/{address}")).await
    }

    /// Submit a signed transaction.
    ///
    /// # Errors
    /// [`Error::Api`] with the mempool's reason if refused.
    pub async fn submit(&self, tx: &Tx) -> Result<TxHash> {
        #[derive(serde::Deserialize)]
        struct Accepted {
            hash: TxHash,
        }
        let a: Accepted =
            self.post("/api/txs", &serde_json::json!({ "tx": hex::encode(tx.encode()) })).await?;
        Ok(a.hash)
    }

    /// Submit many transactions; each gets its own result.
    ///
    /// # Errors
    /// [`Error`] if the batch as a whole is refused.
    pub async fn submit_batch(&self, txs: &[Tx]) -> Result<Vec<Result<TxHash, String>>> {
        let hexes: Vec<String> = txs.iter().map(|t| hex::encode(t.encode())).collect();
        let v: serde_json::Value = self.post("/api/txs/batch", &serde_json::json!({ "txs": hexes })).await?;
        let results =
            v.get("results").and_then(|r| r.as_array()).ok_or_else(|| Error::Decode("no results".into()))?;
        Ok(results
            .iter()
            .map(|r| match r.get("hash").and_then(|h| h.as_str()) {
                Some(h) => h.parse().map_err(|_| "bad hash".to_string()),
                None => {
                    Err(r.pointer("/error/code").and_then(|c| c.as_str()).unwrap_or("unknown").to_string())
                }
            })
            .collect())
    }

    /// Where a transaction is.
    ///
    /// # Errors
    /// [`Error::Api`] with code `not_found` if the node does not know it.
    pub async fn tx(&self, hash: &TxHash) -> Result<TxLookup> {
        self.get(&format!("/api/txs/{hash}")).await
    }

    /// Wait until a transaction is in a finalized block and return its receipt.
    ///
    /// # Errors
    /// [`Error::Timeout`], or [`Error`] talking to the node.
    pub async fn wait_for(&self, hash: &TxHash, timeout: Duration) -> Result<(u64, Receipt)> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.tx(hash).await {
                Ok(TxLookup::Committed { height, receipt, .. }) => return Ok((height, receipt)),
                Ok(TxLookup::Pending { .. }) => {}
                Err(e) if e.code() == Some("not_found") => {}
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(timeout, format!("transaction {hash}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Subscribe to the node's event stream (finalized blocks and chain events), optionally
    /// only one job's. Each item is one event as JSON.
    ///
    /// # Errors
    /// [`Error::Decode`] if the WebSocket cannot be opened.
    pub async fn events(
        &self,
        job: Option<&cairn_types::JobId>,
    ) -> Result<impl futures::Stream<Item = serde_json::Value> + use<>> {
        use futures::StreamExt as _;
        let ws = self.base.replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
        let url = match job {
            Some(j) => format!("{ws}/api/events?job={j}"),
            None => format!("{ws}/api/events"),
        };
        let (stream, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .map_err(|e| Error::Decode(format!("{url}: {e}")))?;
        Ok(stream.filter_map(|m| async move {
            match m {
                Ok(tokio_tungstenite::tungstenite::Message::Text(t)) => serde_json::from_str(t.as_str()).ok(),
                _ => None,
            }
        }))
    }

    /// Wait until the node has loaded its state and reached `height`.
    ///
    /// # Errors
    /// [`Error::Timeout`].
    pub async fn wait_for_height(&self, height: u64, timeout: Duration) -> Result<StatusView> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(s) = self.status().await
                && s.ready
                && s.height >= height
            {
                return Ok(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout(timeout, format!("height {height} at {}", self.base)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
