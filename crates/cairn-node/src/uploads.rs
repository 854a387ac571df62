//! Who may upload to this validator's blob endpoint, how much, and for how long.
//!
//! An upload must be signed by an account holding at least `min_balance` (see
//! [`cairn_types::upload`]); until a transaction names the blob (a job's workload or inputs, a
//! task's output, a storage deal, a lease) it counts against its account's quota of pending
//! bytes and blobs, and if none names it within `ttl_secs` it is deleted. Pending uploads are
//! written down (`uploads/<id>`: account, size, time) so a restart forgets none of them. A
//! lease's saved volume is kept while it is the lease's last save (`uploads/<id>.volume`) and
//! deleted once a newer save replaces it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use cairn_blobs::{BlobStore, Refusal, UploadGate};
use cairn_types::upload::{SIGNATURE_HEADER, UPLOADER_HEADER, verify_upload};
use cairn_types::{Address, Amount, ContentId};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// Limits on uploads (`[uploads]` in `config.toml`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadLimits {
    /// Bytes one account may have uploaded and not yet named in a transaction.
    pub quota_bytes: u64,
    /// Blobs one account may have uploaded and not yet named in a transaction.
    pub quota_blobs: u32,
    /// The balance an account needs to upload at all.
    pub min_balance: Amount,
    /// Seconds an upload waits for a transaction to name it before it is deleted.
    pub ttl_secs: u64,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            quota_bytes: 2 << 30,
            quota_blobs: 1_000,
            min_balance: Amount::from_base_units(cairn_types::BASE_UNITS_PER_CRN),
            ttl_secs: 900,
        }
    }
}

/// What the gate asks of the chain.
pub trait ChainView: Send + Sync + 'static {
    /// An account's committed balance.
    fn balance(&self, who: &Address) -> Amount;
    /// Which of `ids` committed state names, and how.
    fn named(&self, ids: &BTreeSet<ContentId>) -> Named;
}

/// Blobs committed state names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Named {
    /// Named by a job, task, deal or lease spec: kept for good.
    pub held: BTreeSet<ContentId>,
    /// A lease's last saved volume: kept while it is the last.
    pub volumes: BTreeSet<ContentId>,
}

/// The suffix of a saved volume's marker in the uploads directory.
const VOLUME_MARK: &str = ".volume";

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pending {
    who: Address,
    size: u64,
    at: u64,
}

#[derive(Default)]
struct Book {
    pending: BTreeMap<ContentId, Pending>,
    /// Uploads a lease names as its last saved volume: deleted once a newer save replaces them.
    volumes: BTreeSet<ContentId>,
    /// Uploads admitted and still streaming, per account: bytes and count.
    streaming: BTreeMap<Address, (u64, u32)>,
}

impl Book {
    fn usage(&self, who: &Address) -> (u64, u32) {
        let (mut bytes, mut blobs) = self.streaming.get(who).copied().unwrap_or_default();
        for p in self.pending.values().filter(|p| p.who == *who) {
            bytes = bytes.saturating_add(p.size);
            blobs = blobs.saturating_add(1);
        }
        (bytes, blobs)
    }
}

/// Upload counters, for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct UploadMetrics {
    /// Uploads refused (unsigned, bad signature, unfunded, over quota).
    pub refused: Counter,
    /// Uploads stored.
    pub stored: Counter,
    /// Uploads deleted because no transaction named them in time.
    pub expired: Counter,
    /// Saved volumes deleted because a newer save of their lease replaced them.
    pub superseded: Counter,
}

