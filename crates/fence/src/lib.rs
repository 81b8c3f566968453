//! `redoubt-fence`: at most one server acts as production of a group, even under a partition.
//!
//! A [`Fence`] hands out the production role of a group as a [`FenceLease`]. The etcd
//! implementation ([`EtcdFence`]) is an etcd lease plus the key `/redoubt/fence/<group>`
//! holding the server's name, created by a transaction only when the key is absent or already
//! ours; a background task renews the lease and publishes how long the holder may still act
//! ([`Validity`]). The embedded setup (no etcd) uses [`NoopFence`]: always granted, never
//! lost. The console's leader election uses the same lock ([`LeaseLock`]) on another key.
//!
//! ## Timing (defaults; `docs/ha.md`)
//!
//! ```text
//!  holder:   ──renew──renew──renew──X (last renewal *sent* at T, answered)
//!  holder stops writes at          T + margin            (3 s)
//!  etcd expires the key no sooner  T + ttl               (6 s): the server counts the TTL
//!                                                          from when it *received* the renewal
//!  a promoted server takes the key ≥ T + ttl > T + margin
//! ```
//!
//! The gap `ttl − margin` (3 s) absorbs the writes already queued when the gate closed and
//! clock-rate differences. **Invariants:** the holder never considers itself valid past
//! `sent + margin` of its last answered renewal; a holder that saw another server hold the key
//! stays lost for good (it never takes the role back by itself).

mod etcd;
#[cfg(feature = "testing")]
pub mod testing;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use etcd::{connect as etcd_connect, parse_endpoints, EtcdFence, LeaseLock};

/// Prefix of the production fence keys: `/redoubt/fence/<group>` holds the server's name.
pub const FENCE_KEY_PREFIX: &str = "/redoubt/fence/";
/// Lease TTL: the earliest a lost holder's key expires after its last renewal.
pub const LEASE_TTL_MS_DEFAULT: u64 = 6_000;
/// How often the holder renews its lease.
pub const RENEW_INTERVAL_MS_DEFAULT: u64 = 1_000;
/// How long after its last answered renewal the holder still acts (writes); < TTL.
pub const SAFETY_MARGIN_MS_DEFAULT: u64 = 3_000;
/// Smallest TTL accepted: etcd rounds TTLs to seconds and refuses (raises) tiny ones.
pub const LEASE_TTL_MS_MIN: u64 = 2_000;
/// Connecting to etcd gives up after this long.
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("invalid etcd endpoints {given:?}: {reason}")]
    Endpoints { given: String, reason: String },
    #[error("invalid fence timing: {0}")]
    Timing(String),
    #[error("{context}: {message}")]
    Etcd {
        context: &'static str,
        message: String,
    },
    #[error("{context}: etcd did not answer within {timeout_ms} ms")]
    Timeout {
        context: &'static str,
        timeout_ms: u64,
    },
    #[error("{key} is held by {holder:?}")]
    HeldBy { key: String, holder: String },
}

/// The lease timing of a fence or a leader lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FenceTiming {
    pub lease_ttl_ms: u64,
    pub renew_interval_ms: u64,
    pub safety_margin_ms: u64,
}

impl Default for FenceTiming {
    fn default() -> Self {
        FenceTiming {
            lease_ttl_ms: LEASE_TTL_MS_DEFAULT,
            renew_interval_ms: RENEW_INTERVAL_MS_DEFAULT,
            safety_margin_ms: SAFETY_MARGIN_MS_DEFAULT,
        }
    }
}

impl FenceTiming {
    /// `renew < margin < ttl`, TTL in whole seconds and at least [`LEASE_TTL_MS_MIN`].
    pub fn validate(&self) -> Result<(), FenceError> {
        if self.lease_ttl_ms < LEASE_TTL_MS_MIN || !self.lease_ttl_ms.is_multiple_of(1000) {
            return Err(FenceError::Timing(format!(
                "lease_ttl_ms {} must be whole seconds, at least {LEASE_TTL_MS_MIN}",
                self.lease_ttl_ms
            )));
        }
        if self.renew_interval_ms == 0 || self.renew_interval_ms >= self.safety_margin_ms {
            return Err(FenceError::Timing(format!(
                "renew_interval_ms {} must be > 0 and < safety_margin_ms {}",
                self.renew_interval_ms, self.safety_margin_ms
            )));
        }
        if self.safety_margin_ms >= self.lease_ttl_ms {
            return Err(FenceError::Timing(format!(
                "safety_margin_ms {} must be < lease_ttl_ms {}",
                self.safety_margin_ms, self.lease_ttl_ms
            )));
        }
        Ok(())
    }

    pub fn lease_ttl_seconds(&self) -> i64 {
        i64::try_from(self.lease_ttl_ms / 1000).unwrap_or(i64::MAX)
    }
}

/// Pure: until when a holder may act after a renewal it sent at `sent_at` and that etcd
/// answered with `granted_ttl_ms` left. `None`: the lease is gone. The gap `ttl − margin`
/// is kept even when etcd granted less than the full TTL.
pub fn valid_until_after_renewal(
    sent_at: Instant,
    granted_ttl_ms: u64,
    timing: &FenceTiming,
) -> Option<Instant> {
    let gap_ms = timing.lease_ttl_ms.saturating_sub(timing.safety_margin_ms);
    let usable_ms = granted_ttl_ms
        .saturating_sub(gap_ms)
        .min(timing.safety_margin_ms);
    if usable_ms == 0 {
        return None;
    }
    sent_at.checked_add(Duration::from_millis(usable_ms))
}

