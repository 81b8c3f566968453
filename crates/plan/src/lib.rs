//! The configuration-initialization planner: (old config or nothing, new config) → for each
//! changed group, the ordered steps of the 20-step catalog with their rows, each deleting step
//! marked with what it deletes and where.
//!
//! ```text
//! Config(old?) ─┐
//!               ├─ redoubt_config::diff ─▶ [Change] ─ Builder (rules table) ─▶ GroupPlan
//! Config(new) ──┘                                                     └─▶ report::{to_text, to_json}
//! ```
//!
//! **Architecture invariant:** pure. No I/O, no clock, no randomness; the console and the CLI
//! call the same function, so `config plan` shows exactly what `config apply` runs.
//!
//! **Safety invariant:** no plan deletes a production LV unless the group is deleted and
//! [`PlanOptions::destroy_production_data`] is set.

pub mod catalog;
pub mod planner;
pub mod report;

pub use catalog::{catalog_step, CatalogStep, Rows, CATALOG};
pub use planner::{plan, Deleted, Deletion, GroupPlan, PlanError, PlanOptions, PlannedStep, Row};
