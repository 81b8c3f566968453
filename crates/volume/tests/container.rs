mod common;

use common::MIB;
use redoubt_volume::{
    Container, ContainerKind, CreateLvOptions, IoMode, LvInfo, VolumeError, MANIFEST_FILE_NAME,
};

fn new_container(directory: &std::path::Path, capacity_bytes: u64) -> Container {
    Container::create(
        &directory.join("replication"),
        ContainerKind::Replication,
        capacity_bytes,
    )
    .unwrap()
}

#[test]
fn reserves_logical_size_and_refuses_overcommit_without_change() {
    let directory = tempfile::tempdir().unwrap();
    let mut container = new_container(directory.path(), 10 * MIB);
    container
        .create_lv("a", 6 * MIB, CreateLvOptions::default(), IoMode::Auto)
        .unwrap();
    assert_eq!(container.usage_bytes(), 6 * MIB);
    assert_eq!(container.available_bytes(), 4 * MIB);
    // The file is sparse, yet its whole logical size counts.
    let on_disk = std::fs::metadata(container.path().join("a")).unwrap();
    assert_eq!(on_disk.len(), 6 * MIB);

    let error = container
        .create_lv("b", 5 * MIB, CreateLvOptions::default(), IoMode::Auto)
        .unwrap_err();
    match error {
        VolumeError::ContainerFull {
            requested_bytes,
            available_bytes,
            ..
        } => {
            assert_eq!(requested_bytes, 5 * MIB);
            assert_eq!(available_bytes, 4 * MIB);
        }
        other => panic!("expected ContainerFull, got {other}"),
    }
    assert!(!container.path().join("b").exists());
    assert_eq!(container.list().len(), 1);
    assert_eq!(container.usage_bytes(), 6 * MIB);

    // Exactly filling the pool is allowed.
    container
        .create_lv("b", 4 * MIB, CreateLvOptions::default(), IoMode::Auto)
        .unwrap();
    assert_eq!(container.available_bytes(), 0);
}

#[test]
fn manifest_survives_reopen() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("replication");
    {
        let mut container = new_container(directory.path(), 32 * MIB);
        container
            .create_lv("data", 4 * MIB, CreateLvOptions::default(), IoMode::Auto)
            .unwrap();
        container
            .create_lv(
                "logs",
                MIB,
                CreateLvOptions { preallocate: true },
                IoMode::Auto,
            )
            .unwrap();
        container.resize_capacity(48 * MIB).unwrap();
    }
    assert!(path.join(MANIFEST_FILE_NAME).exists());
    let container = Container::open(&path).unwrap();
    assert_eq!(container.kind(), ContainerKind::Replication);
    assert_eq!(container.capacity_bytes(), 48 * MIB);
    assert_eq!(container.usage_bytes(), 5 * MIB);
    assert_eq!(
        container.list(),
        vec![
            LvInfo {
                name: "data".into(),
                size_bytes: 4 * MIB,
                preallocated: false
            },
            LvInfo {
                name: "logs".into(),
                size_bytes: MIB,
                preallocated: true
            },
        ]
    );
    let volume = container.open_lv("data", IoMode::Auto).unwrap();
    assert_eq!(volume.size_bytes(), 4 * MIB);
}

#[test]
fn second_handle_is_locked_out() {
    let directory = tempfile::tempdir().unwrap();
    let container = new_container(directory.path(), MIB);
    let error = Container::open(container.path()).unwrap_err();
    assert!(
        matches!(error, VolumeError::ContainerLocked { .. }),
        "{error}"
    );
    let path = container.path().to_path_buf();
    drop(container);
    assert!(Container::open(&path).is_ok());
}

#[test]
fn create_refuses_existing_manifest_and_open_refuses_missing() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("replication");
    assert!(matches!(
        Container::open(&path).unwrap_err(),
        VolumeError::ContainerMissing { .. }
    ));
    drop(new_container(directory.path(), MIB));
    let error = Container::create(&path, ContainerKind::Replication, MIB).unwrap_err();
    assert!(
        matches!(error, VolumeError::ContainerExists { .. }),
        "{error}"
    );
    let error = Container::open_or_create(&path, ContainerKind::Snapshot, MIB).unwrap_err();
    assert!(
        matches!(error, VolumeError::ManifestCorrupt { .. }),
        "{error}"
    );
}

