//! Issue #19 item 6: every rename or removal of state in the services and the data path goes
//! through this crate (which fsyncs the directory), so that a power cut cannot bring back a
//! failover context, a journal copy or a replica state file that was deleted. A direct call
//! is allowed only with a `durable:` comment on the line or the line before saying why it is
//! safe (a socket, a temporary file, a directory synced right after).

use std::path::{Path, PathBuf};

const CRATES: [&str; 5] = ["agent", "console", "replication", "datatap", "volume"];
const DIRECT_CALLS: [&str; 4] = [
    "fs::remove_file(",
    "fs::remove_dir_all(",
    "fs::rename(",
    "fs::remove_dir(",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn state_is_renamed_and_removed_only_durably() {
    let crates_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut offenders = Vec::new();
    for name in CRATES {
        let mut files = Vec::new();
        rust_files(&crates_dir.join(name).join("src"), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            // Unit tests at the end of a file may do as they like.
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let lines: Vec<&str> = code.lines().collect();
            for (index, line) in lines.iter().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue;
                }
                if !DIRECT_CALLS.iter().any(|call| line.contains(call))
                    || line.contains("redoubt_durable::")
                {
                    continue;
                }
                let justified = line.contains("durable:")
                    || index
                        .checked_sub(1)
                        .is_some_and(|previous| lines[previous].contains("durable:"));
                if !justified {
                    offenders.push(format!("{}:{}: {}", file.display(), index + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "state renamed or removed without redoubt_durable (or a `durable:` reason):\n{}",
        offenders.join("\n")
    );
}
