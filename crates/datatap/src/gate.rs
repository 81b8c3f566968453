//! The write gate of a group's engine: the production fence (`redoubt-fence`) keeps it open
//! until a deadline it extends on every lease renewal. Past the deadline — renewals stopped,
//! the lease lost — the engine refuses new writes (`OpError::Stopped`, NBD `EIO`) without any
//! timer or task having to run: the deadline is checked on every write. Reads, flushes and
//! checkpoints still work. An engine without a fence keeps the gate open for good.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::engine::Op;

/// `state` value of a gate that no fence controls: always open.
const UNFENCED: u64 = u64::MAX;
/// `state` value of a closed gate.
const CLOSED: u64 = 0;

#[derive(Debug)]
pub struct WriteGate {
    base: Instant,
    /// [`UNFENCED`], [`CLOSED`], or the deadline in ns after `base` (≥ 1).
    state: AtomicU64,
}

impl Default for WriteGate {
    fn default() -> Self {
        WriteGate {
            base: Instant::now(),
            state: AtomicU64::new(UNFENCED),
        }
    }
}

impl WriteGate {
    /// Open until `until` (a fence renewal); a deadline in the past closes it.
    pub fn open_until(&self, until: Instant) {
        let nanos = until
            .checked_duration_since(self.base)
            .map(|elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(UNFENCED - 1))
            .unwrap_or(CLOSED)
            .clamp(CLOSED, UNFENCED - 1);
        self.state.store(nanos, Ordering::Release);
    }

    /// Closed until the next [`WriteGate::open_until`] (the fence was lost).
    pub fn close(&self) {
        self.state.store(CLOSED, Ordering::Release);
    }

    /// No fence: open for good.
    pub fn unfence(&self) {
        self.state.store(UNFENCED, Ordering::Release);
    }

    pub fn is_open_at(&self, now: Instant) -> bool {
        match self.state.load(Ordering::Acquire) {
            UNFENCED => true,
            CLOSED => false,
            deadline_ns => {
                let now_ns = now
                    .checked_duration_since(self.base)
                    .map(|elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(UNFENCED))
                    .unwrap_or(0);
                now_ns < deadline_ns
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.is_open_at(Instant::now())
    }

    /// Whether the gate is controlled by a fence.
    pub fn is_fenced(&self) -> bool {
        self.state.load(Ordering::Acquire) != UNFENCED
    }
}

/// The ops a closed gate refuses: those that add client data or markers to the history.
pub fn gated(op: &Op) -> bool {
    matches!(
        op,
        Op::Write { .. } | Op::WriteZeroes { .. } | Op::Trim { .. } | Op::Marker { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn gate_opens_until_its_deadline_and_closes_by_itself() {
        let gate = WriteGate::default();
        let now = Instant::now();
        assert!(gate.is_open_at(now) && !gate.is_fenced());
        gate.open_until(now + Duration::from_secs(3));
        assert!(gate.is_open_at(now + Duration::from_millis(2_999)));
        assert!(!gate.is_open_at(now + Duration::from_secs(3)));
        gate.close();
        assert!(!gate.is_open_at(now));
        gate.open_until(now - Duration::from_secs(1));
        assert!(!gate.is_open_at(now));
        gate.unfence();
        assert!(gate.is_open_at(now + Duration::from_secs(3600)));
        assert!(gated(&Op::Marker { name: "m".into() }));
        assert!(!gated(&Op::Flush));
    }
}
