//! Plans as people and scripts read them. The JSON shape is a contract
//! (`shared/spec/cli.md`): add fields, never rename.

use std::fmt::Write;

use serde::Serialize;

use crate::planner::{GroupPlan, Row};

#[derive(Serialize)]
pub struct PlanJson {
    pub group: String,
    pub changes: Vec<String>,
    pub steps: Vec<StepJson>,
    pub warnings: Vec<String>,
}

#[derive(Serialize)]
pub struct StepJson {
    pub number: u8,
    pub title: String,
    /// The catalog's wording of the step (with S and X), for scripts that match on it.
    pub catalog_title: &'static str,
    pub rows: Vec<RowJson>,
    pub deletes: Vec<DeleteJson>,
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum RowJson {
    Server { server: String, role: &'static str },
    Volume { volume: String },
}

#[derive(Serialize)]
pub struct DeleteJson {
    pub server: Option<String>,
    pub data: bool,
    pub description: String,
}

pub fn to_json(plans: &[GroupPlan]) -> Vec<PlanJson> {
    plans
        .iter()
        .map(|plan| PlanJson {
            group: plan.group.clone(),
            changes: plan.changes.iter().map(ToString::to_string).collect(),
            steps: plan
                .steps
                .iter()
                .map(|step| StepJson {
                    number: step.number,
                    title: step.title.clone(),
                    catalog_title: step.catalog_title,
                    rows: step
                        .rows
                        .iter()
                        .map(|row| match row {
                            Row::Server { role, server } => RowJson::Server {
                                server: server.clone(),
                                role: role.as_str(),
                            },
                            Row::Volume { volume } => RowJson::Volume {
                                volume: volume.clone(),
                            },
                        })
                        .collect(),
                    deletes: step
                        .deletes
                        .iter()
                        .map(|deletion| DeleteJson {
                            server: deletion.server.clone(),
                            data: deletion.what.is_data(),
                            description: deletion.description.clone(),
                        })
                        .collect(),
                })
                .collect(),
            warnings: plan.warnings.clone(),
        })
        .collect()
}

/// The Configuration Summary form: numbered steps, an indented row per server or volume,
/// destructive steps flagged with what they delete.
pub fn to_text(plans: &[GroupPlan]) -> String {
    let mut out = String::new();
    if plans.is_empty() {
        out.push_str("No change: the configuration is already in effect; nothing to initialize.\n");
        return out;
    }
    for (index, plan) in plans.iter().enumerate() {
        if index > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "Replication group {}", plan.group);
        out.push_str("  Changes:\n");
        for change in &plan.changes {
            let _ = writeln!(out, "    - {change}");
        }
        let _ = writeln!(
            out,
            "  Configuration initialization ({} steps):",
            plan.steps.len()
        );
        for step in &plan.steps {
            let destructive = step.deletes.iter().any(|d| d.what.is_data());
            let flag = if destructive { "   [DELETES DATA]" } else { "" };
            let _ = writeln!(out, "  {:>4}. {}{flag}", step.number, step.title);
            for row in &step.rows {
                match row {
                    Row::Server { role, server } => {
                        let _ = writeln!(out, "          {server} ({role})");
                    }
                    Row::Volume { volume } => {
                        let _ = writeln!(out, "          volume {volume}");
                    }
                }
            }
            for deletion in &step.deletes {
                let marker = if deletion.what.is_data() { "!" } else { "-" };
                let _ = writeln!(out, "          {marker} {}", deletion.description);
            }
        }
        for warning in &plan.warnings {
            let _ = writeln!(out, "  Note: {warning}");
        }
    }
    out
}
