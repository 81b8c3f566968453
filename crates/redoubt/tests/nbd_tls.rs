//! NBD STARTTLS on the datatap's exports, against real peers (libnbd's nbdinfo/nbdcopy and
//! qemu-io): with `--tls-dir`/`--tls-name`, a plaintext client and a client whose certificate
//! comes from another CA are refused; a client with a certificate of the cluster CA writes
//! and reads back.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use redoubt_testkit::{run, run_ok, DatatapProcess};

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_redoubt"))
}

fn redoubt(args: &[&str]) -> Output {
    let output = Command::new(binary())
        .args(args)
        .output()
        .expect("run redoubt");
    assert!(
        output.status.success(),
        "redoubt {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A cluster CA in `root/NAME-ca` with the server identity `localhost` (the name the clients
/// dial, so they can check it) and a client directory in libnbd's and qemu's layout.
fn cluster(root: &Path, name: &str) -> (PathBuf, PathBuf) {
    let ca = root.join(format!("{name}-ca"));
    let ca_arg = ca.to_str().expect("utf-8 path");
    redoubt(&["ca", "init", "--dir", ca_arg]);
    redoubt(&["ca", "issue", "--dir", ca_arg, "localhost"]);
    redoubt(&["ca", "issue", "--dir", ca_arg, "client1"]);
    let client = root.join(format!("{name}-client"));
    std::fs::create_dir(&client).expect("client dir");
    for (from, to) in [
        ("ca.pem", "ca-cert.pem"),
        ("client1.pem", "client-cert.pem"),
        ("client1.key", "client-key.pem"),
    ] {
        std::fs::copy(ca.join(from), client.join(to)).expect("copy certificate");
    }
    (ca, client)
}

fn failure(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "must be refused; stdout:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn tls_exports_refuse_plaintext_and_foreign_certificates_and_serve_cluster_clients() {
    let root = tempfile::tempdir().expect("tempdir");
    let (ca, good) = cluster(root.path(), "cluster");
    let (_other_ca, foreign) = cluster(root.path(), "other");
    // The foreign client trusts the cluster CA (so it accepts the server): only the server's
    // check of the client certificate can refuse it.
    std::fs::copy(ca.join("ca.pem"), foreign.join("ca-cert.pem")).expect("copy the CA");
    let data = root.path().join("data");
    let datatap = DatatapProcess::start(
        binary(),
        &data,
        &["lv0:16MiB"],
        &[
            "--journal-capacity",
            "16MiB",
            "--tls-dir",
            ca.to_str().expect("utf-8 path"),
            "--tls-name",
            "localhost",
        ],
    );
    let uri = datatap.uri("lv0");
    assert!(uri.starts_with("nbds://127.0.0.1:"), "{uri}");
    let port = uri
        .trim_start_matches("nbds://127.0.0.1:")
        .split('/')
        .next()
        .expect("port")
        .to_string();
    let tls_uri = |dir: &Path| {
        format!(
            "nbds://localhost:{port}/lv0?tls-certificates={}",
            dir.display()
        )
    };

    // Plaintext: every option but STARTTLS gets NBD_REP_ERR_TLS_REQD, so nothing is served.
    failure(&run("nbdinfo", &[&format!("nbd://localhost:{port}/lv0")]));
    failure(&run(
        "nbdinfo",
        &["--list", &format!("nbd://localhost:{port}")],
    ));
    // A certificate of another CA: the TLS handshake is refused.
    failure(&run("nbdinfo", &[&tls_uri(&foreign)]));
    let qemu_opts = |dir: &Path| {
        (
            format!(
                "tls-creds-x509,id=tls0,dir={},endpoint=client",
                dir.display()
            ),
            format!("driver=nbd,host=localhost,port={port},export=lv0,tls-creds=tls0"),
        )
    };
    let (object, image) = qemu_opts(&foreign);
    failure(&run(
        "qemu-io",
        &[
            "--object",
            &object,
            "-c",
            "read 0 4k",
            "--image-opts",
            &image,
        ],
    ));

    // A certificate of the cluster CA: qemu-io writes over TLS, nbdcopy reads back.
    let info = run_ok("nbdinfo", &[&tls_uri(&good)]);
    assert!(info.contains("with TLS"), "{info}");
    assert!(info.contains("export-size: 16777216"), "{info}");
    let (object, image) = qemu_opts(&good);
    let written = run_ok(
        "qemu-io",
        &[
            "--object",
            &object,
            "-c",
            "write -P 0x5a 0 1M",
            "-c",
            "write -P 0xa5 15M 1M",
            "-c",
            "flush",
            "-c",
            "read -P 0x5a 0 1M",
            "--image-opts",
            &image,
        ],
    );
    assert!(
        !written.contains("Pattern verification failed"),
        "{written}"
    );
    let copy = root.path().join("copy.img");
    run_ok(
        "nbdcopy",
        &[&tls_uri(&good), copy.to_str().expect("utf-8 path")],
    );
    let bytes = std::fs::read(&copy).expect("read the copy");
    assert_eq!(bytes.len(), 16 << 20);
    assert!(bytes[..1 << 20].iter().all(|&b| b == 0x5a));
    assert!(bytes[1 << 20..15 << 20].iter().all(|&b| b == 0));
    assert!(bytes[15 << 20..].iter().all(|&b| b == 0xa5));
}
