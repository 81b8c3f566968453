//! `redoubt-host`: block devices for applications on a Redoubt server.
//!
//! An application wants `/dev/redoubt/GROUP/LV`, not an NBD URI. [`Host`] turns an LV's NBD
//! export (the datatap's on production, a snapshot's on a recovery server) into a block device
//! and keeps a registry of its attachments on disk, so that the agent that owns them finds them
//! again after a restart:
//!
//! ```text
//!  kernel nbd module loaded:   export ──nbd-client (netlink)──▶ /dev/nbdN ─┐
//!  otherwise (FUSE + loop):    export ──nbdkit retry──nbdfuse──▶ <work>/mnt/LV ──loop──▶ /dev/loopN ─┤
//!                                                                        /dev/redoubt/GROUP/LV ◀─┘
//! ```
//!
//! On the FUSE + loop path nbdfuse runs `nbdkit --filter=retry nbd uri=EXPORT`: while the
//! export is away (the agent restarts, a step reloads the data path) requests wait and are
//! retried on a new connection, so a mounted file system carries on. The helpers run in their
//! own process group and outlive the agent; a new agent finds them through the registry.
//!
//! What to do with a recorded attachment when the agent starts is decided by the pure
//! [`restore_action`] over what [`Host::probe`] observed: keep it when the device still reads
//! through to the export, attach it again when the device is gone or unused, and report it
//! broken (with the reason and the way out) when something still holds a device whose
//! connection ended with the previous agent.

mod backend;
mod registry;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::backend::{kernel_nbd_available, Backend};
use crate::registry::Registry;

/// Where the stable links live.
pub const LINKS_ROOT_DEFAULT: &str = "/dev/redoubt";
/// The registry file under the agent's state directory.
pub const REGISTRY_FILE_NAME: &str = "attachments.json";
/// The directory, under the agent's state directory, of the FUSE mount points.
pub const WORK_DIR_NAME: &str = "attachments";
/// Longest wait for a helper (nbdfuse, nbd-client) to expose the export.
pub const HELPER_READY_TIMEOUT_MS: u64 = 15_000;
/// Longest wait for a helper to exit once asked to.
pub const HELPER_EXIT_TIMEOUT_MS: u64 = 5_000;
/// Longest wait for the probe's read of the device's first block.
pub const PROBE_READ_TIMEOUT_MS: u64 = 5_000;
/// Bytes the probe reads from the start of a device.
pub const PROBE_READ_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("invalid {what} {name:?}: 1 to 63 of a-z, 0-9, '.', '_', '-', starting with a letter or digit")]
    InvalidName { what: &'static str, name: String },
    #[error("{key} is already attached as {device} ({link}); detach it first")]
    AlreadyAttached {
        key: String,
        device: String,
        link: String,
    },
    #[error("{key} is attached but broken: {reason}; run `redoubt detach` then `redoubt attach`")]
    AttachedBroken { key: String, reason: String },
    #[error("{0} is not attached")]
    NotAttached(String),
    #[error("{device} ({key}) is in use (mounted, or open by another program): unmount it or stop its users first")]
    Busy { key: String, device: String },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{action}: {message}")]
    Helper {
        action: &'static str,
        message: String,
    },
    #[error("the attachment registry {}: {message}", path.display())]
    Registry { path: PathBuf, message: String },
}

impl HostError {
    /// The error is the caller's (a refusal), not a failure of the host.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            HostError::AlreadyAttached { .. }
                | HostError::AttachedBroken { .. }
                | HostError::Busy { .. }
        )
    }
}

/// What to attach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttachRequest {
    pub group: String,
    pub volume: String,
    /// A snapshot of the LV (on a recovery server) instead of the LV itself.
    pub snapshot: Option<String>,
    /// The NBD URI of the export (`nbd://host:port/name` or `nbd+unix:///name?socket=/path`).
    pub export: String,
    pub read_only: bool,
}

impl AttachRequest {
    pub fn key(&self) -> String {
        key(&self.group, &self.volume, self.snapshot.as_deref())
    }
}

/// The name of an attachment: `GROUP/LV`, or `GROUP/LV@SNAPSHOT`.
pub fn key(group: &str, volume: &str, snapshot: Option<&str>) -> String {
    match snapshot {
        Some(snapshot) => format!("{group}/{volume}@{snapshot}"),
        None => format!("{group}/{volume}"),
    }
}

/// One attachment as recorded on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub group: String,
    pub volume: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    pub export: String,
    pub read_only: bool,
    pub backend: Backend,
    /// The block device: `/dev/loopN` or `/dev/nbdN`.
    pub device: String,
    /// The stable link to it.
    pub link: PathBuf,
    /// FUSE + loop: the nbdfuse mount point and file, and its process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuse_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helper_pid: Option<u32>,
    pub attached_unix_ms: u64,
}

