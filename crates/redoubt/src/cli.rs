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
