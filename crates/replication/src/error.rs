#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0}")]
    Wire(#[from] redoubt_wire::WireError),
    #[error("journal: {0}")]
    Journal(#[from] redoubt_journal::JournalError),
    #[error("volume: {0}")]
    Volume(#[from] redoubt_volume::VolumeError),
    #[error("the peer closed the connection")]
    Closed,
    #[error("refused by {target}: {message}")]
    Refused { target: String, message: String },
    #[error("unexpected {0} frame")]
    Unexpected(&'static str),
    #[error("{action} {path}: {reason}")]
    State {
        action: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("apply seq {seq} to its replica: {reason}")]
    Apply { seq: u64, reason: String },
    #[error("{0}")]
    Config(String),
}