impl Attachment {
    pub fn key(&self) -> String {
        key(&self.group, &self.volume, self.snapshot.as_deref())
    }

    /// The JSON an API shows for it.
    pub fn to_json(&self, state: &AttachState) -> serde_json::Value {
        let mut value = serde_json::json!({
            "group": self.group,
            "volume": self.volume,
            "device": self.device,
            "link": self.link,
            "backend": self.backend.as_str(),
            "read_only": self.read_only,
            "export": self.export,
        });
        if let Some(snapshot) = &self.snapshot {
            value["snapshot"] = serde_json::json!(snapshot);
        }
        match state {
            AttachState::Attached => value["state"] = serde_json::json!("attached"),
            AttachState::Broken(reason) => {
                value["state"] = serde_json::json!("broken");
                value["error"] = serde_json::json!(reason);
            }
        }
        value
    }
}

/// How an attachment is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttachState {
    Attached,
    /// Recorded, but its device does not work; the reason says why and what to do.
    Broken(String),
}

/// What [`Host::probe`] saw of a recorded attachment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The device still exists and is bound to this attachment (its loop backing file is our
    /// FUSE file; the nbd device is connected).
    pub device_bound: bool,
    /// The first block of the device reads (through the helper, to the export).
    pub device_reads: bool,
    /// Something holds the device (a mount, a program with it open exclusively).
    pub device_busy: bool,
    /// The export the attachment was made of is served now (the data path is loaded and still
    /// has the LV; the snapshot still exists).
    pub export_served: bool,
}

/// What to do with a recorded attachment after an agent restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreAction {
    Keep,
    /// Undo what is left of it and attach it again (same link).
    Reattach,
    Broken(String),
}

/// The decision: pure, so the cases are tested without devices.
pub fn restore_action(probe: &Probe) -> RestoreAction {
    if !probe.export_served {
        return RestoreAction::Broken(
            "its export is not served on this server (data path not loaded, LV removed from the group, or snapshot deleted)".into(),
        );
    }
    match (probe.device_bound, probe.device_reads, probe.device_busy) {
        (true, true, _) => RestoreAction::Keep,
        (false, _, _) => RestoreAction::Reattach,
        (true, false, false) => RestoreAction::Reattach,
        (true, false, true) => RestoreAction::Broken(
            "its device is still in use (mounted?) but its connection to the export ended with the previous agent; unmount it".into(),
        ),
    }
}

/// The attachments of one server.
pub struct Host {
    links_root: PathBuf,
    work_dir: PathBuf,
    registry: Registry,
    states: BTreeMap<String, AttachState>,
    helpers: backend::Helpers,
}

impl Host {
    /// Opens the registry under `state_dir` (nothing is probed or attached yet).
    pub fn open(state_dir: &Path, links_root: &Path) -> Result<Host, HostError> {
        // The kernel names a loop device's backing file by its absolute path, and that is how
        // a device is recognized as ours: keep every path absolute.
        let state_dir = std::path::absolute(state_dir).map_err(|source| HostError::Io {
            action: "resolve the state directory",
            path: state_dir.to_path_buf(),
            source,
        })?;
        let state_dir = state_dir.as_path();
        let registry = Registry::load(&state_dir.join(REGISTRY_FILE_NAME))?;
        let states = registry
            .attachments
            .keys()
            .map(|key| (key.clone(), AttachState::Attached))
            .collect();
        Ok(Host {
            links_root: links_root.to_path_buf(),
            work_dir: state_dir.join(WORK_DIR_NAME),
            registry,
            states,
            helpers: backend::Helpers::default(),
        })
    }

    pub fn list(&self) -> Vec<(Attachment, AttachState)> {
        self.registry
            .attachments
            .values()
            .map(|attachment| {
                let state = self
                    .states
                    .get(&attachment.key())
                    .cloned()
                    .unwrap_or(AttachState::Attached);
                (attachment.clone(), state)
            })
            .collect()
    }

    pub fn get(&self, key: &str) -> Option<(Attachment, AttachState)> {
        let attachment = self.registry.attachments.get(key)?.clone();
        let state = self
            .states
            .get(key)
            .cloned()
            .unwrap_or(AttachState::Attached);
        Some((attachment, state))
    }

