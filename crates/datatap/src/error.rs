use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DatatapError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("datatap state {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("journal: {0}")]
    Journal(#[from] redoubt_journal::JournalError),
    #[error("volume: {0}")]
    Volume(#[from] redoubt_volume::VolumeError),
    #[error("replay journal record {seq}: {reason}")]
    Replay { seq: u64, reason: String },
    #[error("the datatap of group {group} has stopped after an I/O failure: {reason}")]
    Failed { group: String, reason: String },
    #[error("{0}")]
    Config(String),
}

impl DatatapError {
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> DatatapError {
        DatatapError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
