//! The durable record of one group's configuration initialization, and the pure decision
//! logic of the executor: given the steps and their rows' states, what runs next.
//!
//! Nothing here does I/O or reads a clock; times are passed in.

use serde::{Deserialize, Serialize};

use redoubt_config::{Config, Role};
use redoubt_plan::{GroupPlan, Row};

/// The step the console itself performs when it saves the version.
pub const SAVE_STEP: u8 = 1;

/// "One" steps sent to every server of the old and the new group (agent-api.md).
const EVERY_SERVER_STEPS: [u8; 2] = [3, 10];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowState {
    Pending,
    Running,
    Done,
    Failed,
}

impl RowState {
    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Pending => "pending",
            RowState::Running => "running",
            RowState::Done => "done",
            RowState::Failed => "failed",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitState {
    Running,
    Failed,
    Done,
}

impl InitState {
    pub fn as_str(self) -> &'static str {
        match self {
            InitState::Running => "running",
            InitState::Failed => "failed",
            InitState::Done => "done",
        }
    }
}

/// What a row is about, as the agent receives it (`row` of `POST /v1/step`); `None` in a
/// [`RowRecord`] for steps that run once for the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RowKey {
    Server { server: String, role: String },
    Volume { volume: String },
}

/// An agent a row is sent to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub server: String,
    /// `host:port` of the agent, from the configuration that names the server.
    pub address: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowRecord {
    pub row: Option<RowKey>,
    /// The agents this row is sent to, in order; empty for step 1 (the console's own).
    pub targets: Vec<Target>,
    pub state: RowState,
    pub error: Option<String>,
    pub started_unix_ms: Option<u64>,
    pub finished_unix_ms: Option<u64>,
    /// How many times the row was started (retries and resumes included).
    pub attempts: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionRecord {
    pub server: Option<String>,
    pub data: bool,
    pub description: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub number: u8,
    pub title: String,
    pub deletes: Vec<DeletionRecord>,
    pub rows: Vec<RowRecord>,
}

/// Everything one group's initialization needs, written before any of it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InitRecord {
    pub group: String,
    /// The configuration version this initialization brings the group to.
    pub version: u64,
    /// The version in effect before (`None` for the first configuration).
    pub previous_version: Option<u64>,
    pub destroy: bool,
    pub state: InitState,
    /// The plan exactly as `redoubt_plan::report::to_json` rendered it.
    pub plan: serde_json::Value,
    pub steps: Vec<StepRecord>,
    pub started_unix_ms: u64,
    pub finished_unix_ms: Option<u64>,
}

/// Where a row stands in the record: step index and row index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowRef {
    pub step: usize,
    pub row: usize,
}

/// What the executor does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Start these rows (all of one step) in parallel.
    Run(Vec<RowRef>),
    /// Rows are running; wait for one to end.
    Wait,
    /// A row of this step failed and nothing else can run: the initialization is failed.
    Failed { step: u8 },
    /// Every row of every step is done.
    Done,
}

/// The decision rule: steps run in catalog order; a step starts only when every row of the
/// previous steps is done; its pending rows start together; a failed row blocks every later
/// step until it is retried.
pub fn next(steps: &[StepRecord]) -> Next {
    for (step_index, step) in steps.iter().enumerate() {
        if step.rows.iter().all(|row| row.state == RowState::Done) {
            continue;
        }
        let pending: Vec<RowRef> = step
            .rows
            .iter()
            .enumerate()
            .filter(|(_, row)| row.state == RowState::Pending)
            .map(|(row, _)| RowRef {
                step: step_index,
                row,
            })
            .collect();
        if !pending.is_empty() {
            return Next::Run(pending);
        }
        if step.rows.iter().any(|row| row.state == RowState::Running) {
            return Next::Wait;
        }
        return Next::Failed { step: step.number };
    }
    Next::Done
}

/// The step the initialization is at: the first one with a row not done.
pub fn current_step(steps: &[StepRecord]) -> Option<u8> {
    steps
        .iter()
        .find(|step| step.rows.iter().any(|row| row.state != RowState::Done))
        .map(|step| step.number)
}

