//! Every rename or removal of state in the services, the data path and the host goes through
//! this crate (so the directory is fsynced): a power cut must not bring back a failover
//! context, a journal copy or a state file that was deleted, nor lose one that was renamed
//! into place (#19 item 6). A plain `fs::rename(`, `fs::remove_file(`, `fs::remove_dir(` or
//! `fs::remove_dir_all(` in their sources fails this test, unless the line itself or the line
//! before says why it is safe (`Not state:` or `durable:`: a socket, a temporary file, a
//! directory synced right after).

use std::path::{Path, PathBuf};

const CRATES: [&str; 6] = [
    "agent",
    "console",
    "replication",
    "host",
    "datatap",
    "volume",
];
const DIRECT_CALLS: [&str; 4] = [
    "fs::rename(",
    "fs::remove_file(",
    "fs::remove_dir_all(",
    "fs::remove_dir(",
];
const REASONS: [&str; 2] = ["Not state:", "durable:"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_state_is_renamed_or_removed_without_fsyncing_its_directory() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for name in CRATES {
        rust_files(&crates.join(name).join("src"), &mut files);
    }
    assert!(files.len() > 20, "the sources were found: {files:?}");
    let mut plain = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        // Unit tests at the end of a file may do as they like.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let lines: Vec<&str> = code.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("//")
                || line.contains("redoubt_durable::")
                || !DIRECT_CALLS.iter().any(|call| line.contains(call))
            {
                continue;
            }
            let excused = |line: &str| REASONS.iter().any(|reason| line.contains(reason));
            if !(excused(line) || index > 0 && excused(lines[index - 1])) {
                plain.push(format!("{}:{}: {}", file.display(), index + 1, line.trim()));
            }
        }
    }
    assert!(
        plain.is_empty(),
        "use redoubt_durable::replace/rename/remove/remove_dir_all (they fsync the directory):\n{}",
        plain.join("\n")
    );
}
