//! The two ways to make a block device of an NBD export, through the peers that do it well:
//! `nbd-client` (netlink) where the kernel has the `nbd` module, `nbdfuse` + `losetup`
//! elsewhere.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{
    AttachRequest, Attachment, HostError, HELPER_EXIT_TIMEOUT_MS, HELPER_READY_TIMEOUT_MS,
    PROBE_READ_BYTES, PROBE_READ_TIMEOUT_MS,
};

/// Overrides the choice of backend: `fuse-loop` or `kernel-nbd`.
pub const BACKEND_ENV: &str = "REDOUBT_ATTACH_BACKEND";
/// Block size the kernel NBD client announces.
const NBD_BLOCK_SIZE_BYTES: u32 = 4096;
/// How often, and how far apart, a request is retried on a new connection while the export is
/// away: 60 × 1 s covers an agent restart.
const RECONNECT_RETRIES: u32 = 60;
const RECONNECT_DELAY_S: u32 = 1;
/// Poll period while waiting for a helper or a device.
const POLL_MS: u64 = 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// The kernel's NBD client, configured over netlink by `nbd-client`.
    KernelNbd,
    /// `nbdfuse` exposes the export as a file; a loop device makes it a block device.
    FuseLoop,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::KernelNbd => "kernel-nbd",
            Backend::FuseLoop => "fuse-loop",
        }
    }

    /// The kernel client where the module is loaded, FUSE + loop otherwise
    /// (`REDOUBT_ATTACH_BACKEND` overrides).
    pub fn choose() -> Backend {
        match std::env::var(BACKEND_ENV).as_deref() {
            Ok("kernel-nbd") => Backend::KernelNbd,
            Ok("fuse-loop") => Backend::FuseLoop,
            _ if kernel_nbd_available() => Backend::KernelNbd,
            _ => Backend::FuseLoop,
        }
    }
}

/// The kernel has the `nbd` module loaded (its devices exist).
pub fn kernel_nbd_available() -> bool {
    Path::new("/sys/module/nbd").exists() && Path::new("/sys/block/nbd0").exists()
}

/// The helper processes this agent started (reaped when they end); helpers of a previous
/// agent are known by pid only.
#[derive(Default)]
pub struct Helpers {
    children: BTreeMap<u32, Child>,
}

pub struct Made {
    pub device: String,
    pub fuse_file: Option<PathBuf>,
    pub helper_pid: Option<u32>,
}

fn helper_error(action: &'static str) -> impl FnOnce(String) -> HostError {
    move |message| HostError::Helper { action, message }
}

