//! The Redoubt configuration: one TOML file of servers and replication groups.
//!
//! ```text
//! TOML text ──parse──▶ Config ──diff(old, new)──▶ [Change] ──▶ redoubt-plan
//!                 └──▶ [Diagnostic] (every error: file, line, column, field, reason)
//! ```
//!
//! **Architecture invariant:** this crate does no I/O beyond reading a file in [`load`]; it
//! knows nothing of agents, journals or the network.

pub mod diff;
pub mod model;
pub mod parse;
pub mod render;
pub mod units;

pub use diff::{diff, Change};
pub use model::*;
pub use parse::{load, parse, Diagnostic};
pub use render::render_toml;
