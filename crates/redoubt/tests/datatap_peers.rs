//! The datatap against real NBD clients: qemu-io, qemu-img, nbdinfo, nbdcopy and fio.

use std::path::Path;

use redoubt_testkit::{run, run_ok, DatatapProcess, NbdClient};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_redoubt"))
}

#[test]
fn nbdinfo_lists_every_export_and_only_exact_names_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let datatap = DatatapProcess::start(
        binary(),
        dir.path(),
        &["lv_data:64MiB", "lv_logs:16MiB"],
        &[],
    );
    let uri = datatap.uri("lv_data");
    let listing = run_ok("nbdinfo", &["--list", &uri]);
    assert!(listing.contains("export=\"lv_data\""), "{listing}");
    assert!(listing.contains("export=\"lv_logs\""), "{listing}");
    assert!(listing.contains("export-size: 67108864"), "{listing}");
    assert!(listing.contains("export-size: 16777216"), "{listing}");
    let info = run_ok("nbdinfo", &["--json", &uri]);
    assert!(
        info.contains("\"can_flush\": true") && info.contains("\"can_fua\": true"),
        "{info}"
    );
    assert!(
        info.contains("\"can_trim\": true") && info.contains("\"can_zero\": true"),
        "{info}"
    );

    let address = datatap.address();
    assert_eq!(NbdClient::list(&address).unwrap(), ["lv_data", "lv_logs"]);
    for wrong in ["lv", "lv_data ", "LV_DATA", "", "../lv_data"] {
        assert!(
            NbdClient::connect(&address, wrong).is_err(),
            "{wrong:?} must not be served"
        );
    }
    let missing = run("nbdinfo", &[&format!("nbd://{address}/nope")]);
    assert!(!missing.status.success());
}

#[test]
fn qemu_io_patterns_read_back_at_aligned_and_unaligned_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let datatap = DatatapProcess::start(binary(), dir.path(), &["lv0:64MiB"], &[]);
    let uri = datatap.uri("lv0");
    let info = run_ok("qemu-img", &["info", "-f", "raw", &uri]);
    assert!(info.contains("virtual size: 64 MiB"), "{info}");
    let script = [
        "write -P 0x11 0 1M",
        "write -P 0x22 4096 8192",
        "write -P 0x33 1000 3000",
        "write -P 0x44 67104768 4096",
        "write -z 2M 1M",
        "write -P 0x55 -f 3M 64k",
        "flush",
        "read -P 0x11 0 1000",
        "read -P 0x33 1000 3000",
        "read -P 0x11 4000 96",
        "read -P 0x22 4096 8192",
        "read -P 0x11 12288 1036288",
        "read -P 0x44 67104768 4096",
        "read -P 0x00 2M 1M",
        "read -P 0x55 3M 64k",
        "discard 5M 1M",
    ];
    let mut args = vec!["-f", "raw"];
    for command in &script {
        args.push("-c");
        args.push(command);
    }
    args.push(&uri);
    let output = run_ok("qemu-io", &args);
    assert!(!output.contains("Pattern verification failed"), "{output}");
    assert_eq!(output.matches("read ").count(), 8, "{output}");
    // A read past the end is refused and the connection keeps serving.
    let refused = run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read 67108864 4096",
            "-c",
            "read -P 0x44 67104768 4096",
            &uri,
        ],
    );
    let text = String::from_utf8_lossy(&refused.stdout).to_string()
        + &String::from_utf8_lossy(&refused.stderr);
    assert!(
        text.contains("read 4096/4096 bytes at offset 67104768"),
        "{text}"
    );
}

#[test]
fn nbdcopy_256_mib_in_and_out_is_identical() {
    let dir = tempfile::tempdir().unwrap();
    let datatap = DatatapProcess::start(binary(), dir.path(), &["lv0:256MiB"], &[]);
    let uri = datatap.uri("lv0");
    let image = dir.path().join("in.img");
    let mut bytes = vec![0u8; 256 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in bytes.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    // Leave holes so sparse handling is exercised too.
    bytes[(64 << 20)..(96 << 20)].fill(0);
    std::fs::write(&image, &bytes).unwrap();
    run_ok("nbdcopy", &[&image.display().to_string(), &uri]);
    let out = dir.path().join("out.img");
    run_ok("nbdcopy", &[&uri, &out.display().to_string()]);
    let copied = std::fs::read(&out).unwrap();
    assert_eq!(copied.len(), bytes.len());
    assert!(
        copied == bytes,
        "the image read back differs from the image written"
    );
}

#[test]
fn fio_crc32c_verify_after_random_writes_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut datatap = DatatapProcess::start(binary(), dir.path(), &["lv0:128MiB"], &[]);
    let job = |uri: &str, verify_only: bool| {
        let mut args = vec![
            "--name=verify".to_string(),
            "--ioengine=nbd".into(),
            format!("--uri={uri}"),
            "--rw=randwrite".into(),
            "--bsrange=4k-64k".into(),
            "--iodepth=16".into(),
            "--size=64M".into(),
            "--verify=crc32c".into(),
            // No verify-state file left in the working directory.
            "--verify_state_save=0".into(),
            "--verify_fatal=1".into(),
            "--randseed=42".into(),
        ];
        if verify_only {
            args.push("--verify_only".into());
        } else {
            args.push("--do_verify=1".into());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_ok("fio", &args)
    };
    // fio exits non-zero on the first mismatch (verify_fatal); its READ line proves the verify
    // pass ran.
    let written = job(&datatap.uri("lv0"), false);
    assert!(
        written.contains("READ:") && written.contains("WRITE:"),
        "{written}"
    );
    // After an orderly restart the same data verifies again.
    assert!(datatap.stop().success());
    datatap.restart();
    let verified = job(&datatap.uri("lv0"), true);
    assert!(
        verified.contains("READ:") && !verified.contains("WRITE:"),
        "{verified}"
    );
}

#[test]
fn unix_socket_exports_work_with_nbd_unix_uris() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nbd.sock");
    let listen = format!("unix:{}", socket.display());
    let output = std::process::Command::new(binary())
        .args(["datatap", "--dir"])
        .arg(dir.path())
        .args(["--volume", "lv0:8MiB", "--listen", &listen])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(output);
    let stdout = child.0.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    let uri = line.trim().strip_prefix("ready ").unwrap().to_string();
    assert_eq!(uri, format!("nbd+unix:///lv0?socket={}", socket.display()));
    let output = run_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x7e 0 64k",
            "-c",
            "read -P 0x7e 0 64k",
            &uri,
        ],
    );
    assert!(output.contains("read 65536/65536"), "{output}");
}

struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