    /// Attaches the export; refuses an LV (or snapshot LV) that is attached already.
    pub fn attach(&mut self, request: &AttachRequest) -> Result<Attachment, HostError> {
        check_name("group", &request.group)?;
        check_name("volume", &request.volume)?;
        if let Some(snapshot) = &request.snapshot {
            check_name("snapshot", snapshot)?;
        }
        let key = request.key();
        if let Some((existing, state)) = self.get(&key) {
            return Err(match state {
                AttachState::Attached => HostError::AlreadyAttached {
                    key,
                    device: existing.device,
                    link: existing.link.display().to_string(),
                },
                AttachState::Broken(reason) => HostError::AttachedBroken { key, reason },
            });
        }
        let attachment = self.attach_fresh(request)?;
        self.registry
            .attachments
            .insert(key.clone(), attachment.clone());
        self.states.insert(key, AttachState::Attached);
        if let Err(error) = self.registry.save() {
            // Not recorded means not owned: undo rather than leave an orphan device.
            let _ = self.undo(&attachment);
            self.registry.attachments.remove(&attachment.key());
            self.states.remove(&attachment.key());
            return Err(error);
        }
        Ok(attachment)
    }

    fn attach_fresh(&mut self, request: &AttachRequest) -> Result<Attachment, HostError> {
        let link = self.link_path(request);
        let backend = Backend::choose();
        let work = self.work_dir.join(request.key().replace('/', "_"));
        let made = backend::attach(backend, request, &work, &mut self.helpers)?;
        let attachment = Attachment {
            group: request.group.clone(),
            volume: request.volume.clone(),
            snapshot: request.snapshot.clone(),
            export: request.export.clone(),
            read_only: request.read_only,
            backend,
            device: made.device,
            link,
            fuse_file: made.fuse_file,
            helper_pid: made.helper_pid,
            attached_unix_ms: now_unix_ms(),
        };
        if let Err(error) = make_link(&attachment.link, Path::new(&attachment.device)) {
            let _ = backend::undo(&attachment, &mut self.helpers);
            return Err(error);
        }
        Ok(attachment)
    }

    /// Detaches: refuses a device in use (nothing changes), else removes device, helper, link
    /// and record.
    pub fn detach(&mut self, key: &str) -> Result<Attachment, HostError> {
        let Some(attachment) = self.registry.attachments.get(key).cloned() else {
            return Err(HostError::NotAttached(key.to_string()));
        };
        if backend::device_bound(&attachment) && backend::device_busy(&attachment.device) {
            return Err(HostError::Busy {
                key: key.to_string(),
                device: attachment.device,
            });
        }
        self.undo(&attachment)?;
        self.registry.attachments.remove(key);
        self.states.remove(key);
        self.registry.save()?;
        Ok(attachment)
    }

    fn undo(&mut self, attachment: &Attachment) -> Result<(), HostError> {
        backend::undo(attachment, &mut self.helpers)?;
        remove_link(&attachment.link, &attachment.device)
    }

    /// What the device of a recorded attachment looks like now.
    pub fn probe(&self, key: &str, export_served: bool) -> Option<Probe> {
        let attachment = self.registry.attachments.get(key)?;
        let device_bound = backend::device_bound(attachment);
        Some(Probe {
            device_bound,
            device_reads: device_bound && backend::device_reads(&attachment.device),
            device_busy: device_bound && backend::device_busy(&attachment.device),
            export_served,
        })
    }

    /// After an agent start: probes every recorded attachment and keeps, re-attaches or marks
    /// it broken. `export_of(attachment)` is the export's URI now, `None` when it is not served.
    /// Returns one line per attachment saying what happened.
    pub fn restore(&mut self, export_of: impl Fn(&Attachment) -> Option<String>) -> Vec<String> {
        let mut report = Vec::new();
        let recorded: Vec<Attachment> = self.registry.attachments.values().cloned().collect();
        for attachment in recorded {
            let key = attachment.key();
            let export = export_of(&attachment);
            let Some(mut probe) = self.probe(&key, export.is_some()) else {
                continue;
            };
            // A helper still dialing an export that moved reads nothing useful.
            if export.as_deref() != Some(attachment.export.as_str()) {
                probe.device_reads = false;
            }
            let state = match (restore_action(&probe), export) {
                (RestoreAction::Keep, _) => {
                    report.push(format!("{key}: kept {}", attachment.device));
                    AttachState::Attached
                }
                (RestoreAction::Reattach, Some(export)) => {
                    match self.reattach(&attachment, export) {
                        Ok(device) => {
                            report.push(format!("{key}: attached again as {device}"));
                            AttachState::Attached
                        }
                        Err(error) => {
                            report.push(format!("{key}: cannot attach again: {error}"));
                            AttachState::Broken(format!("cannot attach again: {error}"))
                        }
                    }
                }
                (RestoreAction::Reattach, None) => {
                    AttachState::Broken("its export is not served".into())
                }
                (RestoreAction::Broken(reason), _) => {
                    report.push(format!("{key}: broken: {reason}"));
                    AttachState::Broken(reason)
                }
            };
            self.states.insert(key, state);
        }
        report
    }

