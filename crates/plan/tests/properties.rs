//! Properties of the planner over arbitrary pairs of valid configurations.

use std::path::PathBuf;

use proptest::prelude::*;
use redoubt_config::{
    parse, render_toml, Compression, Config, Containers, Group, Mode, NbdListen, Role, Server,
    Volume,
};
use redoubt_plan::{catalog_step, plan, Deleted, PlanOptions, Row, Rows};

const SERVER_NAMES: [&str; 4] = ["prod-a", "dr-b", "dr-c", "dr-d"];
const VOLUME_NAMES: [&str; 4] = ["lv_a", "lv_b", "lv_c", "lv_d"];
const GROUP_NAMES: [&str; 2] = ["erp", "mail"];

fn server(index: usize, alternate_dir: bool, alternate_port: bool) -> Server {
    let name = SERVER_NAMES[index];
    let port = 7411 + index as u16 + if alternate_port { 100 } else { 0 };
    Server {
        name: name.into(),
        address: format!("127.0.0.1:{port}"),
        data_dir: PathBuf::from(if alternate_dir {
            format!("/srv/{name}")
        } else {
            format!("/var/lib/redoubt/{name}")
        }),
        nbd_listen: (index == 0).then(|| NbdListen::Tcp("127.0.0.1:10809".into())),
        nbd_tls: false,
    }
}

fn group_strategy(name: &'static str) -> impl Strategy<Value = Group> {
    (
        Just(name),
        Just((
            0usize..4,
            prop::sample::subsequence(vec![0usize, 1, 2, 3], 1..=2),
        ))
        .prop_flat_map(|(p, r)| (p, r)),
        prop::sample::subsequence(VOLUME_NAMES.to_vec(), 1..=4),
        prop::collection::vec((1u64..=4, any::<bool>()), 4),
        (0u8..2, 0u8..3, 0u8..2, 0u8..2),
        (0u64..=2, 0u64..=2, 0u64..=2),
    )
        .prop_map(
            |(name, (production, recovery), volumes, sizes, tunables, containers)| {
                let recovery: Vec<String> = recovery
                    .into_iter()
                    .filter(|r| *r != production)
                    .map(|r| SERVER_NAMES[r].to_string())
                    .collect();
                let recovery = if recovery.is_empty() {
                    vec![SERVER_NAMES[(production + 1) % 4].to_string()]
                } else {
                    recovery
                };
                let volumes: Vec<Volume> = volumes
                    .into_iter()
                    .enumerate()
                    .map(|(index, volume)| Volume {
                        name: volume.into(),
                        size_bytes: sizes[index].0 << 20,
                        source: sizes[index]
                            .1
                            .then(|| PathBuf::from(format!("/dev/vg/{volume}"))),
                    })
                    .collect();
                Group {
                    name: name.into(),
                    production: SERVER_NAMES[production].into(),
                    recovery,
                    mode: if tunables.0 == 0 {
                        Mode::Async
                    } else {
                        Mode::Sync
                    },
                    retention_seconds: 3600 * (1 + u64::from(tunables.1)),
                    throttle_bytes_per_second: u64::from(tunables.2) << 20,
                    compression: if tunables.3 == 0 {
                        Compression::Zstd
                    } else {
                        Compression::None
                    },
                    containers: Containers {
                        replication_bytes: (16 + containers.0) << 20,
                        log_record_file_bytes: (16 + containers.1) << 20,
                        snapshot_bytes: (1 + containers.2) << 20,
                    },
                    volumes,
                }
            },
        )
}

fn config_strategy() -> impl Strategy<Value = Config> {
    (
        prop::collection::vec((any::<bool>(), any::<bool>()), 4),
        prop::option::of(group_strategy(GROUP_NAMES[0])),
        prop::option::of(group_strategy(GROUP_NAMES[1])),
    )
        .prop_map(|(servers, first, second)| Config {
            servers: servers
                .into_iter()
                .enumerate()
                .map(|(index, (dir, port))| server(index, dir, port))
                .collect(),
            groups: first.into_iter().chain(second).collect(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn rendered_configs_parse_back_identical(config in config_strategy()) {
        let text = render_toml(&config);
        let parsed = parse("generated.toml", &text);
        prop_assert_eq!(parsed, Ok(config), "{}", text);
    }

    #[test]
    fn plan_of_a_config_against_itself_is_empty(config in config_strategy()) {
        prop_assert_eq!(plan(Some(&config), &config, PlanOptions::default()), Ok(vec![]));
    }

    #[test]
    fn plans_are_ordered_rowed_and_safe(old in prop::option::of(config_strategy()), new in config_strategy(), destroy in any::<bool>()) {
        let options = PlanOptions { destroy_production_data: destroy };
        let Ok(plans) = plan(old.as_ref(), &new, options) else {
            // Refused changes (shrinks, source changes, production data_dir moves) are tested
            // by example; here only the plans that exist must hold the properties.
            return Ok(());
        };
        for group_plan in &plans {
            let old_group = old.as_ref().and_then(|c| c.group(&group_plan.group));
            let new_group = new.group(&group_plan.group);
            prop_assert!(old_group.is_some() || new_group.is_some());
            let numbers: Vec<u8> = group_plan.steps.iter().map(|s| s.number).collect();
            prop_assert!(numbers.windows(2).all(|w| w[0] < w[1]), "not ascending: {:?}", numbers);
            prop_assert!(!numbers.is_empty());
            prop_assert_eq!(numbers[0], 1, "every plan starts by saving the configuration");
            prop_assert_eq!(*numbers.last().unwrap(), 20, "every plan ends by verifying");
            let group_deleted = new_group.is_none();
            for step in &group_plan.steps {
                let catalog = catalog_step(step.number).unwrap();
                for row in &step.rows {
                    match row {
                        Row::Server { server, role } => {
                            let actual = new_group.and_then(|g| g.role_of(server))
                                .or_else(|| old_group.and_then(|g| g.role_of(server)));
                            prop_assert_eq!(actual, Some(*role), "step {} row {}", step.number, server);
                            match catalog.rows {
                                Rows::Recovery => prop_assert!(role.is_recovery()),
                                Rows::ProductionAndRecovery => {}
                                Rows::One | Rows::PerVolume => prop_assert!(false, "server row on step {}", step.number),
                            }
                        }
                        Row::Volume { volume } => {
                            prop_assert_eq!(catalog.rows, Rows::PerVolume);
                            prop_assert!(new_group.and_then(|g| g.volume(volume)).is_some());
                        }
                    }
                }
                for deletion in &step.deletes {
                    if let Deleted::ProductionVolume { .. } = deletion.what {
                        prop_assert!(group_deleted && destroy, "production LV deleted: {:?}", deletion);
                    }
                    let lv_deleting = matches!(
                        deletion.what,
                        Deleted::Replica { .. } | Deleted::ReplicationContainer | Deleted::AllContainers
                    );
                    if lv_deleting {
                        let server = deletion.server.as_deref();
                        for group in [old_group, new_group].into_iter().flatten() {
                            prop_assert_ne!(server, Some(group.production.as_str()),
                                "step {} deletes LVs on a production server: {:?}", step.number, deletion);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn roles_round_trip_through_json_names() {
    for role in [Role::Production, Role::Recovery1, Role::Recovery2] {
        assert!(!role.as_str().contains(' '));
    }
}