/// Runs a command to completion; its stdout, or an error with its stderr.
fn run(action: &'static str, program: &str, args: &[&str]) -> Result<String, HostError> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| HostError::Helper {
            action,
            message: format!("run {program}: {error}"),
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    } else {
        Err(HostError::Helper {
            action,
            message: format!(
                "{program} {}: {} {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

fn wait_until(timeout_ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(POLL_MS));
    }
}

pub fn attach(
    backend: Backend,
    request: &AttachRequest,
    work: &Path,
    helpers: &mut Helpers,
) -> Result<Made, HostError> {
    match backend {
        Backend::FuseLoop => attach_fuse_loop(request, work, helpers),
        Backend::KernelNbd => attach_kernel_nbd(request),
    }
}

fn attach_fuse_loop(
    request: &AttachRequest,
    work: &Path,
    helpers: &mut Helpers,
) -> Result<Made, HostError> {
    let mount_point = work.join("mnt");
    // What a previous life left here (a dead FUSE mount) goes first.
    unmount_if_mounted(&mount_point);
    std::fs::create_dir_all(&mount_point).map_err(|source| HostError::Io {
        action: "create FUSE mount point",
        path: mount_point.clone(),
        source,
    })?;
    let pid_file = work.join("nbdfuse.pid");
    // Not state: the helper's pid file, written again by the helper it starts.
    let _ = std::fs::remove_file(&pid_file);
    let log_path = work.join("nbdfuse.log");
    let log = File::create(&log_path).map_err(|source| HostError::Io {
        action: "create helper log",
        path: log_path.clone(),
        source,
    })?;
    let log_err = log.try_clone().map_err(|source| HostError::Io {
        action: "create helper log",
        path: log_path.clone(),
        source,
    })?;
    let fuse_file = mount_point.join(&request.volume);
    let mut command = Command::new("nbdfuse");
    if request.read_only {
        command.arg("--readonly");
    }
    // nbdfuse runs nbdkit's NBD plugin under the retry filter: when the export goes away (an
    // agent restart, a step that reloads the data path) a request is retried on a new
    // connection instead of failing, so a mounted file system does not see an I/O error.
    command
        .arg("--pidfile")
        .arg(&pid_file)
        .arg(&fuse_file)
        .arg("--command")
        .args(["nbdkit", "--single", "--exit-with-parent", "--filter=retry"]);
    if request.read_only {
        command.arg("--readonly");
    }
    command
        .arg("nbd")
        .arg(format!("uri={}", request.export))
        .arg(format!("retries={RECONNECT_RETRIES}"))
        .arg(format!("retry-delay={RECONNECT_DELAY_S}"))
        .arg("retry-exponential=no")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        // Its own process group: a Ctrl-C meant for a foreground agent does not reach it.
        .process_group(0);
    let mut child = command.spawn().map_err(|error| HostError::Helper {
        action: "start nbdfuse (package libnbd-bin) with nbdkit (package nbdkit)",
        message: error.to_string(),
    })?;
    let pid = child.id();
    let mut exited = None;
    let ready = wait_until(HELPER_READY_TIMEOUT_MS, || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return true;
        }
        pid_file.exists() && fuse_file.exists()
    });
    if let Some(status) = exited {
        unmount_if_mounted(&mount_point);
        return Err(HostError::Helper {
            action: "expose the export with nbdfuse",
            message: format!(
                "nbdfuse {} exited ({status}): {}",
                request.export,
                read_log(&log_path)
            ),
        });
    }
    if !ready {
        let _ = child.kill();
        let _ = child.wait();
        unmount_if_mounted(&mount_point);
        return Err(HostError::Helper {
            action: "expose the export with nbdfuse",
            message: format!(
                "nbdfuse {} not ready within {HELPER_READY_TIMEOUT_MS} ms: {}",
                request.export,
                read_log(&log_path)
            ),
        });
    }
    helpers.children.insert(pid, child);
    let fuse_text = fuse_file.display().to_string();
    let mut args = vec!["--find", "--show", "--direct-io=off"];
    if request.read_only {
        args.push("--read-only");
    }
    args.push(&fuse_text);
    match run("attach a loop device", "losetup", &args) {
        Ok(device) if device.starts_with("/dev/loop") => Ok(Made {
            device,
            fuse_file: Some(fuse_file),
            helper_pid: Some(pid),
        }),
        outcome => {
            stop_fuse(&mount_point, Some(pid), helpers);
            match outcome {
                Err(error) => Err(error),
                Ok(device) => Err(HostError::Helper {
                    action: "attach a loop device",
                    message: format!("losetup printed {device:?}, not a loop device"),
                }),
            }
        }
    }
}

fn read_log(path: &Path) -> String {
    let mut text = String::new();
    if let Ok(file) = File::open(path) {
        let _ = file.take(4096).read_to_string(&mut text);
    }
    text.trim().to_string()
}

/// `nbd://host[:port]/name` or `nbd+unix:///name?socket=/path` as `nbd-client` arguments.
pub fn nbd_client_args(uri: &str) -> Result<Vec<String>, String> {
    if let Some(rest) = uri.strip_prefix("nbd+unix:///") {
        let (name, query) = rest
            .split_once('?')
            .ok_or_else(|| format!("{uri}: no ?socket= in a unix NBD URI"))?;
        let socket = query
            .split('&')
            .find_map(|pair| pair.strip_prefix("socket="))
            .ok_or_else(|| format!("{uri}: no socket= in a unix NBD URI"))?;
        return Ok(vec![
            "-unix".into(),
            socket.into(),
            "-N".into(),
            name.into(),
        ]);
    }
    let rest = uri
        .strip_prefix("nbd://")
        .ok_or_else(|| format!("{uri}: not an nbd:// or nbd+unix:// URI"))?;
    let (authority, name) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            (host.trim_start_matches('[').trim_end_matches(']'), port)
        }
        _ => (authority, "10809"),
    };
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("{uri}: bad host or port"));
    }
    Ok(vec![host.into(), port.into(), "-N".into(), name.into()])
}

