//! The node's receipts on disk: one record per finalized block, appended in height order, so
//! `GET /api/txs/{hash}` and `/api/blocks/{h}/receipts` still answer after a restart.
//!
//! A record is `length (u32 LE) ‖ BLAKE3(payload) ‖ payload`, the payload the canonical (borsh)
//! encoding of `(height, tx hashes, receipts)`. A crash can leave a torn last record: opening
//! the log keeps every record up to the first one that does not check out and cuts the rest.
//! The log is rewritten with only the newest blocks once it holds twice the retention.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use borsh::{BorshDeserialize, BorshSerialize};
use cairn_types::{Receipt, TxHash};
use tracing::warn;

/// One block's receipts.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct BlockReceipts {
    /// The block's height.
    pub height: u64,
    /// Its transactions, in order.
    pub hashes: Vec<TxHash>,
    /// One receipt per transaction, then the end-of-block receipt.
    pub receipts: Vec<Receipt>,
}

/// Largest record accepted when reading (a block's receipts are far smaller).
const MAX_RECORD: u32 = 256 << 20;

/// An append-only file of [`BlockReceipts`].
#[derive(Debug)]
pub struct ReceiptLog {
    path: PathBuf,
    file: File,
    records: usize,
    keep: usize,
}

impl ReceiptLog {
    /// Open (or create) the log at `path`, keeping the newest `keep` blocks when it compacts.
    /// Returns the log and the records it holds, oldest first.
    ///
    /// # Errors
    /// I/O errors opening, reading or truncating the file.
    pub fn open(path: &Path, keep: usize) -> std::io::Result<(Self, Vec<BlockReceipts>)> {
        let mut bytes = Vec::new();
        if path.exists() {
            File::open(path)?.read_to_end(&mut bytes)?;
        }
        let (records, good) = parse(&bytes);
        if good < bytes.len() {
            warn!(
                path = %path.display(),
                kept = records.len(),
                cut_bytes = bytes.len() - good,
                "the receipt log ends in a damaged or torn record; cutting it there"
            );
            let f = OpenOptions::new().write(true).open(path)?;
            f.set_len(good as u64)?;
            f.sync_all()?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let n = records.len();
        Ok((ReceiptLog { path: path.to_path_buf(), file, records: n, keep: keep.max(1) }, records))
    }

    /// Append one block's receipts (flushed to disk before returning). `newest` is called when
    /// the log compacts and must return the records to keep.
    ///
    /// # Errors
    /// I/O errors.
    pub fn append(
        &mut self,
        height: u64,
        hashes: &[TxHash],
        receipts: &[Receipt],
        newest: impl FnOnce() -> Vec<BlockReceipts>,
    ) -> std::io::Result<()> {
        self.file.write_all(&record(height, hashes, receipts)?)?;
        self.file.sync_data()?;
        self.records += 1;
        if self.records >= self.keep.saturating_mul(2) {
            self.compact(&newest())?;
        }
        Ok(())
    }

    /// Rewrite the log with only `keep` (written to a temporary file, then renamed).
    fn compact(&mut self, keep: &[BlockReceipts]) -> std::io::Result<()> {
        let tmp = self.path.with_extension("log.tmp");
        {
            let mut f = File::create(&tmp)?;
            for r in keep {
                f.write_all(&record(r.height, &r.hashes, &r.receipts)?)?;
            }
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.records = keep.len();
        Ok(())
    }
}

/// One record; borsh encodes the borrowed tuple exactly as [`BlockReceipts`].
fn record(height: u64, hashes: &[TxHash], receipts: &[Receipt]) -> std::io::Result<Vec<u8>> {
    let payload = borsh::to_vec(&(height, hashes, receipts))?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|l| *l <= MAX_RECORD)
        .ok_or_else(|| std::io::Error::other("a block's receipts are too large to log"))?;
    let mut out = Vec::with_capacity(payload.len().saturating_add(36));
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(blake3::hash(&payload).as_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The records that check out, and how many bytes they span.
fn parse(bytes: &[u8]) -> (Vec<BlockReceipts>, usize) {
    let mut out = Vec::new();
    let mut at = 0usize;
    while let Some(head) = bytes.get(at..at.saturating_add(36)) {
        let mut len = [0u8; 4];
        len.copy_from_slice(&head[..4]);
        let len = u32::from_le_bytes(len);
        if len > MAX_RECORD {
            break;
        }
        let start = at.saturating_add(36);
        let Some(payload) = bytes.get(start..start.saturating_add(len as usize)) else { break };
        if blake3::hash(payload).as_bytes() != &head[4..36] {
            break;
        }
        let Ok(r) = borsh::from_slice::<BlockReceipts>(payload) else { break };
        if out.last().is_some_and(|p: &BlockReceipts| p.height >= r.height) {
            break;
        }
        out.push(r);
        at = start.saturating_add(len as usize);
    }
    (out, at)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn block(height: u64) -> BlockReceipts {
        BlockReceipts {
            height,
            hashes: vec![TxHash([height as u8; 32])],
            receipts: vec![Receipt::EndBlock { events: vec![] }],
        }
    }

    fn append(log: &mut ReceiptLog, height: u64, newest: impl FnOnce() -> Vec<BlockReceipts>) {
        let b = block(height);
        log.append(height, &b.hashes, &b.receipts, newest).unwrap();
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cairn-receipt-log-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("receipts.log")
    }

    #[test]
    fn records_survive_a_reopen_and_a_torn_tail_is_cut() {
        let path = dir("torn");
        let (mut log, none) = ReceiptLog::open(&path, 100).unwrap();
        assert!(none.is_empty());
        for h in 1..=3 {
            append(&mut log, h, Vec::new);
        }
        drop(log);
        // A crash in the middle of the fourth append.
        let b4 = block(4);
        let full = record(4, &b4.hashes, &b4.receipts).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&full[..full.len() / 2]).unwrap();
        drop(f);
        let (mut log, got) = ReceiptLog::open(&path, 100).unwrap();
        assert_eq!(got, vec![block(1), block(2), block(3)]);
        append(&mut log, 4, Vec::new);
        drop(log);
        let (_, got) = ReceiptLog::open(&path, 100).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[3], block(4));
    }

    #[test]
    fn a_flipped_byte_cuts_the_log_at_that_record() {
        let path = dir("flip");
        let (mut log, _) = ReceiptLog::open(&path, 100).unwrap();
        for h in 1..=3 {
            append(&mut log, h, Vec::new);
        }
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        let b1 = block(1);
        let second = record(1, &b1.hashes, &b1.receipts).unwrap().len() + 40;
        bytes[second] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let (_, got) = ReceiptLog::open(&path, 100).unwrap();
        assert_eq!(got, vec![block(1)]);
    }

    #[test]
    fn the_log_compacts_to_the_newest_blocks() {
        let path = dir("compact");
        let (mut log, _) = ReceiptLog::open(&path, 2).unwrap();
        for h in 1..=3 {
            append(&mut log, h, Vec::new);
        }
        append(&mut log, 4, || vec![block(3), block(4)]);
        drop(log);
        let (_, got) = ReceiptLog::open(&path, 2).unwrap();
        assert_eq!(got, vec![block(3), block(4)]);
    }
}
