//! The command-line grammar. Names, flags and JSON fields are a contract (`shared/spec/cli.md`).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "redoubt",
    version,
    about = "Continuous, write-ordered replication of Linux block volumes"
)]
pub struct Cli {
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
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
