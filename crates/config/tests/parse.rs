//! Validation reports every error at once, each with its line and field.

use redoubt_config::{load, parse, Diagnostic, Mode, NbdListen};

const VALID: &str = r#"
[[server]]
name = "prod-a"
address = "127.0.0.1:7411"
data_dir = "/var/lib/redoubt"
nbd_listen = "unix:/run/redoubt/nbd.sock"

[[server]]
name = "dr-b"
address = "127.0.0.1:7412"
data_dir = "/var/lib/redoubt"

[[group]]
name = "erp"
production = "prod-a"
recovery = ["dr-b"]

[group.containers]
replication = "64GiB"
log_record_file = "8GiB"
snapshot = "8GiB"

[[group.volume]]
name = "lv_data01"
size = "10GiB"
source = "/dev/vg0/lv_data01"
"#;

fn errors(text: &str) -> Vec<Diagnostic> {
    match parse("test.toml", text) {
        Ok(config) => panic!("expected errors, parsed {config:?}"),
        Err(errors) => errors,
    }
}

fn has(errors: &[Diagnostic], line: usize, field: &str, reason_part: &str) {
    assert!(
        errors
            .iter()
            .any(|e| e.line == line && e.field == field && e.reason.contains(reason_part)),
        "no error at line {line} on {field} containing {reason_part:?}; got:\n{}",
        errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn valid_file_with_defaults() {
    let config = parse("test.toml", VALID).unwrap();
    let group = &config.groups[0];
    assert_eq!(group.mode, Mode::Async);
    assert_eq!(group.retention_seconds, 86400);
    assert_eq!(group.throttle_bytes_per_second, 0);
    assert_eq!(group.volumes[0].size_bytes, 10 << 30);
    assert_eq!(
        config.servers[0].nbd_listen,
        Some(NbdListen::Unix("/run/redoubt/nbd.sock".into()))
    );
}

#[test]
fn every_error_at_once_with_lines() {
    let text = VALID
        .replace(
            "address = \"127.0.0.1:7412\"",
            "address = \"127.0.0.1:7411\"\ncolour = \"red\"",
        )
        .replace(
            "recovery = [\"dr-b\"]",
            "recovery = [\"prod-a\", \"dr-x\"]\nmode = \"fast\"",
        )
        .replace("size = \"10GiB\"", "size = \"10001B\"")
        .replace("snapshot = \"8GiB\"", "snapshot = \"8 GiB\"");
    let errors = errors(&text);
    has(
        &errors,
        10,
        "server[dr-b].address",
        "already used by server `prod-a`",
    );
    has(&errors, 11, "server[dr-b].colour", "unknown field `colour`");
    has(
        &errors,
        17,
        "group[erp].recovery",
        "production server and cannot also be a recovery server",
    );
    has(&errors, 17, "group[erp].recovery", "unknown server `dr-x`");
    has(&errors, 18, "group[erp].mode", "unknown mode `fast`");
    has(
        &errors,
        23,
        "group[erp].containers.snapshot",
        "unknown size unit",
    );
    has(
        &errors,
        27,
        "group[erp].volume[lv_data01].size",
        "multiple of 4096",
    );
    assert_eq!(errors.len(), 7, "{errors:#?}");
    // Sorted by position, so a person reads them top to bottom.
    assert!(errors
        .windows(2)
        .all(|w| (w[0].line, w[0].column) <= (w[1].line, w[1].column)));
    assert!(errors[0].to_string().starts_with("test.toml:10:"));
}

#[test]
fn structural_errors() {
    let text = VALID
        .replace("name = \"dr-b\"", "name = \"prod-a\"")
        .replace(
            "recovery = [\"dr-b\"]",
            "recovery = [\"dr-b\", \"dr-b\", \"prod-a\"]",
        );
    let errors = errors(&text);
    has(
        &errors,
        8,
        "server[prod-a].name",
        "duplicate server name `prod-a` (first defined on line 2)",
    );
    has(
        &errors,
        16,
        "group[erp].recovery",
        "1 or 2 recovery servers, found 3",
    );
}

#[test]
fn missing_fields_and_tables() {
    let text = r#"
[[server]]
name = "prod-a"

[[group]]
name = "erp"
production = "prod-a"
"#;
    let errors = errors(text);
    has(
        &errors,
        2,
        "server[prod-a].address",
        "missing required field `address`",
    );
    has(
        &errors,
        2,
        "server[prod-a].data_dir",
        "missing required field `data_dir`",
    );
    has(
        &errors,
        5,
        "group[erp].recovery",
        "missing required field `recovery`",
    );
    has(
        &errors,
        5,
        "group[erp].containers",
        "missing required table",
    );
    has(&errors, 5, "group[erp].volume", "at least one");
}

#[test]
fn volumes_must_fit_the_replication_container() {
    let text = VALID.replace("replication = \"64GiB\"", "replication = \"8GiB\"");
    let errors = errors(&text);
    has(
        &errors,
        19,
        "group[erp].containers.replication",
        "holds 8GiB but the group's volumes need 10GiB",
    );
}

#[test]
fn names_cannot_escape_a_directory() {
    let text = VALID.replace("name = \"lv_data01\"", "name = \"../etc\"");
    has(
        &errors(&text),
        24,
        "group[erp].volume[0].name",
        "invalid volume name `../etc`",
    );
}

#[test]
fn wrong_types_and_syntax() {
    let text = VALID.replace("size = \"10GiB\"", "size = true");
    has(
        &errors(&text),
        25,
        "group[erp].volume[lv_data01].size",
        "found boolean",
    );
    let syntax = errors("[[server]\nname = ");
    assert_eq!(syntax[0].field, "(syntax)");
    assert_eq!(syntax[0].line, 1);
    assert!(syntax[0].reason.starts_with("invalid TOML"));
}

#[test]
fn unreadable_file_is_a_diagnostic() {
    let errors = load(std::path::Path::new("/nonexistent/redoubt.toml")).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].reason.contains("cannot read"));
}

#[test]
fn shipped_examples_validate() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("invalid") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "toml") {
                if let Err(errors) = load(&path) {
                    panic!("{} invalid: {errors:#?}", path.display());
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 30, "checked {checked}");
    let invalid = load(&root.join("invalid/many-errors.toml")).unwrap_err();
    assert!(invalid.len() >= 10, "{invalid:#?}");
}

/// Issue #18 finding 9: `console` is the console's certificate name; a server called so would
/// be the console towards every agent. `ca` is the CA's.
#[test]
fn reserved_server_names_are_refused() {
    for reserved in ["console", "ca"] {
        let text = VALID.replace("name = \"dr-b\"", &format!("name = \"{reserved}\""));
        let text = text.replace(
            "recovery = [\"dr-b\"]",
            &format!("recovery = [\"{reserved}\"]"),
        );
        let found = errors(&text);
        has(&found, 9, "server[1].name", "reserved");
        assert_eq!(found.len(), 1, "one error, not a cascade: {found:?}");
    }
}
