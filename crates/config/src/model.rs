//! The validated configuration: what the rest of Redoubt reads. Values here are already
//! checked; nothing downstream re-parses strings.

use std::fmt;
use std::path::PathBuf;

/// Most recovery servers a group may have (recovery 1 and recovery 2).
pub const RECOVERY_SERVERS_PER_GROUP_MAX: usize = 2;
/// LV sizes and offsets are multiples of this: the block size every layer agrees on.
pub const VOLUME_BLOCK_SIZE_BYTES: u64 = 4096;
/// Smallest log record file container: below this the journal cannot hold a useful backlog.
pub const LOG_RECORD_FILE_BYTES_MIN: u64 = 16 << 20;
/// Most volumes one group may have; the planner and the status document are sized for it.
pub const VOLUMES_PER_GROUP_MAX: usize = 4096;

/// A whole configuration file: servers and the replication groups that use them.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Config {
    pub servers: Vec<Server>,
    pub groups: Vec<Group>,
}

impl Config {
    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|server| server.name == name)
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|group| group.name == name)
    }
}

/// A host running `redoubt agent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub name: String,
    /// `host:port` of the agent: control API and replication.
    pub address: String,
    pub data_dir: PathBuf,
    pub nbd_listen: Option<NbdListen>,
    /// `nbd_tls = true`: the exports require NBD STARTTLS with a client certificate of the
    /// cluster CA, served with the agent's TLS identity (`--tls-dir`).
    pub nbd_tls: bool,
}

/// Where the datatap serves its NBD exports when this server is production.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NbdListen {
    Tcp(String),
    Unix(PathBuf),
}

impl fmt::Display for NbdListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NbdListen::Tcp(address) => write!(f, "{address}"),
            NbdListen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Production acknowledges a write once its own journal holds it.
    Async,
    /// Production acknowledges a write once every recovery server holds it durably.
    Sync,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Async => "async",
            Mode::Sync => "sync",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
        }
    }
}

/// A server's role in one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Production,
    Recovery1,
    Recovery2,
}

impl Role {
    /// The stable machine-readable name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Production => "production",
            Role::Recovery1 => "recovery1",
            Role::Recovery2 => "recovery2",
        }
    }

    pub fn is_recovery(self) -> bool {
        !matches!(self, Role::Production)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Production => "production",
            Role::Recovery1 => "recovery 1",
            Role::Recovery2 => "recovery 2",
        })
    }
}

/// A replication group: volumes replicated in one global write order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub production: String,
    /// Recovery server 1, then optionally recovery server 2.
    pub recovery: Vec<String>,
    pub mode: Mode,
    pub retention_seconds: u64,
    /// 0 means unlimited.
    pub throttle_bytes_per_second: u64,
    pub compression: Compression,
    pub containers: Containers,
    pub volumes: Vec<Volume>,
}

impl Group {
    /// The group's servers with their roles, production first.
    pub fn members(&self) -> Vec<(&str, Role)> {
        let mut members = vec![(self.production.as_str(), Role::Production)];
        for (index, name) in self.recovery.iter().enumerate() {
            let role = if index == 0 {
                Role::Recovery1
            } else {
                Role::Recovery2
            };
            members.push((name.as_str(), role));
        }
        members
    }

    pub fn role_of(&self, server: &str) -> Option<Role> {
        self.members()
            .into_iter()
            .find(|(name, _)| *name == server)
            .map(|(_, role)| role)
    }

    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|volume| volume.name == name)
    }

    /// Bytes the replica side needs in the replication container: every volume.
    pub fn volume_bytes_total(&self) -> u64 {
        self.volumes.iter().map(|volume| volume.size_bytes).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Containers {
    pub replication_bytes: u64,
    pub log_record_file_bytes: u64,
    pub snapshot_bytes: u64,
}

/// A protected logical volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub size_bytes: u64,
    /// On production: an existing block device or file. `None`: Redoubt creates the LV.
    pub source: Option<PathBuf>,
}

/// Names of servers, groups and volumes: `[a-z0-9][a-z0-9._-]{0,62}`. They become file and
/// export names, so the rule also keeps them from escaping a directory.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let Some(first) = bytes.first() else {
        return false;
    };
    bytes.len() <= 63
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && bytes.iter().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'.' | b'_' | b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("prod-a"));
        assert!(is_valid_name("lv_data01"));
        assert!(is_valid_name("0"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("-a"));
        assert!(!is_valid_name(".."));
        assert!(!is_valid_name("a/b"));
        assert!(!is_valid_name("Prod"));
        assert!(is_valid_name(&"a".repeat(63)));
        assert!(!is_valid_name(&"a".repeat(64)));
    }
}