#[test]
fn corrupt_manifest_is_a_typed_error() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("replication");
    drop(new_container(directory.path(), MIB));
    std::fs::write(path.join(MANIFEST_FILE_NAME), b"{ not json").unwrap();
    assert!(matches!(
        Container::open(&path).unwrap_err(),
        VolumeError::ManifestCorrupt { .. }
    ));
    // Over-reserved manifests are corrupt too: the invariant is checked on every read.
    let over = r#"{"format_version":1,"kind":"replication","capacity_bytes":4096,
        "lvs":{"a":{"size_bytes":8192,"preallocated":false}}}"#;
    std::fs::write(path.join(MANIFEST_FILE_NAME), over).unwrap();
    let error = Container::open(&path).unwrap_err();
    assert!(error.to_string().contains("over capacity"), "{error}");
    // A name escaping the directory is rejected when read back as well.
    let escape = r#"{"format_version":1,"kind":"replication","capacity_bytes":8192,
        "lvs":{"../x":{"size_bytes":4096,"preallocated":false}}}"#;
    std::fs::write(path.join(MANIFEST_FILE_NAME), escape).unwrap();
    assert!(matches!(
        Container::open(&path).unwrap_err(),
        VolumeError::ManifestCorrupt { .. }
    ));
}

#[test]
fn names_cannot_escape_the_container() {
    let directory = tempfile::tempdir().unwrap();
    let mut container = new_container(directory.path(), 16 * MIB);
    for name in [
        "..",
        "../escape",
        "a/b",
        "/etc/passwd",
        "a\0b",
        ".container.json",
        "",
        "UPPER",
    ] {
        let error = container
            .create_lv(name, MIB, CreateLvOptions::default(), IoMode::Auto)
            .unwrap_err();
        assert!(
            matches!(error, VolumeError::InvalidName { .. }),
            "{name:?}: {error}"
        );
        assert!(matches!(
            container.open_lv(name, IoMode::Auto).unwrap_err(),
            VolumeError::InvalidName { .. }
        ));
        assert!(matches!(
            container.delete_lv(name).unwrap_err(),
            VolumeError::InvalidName { .. }
        ));
    }
    assert_eq!(container.usage_bytes(), 0);
    assert!(!directory.path().join("escape").exists());
}

#[test]
fn refuses_to_clobber_unknown_file_and_unaligned_sizes() {
    let directory = tempfile::tempdir().unwrap();
    let mut container = new_container(directory.path(), 16 * MIB);
    std::fs::write(container.path().join("stray"), b"keep me").unwrap();
    let error = container
        .create_lv("stray", MIB, CreateLvOptions::default(), IoMode::Auto)
        .unwrap_err();
    assert!(
        matches!(error, VolumeError::UnexpectedFile { .. }),
        "{error}"
    );
    assert_eq!(
        std::fs::read(container.path().join("stray")).unwrap(),
        b"keep me"
    );
    for size_bytes in [0, 1, 4097] {
        let error = container
            .create_lv("odd", size_bytes, CreateLvOptions::default(), IoMode::Auto)
            .unwrap_err();
        assert!(
            matches!(error, VolumeError::SizeUnaligned { .. }),
            "{error}"
        );
    }
    assert_eq!(container.usage_bytes(), 0);
    container
        .create_lv("dup", MIB, CreateLvOptions::default(), IoMode::Auto)
        .unwrap();
    let error = container
        .create_lv("dup", MIB, CreateLvOptions::default(), IoMode::Auto)
        .unwrap_err();
    assert!(matches!(error, VolumeError::LvExists { .. }));
}

#[test]
fn grow_reserves_difference_and_keeps_data() {
    let directory = tempfile::tempdir().unwrap();
    let mut container = new_container(directory.path(), 8 * MIB);
    let volume = container
        .create_lv("g", MIB, CreateLvOptions::default(), IoMode::Auto)
        .unwrap();
    volume.write_at(b"hello", 100).unwrap();
    volume.sync().unwrap();
    drop(volume);

    container.grow_lv("g", 3 * MIB).unwrap();
    assert_eq!(container.usage_bytes(), 3 * MIB);
    let error = container.grow_lv("g", 9 * MIB).unwrap_err();
    assert!(
        matches!(error, VolumeError::ContainerFull { requested_bytes, .. } if requested_bytes == 6 * MIB)
    );
    let error = container.grow_lv("g", MIB).unwrap_err();
    assert!(matches!(error, VolumeError::ShrinkRefused { .. }));
    assert_eq!(container.lv("g").unwrap().size_bytes, 3 * MIB);

    let volume = container.open_lv("g", IoMode::Auto).unwrap();
    assert_eq!(volume.size_bytes(), 3 * MIB);
    let mut buffer = [0u8; 5];
    volume.read_at(&mut buffer, 100).unwrap();
    assert_eq!(&buffer, b"hello");
    let mut tail = [1u8; 16];
    volume.read_at(&mut tail, 3 * MIB - 16).unwrap();
    assert_eq!(tail, [0u8; 16]);
}

