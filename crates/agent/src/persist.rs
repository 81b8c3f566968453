//! What the agent keeps under its state directory:
//!
//! ```text
//! <state_dir>/config-<version>.toml   every configuration copied to this server (step 2)
//! <state_dir>/current                 the version in effect, as decimal text
//! <state_dir>/agent-state.json        groups whose data path is loaded, and their marks
//! ```
//!
//! Every file is written atomically: temporary file, fsync, rename, fsync directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use redoubt_config::Config;
use serde::{Deserialize, Serialize};

use crate::AgentError;

pub const CURRENT_FILE_NAME: &str = "current";
pub const STATE_FILE_NAME: &str = "agent-state.json";
/// Largest state file we read; far above any real one.
const STATE_FILE_BYTES_MAX: u64 = 4 << 20;
const STATE_FORMAT_VERSION: u32 = 1;

pub fn config_file_name(version: u64) -> String {
    format!("config-{version}.toml")
}

/// A configuration stored on this server.
#[derive(Clone, Debug)]
pub struct StoredConfig {
    pub version: u64,
    pub text: String,
    pub config: Config,
}

/// The agent's memory across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentState {
    pub format_version: u32,
    pub groups: BTreeMap<String, GroupRecord>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The data path was loaded (step 14, 15 or 16) and not stopped by a step since.
    pub data_path_loaded: bool,
    /// The configuration version the data path runs with: LCA and ABA must agree on it, so a
    /// restarted agent resumes with the version it ran before, not a newer one.
    pub data_path_version: u64,
    /// LVs marked for a full sync by steps 12 and 13.
    #[serde(default)]
    pub full_sync_requested: BTreeSet<String>,
    /// The recovery servers that full sync is for; absent: every one.
    #[serde(default)]
    pub full_sync_targets: Option<BTreeSet<String>>,
}

pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), AgentError> {
    let path = dir.join(name);
    redoubt_durable::replace(&path, bytes).map_err(|source| AgentError::Io {
        action: "replace durably",
        path,
        source,
    })
}

pub fn load_state(state_dir: &Path) -> Result<AgentState, AgentError> {
    let path = state_dir.join(STATE_FILE_NAME);
    let bytes = match read_bounded(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(AgentState {
                format_version: STATE_FORMAT_VERSION,
                ..AgentState::default()
            })
        }
        Err(source) => {
            return Err(AgentError::Io {
                action: "read",
                path,
                source,
            })
        }
    };
    let state: AgentState = serde_json::from_slice(&bytes)
        .map_err(|error| AgentError::State(format!("parse {}: {error}", path.display())))?;
    if state.format_version != STATE_FORMAT_VERSION {
        return Err(AgentError::State(format!(
            "{}: unsupported format_version {}",
            path.display(),
            state.format_version
        )));
    }
    Ok(state)
}

pub fn save_state(state_dir: &Path, state: &AgentState) -> Result<(), AgentError> {
    let mut state = state.clone();
    state.format_version = STATE_FORMAT_VERSION;
    let bytes = serde_json::to_vec_pretty(&state)
        .map_err(|error| AgentError::State(format!("encode agent state: {error}")))?;
    write_atomically(state_dir, STATE_FILE_NAME, &bytes)
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(STATE_FILE_BYTES_MAX.max(redoubt_config::parse::CONFIG_FILE_BYTES_MAX as u64) + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Loads the configuration `current` points at, if any.
pub fn load_current(state_dir: &Path) -> Result<Option<StoredConfig>, AgentError> {
    let pointer = state_dir.join(CURRENT_FILE_NAME);
    let text = match fs::read_to_string(&pointer) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AgentError::Io {
                action: "read",
                path: pointer,
                source,
            })
        }
    };
    let version: u64 = text.trim().parse().map_err(|_| {
        AgentError::State(format!(
            "{}: {:?} is not a configuration version",
            pointer.display(),
            text.trim()
        ))
    })?;
    let path = state_dir.join(config_file_name(version));
    let bytes = read_bounded(&path).map_err(|source| AgentError::Io {
        action: "read",
        path: path.clone(),
        source,
    })?;
    let text = String::from_utf8(bytes)
        .map_err(|_| AgentError::State(format!("{}: not UTF-8", path.display())))?;
    let config = parse_config(&path.display().to_string(), &text).map_err(AgentError::State)?;
    Ok(Some(StoredConfig {
        version,
        text,
        config,
    }))
}

