mod common;

use std::path::PathBuf;

use common::MIB;
use redoubt_volume::{
    verify_group, ContainerCapacities, CreateLvOptions, GroupLayout, GroupStore, IoMode, Mismatch,
    VolumeError, VolumeSpec,
};

const CAPACITIES: ContainerCapacities = ContainerCapacities {
    replication_bytes: 16 * MIB,
    log_record_file_bytes: 8 * MIB,
    snapshot_bytes: 4 * MIB,
};

fn spec(name: &str, size_bytes: u64) -> VolumeSpec {
    VolumeSpec {
        name: name.into(),
        size_bytes,
        source: None,
    }
}

fn store_with(data_dir: &std::path::Path, specs: &[VolumeSpec]) -> GroupStore {
    let mut store = GroupStore::open_or_create(data_dir, "erp", CAPACITIES).unwrap();
    for spec in specs {
        store
            .ensure_volume(spec, CreateLvOptions::default(), IoMode::Auto)
            .unwrap();
    }
    store
}

#[test]
fn creates_layout_and_verifies_clean() {
    let data_dir = tempfile::tempdir().unwrap();
    let specs = [spec("lv_data01", 4 * MIB), spec("lv_data02", 2 * MIB)];
    let store = store_with(data_dir.path(), &specs);
    let layout = GroupLayout::new(data_dir.path(), "erp").unwrap();
    assert_eq!(
        layout.replication_dir(),
        data_dir.path().join("groups/erp/replication")
    );
    assert_eq!(
        store.journal().path(),
        data_dir.path().join("groups/erp/journal")
    );
    assert_eq!(store.journal().capacity_bytes(), 8 * MIB);
    assert_eq!(store.snapshot().capacity_bytes(), 4 * MIB);
    assert_eq!(store.replication().usage_bytes(), 6 * MIB);
    assert_eq!(store.verify(CAPACITIES, &specs).unwrap(), vec![]);
    // The journal crate's own files in its container are not our business.
    std::fs::write(store.journal().path().join("segment-000001.partial"), b"x").unwrap();
    assert_eq!(store.verify(CAPACITIES, &specs).unwrap(), vec![]);

    // Reopening finds the same volumes rather than creating new ones.
    drop(store);
    let mut store = GroupStore::open_or_create(data_dir.path(), "erp", CAPACITIES).unwrap();
    let volume = store
        .ensure_volume(&specs[0], CreateLvOptions::default(), IoMode::Auto)
        .unwrap();
    assert_eq!(volume.size_bytes(), 4 * MIB);
    assert_eq!(store.replication().usage_bytes(), 6 * MIB);
}

#[test]
fn group_name_cannot_escape_data_dir() {
    let data_dir = tempfile::tempdir().unwrap();
    for group in ["..", "../x", "a/b", ""] {
        let error = GroupStore::open_or_create(data_dir.path(), group, CAPACITIES).unwrap_err();
        assert!(
            matches!(error, VolumeError::InvalidName { .. }),
            "{group:?}"
        );
    }
}

#[test]
fn verify_names_deleted_and_truncated_files() {
    let data_dir = tempfile::tempdir().unwrap();
    let specs = [spec("gone", MIB), spec("short", 2 * MIB), spec("fine", MIB)];
    let store = store_with(data_dir.path(), &specs);
    let directory = store.layout().replication_dir();
    std::fs::remove_file(directory.join("gone")).unwrap();
    std::fs::File::options()
        .write(true)
        .open(directory.join("short"))
        .unwrap()
        .set_len(4096)
        .unwrap();

    let mismatches = store.verify(CAPACITIES, &specs).unwrap();
    assert_eq!(
        mismatches,
        vec![
            Mismatch::LvMissing {
                path: directory.join("gone")
            },
            Mismatch::LvSizeDiffers {
                path: directory.join("short"),
                configured_bytes: 2 * MIB,
                actual_bytes: 4096
            },
        ]
    );
    let messages: Vec<String> = mismatches.iter().map(ToString::to_string).collect();
    assert!(
        messages[0].contains(&directory.join("gone").display().to_string()),
        "{}",
        messages[0]
    );
    assert!(messages[0].contains("missing"));
    assert!(
        messages[1].contains(&directory.join("short").display().to_string()),
        "{}",
        messages[1]
    );
    assert!(messages[1].contains("4096"));
}

