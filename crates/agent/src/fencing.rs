//! The production fence of this agent (`redoubt agent --fence etcd://…`, `docs/ha.md`): the
//! production data path takes the fence of its group before it accepts writes, and the
//! datatap's write gate stays open only while the fence's lease is renewed. Without
//! `--fence`, [`NoopFence`] grants every request (the embedded setup).
//!
//! One fence per process (like the TLS registry). A group's lease is shared inside the
//! process: a promotion that took the fence first ([`acquire_production`]) and the data path
//! it then starts hold the same lease, so they never compete for the key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use redoubt_datatap::Watermarks;
use redoubt_fence::{Fence, FenceLease, NoopFence, Validity};
use tokio::task::JoinHandle;

static FENCE: RwLock<Option<Arc<dyn Fence>>> = RwLock::new(None);
/// group → the lease this process holds for it.
static LEASES: Mutex<Option<HashMap<String, Weak<FenceLease>>>> = Mutex::new(None);

/// Sets this process's fence (the CLI does, from `--fence`).
pub fn install(fence: Arc<dyn Fence>) {
    tracing::info!(fence = %fence.describe(), "production fence installed");
    *FENCE.write().unwrap_or_else(PoisonError::into_inner) = Some(fence);
}

fn current() -> Arc<dyn Fence> {
    FENCE
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .unwrap_or_else(|| Arc::new(NoopFence))
}

/// Takes (or joins, when this process holds it already) the production role of `group` for
/// `server`. Promotion calls this before it turns a recovery server into production; the
/// production data path calls it before it accepts writes. Fails when another server holds
/// the role (its lease has not expired).
pub async fn acquire_production(group: &str, server: &str) -> Result<Arc<FenceLease>, String> {
    {
        let leases = LEASES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lease) = leases
            .as_ref()
            .and_then(|leases| leases.get(group))
            .and_then(Weak::upgrade)
        {
            if lease.holder() == server && *lease.validity().borrow() != Validity::Lost {
                return Ok(lease);
            }
        }
    }
    let fence = current();
    let lease = fence
        .acquire_production(group, server)
        .await
        .map_err(|error| {
            format!(
                "take the production fence of group {group} for {server} ({}): {error}",
                fence.describe()
            )
        })?;
    let lease = Arc::new(lease);
    let mut leases = LEASES.lock().unwrap_or_else(PoisonError::into_inner);
    let leases = leases.get_or_insert_with(HashMap::new);
    leases.retain(|_, lease| lease.strong_count() > 0);
    leases.insert(group.to_string(), Arc::downgrade(&lease));
    Ok(lease)
}

/// The fence a production data path holds, and the task that keeps its write gate in step.
pub(crate) struct Held {
    lease: Option<Arc<FenceLease>>,
    forward: Option<JoinHandle<()>>,
}

impl Held {
    pub(crate) async fn acquire(group: &str, server: &str) -> Result<Held, String> {
        Ok(Held {
            lease: Some(acquire_production(group, server).await?),
            forward: None,
        })
    }

    /// Opens the engine's write gate as long as the lease is valid, from now on.
    pub(crate) fn arm(&mut self, watermarks: Arc<Watermarks>) {
        let Some(lease) = &self.lease else {
            return;
        };
        let mut validity = lease.validity();
        let apply = move |validity: Validity| match validity {
            Validity::Unbounded => watermarks.write_gate.unfence(),
            Validity::Held { until, .. } => watermarks.write_gate.open_until(until),
            Validity::Lost => watermarks.write_gate.close(),
        };
        let now = *validity.borrow_and_update();
        apply(now);
        if now == Validity::Unbounded {
            return;
        }
        self.forward = Some(tokio::spawn(async move {
            loop {
                if validity.changed().await.is_err() {
                    apply(Validity::Lost);
                    return;
                }
                let now = *validity.borrow_and_update();
                apply(now);
            }
        }));
    }

    /// Gives the role up (the data path stopped cleanly): another server may take it at once.
    pub(crate) async fn release(mut self) {
        if let Some(forward) = self.forward.take() {
            forward.abort();
        }
        if let Some(lease) = self.lease.take() {
            if let Ok(lease) = Arc::try_unwrap(lease) {
                lease.release().await;
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(forward) = self.forward.take() {
            forward.abort();
        }
    }
}

/// Installs the etcd fence at `url` (`etcd://host:port,…`) with the default timing.
pub async fn install_etcd(url: &str) -> Result<(), redoubt_fence::FenceError> {
    let fence =
        redoubt_fence::EtcdFence::connect(url, redoubt_fence::FenceTiming::default()).await?;
    install(Arc::new(fence));
    Ok(())
}