/// The first failed row's error, with its step, for messages.
pub fn first_failure(steps: &[StepRecord]) -> Option<(u8, String)> {
    steps.iter().find_map(|step| {
        step.rows
            .iter()
            .find(|row| row.state == RowState::Failed)
            .map(|row| (step.number, row.error.clone().unwrap_or_default()))
    })
}

/// Prepares a record found `running` after a console start: rows that were running when the
/// console stopped run again (agent steps are idempotent).
pub fn prepare_resume(record: &mut InitRecord) {
    for row in record
        .steps
        .iter_mut()
        .flat_map(|step| step.rows.iter_mut())
    {
        if row.state == RowState::Running {
            row.state = RowState::Pending;
        }
    }
}

/// Makes every failed row pending again and the initialization running; returns how many rows
/// were reset (0: nothing to retry, record unchanged).
pub fn reset_failed(record: &mut InitRecord) -> usize {
    let mut reset = 0;
    for row in record
        .steps
        .iter_mut()
        .flat_map(|step| step.rows.iter_mut())
    {
        if row.state == RowState::Failed {
            row.state = RowState::Pending;
            row.error = None;
            row.finished_unix_ms = None;
            reset += 1;
        }
    }
    if reset > 0 {
        record.state = InitState::Running;
        record.finished_unix_ms = None;
    }
    reset
}

/// Inputs of [`build_record`] besides the plan and the configurations.
#[derive(Clone, Copy, Debug)]
pub struct RecordContext {
    pub version: u64,
    pub previous_version: Option<u64>,
    pub destroy: bool,
    pub now_unix_ms: u64,
}

/// Turns one group's plan into its durable record: every row with the agents it goes to, step
/// 1 already done (the version is saved in the same transaction).
pub fn build_record(
    plan: &GroupPlan,
    plan_json: serde_json::Value,
    old: Option<&Config>,
    new: &Config,
    context: RecordContext,
) -> Result<InitRecord, String> {
    let old_group = old.and_then(|config| config.group(&plan.group));
    let new_group = new.group(&plan.group);
    let address = |server: &str| -> Result<Target, String> {
        new.server(server)
            .or_else(|| old.and_then(|config| config.server(server)))
            .map(|found| Target {
                server: found.name.clone(),
                address: found.address.clone(),
            })
            .ok_or_else(|| {
                format!(
                    "group {}: server {server} is in neither the old nor the new configuration",
                    plan.group
                )
            })
    };
    let production = new_group
        .or(old_group)
        .map(|group| group.production.clone())
        .ok_or_else(|| format!("group {} is in neither configuration", plan.group))?;
    let mut every_server: Vec<String> = Vec::new();
    for group in [new_group, old_group].into_iter().flatten() {
        for (server, _) in group.members() {
            if !every_server.iter().any(|known| known == server) {
                every_server.push(server.to_string());
            }
        }
    }

    let mut steps = Vec::with_capacity(plan.steps.len());
    for step in &plan.steps {
        let mut rows = Vec::new();
        if step.rows.is_empty() {
            let targets = if step.number == SAVE_STEP {
                Vec::new()
            } else if EVERY_SERVER_STEPS.contains(&step.number) {
                every_server
                    .iter()
                    .map(|server| address(server))
                    .collect::<Result<_, _>>()?
            } else {
                vec![address(&production)?]
            };
            rows.push(new_row(None, targets, step.number, context.now_unix_ms));
        }
        for row in &step.rows {
            let (key, target) = match row {
                Row::Server { role, server } => (
                    RowKey::Server {
                        server: server.clone(),
                        role: role_name(*role).to_string(),
                    },
                    address(server)?,
                ),
                Row::Volume { volume } => (
                    RowKey::Volume {
                        volume: volume.clone(),
                    },
                    address(&production)?,
                ),
            };
            rows.push(new_row(
                Some(key),
                vec![target],
                step.number,
                context.now_unix_ms,
            ));
        }
        steps.push(StepRecord {
            number: step.number,
            title: step.title.clone(),
            deletes: step
                .deletes
                .iter()
                .map(|deletion| DeletionRecord {
                    server: deletion.server.clone(),
                    data: deletion.what.is_data(),
                    description: deletion.description.clone(),
                })
                .collect(),
            rows,
        });
    }
    Ok(InitRecord {
        group: plan.group.clone(),
        version: context.version,
        previous_version: context.previous_version,
        destroy: context.destroy,
        state: InitState::Running,
        plan: plan_json,
        steps,
        started_unix_ms: context.now_unix_ms,
        finished_unix_ms: None,
    })
}

