//! The datatap: the write splitter on a production server. Every write to a protected LV goes
//! to the group's redo journal and to the LV, in one global order across all LVs of the group;
//! users reach the LVs through an NBD export per LV.
//!
//! ```text
//!  NBD client ─▶ server (one export per LV) ─▶ engine (commit thread) ─▶ journal ─▶ LCA
//!                                                        └────────────▶ LVs
//! ```
//!
//! **Architecture invariant:** the datatap never ships or applies records to replicas; it only
//! produces the journal. The NBD wire format lives in `redoubt-nbd-proto`, the journal format in
//! `redoubt-journal`, the LV files in `redoubt-volume`.

mod applier;
pub mod block;
pub mod engine;
pub mod error;
pub mod gate;
pub mod listen;
pub mod payload;
mod pending;
pub mod server;
pub mod state;
pub mod verify;

pub use block::{BlockVolume, FsVolume};
pub use engine::{Engine, EngineConfig, JournalLocation, Op, OpError, OpenedVolume, Watermarks};
pub use error::DatatapError;
pub use listen::{bind, bind_tcp_waiting, serve, Bound, Listen, BIND_ADDRESS_IN_USE_WAIT_MS};
pub use payload::Payload;
/// Whom a super transaction is for (`Op::FullSync`, `Op::ResyncRegions`).
pub use redoubt_journal::ResyncTargets;
pub use server::{serve_connection, BackendExport, Export, ExportBackend, Exports};
