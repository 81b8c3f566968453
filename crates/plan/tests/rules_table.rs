//! One test per row of the rules table in `config-initialization.md`, driven by the shipped
//! before/after examples, so the examples and the planner cannot drift apart.

use std::path::PathBuf;

use redoubt_config::{load, Config, Role};
use redoubt_plan::{plan, Deleted, GroupPlan, PlanOptions, Row};

fn example(case: &str, which: &str) -> Config {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/changes")
        .join(case)
        .join(format!("{which}.toml"));
    match load(&path) {
        Ok(config) => config,
        Err(diagnostics) => panic!("{} is invalid: {diagnostics:?}", path.display()),
    }
}

fn plan_case(case: &str) -> Vec<GroupPlan> {
    plan_case_with(case, PlanOptions::default())
}

fn plan_case_with(case: &str, options: PlanOptions) -> Vec<GroupPlan> {
    let before = example(case, "before");
    let after = example(case, "after");
    plan(Some(&before), &after, options).expect("plannable")
}

fn numbers(plan: &GroupPlan) -> Vec<u8> {
    plan.steps.iter().map(|step| step.number).collect()
}

fn rows_of(plan: &GroupPlan, number: u8) -> Vec<String> {
    let step = plan
        .steps
        .iter()
        .find(|s| s.number == number)
        .expect("step present");
    step.rows
        .iter()
        .map(|row| match row {
            Row::Server { server, role } => format!("{server}:{}", role.as_str()),
            Row::Volume { volume } => format!("volume:{volume}"),
        })
        .collect()
}

fn single(case: &str) -> GroupPlan {
    let mut plans = plan_case(case);
    assert_eq!(plans.len(), 1, "{case}: one group changed");
    plans.remove(0)
}

const ALL3: [&str; 3] = ["prod-a:production", "dr-b:recovery1", "dr-c:recovery2"];
const RECOVERY2: [&str; 2] = ["dr-b:recovery1", "dr-c:recovery2"];

#[test]
fn new_group() {
    let plans = {
        let after = example("new-group", "after");
        let before = example("new-group", "before");
        plan(Some(&before), &after, PlanOptions::default()).unwrap()
    };
    assert_eq!(numbers(&plans[0]), [1, 2, 11, 12, 16, 20]);
    assert_eq!(rows_of(&plans[0], 2), ALL3);
    assert_eq!(rows_of(&plans[0], 11), ALL3);
    assert!(plans[0].steps.iter().all(|s| s.deletes.is_empty()));
    // `--from` omitted means nothing is configured yet: the same plan.
    let from_nothing = plan(None, &example("new-group", "after"), PlanOptions::default()).unwrap();
    assert_eq!(from_nothing, plans);
}

#[test]
fn volume_added() {
    let plan = single("lv-added");
    assert_eq!(numbers(&plan), [1, 2, 11, 13, 14, 15, 16, 20]);
    assert_eq!(rows_of(&plan, 13), ["volume:lv_index"]);
    assert_eq!(rows_of(&plan, 15), RECOVERY2);
    // Titles name what the step works on; the catalog's placeholders stay for scripts.
    let title = |number: u8| {
        let step = plan.steps.iter().find(|s| s.number == number).unwrap();
        (step.title.as_str(), step.catalog_title)
    };
    assert_eq!(
        title(13),
        (
            "Set new logical volume lv_index as requiring replication",
            "Set new logical volume X as requiring replication"
        )
    );
    assert_eq!(
        title(2),
        (
            "Copy configuration to prod-a, dr-b, dr-c",
            "Copy configuration to S"
        )
    );
    assert_eq!(title(15).0, "Reset apply process (ABA) on dr-b, dr-c");
    assert_eq!(title(14).0, "Reset send process (LCA)");
}

#[test]
fn volume_removed_deletes_replicas_only() {
    let plan = single("lv-removed");
    assert_eq!(numbers(&plan), [1, 2, 4, 14, 15, 16, 17, 20]);
    assert_eq!(rows_of(&plan, 4), RECOVERY2, "replica side only");
    let step4 = plan.steps.iter().find(|s| s.number == 4).unwrap();
    let servers: Vec<_> = step4
        .deletes
        .iter()
        .map(|d| d.server.clone().unwrap())
        .collect();
    assert_eq!(servers, ["dr-b", "dr-c"]);
    assert!(step4.deletes.iter().all(|d| d.what
        == Deleted::Replica {
            volume: "lv_logs".into()
        }));
    assert_eq!(rows_of(&plan, 17), ALL3);
}

#[test]
fn volume_grown() {
    let plan = single("lv-grown");
    assert_eq!(numbers(&plan), [1, 2, 11, 13, 14, 15, 16, 20]);
    assert_eq!(rows_of(&plan, 13), ["volume:lv_data01"]);
}

#[test]
fn log_record_file_container_resized() {
    let plan = single("lfc-resized");
    assert_eq!(numbers(&plan), [1, 2, 5, 11, 14, 15, 16, 20]);
    assert_eq!(rows_of(&plan, 5), RECOVERY2);
    let step5 = plan.steps.iter().find(|s| s.number == 5).unwrap();
    assert!(step5.deletes.iter().any(|d| d.what == Deleted::Snapshots));
    assert!(step5
        .deletes
        .iter()
        .any(|d| d.what == Deleted::Journal && d.description.contains("drains")));
}

#[test]
fn snapshot_container_resized() {
    let plan = single("snapshot-resized");
    assert_eq!(numbers(&plan), [1, 2, 8, 9, 11, 16, 20]);
    assert_eq!(rows_of(&plan, 8), RECOVERY2);
    assert_eq!(rows_of(&plan, 11), ALL3);
}