#[test]
fn verify_reports_config_drift_and_stray_files() {
    let data_dir = tempfile::tempdir().unwrap();
    let store = store_with(data_dir.path(), &[spec("old", MIB), spec("kept", MIB)]);
    let directory = store.layout().replication_dir();
    std::fs::write(directory.join("stray.img"), b"?").unwrap();

    let configured = [spec("kept", 2 * MIB), spec("new", MIB)];
    let capacities = ContainerCapacities {
        replication_bytes: 32 * MIB,
        ..CAPACITIES
    };
    let mismatches = store.verify(capacities, &configured).unwrap();
    let expected = [
        Mismatch::CapacityDiffers {
            path: directory.clone(),
            configured_bytes: 32 * MIB,
            recorded_bytes: 16 * MIB,
        },
        Mismatch::LvRecordedSizeDiffers {
            path: directory.join("kept"),
            configured_bytes: 2 * MIB,
            recorded_bytes: MIB,
        },
        Mismatch::LvSizeDiffers {
            path: directory.join("kept"),
            configured_bytes: 2 * MIB,
            actual_bytes: MIB,
        },
        Mismatch::LvNotInManifest {
            path: directory.join("new"),
        },
        Mismatch::LvMissing {
            path: directory.join("new"),
        },
        Mismatch::LvNotConfigured {
            path: directory.join("old"),
        },
        Mismatch::UnexpectedFile {
            path: directory.join("stray.img"),
        },
    ];
    for mismatch in &expected {
        assert!(
            mismatches.contains(mismatch),
            "missing {mismatch:?} in {mismatches:#?}"
        );
    }
    assert_eq!(mismatches.len(), expected.len(), "{mismatches:#?}");
}

#[test]
fn verify_without_containers_reports_each_missing_manifest() {
    let data_dir = tempfile::tempdir().unwrap();
    let mismatches = verify_group(data_dir.path(), "erp", CAPACITIES, &[spec("a", MIB)]).unwrap();
    assert_eq!(mismatches.len(), 3, "{mismatches:#?}");
    assert!(mismatches
        .iter()
        .all(|m| matches!(m, Mismatch::ContainerMissing { .. })));
    assert!(
        mismatches[0]
            .to_string()
            .contains("groups/erp/journal/.container.json"),
        "{}",
        mismatches[0]
    );
}

#[test]
fn source_volumes_are_opened_checked_and_never_deleted() {
    let data_dir = tempfile::tempdir().unwrap();
    let source: PathBuf = data_dir.path().join("prod-lv.img");
    std::fs::write(&source, vec![7u8; 2 * MIB as usize]).unwrap();
    let with_source = VolumeSpec {
        name: "lv_data01".into(),
        size_bytes: MIB,
        source: Some(source.clone()),
    };
    let mut store = store_with(data_dir.path(), std::slice::from_ref(&with_source));
    assert_eq!(
        store.replication().usage_bytes(),
        0,
        "source volumes take no container space"
    );
    let volume = store.open_volume(&with_source, IoMode::Auto).unwrap();
    assert!(volume.backing().is_source());
    drop(volume);

    let error = store.delete_volume(&with_source).unwrap_err();
    assert!(
        matches!(error, VolumeError::SourceNotDeletable { .. }),
        "{error}"
    );
    assert_eq!(std::fs::metadata(&source).unwrap().len(), 2 * MIB);
    assert_eq!(
        store
            .verify(CAPACITIES, std::slice::from_ref(&with_source))
            .unwrap(),
        vec![]
    );

    let too_big = VolumeSpec {
        size_bytes: 4 * MIB,
        ..with_source.clone()
    };
    assert_eq!(
        store.verify(CAPACITIES, &[too_big]).unwrap(),
        vec![Mismatch::SourceTooSmall {
            path: source.clone(),
            configured_bytes: 4 * MIB,
            source_bytes: 2 * MIB
        }]
    );
    std::fs::remove_file(&source).unwrap();
    let mismatches = store.verify(CAPACITIES, &[with_source]).unwrap();
    assert!(
        matches!(&mismatches[..], [Mismatch::SourceUnusable { path, .. }] if *path == source),
        "{mismatches:?}"
    );
}

#[test]
fn delete_volume_releases_container_lv() {
    let data_dir = tempfile::tempdir().unwrap();
    let lv = spec("replica", 3 * MIB);
    let mut store = store_with(data_dir.path(), std::slice::from_ref(&lv));
    store.delete_volume(&lv).unwrap();
    assert_eq!(store.replication().usage_bytes(), 0);
    assert_eq!(
        store.verify(CAPACITIES, std::slice::from_ref(&lv)).unwrap(),
        vec![
            Mismatch::LvNotInManifest {
                path: store.layout().replication_dir().join("replica")
            },
            Mismatch::LvMissing {
                path: store.layout().replication_dir().join("replica")
            },
        ]
    );
    let error = store.open_volume(&lv, IoMode::Auto).unwrap_err();
    assert!(matches!(error, VolumeError::LvNotFound { .. }), "{error}");
}

#[test]
fn ensure_volume_refuses_size_drift() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut store = store_with(data_dir.path(), &[spec("v", MIB)]);
    let error = store
        .ensure_volume(
            &spec("v", 2 * MIB),
            CreateLvOptions::default(),
            IoMode::Auto,
        )
        .unwrap_err();
    assert!(
        matches!(error, VolumeError::LvSizeMismatch { expected_bytes, actual_bytes, .. }
        if expected_bytes == 2 * MIB && actual_bytes == MIB),
        "{error}"
    );
}
