//! The TLS identities this process holds, by server name.
//!
//! An agent registers its identity when it starts; code deep in the data path (the send
//! process opening a connection to a recovery server) finds it by the name it sends as, so
//! the identity does not have to be threaded through every layer. Several agents in one
//! process (tests) keep apart because their names differ.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::TlsContext;

fn table() -> MutexGuard<'static, BTreeMap<String, Arc<TlsContext>>> {
    static TABLE: OnceLock<Mutex<BTreeMap<String, Arc<TlsContext>>>> = OnceLock::new();
    TABLE
        .get_or_init(|| Mutex::new(BTreeMap::new()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Registers `context` under its name, replacing an earlier one.
pub fn register(context: Arc<TlsContext>) {
    table().insert(context.name().to_string(), context);
}

/// Removes the identity of `name` if it is `context` (a restarted agent may have replaced it).
pub fn unregister(context: &Arc<TlsContext>) {
    let mut table = table();
    if table
        .get(context.name())
        .is_some_and(|registered| Arc::ptr_eq(registered, context))
    {
        table.remove(context.name());
    }
}

/// The identity of `name`, if this process holds one.
pub fn lookup(name: &str) -> Option<Arc<TlsContext>> {
    table().get(name).cloned()
}

/// Any identity this process holds (for calls that only need to present a cluster
/// certificate, such as an agent's health check of a peer).
pub fn any() -> Option<Arc<TlsContext>> {
    table().values().next().cloned()
}