/// Stores `text` as `version` and points `current` at it. Idempotent; refuses to replace a
/// stored version with different text, and to go back to an older version.
pub fn store_config(
    state_dir: &Path,
    current: Option<&StoredConfig>,
    version: u64,
    text: &str,
) -> Result<StoredConfigOutcome, String> {
    if version == 0 {
        return Err("configuration version 0 is reserved for \"none yet\"".into());
    }
    if let Some(current) = current {
        if version < current.version {
            return Err(format!(
                "configuration version {version} is older than version {} in effect here",
                current.version
            ));
        }
        if version == current.version {
            if current.text == text {
                return Ok(StoredConfigOutcome::AlreadyStored);
            }
            return Err(format!(
                "configuration version {version} is already stored here with different content"
            ));
        }
    }
    let file_name = config_file_name(version);
    let path: PathBuf = state_dir.join(&file_name);
    if let Ok(existing) = fs::read_to_string(&path) {
        if existing != text {
            // A crash between writing it and pointing `current` at it left an older attempt.
            tracing::info!(path = %path.display(), "replacing an unreferenced configuration file");
        }
    }
    write_atomically(state_dir, &file_name, text.as_bytes()).map_err(|e| e.to_string())?;
    write_atomically(state_dir, CURRENT_FILE_NAME, version.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(StoredConfigOutcome::Stored)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredConfigOutcome {
    Stored,
    AlreadyStored,
}

/// Parses a configuration, turning the diagnostics into one readable message.
pub fn parse_config(file: &str, text: &str) -> Result<Config, String> {
    redoubt_config::parse(file, text).map_err(|diagnostics| {
        let lines: Vec<String> = diagnostics.iter().map(|d| d.to_string()).collect();
        format!("invalid configuration: {}", lines.join("; "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_missing_state_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_state(dir.path()).unwrap().groups.is_empty());
        let mut state = AgentState::default();
        state.groups.insert(
            "erp".into(),
            GroupRecord {
                data_path_loaded: true,
                data_path_version: 3,
                full_sync_requested: ["lv0".to_string()].into(),
                full_sync_targets: Some(["dr-c".to_string()].into()),
            },
        );
        save_state(dir.path(), &state).unwrap();
        let loaded = load_state(dir.path()).unwrap();
        assert_eq!(loaded.groups, state.groups);
    }

    #[test]
    fn store_config_is_idempotent_and_refuses_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let text = "[[server]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\ndata_dir = \"/tmp/a\"\n";
        assert_eq!(
            store_config(dir.path(), None, 2, text).unwrap(),
            StoredConfigOutcome::Stored
        );
        let current = load_current(dir.path()).unwrap().unwrap();
        assert_eq!(current.version, 2);
        assert_eq!(current.config.servers[0].name, "a");
        assert_eq!(
            store_config(dir.path(), Some(&current), 2, text).unwrap(),
            StoredConfigOutcome::AlreadyStored
        );
        let different = text.replace("/tmp/a", "/tmp/b");
        let error = store_config(dir.path(), Some(&current), 2, &different).unwrap_err();
        assert!(error.contains("different content"), "{error}");
        let error = store_config(dir.path(), Some(&current), 1, text).unwrap_err();
        assert!(error.contains("older"), "{error}");
        assert!(store_config(dir.path(), None, 0, text).is_err());
    }

    #[test]
    fn invalid_configuration_names_the_problem() {
        let error = parse_config("x.toml", "[[server]]\nname = \"A\"\n").unwrap_err();
        assert!(error.starts_with("invalid configuration: "), "{error}");
    }
}
