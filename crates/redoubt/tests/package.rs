//! The .deb: `packaging/build-deb.sh --no-build` packages the release binary this test run
//! built (cargo-deb), and the package is installed into a scratch root with `dpkg --root`:
//! binary, systemd units, default settings (as conffiles), man pages and guide are where a
//! user expects them, every relative link of the installed documentation leads to a file the
//! package installs, the binary runs, the units parse (`systemd-analyze verify`), and remove
//! keeps the settings while purge deletes them. Run with `cargo test --release` (the package
//! holds target/release/redoubt).

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(workspace())
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run {program} (scripts/deps.sh installs it): {error}")
        });
    assert!(
        output.status.success(),
        "{program} {args:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The relative links (`[text](target)`) of every Markdown page under `dir` whose target does
/// not exist: `PAGE: target`. Web links and anchors within a page are not followed; code
/// blocks and code spans are skipped.
fn broken_links(dir: &Path) -> Vec<String> {
    let mut pages = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(current) = dirs.pop() {
        for entry in std::fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "md") {
                pages.push(path);
            }
        }
    }
    assert!(
        !pages.is_empty(),
        "no Markdown page under {}",
        dir.display()
    );
    let mut broken = Vec::new();
    for page in pages {
        let text = std::fs::read_to_string(&page).unwrap();
        let mut in_code_block = false;
        for line in text.lines() {
            if line.trim_start().starts_with("```") {
                in_code_block = !in_code_block;
                continue;
            }
            if in_code_block {
                continue;
            }
            // Outside code spans: every other piece between backticks.
            for prose in line.split('`').step_by(2) {
                for (start, _) in prose.match_indices("](") {
                    let rest = &prose[start + 2..];
                    let Some(end) = rest.find(')') else {
                        continue;
                    };
                    let target = rest[..end].split('#').next().unwrap_or_default();
                    if target.is_empty() || target.contains("://") || target.starts_with("mailto:")
                    {
                        continue;
                    }
                    if !page.parent().unwrap().join(target).exists() {
                        broken.push(format!(
                            "{}: {}",
                            page.strip_prefix(dir).unwrap_or(&page).display(),
                            &rest[..end]
                        ));
                    }
                }
            }
        }
    }
    broken.sort();
    broken
}

