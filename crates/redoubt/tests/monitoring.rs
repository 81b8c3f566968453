//! Monitoring against a live lab: `redoubt status --format xml` validates against
//! `docs/status.xsd` (xmllint) and its numbers equal `--format json`'s; `/metrics` of the
//! console and of every agent is accepted by real parsers (python prometheus_client: the
//! classic text format and OpenMetrics) and agrees with the status; `status --wait-sync`
//! follows the initial sync to its end; `redoubt operations ID
//! --watch` follows a real operation (an online verify) to its end with the progress helper.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_redoubt"))
}

fn console_url(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("lab.env"))
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("REDOUBT_CONSOLE=").map(str::to_string))
        .unwrap()
}

fn redoubt(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(binary())
        .args(args)
        .env("REDOUBT_CONSOLE", console_url(dir))
        .env("REDOUBT_TOKEN_FILE", dir.join("console/token"))
        .env("REDOUBT_CA_FILE", dir.join("tls/ca.pem"))
        .output()
        .unwrap()
}

fn stdout_ok(output: std::process::Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Stops the lab even when an assertion fails.
struct Lab(PathBuf);

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(binary())
            .args(["lab", "down", "--purge", "--dir"])
            .arg(&self.0)
            .output();
    }
}

fn lab_up(root: &Path) -> Lab {
    let dir = root.join("lab");
    let up = Command::new(binary())
        .args(["lab", "up", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let lab = Lab(dir);
    assert!(
        up.status.success(),
        "lab up: {}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    lab
}

/// The text of `<tag …>text</tag>` in `block`.
fn element(block: &str, tag: &str) -> Option<String> {
    let open = block.find(&format!("<{tag}"))?;
    let rest = &block[open..];
    let start = rest.find('>')? + 1;
    let end = rest.find(&format!("</{tag}>"))?;
    Some(rest[start..end].to_string())
}

/// The `<recovery name="server">` block of the XML.
fn recovery_block<'a>(xml: &'a str, server: &str) -> &'a str {
    let start = xml
        .find(&format!("<recovery name=\"{server}\">"))
        .unwrap_or_else(|| panic!("no recovery {server} in\n{xml}"));
    let end = xml[start..].find("</recovery>").unwrap() + start;
    &xml[start..end]
}

/// The numbers the XML document and the JSON must agree on, per target, from the JSON.
fn json_numbers(status: &Value) -> Vec<(String, &'static str, Option<f64>)> {
    let mut out = Vec::new();
    for target in status["groups"][0]["targets"].as_array().unwrap() {
        let server = target["server"].as_str().unwrap().to_string();
        for (tag, field) in [
            ("status", "status_code"),
            ("speed", "speed_mb_s"),
            ("super_transaction", "super_transaction_pct"),
            ("snapshot_usage", "snapshot_usage_pct"),
            ("Current_SRC_Backlog", "source_backlog_pct"),
            ("Current_TGT_Backlog", "target_backlog_pct"),
            ("backlog_bytes", "backlog_bytes"),
            ("lag_seconds", "lag_seconds"),
            ("journal_seq", "journal_seq"),
            ("applied_seq", "applied_seq"),
        ] {
            out.push((server.clone(), tag, target[field].as_f64()));
        }
    }
    out
}

fn xml_numbers(
    xml: &str,
    like: &[(String, &'static str, Option<f64>)],
) -> Vec<(String, &'static str, Option<f64>)> {
    like.iter()
        .map(|(server, tag, _)| {
            let value = element(recovery_block(xml, server), tag).map(|text| {
                text.parse::<f64>()
                    .unwrap_or_else(|_| panic!("<{tag}> of {server} is not a number: {text}"))
            });
            (server.clone(), *tag, value)
        })
        .collect()
}

#[test]
fn xml_status_metrics_and_operations_against_a_lab() {
    let root = tempfile::tempdir().unwrap();
    let lab = lab_up(root.path());
    let dir = lab.0.clone();

    // `status --wait-sync` follows the initial sync to its end, then prints the status.
    let synced: Value = serde_json::from_str(&stdout_ok(redoubt(
        &dir,
        &["status", "erp", "--wait-sync", "--format", "json"],
    )))
    .unwrap();
    for target in synced["groups"][0]["targets"].as_array().unwrap() {
        assert_eq!(target["super_transaction_pct"], 100.0, "{synced:#}");
        assert_eq!(target["backlog_bytes"], 0, "{synced:#}");
        assert_eq!(target["status_code"], 30, "{synced:#}");
    }
    let no_group = redoubt(&dir, &["status", "nope", "--wait-sync"]);
    assert_eq!(no_group.status.code(), Some(2));

    // The XML validates against the schema we ship, and holds every element of the product's
    // document once the data path runs (right after `lab up` a target may still connect).
    let expected_elements = [
        "<replication_group name=\"erp\">",
        "<production>prod-a</production>",
        "<direction>prod-a -&gt; dr-b, dr-c</direction>",
        "<status>30</status>",
        "<ST_IO unit=\"MB/s\">",
        "<APP_IO unit=\"MB/s\">",
        "<Current_SRC_Backlog unit=\"%\">",
        "<Current_TGT_Backlog unit=\"%\">",
        "<snapshot_usage unit=\"%\">",
        "<super_transaction unit=\"%\">",
    ];
    let deadline = Instant::now() + Duration::from_secs(30);
    let xml = loop {
        let xml = stdout_ok(redoubt(&dir, &["status", "--format", "xml"]));
        common::status_xml::assert_valid(&xml, root.path());
        let missing: Vec<&str> = expected_elements
            .iter()
            .copied()
            .filter(|element| !xml.contains(element))
            .collect();
        if missing.is_empty() {
            break xml;
        }
        assert!(Instant::now() < deadline, "missing {missing:?} in\n{xml}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(xml.matches("<recovery name=").count(), 2, "{xml}");

    // The numbers agree with --format json: compared when the status held still between a
    // JSON read before and one after the XML read.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let before: Value =
            serde_json::from_str(&stdout_ok(redoubt(&dir, &["status", "--format", "json"])))
                .unwrap();
        let xml = stdout_ok(redoubt(&dir, &["status", "erp", "--format", "xml"]));
        let after: Value =
            serde_json::from_str(&stdout_ok(redoubt(&dir, &["status", "--format", "json"])))
                .unwrap();
        let expected = json_numbers(&before);
        if expected == json_numbers(&after) {
            assert_eq!(xml_numbers(&xml, &expected), expected, "\n{xml}");
            break;
        }
        assert!(Instant::now() < deadline, "the status never held still");
        std::thread::sleep(Duration::from_millis(200));
    }
    let missing = redoubt(&dir, &["status", "nope", "--format", "xml"]);
    assert_eq!(
        missing.status.code(),
        Some(2),
        "an unknown group is invalid input"
    );

    // /metrics of the console: both formats, through real parsers, agreeing with the status.
    let token = std::fs::read_to_string(dir.join("console/token")).unwrap();
    let url = format!("{}/metrics", console_url(&dir));
    let auth = format!("Authorization: Bearer {}", token.trim());
    // The lab's console is HTTPS with a certificate of the lab's CA.
    let ca = dir.join("tls/ca.pem").display().to_string();
    let classic = curl(&[&url, "-H", &auth, "--cacert", &ca]);
    let families = parse_metrics(root.path(), &classic, "prometheus");
    for family in [
        "redoubt_target_status_code",
        "redoubt_target_backlog_bytes",
        "redoubt_target_lag_seconds",
        "redoubt_target_speed_megabytes_per_second",
        "redoubt_target_applied_records",
        "redoubt_target_source_journal_usage_percent",
        "redoubt_initialization_step_duration_seconds",
    ] {
        assert!(
            families.contains(&family.to_string()),
            "console lacks {family}: {families:?}"
        );
    }
    assert!(
        classic.contains("redoubt_target_status_code{group=\"erp\",target=\"dr-b\"} 30"),
        "{classic}"
    );
    let openmetrics = curl(&[
        &url,
        "--cacert",
        &ca,
        "-H",
        &auth,
        "-H",
        "Accept: application/openmetrics-text; version=1.0.0",
    ]);
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    parse_metrics(root.path(), &openmetrics, "openmetrics");
    let refused = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            &ca,
            &url,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&refused.stdout),
        "401",
        "no token, no metrics"
    );

    // /metrics of every agent (over mutual TLS when the lab runs with it).
    let config = std::fs::read_to_string(dir.join("lab.toml")).unwrap();
    let tls = dir.join("tls");
    for server in ["prod-a", "dr-b", "dr-c"] {
        let address = config
            .split("[[server]]")
            .find(|block| block.contains(&format!("name = \"{server}\"")))
            .and_then(|block| block.lines().find_map(|l| l.strip_prefix("address = ")))
            .unwrap()
            .trim_matches('"')
            .to_string();
        let port = address.rsplit(':').next().unwrap();
        let text = if tls.join("ca.pem").exists() {
            curl(&[
                &format!("https://{server}:{port}/metrics"),
                "--resolve",
                &format!("{server}:{port}:127.0.0.1"),
                "--cacert",
                &tls.join("ca.pem").display().to_string(),
                "--cert",
                &tls.join("console.pem").display().to_string(),
                "--key",
                &tls.join("console.key").display().to_string(),
            ])
        } else {
            curl(&[&format!("http://{address}/metrics")])
        };
        let families = parse_metrics(root.path(), &text, "prometheus");
        assert!(
            families.contains(&"redoubt_data_path_loaded".to_string()),
            "{server}: {families:?}"
        );
        assert!(
            families.contains(&"redoubt_step_duration_seconds".to_string()),
            "{server} ran initialization steps: {families:?}"
        );
        if server == "prod-a" {
            for family in [
                "redoubt_target_lag_seconds",
                "redoubt_target_sent_bytes",
                "redoubt_journal_usage_percent",
            ] {
                assert!(
                    families.contains(&family.to_string()),
                    "{server} lacks {family}: {families:?}"
                );
            }
        } else {
            assert!(
                families.contains(&"redoubt_applied_records".to_string()),
                "{server} reports its apply: {families:?}"
            );
        }
    }

    // A long operation (online verify) followed to its end by `operations ID --watch`.
    let started = curl(&[
        &format!("{}/v1/groups/erp/verify", console_url(&dir)),
        "--cacert",
        &ca,
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        "{}",
    ]);
    let started: Value = serde_json::from_str(&started).unwrap();
    let id = started["operation"]
        .as_str()
        .expect("an operation id")
        .to_string();
    let watched = redoubt(&dir, &["operations", &id, "--watch", "--format", "json"]);
    let text = String::from_utf8_lossy(&watched.stdout).to_string();
    assert!(
        watched.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&watched.stderr)
    );
    let done: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(done["state"], "done", "{done:#}");
    assert_eq!(done["id"], id.as_str());
    assert!(
        String::from_utf8_lossy(&watched.stderr).contains("100%"),
        "one progress line per change, the last at 100%: {}",
        String::from_utf8_lossy(&watched.stderr)
    );
    let listed = stdout_ok(redoubt(&dir, &["operations"]));
    assert!(listed.contains(&id), "{listed}");
    let unknown = redoubt(&dir, &["operations", "op-999999", "--watch"]);
    assert_eq!(unknown.status.code(), Some(1), "an unknown operation fails");
}

fn curl(args: &[&str]) -> String {
    let output = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl");
    assert!(
        output.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Parses exposition text with python's prometheus_client (`prometheus`: the classic text
/// parser; `openmetrics`: the strict OpenMetrics parser); the family names. Fails the test if
/// the parser refuses the text.
fn parse_metrics(scratch: &Path, text: &str, kind: &str) -> Vec<String> {
    let file = scratch.join(format!("metrics-{kind}.txt"));
    std::fs::write(&file, text).unwrap();
    let script = r#"
import json, sys
kind, path = sys.argv[1], sys.argv[2]
if kind == "openmetrics":
    from prometheus_client.openmetrics.parser import text_string_to_metric_families
else:
    from prometheus_client.parser import text_string_to_metric_families
families = list(text_string_to_metric_families(open(path).read()))
for family in families:
    if family.type == "unknown":
        raise SystemExit("family %s has no TYPE" % family.name)
    for sample in family.samples:
        if sample.value != sample.value:
            raise SystemExit("NaN in %s" % sample.name)
print(json.dumps(sorted(f.name for f in families)))
"#;
    let output = Command::new("/usr/bin/python3")
        .args(["-c", script, kind])
        .arg(&file)
        .output()
        .expect("run /usr/bin/python3 (python3-prometheus-client, scripts/deps.sh)");
    assert!(
        output.status.success(),
        "the {kind} parser refused the text: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}
