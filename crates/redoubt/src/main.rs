//! `redoubt`: the one binary. Parses the command line and hands off to the library crates;
//! nothing here decides anything a library could.

mod apply_cmd;
mod attach_cmd;
mod audit_cmd;
mod ca_cmd;
mod cli;
mod client;
mod completion_cmd;
mod config_cmd;
mod daemon_cmd;
mod datatap_cmd;
mod exit;
mod lab;
mod man_cmd;
mod progress;
mod recovery_cmd;
mod remote_cmd;
mod snapshot_cmd;
mod status_file;
mod status_xml;
mod verify_cmd;

use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::exit::Failure;

fn main() -> ExitCode {
    let cli = cli::parse();
    let daemon = matches!(
        cli.command,
        Command::Agent(_) | Command::Console(_) | Command::Datatap(_) | Command::Apply(_)
    );
    if daemon || matches!(cli.command, Command::Lab(_) | Command::Ca(_)) {
        // What these create (volumes, journals, state, keys, logs, sockets) is this user's
        // only: files 0600, directories 0700, whatever umask the caller had. The children the
        // lab starts inherit it.
        // SAFETY: umask(2) only sets this process's file mode creation mask; it cannot fail.
        unsafe {
            libc::umask(0o077);
        }
    }
    if !daemon {
        // A command whose output goes to a reader that stops early (`| head`) ends quietly, as
        // Unix tools do, instead of panicking on the broken pipe. Daemons keep Rust's default
        // (SIGPIPE ignored, EPIPE as an error): a closed peer must never kill them.
        // SAFETY: signal(2) only resets this process's SIGPIPE disposition, before any thread.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REDOUBT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: log files and journald get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match try_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            if !failure.message.is_empty() {
                eprintln!("redoubt: {}", failure.message);
            }
            ExitCode::from(failure.code as u8)
        }
    }
}

fn try_main(cli: Cli) -> Result<(), Failure> {
    client::use_ca_file(cli.ca_file.clone());
    match cli.command {
        Command::Config(command) => config_cmd::run(command, cli.console, cli.token_file),
        Command::Status {
            group,
            format,
            wait_sync,
        } => {
            let client = client::ConsoleClient::from_options(cli.console, cli.token_file)?;
            remote_cmd::runtime()?.block_on(async {
                if wait_sync {
                    progress::wait_sync(&client, group.as_deref()).await?;
                }
                status_xml::status(&client, group.as_deref(), format).await
            })
        }
        Command::Agent(args) => daemon_cmd::agent(args),
        Command::Console(args) => daemon_cmd::console(args),
        Command::Lab(command) => lab::run(command),
        Command::Operations { id, watch, format } => {
            let client = client::ConsoleClient::from_options(cli.console, cli.token_file)?;
            remote_cmd::runtime()?.block_on(progress::operations_cmd(
                &client,
                id.as_deref(),
                watch,
                format,
            ))
        }
        Command::Completion { shell } => {
            completion_cmd::run(shell);
            Ok(())
        }
        Command::Ca(command) => ca_cmd::run(command),
        Command::Audit { after, format } => {
            let client = client::ConsoleClient::from_options(cli.console, cli.token_file)?;
            remote_cmd::runtime()?.block_on(audit_cmd::audit(&client, after, format))
        }
        Command::Token(command) => {
            let client = client::ConsoleClient::from_options(cli.console, cli.token_file)?;
            remote_cmd::runtime()?.block_on(audit_cmd::token(&client, command))
        }
        Command::Datatap(args) => datatap_cmd::run(args),
        Command::Apply(args) => apply_cmd::run(args),
        Command::Attach(args) => attach_cmd::attach(args, cli.console, cli.token_file),
        Command::Detach(args) => attach_cmd::detach(args, cli.console, cli.token_file),
        Command::Man { out } => man_cmd::run(&out),
        Command::Verify(args) => verify_cmd::verify(args, cli.console, cli.token_file),
        Command::Resync(args) => verify_cmd::resync(args, cli.console, cli.token_file),
        Command::Mark(args) => recovery_cmd::mark(args, cli.console, cli.token_file),
        Command::Points(args) => recovery_cmd::points(args, cli.console, cli.token_file),
        Command::Rollback(args) => recovery_cmd::rollback(args, cli.console, cli.token_file),
        Command::Resume(args) => recovery_cmd::resume(args, cli.console, cli.token_file),
        Command::Failover(args) => recovery_cmd::failover(args, cli.console, cli.token_file),
        Command::Failback(args) => recovery_cmd::failback(args, cli.console, cli.token_file),
        Command::Snapshot(command) => snapshot_cmd::run(command, cli.console, cli.token_file),
    }
}