fn attach_kernel_nbd(request: &AttachRequest) -> Result<Made, HostError> {
    let endpoint = nbd_client_args(&request.export).map_err(helper_error("parse the export"))?;
    let device = free_nbd_device().ok_or_else(|| HostError::Helper {
        action: "find a free nbd device",
        message: "every /dev/nbdN is connected (load the module with more: nbds_max=)".into(),
    })?;
    // nbd-client takes HOST PORT DEVICE or -unix PATH DEVICE, then the options.
    let (head, tail) = endpoint.split_at(2);
    let mut args: Vec<String> = head.to_vec();
    args.push(device.clone());
    args.extend(tail.iter().cloned());
    args.extend(["-b".into(), NBD_BLOCK_SIZE_BYTES.to_string()]);
    if request.read_only {
        args.push("-readonly".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(
        "connect the kernel NBD client (package nbd-client)",
        "nbd-client",
        &args,
    )?;
    let name = device.trim_start_matches("/dev/").to_string();
    if !wait_until(HELPER_READY_TIMEOUT_MS, || nbd_connected(&name)) {
        let _ = run("disconnect", "nbd-client", &["-d", &device]);
        return Err(HostError::Helper {
            action: "connect the kernel NBD client",
            message: format!("{device} not connected within {HELPER_READY_TIMEOUT_MS} ms"),
        });
    }
    Ok(Made {
        device,
        fuse_file: None,
        helper_pid: None,
    })
}

fn free_nbd_device() -> Option<String> {
    let mut names: Vec<(u32, String)> = std::fs::read_dir("/sys/block")
        .ok()?
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().to_string_lossy().into_owned();
            let index = name.strip_prefix("nbd")?.parse().ok()?;
            Some((index, name))
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .find(|(_, name)| !nbd_connected(name))
        .map(|(_, name)| format!("/dev/{name}"))
}

fn nbd_connected(name: &str) -> bool {
    Path::new("/sys/block").join(name).join("pid").exists()
}

/// The device still exists and is this attachment's.
pub fn device_bound(attachment: &Attachment) -> bool {
    let name = attachment.device.trim_start_matches("/dev/");
    match attachment.backend {
        Backend::KernelNbd => nbd_connected(name),
        Backend::FuseLoop => {
            let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
            let Some(fuse_file) = &attachment.fuse_file else {
                return false;
            };
            std::fs::read_to_string(backing).is_ok_and(|text| {
                let text = text.trim();
                let text = text.strip_suffix(" (deleted)").unwrap_or(text);
                Path::new(text) == fuse_file
            })
        }
    }
}

/// The device's first block reads, bypassing caches, within [`PROBE_READ_TIMEOUT_MS`] (a
/// reader stuck on a dead helper is left behind, in its own thread).
pub fn device_reads(device: &str) -> bool {
    let device = device.to_string();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(read_first_block(&device));
    });
    receiver
        .recv_timeout(Duration::from_millis(PROBE_READ_TIMEOUT_MS))
        .unwrap_or(false)
}

fn read_first_block(device: &str) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(device)
    else {
        return false;
    };
    // O_DIRECT wants an aligned buffer: a 4 KiB-aligned window of a larger one.
    let mut buffer = vec![0u8; 2 * PROBE_READ_BYTES];
    let offset = buffer.as_ptr().align_offset(PROBE_READ_BYTES);
    let Some(window) = buffer.get_mut(offset..offset + PROBE_READ_BYTES) else {
        return false;
    };
    file.read_exact_at(window, 0).is_ok()
}

/// Something holds the device: the kernel refuses an exclusive open (a mount, a holder).
pub fn device_busy(device: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(device)
    {
        Ok(_) => false,
        Err(error) => error.raw_os_error() == Some(libc::EBUSY),
    }
}

