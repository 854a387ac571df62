//! Transaction gossip: transactions a node accepts from its clients are relayed to the other
//! validators' mempools, so whichever validator leads next can include them.

use std::sync::Arc;
use std::time::Duration;

use cairn_types::{Canonical, MAX_TX_BYTES, Tx};
use commonware_codec::{Decode as _, Encode as _, RangeCfg};
use commonware_p2p::{Receiver, Recipients, Sender};
use commonware_runtime::{Clock, Spawner};
use tracing::debug;

use crate::node::NodeShared;

/// Bytes of transactions per gossip message.
pub const MAX_GOSSIP_BYTES: usize = 256 * 1024;
/// Transactions per gossip message.
const MAX_GOSSIP_TXS: usize = 4_096;

/// Start relaying: one task sends what clients submitted here, another queues what peers sent.
pub fn start<E, S, R>(context: E, shared: Arc<NodeShared>, (mut sender, mut receiver): (S, R))
where
    E: Spawner + Clock,
    S: Sender,
    R: Receiver,
{
    let out = shared.clone();
    context.child("gossip_out").spawn(move |ctx| async move {
        loop {
            ctx.sleep(Duration::from_millis(10)).await;
            let batch = std::mem::take(&mut *out.outbox.lock().unwrap_or_else(|p| p.into_inner()));
            let mut msg: Vec<Vec<u8>> = Vec::new();
            let mut bytes = 0usize;
            for tx in batch {
                if bytes.saturating_add(tx.len()) > MAX_GOSSIP_BYTES || msg.len() >= MAX_GOSSIP_TXS {
                    let full = std::mem::take(&mut msg);
                    sender.send(Recipients::All, full.encode(), false);
                    bytes = 0;
                }
                bytes = bytes.saturating_add(tx.len());
                msg.push(tx);
            }
            if !msg.is_empty() {
                sender.send(Recipients::All, msg.encode(), false);
            }
        }
    });
    context.child("gossip_in").spawn(move |_| async move {
        let cfg = (RangeCfg::from(0..=MAX_GOSSIP_TXS), (RangeCfg::from(0..=MAX_TX_BYTES), ()));
        while let Ok((peer, bytes)) = receiver.recv().await {
            let Ok(txs) = Vec::<Vec<u8>>::decode_cfg(bytes, &cfg) else {
                debug!(?peer, "dropping malformed transaction gossip");
                continue;
            };
            for raw in txs {
                if let Ok(tx) = Tx::decode(&raw) {
                    // Already known, stale or invalid transactions are simply not queued.
                    let _ = shared.submit(tx);
                }
            }
        }
    });
}
