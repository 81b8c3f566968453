//! The event-marker index of a replica: every marker record applied (name, seq, time),
//! persisted beside the state file so `points` and `mark:NAME` work after a restart and
//! after the records themselves were pruned.

use std::path::Path;

use redoubt_journal::RecordHeader;
use redoubt_points::Marker;

use crate::error::ReplicationError;

/// Markers a replica remembers; the oldest are forgotten first.
pub const MARKERS_MAX: usize = 4096;
const MARKERS_FILE_NAME: &str = "markers.json";

/// Adds the marker a record carries; internal undo names (`undo:…`) and replays of a marker
/// already indexed are ignored.
pub fn index_marker(markers: &mut Vec<Marker>, header: &RecordHeader, payload: &[u8]) {
    let Ok(name) = std::str::from_utf8(payload) else {
        return;
    };
    if name.starts_with("undo:") || redoubt_points::check_marker_name(name).is_err() {
        return;
    }
    if markers.iter().any(|marker| marker.seq == header.seq) {
        return;
    }
    markers.push(Marker {
        name: name.to_string(),
        seq: header.seq,
        time_unix_ns: header.timestamp_ns,
    });
    markers.sort_by_key(|marker| marker.seq);
    if markers.len() > MARKERS_MAX {
        let excess = markers.len() - MARKERS_MAX;
        markers.drain(..excess);
    }
}

pub fn load_markers(group_dir: &Path) -> Result<Vec<Marker>, ReplicationError> {
    let path = group_dir.join(MARKERS_FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let mut markers: Vec<Marker> =
                serde_json::from_slice(&bytes).map_err(|error| ReplicationError::State {
                    action: "parse",
                    path,
                    reason: error.to_string(),
                })?;
            markers.truncate(MARKERS_MAX);
            Ok(markers)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(error.into()),
    }
}

pub fn save_markers(group_dir: &Path, markers: &[Marker]) -> Result<(), ReplicationError> {
    let path = group_dir.join(MARKERS_FILE_NAME);
    let text = serde_json::to_vec(markers).map_err(|error| ReplicationError::State {
        action: "encode",
        path: path.clone(),
        reason: error.to_string(),
    })?;
    // Durable with its directory entry: a marker list that came back older after a power cut
    // would drop markers `points` already listed.
    redoubt_durable::replace(&path, &text)?;
    Ok(())
}