fn role_name(role: Role) -> &'static str {
    role.as_str()
}

fn new_row(row: Option<RowKey>, targets: Vec<Target>, step: u8, now: u64) -> RowRecord {
    let done = step == SAVE_STEP;
    RowRecord {
        row,
        targets,
        state: if done {
            RowState::Done
        } else {
            RowState::Pending
        },
        error: None,
        started_unix_ms: done.then_some(now),
        finished_unix_ms: done.then_some(now),
        attempts: u32::from(done),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(state: RowState) -> RowRecord {
        RowRecord {
            row: None,
            targets: Vec::new(),
            state,
            error: (state == RowState::Failed).then(|| "boom".to_string()),
            started_unix_ms: None,
            finished_unix_ms: None,
            attempts: 0,
        }
    }

    fn step(number: u8, states: &[RowState]) -> StepRecord {
        StepRecord {
            number,
            title: format!("step {number}"),
            deletes: Vec::new(),
            rows: states.iter().copied().map(row).collect(),
        }
    }

    fn refs(step: usize, rows: &[usize]) -> Next {
        Next::Run(rows.iter().map(|&row| RowRef { step, row }).collect())
    }

    use RowState::{Done, Failed, Pending, Running};

    #[test]
    fn first_step_not_done_runs_all_its_pending_rows_together() {
        let steps = [
            step(1, &[Done]),
            step(2, &[Pending, Pending, Pending]),
            step(11, &[Pending, Pending]),
        ];
        assert_eq!(next(&steps), refs(1, &[0, 1, 2]));
        assert_eq!(current_step(&steps), Some(2));
    }

    #[test]
    fn a_step_waits_for_every_row_of_the_previous_one() {
        let steps = [step(2, &[Done, Running, Done]), step(11, &[Pending])];
        assert_eq!(next(&steps), Next::Wait);
        let steps = [step(2, &[Done, Done, Done]), step(11, &[Pending])];
        assert_eq!(next(&steps), refs(1, &[0]));
    }

    #[test]
    fn failure_blocks_later_steps_until_retry() {
        let mut record = InitRecord {
            group: "erp".into(),
            version: 2,
            previous_version: Some(1),
            destroy: false,
            state: InitState::Running,
            plan: serde_json::Value::Null,
            steps: vec![
                step(1, &[Done]),
                step(2, &[Done, Failed]),
                step(16, &[Pending]),
            ],
            started_unix_ms: 0,
            finished_unix_ms: None,
        };
        assert_eq!(next(&record.steps), Next::Failed { step: 2 });
        assert_eq!(first_failure(&record.steps), Some((2, "boom".to_string())));
        // A failed sibling still running: wait for it before declaring failure.
        let waiting = [step(2, &[Running, Failed]), step(16, &[Pending])];
        assert_eq!(next(&waiting), Next::Wait);

        record.state = InitState::Failed;
        assert_eq!(reset_failed(&mut record), 1);
        assert_eq!(record.state, InitState::Running);
        assert_eq!(record.steps[1].rows[1].error, None);
        assert_eq!(next(&record.steps), refs(1, &[1]));
        assert_eq!(reset_failed(&mut record), 0, "nothing failed any more");
    }

    #[test]
    fn resume_reruns_rows_that_were_running_and_nothing_done() {
        let mut record = InitRecord {
            group: "erp".into(),
            version: 1,
            previous_version: None,
            destroy: false,
            state: InitState::Running,
            plan: serde_json::Value::Null,
            steps: vec![step(1, &[Done]), step(2, &[Done, Running, Pending])],
            started_unix_ms: 0,
            finished_unix_ms: None,
        };
        prepare_resume(&mut record);
        assert_eq!(next(&record.steps), refs(1, &[1, 2]));
    }

    #[test]
    fn all_done_is_done() {
        let steps = [step(1, &[Done]), step(20, &[Done, Done])];
        assert_eq!(next(&steps), Next::Done);
        assert_eq!(current_step(&steps), None);
        assert_eq!(next(&[]), Next::Done);
    }

    const TWO: &str = r#"
[[server]]
name = "prod-a"
address = "127.0.0.1:7411"
data_dir = "/var/lib/redoubt/prod-a"
nbd_listen = "127.0.0.1:10809"

[[server]]
name = "dr-b"
address = "127.0.0.1:7412"
data_dir = "/var/lib/redoubt/dr-b"

[[group]]
name = "erp"
production = "prod-a"
recovery = ["dr-b"]
mode = "async"
retention = "24h"
throttle = "0"
compression = "zstd"

[group.containers]
replication = "4GiB"
log_record_file = "1GiB"
snapshot = "1GiB"

[[group.volume]]
name = "lv_data01"
size = "1GiB"
"#;

    #[test]
    fn record_of_a_new_group_targets_the_right_agents() {
        let config = redoubt_config::parse("two.toml", TWO).expect("valid test config");
        let plans = redoubt_plan::plan(None, &config, redoubt_plan::PlanOptions::default())
            .expect("plannable");
        let plan = &plans[0];
        let record = build_record(
            plan,
            serde_json::Value::Null,
            None,
            &config,
            RecordContext {
                version: 1,
                previous_version: None,
                destroy: false,
                now_unix_ms: 5,
            },
        )
        .expect("record");
        let numbers: Vec<u8> = record.steps.iter().map(|step| step.number).collect();
        let planned: Vec<u8> = plan.steps.iter().map(|step| step.number).collect();
        assert_eq!(numbers, planned);
        assert_eq!(record.steps[0].number, 1);
        assert_eq!(record.steps[0].rows[0].state, RowState::Done);
        assert!(record.steps[0].rows[0].targets.is_empty());
        for step in &record.steps[1..] {
            for row in &step.rows {
                assert_eq!(row.state, RowState::Pending);
                assert_eq!(row.targets.len(), 1);
                match &row.row {
                    Some(RowKey::Server { server, .. }) => {
                        assert_eq!(&row.targets[0].server, server)
                    }
                    Some(RowKey::Volume { .. }) | None => {
                        assert_eq!(row.targets[0].server, "prod-a");
                        assert_eq!(row.targets[0].address, "127.0.0.1:7411");
                    }
                }
            }
        }
        let step12 = record
            .steps
            .iter()
            .find(|step| step.number == 12)
            .expect("a new group syncs every LV");
        assert_eq!(step12.rows.len(), 1);
        assert_eq!(step12.rows[0].row, None);
        // The record survives a JSON round trip unchanged.
        let text = serde_json::to_string(&record).expect("serialize");
        let back: InitRecord = serde_json::from_str(&text).expect("deserialize");
        assert_eq!(back, record);
    }

    #[test]
    fn steps_3_and_10_go_to_every_server_of_old_and_new_group() {
        let old = redoubt_config::parse("old.toml", TWO).expect("valid");
        // Swap roles: production becomes dr-b.
        let swapped = TWO
            .replace("production = \"prod-a\"", "production = \"dr-b\"")
            .replace("recovery = [\"dr-b\"]", "recovery = [\"prod-a\"]")
            .replace(
                "data_dir = \"/var/lib/redoubt/dr-b\"",
                "data_dir = \"/var/lib/redoubt/dr-b\"\nnbd_listen = \"127.0.0.1:10810\"",
            );
        let new = redoubt_config::parse("new.toml", &swapped).expect("valid swapped");
        let plans = redoubt_plan::plan(Some(&old), &new, redoubt_plan::PlanOptions::default())
            .expect("plannable");
        let record = build_record(
            &plans[0],
            serde_json::Value::Null,
            Some(&old),
            &new,
            RecordContext {
                version: 2,
                previous_version: Some(1),
                destroy: false,
                now_unix_ms: 0,
            },
        )
        .expect("record");
        let step3 = record
            .steps
            .iter()
            .find(|step| step.number == 3)
            .expect("roles swapped runs step 3");
        let servers: Vec<&str> = step3.rows[0]
            .targets
            .iter()
            .map(|target| target.server.as_str())
            .collect();
        assert_eq!(servers, ["dr-b", "prod-a"]);
        let step14 = record
            .steps
            .iter()
            .find(|step| step.number == 14)
            .expect("roles swapped runs step 14");
        assert_eq!(step14.rows[0].targets[0].server, "dr-b", "new production");
    }
}
