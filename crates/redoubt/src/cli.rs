//! The command-line grammar. Names, flags and JSON fields are a contract (`shared/spec/cli.md`).

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Subcommands that never talk to a console: the daemons, the local tools and the lab (which
/// starts its own console). The console-client options stay accepted there, for scripts that
/// pass them everywhere, but their help does not list them: `redoubt console --help` offering
/// "the console's URL" misled users into thinking the daemon connects to another console.
const SUBCOMMANDS_WITHOUT_CONSOLE_CLIENT: &[&str] = &[
    "agent",
    "console",
    "datatap",
    "apply",
    "lab",
    "ca",
    "completion",
    "man",
];
const CONSOLE_CLIENT_ARGS: &[&str] = &["console", "token_file", "ca_file"];

/// The grammar as clap builds it, with the console-client options hidden from the help of
/// the subcommands that do not use them. Help, completion and man pages all come from here.
pub fn command() -> clap::Command {
    let mut command = Cli::command();
    let hidden: Vec<clap::Arg> = command
        .get_arguments()
        .filter(|arg| CONSOLE_CLIENT_ARGS.contains(&arg.get_id().as_str()))
        .map(|arg| arg.clone().hide(true))
        .collect();
    // clap copies a global option into each subcommand when it builds the command, unless the
    // subcommand already has one of that id: a hidden copy put there first is what it keeps,
    // and passes on to nested subcommands (`lab up`, `ca init`).
    for name in SUBCOMMANDS_WITHOUT_CONSOLE_CLIENT {
        command = command.mut_subcommand(*name, |mut sub| {
            for arg in &hidden {
                sub = sub.arg(arg.clone());
            }
            sub
        });
    }
    command
}

/// Parse the process's arguments with [`command`]'s help.
pub fn parse() -> Cli {
    let matches = command().get_matches();
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "redoubt",
    version,
    about = "Continuous, write-ordered replication of Linux block volumes"
)]
pub struct Cli {
    /// The console's URL (or REDOUBT_CONSOLE).
    #[arg(long, global = true)]
    pub console: Option<String>,
    /// File holding the console's API token (or REDOUBT_TOKEN_FILE).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// The cluster CA (PEM) an https:// console's certificate must chain to
    /// (or REDOUBT_CA_FILE; `redoubt lab up` writes it into DIR/lab.env).
    #[arg(long, global = true)]
    pub ca_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate, compare and plan configurations.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Serve LVs over NBD through the datatap (journal + LV) without a console: for
    /// benchmarks, tests and single-host use.
    Datatap(DatatapArgs),
    /// Run the apply process (ABA) of one group on a recovery server: receive the journal from
    /// production's send process, store it durably and apply it to the replica LVs.
    Apply(ApplyArgs),
    /// State of groups, servers, LVs and exports (from the console).
    Status {
        group: Option<String>,
        /// text for people, json for scripts, xml: the product's status document
        /// (docs/status.xsd).
        #[arg(long, value_enum, default_value = "text")]
        format: StatusFormat,
        /// First follow the super transactions (initial sync, resync) with a progress bar
        /// until every recovery server is in sync (100 %, nothing in flight).
        #[arg(long)]
        wait_sync: bool,
    },
    /// Long operations of the recovery API (rollback, failover, failback, verify): the list,
    /// one of them, or --watch ID to follow it with a progress bar.
    Operations {
        /// An operation id (`op-N`); without it, every operation, newest first.
        id: Option<String>,
        /// Follow the operation with a progress bar until it is done or failed.
        #[arg(long, requires = "id")]
        watch: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Print the shell completion script (bash, zsh, fish, elvish, powershell).
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The per-server daemon: containers, LVs, data path, initialization steps.
    Agent(AgentArgs),
    /// The management service: configuration versions, initialization, status, API.
    Console(ConsoleArgs),
    /// A local lab: a console and three agents (prod-a, dr-b, dr-c) on loopback.
    #[command(subcommand)]
    Lab(LabCommand),
    /// The cluster CA and the certificates of servers and the console (mutual TLS).
    #[command(subcommand)]
    Ca(CaCommand),
    /// The console's audit log: who changed what, when, with what outcome.
    Audit {
        /// Only entries after this id.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// The console's API tokens (operator, read-only).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Give applications a block device of an LV, /dev/redoubt/GROUP/LV, on the server that
    /// serves it (the production server; with --snapshot, the recovery server, read-only).
    Attach(AttachArgs),
    /// Remove the block device `attach` made (refused while it is mounted or in use).
    Detach(AttachArgs),
    /// Write the manual pages (man1) into a directory.
    #[command(hide = true)]
    Man {
        #[arg(long)]
        out: PathBuf,
    },
    /// Online verify: compare region hashes of production and every replica as of one
    /// sequence point, while writes go on; exits 1 when a region differs.
    Verify(crate::verify_cmd::VerifyArgs),
    /// Resend what a recovery server lacks: `--checksum` compares region hashes and sends
    /// only the regions that differ (a super transaction).
    Resync(crate::verify_cmd::ResyncArgs),
    /// Insert a named event marker into the group's journal (e.g. before an upgrade): a
    /// restore point `mark:NAME` that survives failover and failback.
    Mark(crate::recovery_cmd::MarkArgs),
    /// The restore window of every replica of a group, and its markers.
    Points(crate::recovery_cmd::PointsArgs),
    /// Roll a replica back (or forward while paused) to a restore point; its apply pauses.
    Rollback(crate::recovery_cmd::RollbackArgs),
    /// Let a rolled-back replica apply again from where it stands.
    Resume(crate::recovery_cmd::ResumeArgs),
    /// Make a recovery server production (planned: drains production first, loses nothing;
    /// unplanned: production gone, or --at a point); `commit` keeps it, `abort` undoes it.
    Failover(crate::recovery_cmd::FailoverArgs),
    /// Return to the configured production: delta resync of what either side wrote since the
    /// failover, then a planned switch.
    Failback(crate::recovery_cmd::GroupYes),
    /// Snapshots of a replica at a restore point, exported over NBD (read-only or writable).
    #[command(subcommand)]
    Snapshot(crate::snapshot_cmd::SnapshotCommand),
}

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// This server's name in the configuration.
    #[arg(long)]
    pub name: String,
    /// host:port: the server's `address` (control API and replication).
    #[arg(long)]
    pub listen: String,
    /// Where the agent keeps its copy of the configuration and its state.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Fence the production role with etcd (`etcd://host:port,…`): production takes the
    /// group's fence before it accepts writes and stops writes when it loses it (docs/ha.md).
    #[arg(long)]
    pub fence: Option<String>,
    /// Directory with ca.pem, NAME.pem and NAME.key: mutual TLS on every connection
    /// (default: STATE_DIR/tls when it holds ca.pem; else plaintext).
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct ConsoleArgs {
    /// host:port of the API (and web console).
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub listen: String,
    /// Where the console keeps its store and its token.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Keep the console's state in etcd (`etcd://host:port,…`) so that several consoles
    /// share it, one leader at a time (docs/ha.md); default: embedded redb in STATE_DIR.
    #[arg(long)]
    pub store: Option<String>,
    /// With --store etcd://…: the URL other consoles forward writes to
    /// (default: http://<listen address>).
    #[arg(long)]
    pub advertise: Option<String>,
    /// Directory with ca.pem, console.pem and console.key: mutual TLS to agents
    /// (default: STATE_DIR/tls when it holds ca.pem; else plaintext).
    #[arg(long)]
    pub tls_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Replace a token (operator token needed): the new one is written to its file in the
    /// console's state directory and printed once; the old one stops working at once.
    Rotate {
        /// operator or read-only.
        #[arg(long, default_value = "read-only")]
        role: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Create the cluster CA: DIR/ca.pem and DIR/ca.key (0600).
    Init {
        #[arg(long, default_value = "redoubt-ca")]
        dir: PathBuf,
    },
    /// Issue the certificate of a server (or `console`): DIR/NAME.pem and DIR/NAME.key (0600).
    Issue {
        name: String,
        #[arg(long, default_value = "redoubt-ca")]
        dir: PathBuf,
        /// Another name the certificate is valid for (DNS name or IP address; repeatable):
        /// the host names and addresses clients use in https://HOST:PORT for the console.
        #[arg(long = "san", value_name = "NAME")]
        san: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Start a console and three agents under DIR, apply the example group, print the URIs.
    Up {
        #[arg(long, default_value = "redoubt-lab")]
        dir: PathBuf,
    },
    /// Stop what `lab up` started; keep the data unless --purge.
    Down {
        #[arg(long, default_value = "redoubt-lab")]
        dir: PathBuf,
        #[arg(long)]
        purge: bool,
    },
}

#[derive(clap::Args, Debug)]
pub struct DatatapArgs {
    /// Directory that holds the group's containers (created if missing).
    #[arg(long)]
    pub dir: PathBuf,
    /// Group name (directory name under DIR/groups).
    #[arg(long, default_value = "datatap")]
    pub group: String,
    /// A volume to serve: NAME:SIZE (created in the replication container) or
    /// NAME:SIZE:SOURCE (an existing file or block device). Repeatable.
    #[arg(long = "volume", required = true)]
    pub volumes: Vec<String>,
    /// host:port, or unix:/path for a unix socket.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub listen: String,
    /// Capacity of the log record file container (journal).
    #[arg(long, default_value = "1GiB")]
    pub journal_capacity: String,
    /// Open the LVs with O_DIRECT where the backing supports it (default: page cache; the
    /// journal is what makes writes durable).
    #[arg(long)]
    pub direct: bool,
    /// This server's name, as recovery servers know it.
    #[arg(long, default_value = "prod-a")]
    pub name: String,
    /// A recovery server to replicate to: NAME=HOST:PORT (its `redoubt apply`). Repeatable:
    /// one or two.
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// "async": acknowledge after the local journal; "sync": after every target holds the
    /// write durably (turning async, loudly, if a target does not answer within 5 s).
    #[arg(long, default_value = "async")]
    pub mode: String,
    /// "zstd" or "none".
    #[arg(long, default_value = "zstd")]
    pub compression: String,
    /// Replication throughput cap per target, e.g. "200MiB/s"; "0" = unlimited.
    #[arg(long, default_value = "0")]
    pub throttle: String,
    /// Write a JSON status document here, refreshed every 200 ms.
    #[arg(long)]
    pub status_file: Option<PathBuf>,
    /// Start a full sync (super transaction) of every LV to the targets, as initialization
    /// step 12 does: for a recovery server that joins a volume that already holds data.
    #[arg(long)]
    pub full_sync: bool,
    /// Require NBD STARTTLS with a client certificate of the cluster CA on the exports, using
    /// the identity `--tls-name` in this directory (`redoubt ca init` / `ca issue`).
    #[arg(long, requires = "tls_name")]
    pub tls_dir: Option<PathBuf>,
    /// The certificate (DIR/NAME.pem, DIR/NAME.key) the exports present to clients.
    #[arg(long, requires = "tls_dir")]
    pub tls_name: Option<String>,
    /// Disconnect a client that takes no reply bytes for this long (what its requests hold
    /// is released); replies queued for a client count against its memory bound.
    #[arg(long, default_value_t = redoubt_datatap::server::REPLY_STALL_TIMEOUT_MS_DEFAULT)]
    pub reply_stall_timeout_ms: u64,
}

#[derive(clap::Args, Debug)]
pub struct ApplyArgs {
    /// Directory that holds the group's containers on this recovery server.
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value = "datatap")]
    pub group: String,
    /// This recovery server's name (the LCA addresses it by this name).
    #[arg(long)]
    pub name: String,
    /// host:port for the send process of production to connect to.
    #[arg(long)]
    pub listen: String,
    /// A replica LV: NAME:SIZE, the same names and sizes as production. Repeatable.
    #[arg(long = "volume", required = true)]
    pub volumes: Vec<String>,
    /// Capacity of the log record file container (the journal copy).
    #[arg(long, default_value = "1GiB")]
    pub journal_capacity: String,
    /// Write a JSON status document here, refreshed every 200 ms.
    #[arg(long)]
    pub status_file: Option<PathBuf>,
    /// The production server whose send process may feed these replicas; a Hello from any
    /// other sender is refused before anything is stored. Without it, any sender is taken.
    #[arg(long)]
    pub production: Option<String>,
    /// Mutual TLS on the replication port: DIR holds ca.pem and this server's NAME.pem and
    /// NAME.key (`redoubt ca issue`); the sender must present a certificate of the CA that
    /// names --production. Without it replication is plain text, unauthenticated.
    #[arg(long, requires = "production")]
    pub tls_dir: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// `redoubt status` also speaks the product's XML status document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Text,
    Json,
    Xml,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate configuration files; reports every error with file, line, field and reason.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Semantic difference between two configurations.
    Diff {
        old: PathBuf,
        new: PathBuf,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Save (step 1) and run the configuration initialization, with live progress.
    Apply {
        file: PathBuf,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// A deleted group's production LVs are deleted too.
        #[arg(long)]
        destroy: bool,
        /// Return after saving instead of following the progress.
        #[arg(long)]
        detach: bool,
    },
    /// Follow a group's initialization (Ctrl-C detaches; it goes on).
    Watch { group: String },
    /// Run a group's failed initialization rows again.
    Retry { group: String },
    /// The configuration in effect.
    Show {
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// The saved configuration versions.
    History {
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// The configuration-initialization plan that applying NEW would run.
    Plan {
        /// The configuration in effect now; omitted: nothing is configured yet.
        #[arg(long)]
        from: Option<PathBuf>,
        new: PathBuf,
        /// Plan the deletion of production LVs of deleted groups too.
        #[arg(long)]
        destroy: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

#[derive(clap::Args, Debug)]
pub struct AttachArgs {
    pub group: String,
    /// The LV's name.
    #[arg(value_name = "LV")]
    pub volume: String,
    /// A snapshot of the LV (`redoubt snapshot create`) instead of the LV: attached read-only
    /// on the recovery server that holds it.
    #[arg(long)]
    pub snapshot: Option<String>,
    /// With --snapshot: the recovery server that holds it (default: the one that has it).
    #[arg(long)]
    pub server: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn help_of(path: &[&str]) -> String {
        let mut command = command();
        command.build();
        let mut sub = &mut command;
        for name in path {
            sub = sub
                .find_subcommand_mut(name)
                .unwrap_or_else(|| panic!("no subcommand {name}"));
        }
        sub.render_long_help().to_string()
    }

    fn parse_from(args: &[&str]) -> Cli {
        let matches = command()
            .try_get_matches_from(args)
            .unwrap_or_else(|e| panic!("parse {args:?}: {e}"));
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn daemons_and_local_tools_do_not_offer_the_console_client_options() {
        for path in [
            &["console"][..],
            &["agent"],
            &["datatap"],
            &["apply"],
            &["lab", "up"],
            &["ca", "init"],
        ] {
            let help = help_of(path);
            assert!(!help.contains("--console"), "{path:?}: {help}");
            assert!(!help.contains("--token-file"), "{path:?}: {help}");
        }
        for path in [
            &["status"][..],
            &["config", "plan"],
            &["snapshot", "create"],
        ] {
            assert!(help_of(path).contains("--console"), "{path:?}");
        }
    }

    #[test]
    fn console_url_is_accepted_before_and_after_the_subcommand() {
        let before = parse_from(&["redoubt", "--console", "http://a:1", "status"]);
        assert_eq!(before.console.as_deref(), Some("http://a:1"));
        let after = parse_from(&["redoubt", "status", "--console", "http://b:1"]);
        assert_eq!(after.console.as_deref(), Some("http://b:1"));
        // Scripts that pass it everywhere keep working where it is hidden.
        let hidden = parse_from(&["redoubt", "lab", "down", "--console", "http://c:1"]);
        assert_eq!(hidden.console.as_deref(), Some("http://c:1"));
    }
}
