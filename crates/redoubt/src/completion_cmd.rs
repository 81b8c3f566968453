//! `redoubt completion bash|zsh|fish|elvish|powershell`: the shell completion script of the
//! whole command line (clap_complete), on stdout.
//!
//! ```text
//! redoubt completion bash > /etc/bash_completion.d/redoubt
//! redoubt completion zsh  > "${fpath[1]}/_redoubt"
//! redoubt completion fish > ~/.config/fish/completions/redoubt.fish
//! ```

use std::io::Write;

pub fn run(shell: clap_complete::Shell) {
    let mut command = crate::cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "redoubt", &mut script);
    // A reader that stops early (`| head`) is no failure: the rest is not wanted.
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(&script).and_then(|()| stdout.flush());
}
