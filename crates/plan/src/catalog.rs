//! The fixed 20-step catalog of a configuration initialization
//! (`shared/spec/config-initialization.md`). Numbers and order never change.

/// Which servers a step may have a row for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rows {
    /// A single row for the whole group.
    One,
    /// One row per server with the production role or a recovery role.
    ProductionAndRecovery,
    /// One row per recovery server.
    Recovery,
    /// One row per volume (step 13).
    PerVolume,
}

#[derive(Clone, Copy, Debug)]
pub struct CatalogStep {
    pub number: u8,
    pub title: &'static str,
    pub rows: Rows,
}

pub const STEP_COUNT: usize = 20;

pub const CATALOG: [CatalogStep; STEP_COUNT] = [
    step(1, "Save configuration", Rows::One),
    step(2, "Copy configuration to S", Rows::ProductionAndRecovery),
    step(3, "Delete internal logical volumes", Rows::One),
    step(
        4,
        "Delete replication container logical volumes on S",
        Rows::ProductionAndRecovery,
    ),
    step(
        5,
        "Delete log record file container and snapshot logical volumes on S",
        Rows::Recovery,
    ),
    step(
        6,
        "Delete replication container and snapshot logical volumes on S",
        Rows::Recovery,
    ),
    step(
        7,
        "Delete all containers and logical volumes on S",
        Rows::Recovery,
    ),
    step(8, "Delete snapshot logical volumes on S", Rows::Recovery),
    step(
        9,
        "Delete snapshot container logical volumes on S",
        Rows::Recovery,
    ),
    step(
        10,
        "Delete replication container, snapshot, and log record file container logical volumes",
        Rows::One,
    ),
    step(
        11,
        "Create containers and logical volumes on S",
        Rows::ProductionAndRecovery,
    ),
    step(12, "Set all logical volumes as replicated", Rows::One),
    step(
        13,
        "Set new logical volume X as requiring replication",
        Rows::PerVolume,
    ),
    step(14, "Reset send process (LCA)", Rows::One),
    step(15, "Reset apply process (ABA) on S", Rows::Recovery),
    step(16, "Load drivers on S", Rows::ProductionAndRecovery),
    step(
        17,
        "Delete logical volume device special files on S",
        Rows::ProductionAndRecovery,
    ),
    step(
        18,
        "Delete failover context on S",
        Rows::ProductionAndRecovery,
    ),
    step(
        19,
        "Delete failover context on S",
        Rows::ProductionAndRecovery,
    ),
    step(20, "Verify configuration on S", Rows::ProductionAndRecovery),
];

const fn step(number: u8, title: &'static str, rows: Rows) -> CatalogStep {
    CatalogStep {
        number,
        title,
        rows,
    }
}

/// The catalog entry of a step number (1..=20).
pub fn catalog_step(number: u8) -> Option<&'static CatalogStep> {
    CATALOG.get(usize::from(number).checked_sub(1)?)
}

const _: () = {
    let mut index = 0;
    while index < STEP_COUNT {
        assert!(CATALOG[index].number as usize == index + 1);
        index += 1;
    }
};