/// Removes the device and its helper. Safe to run again, and on what a previous agent left.
pub fn undo(attachment: &Attachment, helpers: &mut Helpers) -> Result<(), HostError> {
    match attachment.backend {
        Backend::KernelNbd => {
            if device_bound(attachment) {
                run(
                    "disconnect the kernel NBD client",
                    "nbd-client",
                    &["-d", &attachment.device],
                )?;
            }
            Ok(())
        }
        Backend::FuseLoop => {
            if device_bound(attachment) {
                run(
                    "detach the loop device",
                    "losetup",
                    &["--detach", &attachment.device],
                )?;
                if !wait_until(HELPER_EXIT_TIMEOUT_MS, || !device_bound(attachment)) {
                    return Err(HostError::Busy {
                        key: attachment.key(),
                        device: attachment.device.clone(),
                    });
                }
            }
            // Never pull the FUSE file from under a loop device still bound to it (a mounted
            // file system would lose its device).
            if let Some(holder) = attachment
                .fuse_file
                .as_deref()
                .and_then(loop_device_backed_by)
            {
                return Err(HostError::Busy {
                    key: attachment.key(),
                    device: holder,
                });
            }
            if let Some(mount_point) = attachment.fuse_file.as_ref().and_then(|f| f.parent()) {
                stop_fuse(mount_point, attachment.helper_pid, helpers);
                if let Some(work) = mount_point.parent() {
                    // Not state: the helper's scratch directory.
                    let _ = std::fs::remove_dir_all(work);
                }
            }
            Ok(())
        }
    }
}

/// The loop device whose backing file is `file`, if any.
fn loop_device_backed_by(file: &Path) -> Option<String> {
    std::fs::read_dir("/sys/block")
        .ok()?
        .filter_map(Result::ok)
        .find_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let backing = std::fs::read_to_string(entry.path().join("loop/backing_file")).ok()?;
            let backing = backing.trim();
            let backing = backing.strip_suffix(" (deleted)").unwrap_or(backing);
            (name.starts_with("loop") && Path::new(backing) == file).then(|| format!("/dev/{name}"))
        })
}

/// Unmounts the FUSE file system (nbdfuse then exits) and makes sure its process is gone.
fn stop_fuse(mount_point: &Path, pid: Option<u32>, helpers: &mut Helpers) {
    unmount_if_mounted(mount_point);
    let Some(pid) = pid else { return };
    if let Some(mut child) = helpers.children.remove(&pid) {
        if !wait_until(HELPER_EXIT_TIMEOUT_MS, || {
            matches!(child.try_wait(), Ok(Some(_)))
        }) {
            let _ = child.kill();
            let _ = child.wait();
        }
    } else if is_nbdfuse(pid) && !wait_until(HELPER_EXIT_TIMEOUT_MS, || !is_nbdfuse(pid)) {
        // A helper of a previous agent (not our child): ask it by signal.
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

fn is_nbdfuse(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == "nbdfuse")
}

fn unmount_if_mounted(mount_point: &Path) {
    if is_mounted(mount_point) {
        let _ = Command::new("umount")
            .arg(mount_point)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if is_mounted(mount_point) {
            // A dead FUSE server's mount: detach it lazily.
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(mount_point)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let path = path.display().to_string();
    mounts
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| mount_point == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nbd_uris_become_nbd_client_arguments() {
        assert_eq!(
            nbd_client_args("nbd://127.0.0.1:10810/lv0").unwrap(),
            ["127.0.0.1", "10810", "-N", "lv0"]
        );
        assert_eq!(
            nbd_client_args("nbd://db1/lv0").unwrap(),
            ["db1", "10809", "-N", "lv0"]
        );
        assert_eq!(
            nbd_client_args("nbd+unix:///lv0?socket=/run/redoubt/erp.sock").unwrap(),
            ["-unix", "/run/redoubt/erp.sock", "-N", "lv0"]
        );
        for bad in [
            "http://x/y",
            "nbd://:1/x",
            "nbd://h:notaport/x",
            "nbd+unix:///x",
        ] {
            assert!(nbd_client_args(bad).is_err(), "{bad}");
        }
    }
}