#[test]
fn replication_container_resized() {
    let plan = single("replication-resized");
    assert_eq!(numbers(&plan), [1, 2, 6, 11, 12, 15, 16, 20]);
    assert_eq!(
        rows_of(&plan, 6),
        RECOVERY2,
        "production's container is never emptied"
    );
}

#[test]
fn recovery_server_added() {
    let plan = single("recovery-added");
    assert_eq!(numbers(&plan), [1, 2, 11, 12, 14, 15, 16, 18, 20]);
    assert_eq!(rows_of(&plan, 11), ["dr-c:recovery2"]);
    assert_eq!(rows_of(&plan, 15), ["dr-c:recovery2"]);
    assert_eq!(rows_of(&plan, 16), ["prod-a:production", "dr-c:recovery2"]);
}

#[test]
fn recovery_server_removed() {
    let plan = single("recovery-removed");
    assert_eq!(numbers(&plan), [1, 2, 7, 14, 17, 18, 20]);
    assert_eq!(rows_of(&plan, 7), ["dr-c:recovery2"]);
    assert_eq!(rows_of(&plan, 2), ["prod-a:production", "dr-b:recovery1"]);
    assert_eq!(
        rows_of(&plan, 20),
        ALL3,
        "the removed server is verified empty too"
    );
}

#[test]
fn production_replaced() {
    let plan = single("production-replaced");
    assert_eq!(
        numbers(&plan),
        [1, 2, 3, 10, 11, 12, 14, 15, 16, 17, 18, 19, 20]
    );
    assert!(rows_of(&plan, 17).contains(&"prod-a:production".to_string()));
    assert!(rows_of(&plan, 11).contains(&"prod-x:production".to_string()));
    assert!(
        plan.warnings.iter().any(|w| w.contains("start empty")),
        "replacing production with an empty server is called out: {:?}",
        plan.warnings
    );
}

#[test]
fn roles_swapped_keeps_replicas() {
    let plan = single("roles-swapped");
    assert_eq!(
        numbers(&plan),
        [1, 2, 3, 10, 11, 12, 14, 15, 16, 17, 18, 19, 20]
    );
    assert_eq!(rows_of(&plan, 15), ["prod-a:recovery1", "dr-c:recovery2"]);
    for step in &plan.steps {
        for deletion in &step.deletes {
            assert!(
                !matches!(
                    deletion.what,
                    Deleted::Replica { .. }
                        | Deleted::ReplicationContainer
                        | Deleted::AllContainers
                ),
                "a role swap keeps every LV: {deletion:?}"
            );
        }
    }
    assert!(plan.warnings.is_empty());
}

#[test]
fn tunables_only() {
    let plan = single("tunables");
    assert_eq!(numbers(&plan), [1, 2, 14, 15, 20]);
    assert_eq!(
        plan.changes.len(),
        4,
        "mode, retention, throttle, compression"
    );
}

#[test]
fn group_deleted_keeps_production_data_unless_destroyed() {
    let plan = single("group-deleted");
    assert_eq!(numbers(&plan), [1, 3, 4, 7, 17, 18, 20]);
    assert_eq!(rows_of(&plan, 4), RECOVERY2);
    let destroys = |p: &GroupPlan| {
        p.steps
            .iter()
            .flat_map(|s| &s.deletes)
            .filter(|d| matches!(d.what, Deleted::ProductionVolume { .. }))
            .count()
    };
    assert_eq!(destroys(&plan), 0);
    assert!(plan.warnings.iter().any(|w| w.contains("--destroy")));

    let destroyed = plan_case_with(
        "group-deleted",
        PlanOptions {
            destroy_production_data: true,
        },
    );
    assert_eq!(destroys(&destroyed[0]), 2);
    assert_eq!(rows_of(&destroyed[0], 4), ALL3);
}

#[test]
fn no_change() {
    assert!(plan_case("no-change").is_empty());
}

#[test]
fn every_row_role_is_one_the_catalog_allows_in_the_examples() {
    let cases =
        std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/changes"))
            .unwrap();
    let mut count = 0;
    for case in cases {
        let name = case.unwrap().file_name().into_string().unwrap();
        for plan in plan_case(&name) {
            for step in &plan.steps {
                let catalog = redoubt_plan::catalog_step(step.number).unwrap();
                for row in &step.rows {
                    if let Row::Server { role, .. } = row {
                        if catalog.rows == redoubt_plan::Rows::Recovery {
                            assert_ne!(*role, Role::Production, "{name}: step {}", step.number);
                        }
                    }
                }
            }
        }
        count += 1;
    }
    assert_eq!(count, 14, "every rules-table row has an example pair");
}

#[test]
fn unsupported_changes_are_refused_with_a_reason() {
    let before = example("lv-grown", "after");
    let after = example("lv-grown", "before");
    let errors = plan(Some(&before), &after, PlanOptions::default()).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].reason.contains("shrink"), "{}", errors[0]);

    let mut moved = before.clone();
    moved.servers[0].data_dir = "/srv/elsewhere".into();
    let errors = plan(Some(&before), &moved, PlanOptions::default()).unwrap_err();
    assert!(errors[0].reason.contains("fail over"), "{}", errors[0]);
}

#[test]
fn recovery_data_dir_move_rebuilds_that_server_only() {
    let before = example("no-change", "before");
    let mut after = before.clone();
    after.servers[1].data_dir = "/srv/dr-b".into();
    let plans = plan(Some(&before), &after, PlanOptions::default()).unwrap();
    assert_eq!(numbers(&plans[0]), [1, 2, 7, 11, 12, 14, 15, 16, 20]);
    assert_eq!(rows_of(&plans[0], 7), ["dr-b:recovery1"]);
}