#[test]
fn delete_releases_space_and_file() {
    let directory = tempfile::tempdir().unwrap();
    let mut container = new_container(directory.path(), 4 * MIB);
    container
        .create_lv("d", 4 * MIB, CreateLvOptions::default(), IoMode::Auto)
        .unwrap();
    container.delete_lv("d").unwrap();
    assert_eq!(container.usage_bytes(), 0);
    assert!(!container.path().join("d").exists());
    assert!(matches!(
        container.delete_lv("d").unwrap_err(),
        VolumeError::LvNotFound { .. }
    ));
    // Deleting a file already gone by hand still releases the reservation.
    container
        .create_lv("e", MIB, CreateLvOptions::default(), IoMode::Auto)
        .unwrap();
    std::fs::remove_file(container.path().join("e")).unwrap();
    container.delete_lv("e").unwrap();
    assert_eq!(container.usage_bytes(), 0);
    let path = container.path().to_path_buf();
    drop(container);
    assert_eq!(Container::open(&path).unwrap().list(), vec![]);
}

#[test]
fn capacity_cannot_shrink_below_usage() {
    let directory = tempfile::tempdir().unwrap();
    let mut container = new_container(directory.path(), 8 * MIB);
    container
        .create_lv("c", 3 * MIB, CreateLvOptions::default(), IoMode::Auto)
        .unwrap();
    let error = container.resize_capacity(2 * MIB).unwrap_err();
    assert!(
        matches!(error, VolumeError::CapacityBelowUsage { usage_bytes, .. } if usage_bytes == 3 * MIB)
    );
    assert_eq!(container.capacity_bytes(), 8 * MIB);
    container.resize_capacity(3 * MIB).unwrap();
    assert_eq!(container.capacity_bytes(), 3 * MIB);
    assert_eq!(container.available_bytes(), 0);
}

#[test]
fn preallocate_allocates_blocks() {
    let directory = tempfile::tempdir().unwrap();
    let mut container = new_container(directory.path(), 8 * MIB);
    let sparse = container
        .create_lv("sparse", 2 * MIB, CreateLvOptions::default(), IoMode::Auto)
        .unwrap();
    let full = container
        .create_lv(
            "full",
            2 * MIB,
            CreateLvOptions { preallocate: true },
            IoMode::Auto,
        )
        .unwrap();
    use std::os::unix::fs::MetadataExt;
    let blocks = |name: &str| {
        std::fs::metadata(container.path().join(name))
            .unwrap()
            .blocks()
            * 512
    };
    assert!(
        blocks("full") >= 2 * MIB,
        "preallocated LV holds {} bytes",
        blocks("full")
    );
    assert!(blocks("sparse") < 2 * MIB);
    assert_eq!(sparse.size_bytes(), full.size_bytes());
}

#[test]
fn grow_to_recorded_size_repairs_a_short_file() {
    // Models a crash between the manifest write and set_len: retrying the grow finishes it.
    let directory = tempfile::tempdir().unwrap();
    let mut container = new_container(directory.path(), 8 * MIB);
    drop(
        container
            .create_lv("r", 2 * MIB, CreateLvOptions::default(), IoMode::Auto)
            .unwrap(),
    );
    let path = container.path().join("r");
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(MIB)
        .unwrap();
    let error = container.open_lv("r", IoMode::Auto).unwrap_err();
    assert!(
        matches!(error, VolumeError::LvSizeMismatch { actual_bytes, .. } if actual_bytes == MIB)
    );
    container.grow_lv("r", 2 * MIB).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 2 * MIB);
    assert_eq!(container.usage_bytes(), 2 * MIB);
    assert_eq!(
        container.open_lv("r", IoMode::Auto).unwrap().size_bytes(),
        2 * MIB
    );
}
