//! Replication between servers: the send process (LCA) on production ships the datatap's
//! journal to each recovery server, whose apply process (ABA) stores it durably and applies
//! it to the replica LVs in sequence order.
//!
//! ```text
//!  production                                   recovery server
//!  datatap ─▶ journal ─▶ lca::run ──TCP──▶ Aba::serve ─▶ journal copy ─▶ replica LVs
//!                  ▲                          │
//!                  └── prune ≤ shipped_seq ◀──┘ Ack{durable_seq, applied_seq}
//! ```
//!
//! The protocol is `redoubt-wire`; this crate only moves its frames over sockets and keeps
//! the storage on each side.

pub mod aba;
pub mod conn;
pub mod error;
pub mod lca;
pub mod recovery;
pub mod resync;
pub mod rollback;
pub mod snapshot;
pub mod verify;

pub use aba::{Aba, AbaConfig, AbaStatus, Paused, RestoreWindow, RollbackReport};
pub use error::ReplicationError;
pub use lca::{LcaConfig, SentBatch, TargetStatus, Targets};
