//! `redoubt completion SHELL`: a script the shell accepts, completing subcommands, flags and
//! enum values (bash is sourced for real; zsh and fish scripts are checked for their shape).

use std::path::Path;
use std::process::Command;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_redoubt"))
}

fn completion(shell: &str) -> String {
    let output = Command::new(binary())
        .args(["completion", shell])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn completion_scripts_complete_the_command_line() {
    let bash = completion("bash");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("redoubt.bash");
    std::fs::write(&script, &bash).unwrap();
    // Sourced in a real bash: the completion is registered, and completing `redoubt sta`
    // offers `status`; `redoubt status --format ` offers text, json and xml.
    let probe = format!(
        r#"source {script}
complete -p redoubt >/dev/null || exit 3
COMP_WORDS=(redoubt sta); COMP_CWORD=1; COMP_LINE="redoubt sta"; COMP_POINT=${{#COMP_LINE}}
_redoubt redoubt sta redoubt; echo "subcommands: ${{COMPREPLY[*]}}"
COMP_WORDS=(redoubt status --format ""); COMP_CWORD=3; COMP_LINE="redoubt status --format "; COMP_POINT=${{#COMP_LINE}}
_redoubt redoubt "" --format; echo "formats: ${{COMPREPLY[*]}}""#,
        script = script.display()
    );
    let output = Command::new("bash").args(["-c", &probe]).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("subcommands: status"), "{text}");
    let formats = text
        .lines()
        .find(|l| l.starts_with("formats:"))
        .unwrap_or("");
    for format in ["text", "json", "xml"] {
        assert!(formats.contains(format), "{text}");
    }
    assert!(completion("zsh").starts_with("#compdef redoubt"));
    assert!(completion("fish").contains("complete -c redoubt"));
    let wrong = Command::new(binary())
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        wrong.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

/// `redoubt completion bash | head -c 10`: a reader that stops early ends the command quietly,
/// as it ends `yes` (SIGPIPE, exit status 141 in the shell), never with a panic.
#[test]
fn a_reader_that_stops_early_gets_no_panic() {
    let output = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "RUST_BACKTRACE=1 '{}' completion bash | head -c 10 >/dev/null; echo \"status=${{PIPESTATUS[0]}}\"",
            binary().display()
        ))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stdout.contains("status=0") || stdout.contains("status=141"),
        "{stdout}{stderr}"
    );
}
