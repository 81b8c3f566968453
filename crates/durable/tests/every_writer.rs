//! Every rename of state in the agent, the console, the replication engine and the host goes
//! through this crate (so the directory is fsynced): a plain `fs::rename(` in their sources
//! fails this test, unless the line before says why it is `Not state:`.

use std::path::{Path, PathBuf};

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
fn no_state_is_renamed_without_fsyncing_its_directory() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for name in ["agent", "console", "replication", "host"] {
        rust_files(&crates.join(name).join("src"), &mut files);
    }
    assert!(files.len() > 20, "the sources were found: {files:?}");
    let mut plain = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (index, line) in lines.iter().enumerate() {
            let excused = index > 0 && lines[index - 1].contains("Not state:");
            if line.contains("fs::rename(") && !excused {
                plain.push(format!("{}:{}: {}", file.display(), index + 1, line.trim()));
            }
        }
    }
    assert!(
        plain.is_empty(),
        "use redoubt_durable::replace/rename (they fsync the directory):\n{}",
        plain.join("\n")
    );
}
