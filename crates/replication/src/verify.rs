//! Online verify on a recovery server: the ABA's apply thread runs the same copy-before-write
//! hashing hook as production's commit thread (`redoubt_datatap::verify`), so a replica is
//! hashed as of one seq while it keeps applying (`docs/verify.md`).

use std::collections::BTreeMap;
use std::sync::Arc;

use redoubt_datatap::verify::{VerifyHook, VerifyVolume};
use redoubt_journal::{lv_id_for_name, OwnedRecord, RecordKind};
use redoubt_volume::{Volume, VolumeSpec};

/// The hook of a replica whose LVs are `volumes` (by lv id), named by `specs`, at
/// `applied_seq`.
pub fn replica_hook(
    specs: &[VolumeSpec],
    volumes: &BTreeMap<u32, Arc<Volume>>,
    applied_seq: u64,
) -> Arc<VerifyHook> {
    let volumes = specs
        .iter()
        .filter_map(|spec| {
            let lv_id = lv_id_for_name(&spec.name);
            volumes.get(&lv_id).map(|volume| VerifyVolume {
                name: spec.name.clone(),
                lv_id,
                volume: volume.clone(),
            })
        })
        .collect();
    Arc::new(VerifyHook::new(applied_seq, volumes))
}

/// The LV range a replicated record writes, if any: what the hook hashes before it lands.
pub fn record_range(record: &OwnedRecord) -> Option<(u32, u64, u64)> {
    let header = &record.header;
    match header.kind {
        RecordKind::Write | RecordKind::WriteZeroes | RecordKind::Trim => Some((
            header.lv_id,
            header.offset_bytes,
            u64::from(header.length_bytes),
        )),
        RecordKind::Marker | RecordKind::Undo => None,
    }
}