/// How long the holder of a lease may still act.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// No fencing (embedded setup): always valid.
    Unbounded,
    /// Valid before `until`; `lease_id` is the etcd lease that holds the key.
    Held { until: Instant, lease_id: i64 },
    /// Lost (expired, taken by another, released): do not act.
    Lost,
}

impl Validity {
    pub fn is_valid_at(&self, now: Instant) -> bool {
        match self {
            Validity::Unbounded => true,
            Validity::Held { until, .. } => now < *until,
            Validity::Lost => false,
        }
    }
}

/// A held role (production of a group, or the console's leadership). Renewed in the
/// background until dropped or released; [`FenceLease::validity`] reports loss.
pub struct FenceLease {
    key: String,
    holder: String,
    validity: watch::Receiver<Validity>,
    /// Stops the renewal task and, when `true`, revokes the lease (releases the key).
    stop: Option<tokio::sync::oneshot::Sender<bool>>,
    task: Option<JoinHandle<()>>,
}

impl FenceLease {
    /// A lease that is always valid (no fencing).
    pub fn unbounded(key: &str, holder: &str) -> FenceLease {
        let (_, validity) = watch::channel(Validity::Unbounded);
        FenceLease {
            key: key.to_string(),
            holder: holder.to_string(),
            validity,
            stop: None,
            task: None,
        }
    }

    pub(crate) fn renewed(
        key: String,
        holder: String,
        validity: watch::Receiver<Validity>,
        stop: tokio::sync::oneshot::Sender<bool>,
        task: JoinHandle<()>,
    ) -> FenceLease {
        FenceLease {
            key,
            holder,
            validity,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// The current validity; changes on every renewal and on loss.
    pub fn validity(&self) -> watch::Receiver<Validity> {
        self.validity.clone()
    }

    /// Whether the holder may act now.
    pub fn is_valid(&self) -> bool {
        self.validity.borrow().is_valid_at(Instant::now())
    }

    /// Stops renewing and revokes the lease, so another server can take the role at once.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FenceLease {
    /// Dropped without [`FenceLease::release`]: renewal stops, the key expires after the TTL.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(false);
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub type AcquireFuture<'a> =
    Pin<Box<dyn Future<Output = Result<FenceLease, FenceError>> + Send + 'a>>;

/// Hands out the production role of a group to one server at a time.
pub trait Fence: Send + Sync + 'static {
    /// Takes the production role of `group` for `server`: fails with
    /// [`FenceError::HeldBy`] when another server holds it.
    fn acquire_production<'a>(&'a self, group: &'a str, server: &'a str) -> AcquireFuture<'a>;
    /// What the fence is, for logs and status (`"none"`, `"etcd://…"`).
    fn describe(&self) -> String;
}

/// No fencing: the embedded (single console, no etcd) setup.
pub struct NoopFence;

impl Fence for NoopFence {
    fn acquire_production<'a>(&'a self, group: &'a str, server: &'a str) -> AcquireFuture<'a> {
        Box::pin(async move {
            Ok(FenceLease::unbounded(
                &format!("{FENCE_KEY_PREFIX}{group}"),
                server,
            ))
        })
    }

    fn describe(&self) -> String {
        "none".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_timing_is_valid_and_bad_timings_are_refused() {
        FenceTiming::default().validate().expect("default timing");
        let bad = [
            (6_000, 1_000, 6_000),
            (6_000, 3_000, 3_000),
            (1_000, 100, 500),
            (6_500, 1_000, 3_000),
            (6_000, 0, 3_000),
        ];
        for (ttl, renew, margin) in bad {
            let timing = FenceTiming {
                lease_ttl_ms: ttl,
                renew_interval_ms: renew,
                safety_margin_ms: margin,
            };
            assert!(timing.validate().is_err(), "{timing:?} accepted");
        }
    }

    #[test]
    fn validity_keeps_the_gap_between_margin_and_ttl() {
        let timing = FenceTiming::default();
        let sent = Instant::now();
        let full = valid_until_after_renewal(sent, 6_000, &timing).expect("full");
        assert_eq!(full - sent, Duration::from_millis(3_000));
        // etcd granted 4 s: the holder acts 1 s, so the key outlives it by 3 s still.
        let partial = valid_until_after_renewal(sent, 4_000, &timing).expect("partial");
        assert_eq!(partial - sent, Duration::from_millis(1_000));
        assert_eq!(valid_until_after_renewal(sent, 3_000, &timing), None);
        assert_eq!(valid_until_after_renewal(sent, 0, &timing), None);
        let held = Validity::Held {
            until: full,
            lease_id: 1,
        };
        assert!(held.is_valid_at(sent));
        assert!(!held.is_valid_at(full));
        assert!(!Validity::Lost.is_valid_at(sent));
        assert!(Validity::Unbounded.is_valid_at(full));
    }

    #[tokio::test]
    async fn noop_fence_always_grants() {
        let lease = NoopFence
            .acquire_production("erp", "prod-a")
            .await
            .expect("noop");
        assert!(lease.is_valid());
        assert_eq!(lease.key(), "/redoubt/fence/erp");
        let again = NoopFence
            .acquire_production("erp", "dr-b")
            .await
            .expect("noop again");
        assert!(again.is_valid());
    }
}