/// The validator's upload gate.
pub struct Uploads {
    chain_id: String,
    chain: Arc<dyn ChainView>,
    store: Arc<BlobStore>,
    dir: PathBuf,
    limits: UploadLimits,
    book: Mutex<Book>,
    /// Counters.
    pub metrics: UploadMetrics,
    clock: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl std::fmt::Debug for Uploads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uploads")
            .field("chain_id", &self.chain_id)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Uploads {
    /// The gate, with the pending uploads written down in `dir` (created).
    ///
    /// # Errors
    /// The directory cannot be created or read.
    pub fn open(
        chain_id: &str,
        chain: Arc<dyn ChainView>,
        store: Arc<BlobStore>,
        dir: PathBuf,
        limits: UploadLimits,
    ) -> std::io::Result<Self> {
        Self::open_with_clock(chain_id, chain, store, dir, limits, Box::new(unix_now))
    }

    /// As [`Uploads::open`], telling time (whole seconds) with `clock`.
    ///
    /// # Errors
    /// The directory cannot be created or read.
    pub fn open_with_clock(
        chain_id: &str,
        chain: Arc<dyn ChainView>,
        store: Arc<BlobStore>,
        dir: PathBuf,
        limits: UploadLimits,
        clock: Box<dyn Fn() -> u64 + Send + Sync>,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut book = Book::default();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let volume = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(VOLUME_MARK))
                .and_then(|n| n.parse::<ContentId>().ok());
            if let Some(id) = volume {
                if store.has(&id) {
                    book.volumes.insert(id);
                } else {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            let parsed = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<ContentId>().ok())
                .zip(std::fs::read_to_string(&path).ok().and_then(|t| parse_marker(&t)));
            match parsed {
                Some((id, p)) if store.has(&id) => {
                    book.pending.insert(id, p);
                }
                _ => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(Uploads {
            chain_id: chain_id.to_owned(),
            chain,
            store,
            dir,
            limits,
            book: Mutex::new(book),
            metrics: UploadMetrics::default(),
            clock,
        })
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Uploads not yet named by a transaction: (blobs, bytes).
    pub fn pending(&self) -> (usize, u64) {
        let book = self.book();
        (book.pending.len(), book.pending.values().map(|p| p.size).sum())
    }

    /// Saved volumes kept while they are their lease's last save.
    pub fn volumes(&self) -> usize {
        self.book().volumes.len()
    }

    /// Let go of uploads a transaction now names (they stay, and no longer count against
    /// anyone's quota; a lease's saved volume stays until a newer save replaces it), delete
    /// those that waited past the time limit unnamed, and delete replaced volume saves.
    /// Returns how many were deleted.
    pub fn sweep(&self) -> usize {
        let ids: BTreeSet<ContentId> = {
            let book = self.book();
            book.pending.keys().chain(book.volumes.iter()).copied().collect()
        };
        if ids.is_empty() {
            return 0;
        }
        let named = self.chain.named(&ids);
        let now = (self.clock)();
        let mut expired = Vec::new();
        let mut superseded = Vec::new();
        {
            let mut book = self.book();
            for id in &named.held {
                book.pending.remove(id);
                book.volumes.remove(id);
                let _ = std::fs::remove_file(self.dir.join(id.to_hex()));
                let _ = std::fs::remove_file(self.volume_mark(id));
            }
            for id in named.volumes.difference(&named.held) {
                if book.pending.remove(id).is_some() {
                    let _ = std::fs::remove_file(self.dir.join(id.to_hex()));
                    if let Err(e) = std::fs::write(self.volume_mark(id), b"") {
                        warn!(blob = %id.short(), error = %e, "cannot write down a saved volume");
                    }
                    book.volumes.insert(*id);
                }
            }
            book.volumes.retain(|id| {
                let kept = named.volumes.contains(id) || named.held.contains(id);
                if !kept {
                    superseded.push(*id);
                }
                kept
            });
            book.pending.retain(|id, p| {
                let late = p.at.saturating_add(self.limits.ttl_secs) <= now;
                if late {
                    expired.push((*id, p.clone()));
                }
                !late
            });
        }
        for (id, p) in &expired {
            match self.store.remove(id) {
                Ok(()) => {
                    info!(blob = %id.short(), uploader = %p.who, bytes = p.size, "deleted an upload no transaction named in time")
                }
                Err(e) => warn!(blob = %id.short(), error = %e, "cannot delete an expired upload"),
            }
            let _ = std::fs::remove_file(self.dir.join(id.to_hex()));
            self.metrics.expired.inc();
        }
        for id in &superseded {
            match self.store.remove(id) {
                Ok(()) => info!(blob = %id.short(), "deleted a volume save a newer save replaced"),
                Err(e) => warn!(blob = %id.short(), error = %e, "cannot delete a replaced volume save"),
            }
            let _ = std::fs::remove_file(self.volume_mark(id));
            self.metrics.superseded.inc();
        }
        expired.len().saturating_add(superseded.len())
    }

    fn volume_mark(&self, id: &ContentId) -> PathBuf {
        self.dir.join(format!("{}{VOLUME_MARK}", id.to_hex()))
    }

    fn refuse(&self, status: StatusCode, code: &'static str, message: String) -> Refusal {
        self.metrics.refused.inc();
        Refusal { status, code, message }
    }
}

fn parse_marker(text: &str) -> Option<Pending> {
    let mut it = text.split_whitespace();
    let who = it.next()?.parse().ok()?;
    let size = it.next()?.parse().ok()?;
    let at = it.next()?.parse().ok()?;
    Some(Pending { who, size, at })
}

impl UploadGate for Uploads {
    fn admit(&self, headers: &HeaderMap, id: &ContentId, size: u64) -> Result<String, Refusal> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(uploader), Some(signature)) = (header(UPLOADER_HEADER), header(SIGNATURE_HEADER)) else {
            return Err(self.refuse(
                StatusCode::UNAUTHORIZED,
                "unsigned",
                format!("uploads must be signed by a funded account ({UPLOADER_HEADER}, {SIGNATURE_HEADER})"),
            ));
        };
        let who = verify_upload(&self.chain_id, uploader, signature, id, size).map_err(|e| {
            self.refuse(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                format!("the upload's signature does not verify: {e}"),
            )
        })?;
        let balance = self.chain.balance(&who);
        if balance < self.limits.min_balance {
            return Err(self.refuse(
                StatusCode::FORBIDDEN,
                "unfunded",
                format!("{who} holds {balance}; uploading needs at least {}", self.limits.min_balance),
            ));
        }
        let mut book = self.book();
        let (bytes, blobs) = book.usage(&who);
        if bytes.saturating_add(size) > self.limits.quota_bytes || blobs >= self.limits.quota_blobs {
            drop(book);
            return Err(self.refuse(
                StatusCode::TOO_MANY_REQUESTS,
                "upload_quota",
                format!(
                    "{who} has {blobs} uploads ({bytes} bytes) that no transaction names yet; the limit is {} uploads and {} bytes (they count until a transaction names them, or are deleted after {} s)",
                    self.limits.quota_blobs, self.limits.quota_bytes, self.limits.ttl_secs
                ),
            ));
        }
        let s = book.streaming.entry(who).or_default();
        s.0 = s.0.saturating_add(size);
        s.1 = s.1.saturating_add(1);
        Ok(who.to_string())
    }

    fn done(&self, admitted: String, id: &ContentId, size: u64, stored: bool) {
        let Ok(who) = admitted.parse::<Address>() else { return };
        let mut book = self.book();
        if let Some(s) = book.streaming.get_mut(&who) {
            s.0 = s.0.saturating_sub(size);
            s.1 = s.1.saturating_sub(1);
            if *s == (0, 0) {
                book.streaming.remove(&who);
            }
        }
        if stored && !book.pending.contains_key(id) {
            let p = Pending { who, size, at: (self.clock)() };
            if let Err(e) =
                std::fs::write(self.dir.join(id.to_hex()), format!("{} {} {}\n", p.who, p.size, p.at))
            {
                warn!(blob = %id.short(), error = %e, "cannot write down a pending upload");
            }
            book.pending.insert(*id, p);
            self.metrics.stored.inc();
        }
    }
}

impl ChainView for crate::node::NodeShared {
    fn balance(&self, who: &cairn_types::Address) -> cairn_types::Amount {
        self.account_view(who).balance
    }