#[test]
fn the_deb_installs_binary_units_settings_man_pages_and_guide() {
    let binary = Path::new(env!("CARGO_BIN_EXE_redoubt"));
    assert!(
        binary.ends_with("release/redoubt"),
        "the package holds the release binary: run `cargo test --release` (binary here: {})",
        binary.display()
    );
    let package = run("bash", &["packaging/build-deb.sh", "--no-build"]);
    let package = workspace().join(package.lines().last().unwrap_or_default());
    let package_text = package.display().to_string();

    // What dpkg-deb lists.
    let contents = run("dpkg-deb", &["--contents", &package_text]);
    for expected in [
        "./usr/bin/redoubt",
        "./lib/systemd/system/redoubt-agent.service",
        "./lib/systemd/system/redoubt-console.service",
        "./etc/redoubt/agent.env",
        "./etc/redoubt/console.env",
        "./usr/share/man/man1/redoubt.1.gz",
        "./usr/share/man/man1/redoubt-attach.1.gz",
        "./usr/share/man/man1/redoubt-config-apply.1.gz",
        "./usr/share/doc/redoubt/guide/README.md",
        "./usr/share/doc/redoubt/examples/redoubt.toml",
        "./usr/share/doc/redoubt/overview.md",
        "./usr/share/doc/redoubt/configuration.md",
        "./usr/share/doc/redoubt/glossary.md",
    ] {
        assert!(
            contents.lines().any(|line| line.ends_with(expected)),
            "{expected} missing from the package:\n{contents}"
        );
    }
    let depends = run("dpkg-deb", &["--field", &package_text, "Depends"]);
    for dependency in ["libnbd-bin", "nbdkit", "util-linux"] {
        assert!(depends.contains(dependency), "Depends: {depends}");
    }
    let control = tempfile::tempdir().unwrap();
    run(
        "dpkg-deb",
        &[
            "--control",
            &package_text,
            &control.path().display().to_string(),
        ],
    );
    let conffiles = std::fs::read_to_string(control.path().join("conffiles")).unwrap();
    assert!(
        conffiles.contains("/etc/redoubt/agent.env")
            && conffiles.contains("/etc/redoubt/console.env"),
        "the settings are conffiles (an upgrade keeps the user's edits): {conffiles}"
    );

    // Installed into a scratch root.
    let root = tempfile::tempdir().unwrap();
    let root_text = root.path().display().to_string();
    for dir in [
        "var/lib/dpkg/info",
        "var/lib/dpkg/updates",
        "var/lib/dpkg/triggers",
    ] {
        std::fs::create_dir_all(root.path().join(dir)).unwrap();
    }
    std::fs::write(root.path().join("var/lib/dpkg/status"), b"").unwrap();
    let dpkg = |args: &[&str]| {
        let mut all = vec![
            "--root",
            &root_text,
            "--force-depends",
            "--force-script-chrootless",
        ];
        all.extend_from_slice(args);
        run("dpkg", &all)
    };
    dpkg(&["--install", &package_text]);
    let installed = root.path().join("usr/bin/redoubt");
    let version = run(&installed.display().to_string(), &["--version"]);
    assert_eq!(version, format!("redoubt {}", env!("CARGO_PKG_VERSION")));
    let listed = dpkg(&["--listfiles", "redoubt"]);
    assert!(
        listed.contains("/lib/systemd/system/redoubt-agent.service"),
        "{listed}"
    );
    let broken = broken_links(&root.path().join("usr/share/doc/redoubt"));
    assert!(
        broken.is_empty(),
        "links of the installed documentation that lead nowhere in the package (ship the page \
         in [package.metadata.deb] assets, or fix the link):\n{}",
        broken.join("\n")
    );

    let agent_unit = root.path().join("lib/systemd/system/redoubt-agent.service");
    let unit = std::fs::read_to_string(&agent_unit).unwrap();
    for setting in [
        "ExecStart=/usr/bin/redoubt agent",
        "NoNewPrivileges=yes",
        "ProtectSystem=full",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=CAP_SYS_ADMIN",
        "KillMode=process",
    ] {
        assert!(
            unit.contains(setting),
            "{setting} missing from the agent unit"
        );
    }
    let console_unit = root
        .path()
        .join("lib/systemd/system/redoubt-console.service");
    let unit = std::fs::read_to_string(&console_unit).unwrap();
    for setting in [
        "ProtectSystem=strict",
        "DynamicUser=yes",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(
            unit.contains(setting),
            "{setting:?} missing from the console unit"
        );
    }
    // systemd's own check of the units, against the installed binary (the scratch root has
    // no systemd to boot, so the units are checked from a copy pointing into it).
    let units = tempfile::tempdir().unwrap();
    let mut unit_paths = Vec::new();
    for unit in [&agent_unit, &console_unit] {
        let text = std::fs::read_to_string(unit).unwrap().replace(
            "ExecStart=/usr/bin/redoubt",
            &format!("ExecStart={}", installed.display()),
        );
        let path = units.path().join(unit.file_name().unwrap());
        std::fs::write(&path, text).unwrap();
        unit_paths.push(path.display().to_string());
    }
    let mut verify = vec!["verify", "--man=no"];
    verify.extend(unit_paths.iter().map(String::as_str));
    run("systemd-analyze", &verify);

    let page = run(
        "gzip",
        &[
            "-dc",
            &root
                .path()
                .join("usr/share/man/man1/redoubt-attach.1.gz")
                .display()
                .to_string(),
        ],
    );
    assert!(
        page.contains(".TH") && page.contains("/dev/redoubt/GROUP/LV"),
        "{page}"
    );

    // Remove keeps the settings; purge deletes them.
    dpkg(&["--remove", "redoubt"]);
    assert!(!installed.exists());
    assert!(root.path().join("etc/redoubt/agent.env").exists());
    dpkg(&["--purge", "redoubt"]);
    assert!(!root.path().join("etc/redoubt/agent.env").exists());
}
