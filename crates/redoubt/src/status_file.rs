//! A JSON status document on disk, rewritten atomically every 200 ms, for scripts and tests
//! until the console's API serves status.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redoubt_datatap::Watermarks;
use redoubt_replication::{AbaStatus, Targets};
use serde_json::{json, Value};
use tokio::sync::watch;

pub const STATUS_INTERVAL_MS: u64 = 200;

pub async fn keep_writing(
    path: PathBuf,
    mut stop: watch::Receiver<bool>,
    render: impl Fn() -> Value,
) {
    let mut interval = tokio::time::interval(Duration::from_millis(STATUS_INTERVAL_MS));
    loop {
        let text = render().to_string();
        let temporary = path.with_extension("tmp");
        if std::fs::write(&temporary, text.as_bytes()).is_ok() {
            let _ = std::fs::rename(&temporary, &path);
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = interval.tick() => {}
        }
    }
}

pub fn production_json(watermarks: &Watermarks, names: &[String], targets: &Targets) -> Value {
    let journal_seq = watermarks.durable_seq.load(Ordering::Acquire);
    let targets: Vec<Value> = names
        .iter()
        .zip(&targets.statuses)
        .map(|(name, status)| {
            let applied = status.applied_seq.load(Ordering::Acquire);
            json!({
                "server": name,
                "connected": status.connected.load(Ordering::Acquire),
                "sent_seq": status.sent_seq.load(Ordering::Acquire),
                "durable_seq": status.durable_seq.load(Ordering::Acquire),
                "applied_seq": applied,
                "backlog_records": journal_seq.saturating_sub(applied),
                "sent_bytes": status.sent_bytes.load(Ordering::Relaxed),
                "needs_resync": status.needs_resync.load(Ordering::Acquire),
                "last_error": status.last_error.lock().ok().and_then(|e| e.clone()),
            })
        })
        .collect();
    json!({
        "role": "production",
        "journal_seq": journal_seq,
        "applied_seq": watermarks.applied_seq.load(Ordering::Acquire),
        "checkpoint_seq": watermarks.checkpoint_seq.load(Ordering::Acquire),
        "shipped_seq": watermarks.shipped_seq.load(Ordering::Acquire),
        "journal_bytes": watermarks.journal_bytes.load(Ordering::Relaxed),
        "needs_resync": watermarks.needs_resync.load(Ordering::Acquire),
        "sync_degraded": watermarks.sync_degraded.load(Ordering::Acquire),
        "targets": targets,
    })
}

pub fn recovery_json(status: &AbaStatus) -> Value {
    json!({
        "role": "recovery",
        "connected": status.connected.load(Ordering::Acquire),
        "received_seq": status.received_seq.load(Ordering::Acquire),
        "durable_seq": status.durable_seq.load(Ordering::Acquire),
        "applied_seq": status.applied_seq.load(Ordering::Acquire),
        "checkpoint_seq": status.checkpoint_seq.load(Ordering::Acquire),
        "received_bytes": status.received_bytes.load(Ordering::Relaxed),
        "connections": status.connections.load(Ordering::Relaxed),
        "last_connection_first_seq": status.last_connection_first_seq.load(Ordering::Relaxed),
    })
}
