//! `redoubt attach` / `detach` on a lab: a block device of a protected LV at
//! `/dev/redoubt/GROUP/LV`, owned by the production agent. Attach twice is refused (exit 3),
//! detach of a mounted device is refused (exit 3), a mounted ext4 keeps working across a
//! SIGKILL and restart of the agent (the agent finds its attachment again and reports it), and
//! detach leaves no link, loop device or helper behind; `lab down` refuses while a device is
//! mounted and otherwise removes devices, helpers and links with the daemons. The kernel NBD
//! path has its own test that runs where the `nbd` module is loaded. Needs root (CI runs as
//! root).

mod common;

use std::path::Path;

use common::lab::{link_target, run, wait_until, write_durably, Lab};

const LINK: &str = "/dev/redoubt/erp/lv_logs";

/// The tests of this file share `/dev/redoubt/erp/…` and the loop devices: one at a time.
static DEVICES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    DEVICES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `redoubt status --format json`: the `attached` field of the LV.
fn attachment_state(lab: &Lab) -> serde_json::Value {
    let status: serde_json::Value =
        serde_json::from_str(&lab.ok(&["status", "--format", "json"])).unwrap();
    status["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|group| group["name"] == "erp")
        .and_then(|group| group["volumes"].as_array())
        .into_iter()
        .flatten()
        .find(|volume| volume["name"] == "lv_logs")
        .map(|volume| volume["attached"].clone())
        .unwrap_or(serde_json::Value::Null)
}

/// Nothing of the attachment is left: no link, the loop device released, no helper of this lab.
fn assert_no_trace_of(device: &str, lab_dir: &Path) {
    assert!(
        Path::new(LINK).symlink_metadata().is_err(),
        "no dangling link {LINK}"
    );
    let loop_name = device.trim_start_matches("/dev/");
    assert!(
        !Path::new("/sys/block")
            .join(loop_name)
            .join("loop")
            .exists(),
        "{device} is released"
    );
    let lab_dir = lab_dir.display().to_string();
    let helpers = run("ps", &["-eo", "args"]);
    assert!(
        !helpers
            .lines()
            .any(|line| (line.contains("nbdfuse") || line.contains("nbdkit"))
                && line.contains(&lab_dir)),
        "no helper of this lab is left:\n{helpers}"
    );
}

#[test]
fn attach_gives_a_device_that_survives_an_agent_restart_and_detach_removes_it() {
    let _devices = one_at_a_time();
    if redoubt_host::kernel_nbd_available() {
        eprintln!("the nbd module is loaded: kernel_nbd_path_where_the_module_exists covers it");
    }
    let mut lab = Lab::up();
    let mount = lab.path().join("mnt");
    std::fs::create_dir_all(&mount).unwrap();

    let out = lab.ok(&["attach", "erp", "lv_logs"]);
    assert!(out.contains(LINK), "{out}");
    let device = link_target(LINK);
    assert!(device.starts_with("/dev/loop"), "{device}");

    // A second attach is refused: exit 3, the first one untouched.
    let again = lab.redoubt(&["attach", "erp", "lv_logs"]);
    assert_eq!(again.status.code(), Some(3), "{again:?}");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("already attached"), "{stderr}");
    assert_eq!(link_target(LINK), device);

    // ext4 on it, a file written durably.
    run("mkfs.ext4", &["-q", LINK]);
    run("mount", &[LINK, &mount.display().to_string()]);
    lab.mounts.push(mount.clone());
    write_durably(&mount.join("before"), b"written before the agent restart");

    // Detach while mounted: refused, nothing changes.
    let busy = lab.redoubt(&["detach", "erp", "lv_logs"]);
    assert_eq!(busy.status.code(), Some(3), "{busy:?}");
    assert!(String::from_utf8_lossy(&busy.stderr).contains("in use"));
    assert_eq!(link_target(LINK), device);

    // The agent dies and comes back: the file system goes on, the agent owns the device again.
    lab.kill_and_restart_agent("prod-a");
    write_durably(&mount.join("after"), b"written after the agent restart");
    assert_eq!(
        std::fs::read(mount.join("before")).unwrap(),
        b"written before the agent restart"
    );
    wait_until("the restarted agent reports the attachment", || {
        attachment_state(&lab)["state"] == "attached"
    });
    let state = attachment_state(&lab);
    assert_eq!(state["device"], device.as_str(), "{state}");
    assert_eq!(state["link"], LINK, "{state}");

    run("umount", &[&mount.display().to_string()]);
    lab.mounts.clear();
    let out = lab.ok(&["detach", "erp", "lv_logs"]);
    assert!(out.contains(LINK), "{out}");
    assert_no_trace_of(&device, lab.path());
    assert_eq!(attachment_state(&lab), serde_json::Value::Null);

    // Detach again: not attached (exit 1), and invalid names are refused before any work.
    let missing = lab.redoubt(&["detach", "erp", "lv_logs"]);
    assert_eq!(missing.status.code(), Some(1), "{missing:?}");
    let invalid = lab.redoubt(&["attach", "erp", "../lv_logs"]);
    assert_eq!(invalid.status.code(), Some(2), "{invalid:?}");
}