    fn reattach(&mut self, old: &Attachment, export: String) -> Result<String, HostError> {
        let _ = backend::undo(old, &mut self.helpers);
        let request = AttachRequest {
            group: old.group.clone(),
            volume: old.volume.clone(),
            snapshot: old.snapshot.clone(),
            export,
            read_only: old.read_only,
        };
        let attachment = self.attach_fresh(&request)?;
        let device = attachment.device.clone();
        self.registry.attachments.insert(old.key(), attachment);
        self.registry.save()?;
        Ok(device)
    }

    fn link_path(&self, request: &AttachRequest) -> PathBuf {
        let name = match &request.snapshot {
            Some(snapshot) => format!("{}@{snapshot}", request.volume),
            None => request.volume.clone(),
        };
        self.links_root.join(&request.group).join(name)
    }
}

/// Names follow the configuration's rule, so they make safe path components.
fn check_name(what: &'static str, name: &str) -> Result<(), HostError> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b));
    if valid {
        Ok(())
    } else {
        Err(HostError::InvalidName {
            what,
            name: name.to_string(),
        })
    }
}

fn make_link(link: &Path, device: &Path) -> Result<(), HostError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| HostError::Io {
            action,
            path,
            source,
        }
    };
    let parent = link.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(io("create link directory", parent))?;
    let file_name = link
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = parent.join(format!(".{file_name}.new"));
    // Not state: links under /dev (a tmpfs) are made again after every start.
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(device, &temporary).map_err(io("create link", &temporary))?;
    // Not state: /dev is a tmpfs, and the agent makes its links again after every start.
    std::fs::rename(&temporary, link).map_err(io("put link in place", link))
}

/// Removes the link if it still points at `device` (someone else's link is left alone).
fn remove_link(link: &Path, device: &str) -> Result<(), HostError> {
    match std::fs::read_link(link) {
        Ok(target) if target == Path::new(device) => {
            // Not state: links under /dev (a tmpfs) are made again after every start.
            std::fs::remove_file(link).map_err(|source| HostError::Io {
                action: "remove link",
                path: link.to_path_buf(),
                source,
            })?;
            // The group's directory goes with its last link.
            if let Some(parent) = link.parent() {
                let _ = std::fs::remove_dir(parent); // Not state: /dev
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(bound: bool, reads: bool, busy: bool, served: bool) -> Probe {
        Probe {
            device_bound: bound,
            device_reads: reads,
            device_busy: busy,
            export_served: served,
        }
    }

    #[test]
    fn a_working_device_is_kept_busy_or_not() {
        assert_eq!(
            restore_action(&probe(true, true, true, true)),
            RestoreAction::Keep
        );
        assert_eq!(
            restore_action(&probe(true, true, false, true)),
            RestoreAction::Keep
        );
    }

    #[test]
    fn a_vanished_or_idle_dead_device_is_attached_again() {
        assert_eq!(
            restore_action(&probe(false, false, false, true)),
            RestoreAction::Reattach
        );
        assert_eq!(
            restore_action(&probe(true, false, false, true)),
            RestoreAction::Reattach
        );
    }

    #[test]
    fn a_dead_device_in_use_is_reported_with_the_way_out() {
        let RestoreAction::Broken(reason) = restore_action(&probe(true, false, true, true)) else {
            panic!("a mounted dead device must be reported broken");
        };
        assert!(
            reason.contains("in use") && reason.contains("unmount"),
            "{reason}"
        );
    }

    #[test]
    fn an_export_no_longer_served_is_broken_whatever_the_device() {
        for bound in [false, true] {
            let action = restore_action(&probe(bound, bound, false, false));
            assert!(matches!(action, RestoreAction::Broken(ref r) if r.contains("not served")));
        }
    }

    #[test]
    fn names_that_could_escape_a_directory_are_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = Host::open(dir.path(), &dir.path().join("links")).unwrap();
        for (group, volume) in [("../x", "lv"), ("g", "a/b"), ("G", "lv"), ("g", "")] {
            let request = AttachRequest {
                group: group.into(),
                volume: volume.into(),
                snapshot: None,
                export: "nbd://127.0.0.1:1/lv".into(),
                read_only: false,
            };
            let error = host.attach(&request).unwrap_err();
            assert!(matches!(error, HostError::InvalidName { .. }), "{error}");
        }
        assert!(host.list().is_empty());
        assert!(!dir.path().join(REGISTRY_FILE_NAME).exists());
    }

    #[test]
    fn links_are_replaced_atomically_and_only_ours_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("g/lv0");
        make_link(&link, Path::new("/dev/loop7")).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/dev/loop7"));
        make_link(&link, Path::new("/dev/loop8")).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("/dev/loop8"));
        remove_link(&link, "/dev/loop7").unwrap();
        assert!(link.symlink_metadata().is_ok(), "someone else's link stays");
        remove_link(&link, "/dev/loop8").unwrap();
        assert!(link.symlink_metadata().is_err());
        assert!(
            !dir.path().join("g").exists(),
            "the empty group directory goes"
        );
    }
}