    fn named(&self, ids: &std::collections::BTreeSet<cairn_types::ContentId>) -> Named {
        use cairn_state::keys;
        use cairn_types::Canonical as _;
        let mirror = self.mirror.read().unwrap_or_else(|p| p.into_inner());
        let records = |prefix: u8| {
            mirror
                .committed
                .range(vec![prefix]..)
                .take_while(move |(k, _)| k.first() == Some(&prefix))
                .map(|(_, v)| v)
        };
        let mut out = std::collections::BTreeSet::new();
        let mut volumes = std::collections::BTreeSet::new();
        let mut note = |id: &cairn_types::ContentId| {
            if ids.contains(id) {
                out.insert(*id);
            }
        };
        for v in records(keys::JOB_SPEC) {
            if let Ok(spec) = cairn_types::JobSpec::decode(v) {
                spec.blobs().for_each(&mut note);
            }
        }
        for v in records(keys::TASK) {
            if let Ok(task) = borsh::from_slice::<cairn_state::model::Task>(v) {
                task.inputs.iter().for_each(&mut note);
                if let cairn_state::model::TaskState::Committed { output, .. }
                | cairn_state::model::TaskState::Settled { output, .. } = &task.state
                {
                    note(output);
                }
            }
        }
        for v in records(keys::DEAL) {
            if let Ok(deal) = borsh::from_slice::<cairn_state::model::Deal>(v) {
                note(&deal.blob);
            }
        }
        for v in records(keys::LEASE) {
            if let Ok(lease) = borsh::from_slice::<cairn_state::model::Lease>(v) {
                lease.spec.blobs().for_each(&mut note);
                if let Some(v) = lease.volume.filter(|v| ids.contains(&v.blob)) {
                    volumes.insert(v.blob);
                }
            }
        }
        Named { held: out, volumes }
    }
}