#[test]
fn kernel_nbd_path_where_the_module_exists() {
    let _devices = one_at_a_time();
    if !redoubt_host::kernel_nbd_available() {
        eprintln!(
            "SKIPPED: this kernel has no nbd module loaded (/sys/module/nbd); the kernel NBD \
             path of `redoubt attach` runs only where `modprobe nbd` worked. The FUSE + loop \
             path is tested by attach_gives_a_device_that_survives_an_agent_restart_and_detach_removes_it."
        );
        return;
    }
    let mut lab = Lab::up();
    let out = lab.ok(&["attach", "erp", "lv_logs"]);
    assert!(out.contains("kernel-nbd"), "{out}");
    let device = link_target(LINK);
    assert!(device.starts_with("/dev/nbd"), "{device}");
    let mount = lab.path().join("mnt");
    std::fs::create_dir_all(&mount).unwrap();
    run("mkfs.ext4", &["-q", LINK]);
    run("mount", &[LINK, &mount.display().to_string()]);
    lab.mounts.push(mount.clone());
    write_durably(&mount.join("file"), b"through the kernel client");
    run("umount", &[&mount.display().to_string()]);
    lab.mounts.clear();
    lab.ok(&["detach", "erp", "lv_logs"]);
    assert!(Path::new(LINK).symlink_metadata().is_err());
}

#[test]
fn removing_an_attached_lv_from_the_group_detaches_it_and_refuses_while_mounted() {
    let _devices = one_at_a_time();
    let mut lab = Lab::up();
    let mount = lab.path().join("mnt");
    std::fs::create_dir_all(&mount).unwrap();
    lab.ok(&["attach", "erp", "lv_logs"]);
    run("mkfs.ext4", &["-q", LINK]);
    run("mount", &[LINK, &mount.display().to_string()]);
    lab.mounts.push(mount.clone());

    // The new configuration drops lv_logs.
    let current = lab.ok(&["config", "show"]);
    let start = current
        .find("[[group.volume]]\nname = \"lv_logs\"")
        .unwrap();
    let end = current[start..]
        .find("size = ")
        .map(|at| start + at + current[start + at..].find('\n').unwrap() + 1)
        .unwrap();
    let new = format!("{}{}", &current[..start], &current[end..]);
    let file = lab.path().join("without-lv_logs.toml");
    std::fs::write(&file, new).unwrap();
    let file = file.display().to_string();

    // Mounted: the step that would pull the device fails, saying why; the device stays.
    let refused = lab.redoubt(&["config", "apply", &file, "--yes"]);
    assert!(!refused.status.success(), "{refused:?}");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(said.contains("in use"), "{said}");
    assert!(link_target(LINK).starts_with("/dev/"));
    write_durably(&mount.join("still"), b"the device still works");

    // Unmounted: the retried change detaches it (step 17) and removes the export.
    run("umount", &[&mount.display().to_string()]);
    lab.mounts.clear();
    lab.ok(&["config", "retry", "erp"]);
    wait_until("the change is done", || {
        let status: serde_json::Value =
            serde_json::from_str(&lab.ok(&["status", "erp", "--format", "json"])).unwrap();
        status["groups"][0]["initialization"]["state"] == "idle"
    });
    assert!(
        Path::new(LINK).symlink_metadata().is_err(),
        "the link is gone"
    );
    let registry = std::fs::read_to_string(lab.path().join("agents/prod-a/attachments.json"))
        .unwrap_or_default();
    assert!(!registry.contains("lv_logs"), "{registry}");
}

#[test]
fn lab_down_refuses_while_a_device_is_mounted_and_then_removes_every_trace() {
    let _devices = one_at_a_time();
    let mut lab = Lab::up();
    let mount = lab.path().join("mnt");
    std::fs::create_dir_all(&mount).unwrap();
    lab.ok(&["attach", "erp", "lv_logs"]);
    let device = link_target(LINK);
    run("mkfs.ext4", &["-q", LINK]);
    run("mount", &[LINK, &mount.display().to_string()]);
    lab.mounts.push(mount.clone());
    let lab_dir = lab.path().display().to_string();

    // Mounted: refused (exit 3), naming the device and where it is mounted; nothing stopped.
    let refused = lab.redoubt(&["lab", "down", "--dir", &lab_dir]);
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(said.contains(LINK), "{said}");
    assert!(
        said.contains(&format!("mounted on {}", mount.display())),
        "{said}"
    );
    assert!(said.contains("nothing was stopped"), "{said}");
    lab.ok(&["status"]);
    write_durably(&mount.join("still"), b"the file system still works");

    // Unmounted: the processes stop, and the device, its helper and its link go with them.
    run("umount", &[&mount.display().to_string()]);
    lab.mounts.clear();
    let down = lab.ok(&["lab", "down", "--dir", &lab_dir]);
    assert!(
        down.contains(&format!(
            "Detached erp/lv_logs on prod-a: removed {LINK} and {device}"
        )),
        "{down}"
    );
    assert!(down.contains("Stopped 4 process(es)"), "{down}");
    assert_no_trace_of(&device, lab.path());
}
