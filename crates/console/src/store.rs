//! The console's durable state behind a small [`Store`] trait: configuration versions, the
//! current version, and each group's initialization record. [`RedbStore`] keeps it in one redb
//! file; another backend (etcd) only has to implement the trait.
//!
//! Layout of `console.redb`:
//!
//! | table | key | value |
//! |---|---|---|
//! | `config_versions` | version (u64) | JSON [`ConfigVersion`] (TOML text, saved time, changed groups) |
//! | `meta` | `"current_version"` | u64 |
//! | `inits` | group name | JSON [`InitRecord`] |
//! | `audit` | entry id (u64, increasing) | JSON [`AuditEntry`] |

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::audit::AuditEntry;
use crate::record::InitRecord;

const VERSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("config_versions");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const INITS: TableDefinition<&str, &[u8]> = TableDefinition::new("inits");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const CURRENT_VERSION_KEY: &str = "current_version";

/// One saved configuration version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigVersion {
    pub version: u64,
    /// The configuration file as submitted.
    pub toml: String,
    pub saved_unix_ms: u64,
    /// The groups this version changed (each got an initialization).
    pub groups: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {message}")]
    Backend {
        context: &'static str,
        message: String,
    },
    #[error("{context}: stored record is unreadable: {message}")]
    Corrupt {
        context: &'static str,
        message: String,
    },
}

/// The console's durable state. Every method is one atomic transaction.
pub trait Store: Send + Sync + 'static {
    fn current(&self) -> Result<Option<ConfigVersion>, StoreError>;
    fn version(&self, version: u64) -> Result<Option<ConfigVersion>, StoreError>;
    /// Every version, oldest first.
    fn history(&self) -> Result<Vec<ConfigVersion>, StoreError>;
    /// Saves `version`, makes it current and writes the initialization records of the groups
    /// it changed, all at once: an initialization never runs without its record.
    fn save_version(&self, version: &ConfigVersion, inits: &[InitRecord])
        -> Result<(), StoreError>;
    fn init(&self, group: &str) -> Result<Option<InitRecord>, StoreError>;
    fn inits(&self) -> Result<Vec<InitRecord>, StoreError>;
    fn put_init(&self, record: &InitRecord) -> Result<(), StoreError>;
    /// Appends an audit entry with the next id (its `id` field is ignored), dropping the
    /// oldest beyond `crate::audit::AUDIT_ENTRIES_MAX`; returns the id.
    fn append_audit(&self, entry: &AuditEntry) -> Result<u64, StoreError> {
        let _ = entry;
        Err(StoreError::Backend {
            context: "append audit entry",
            message: "this store keeps no audit log".into(),
        })
    }
    /// Audit entries with an id above `after`, oldest first, at most `limit`.
    fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let _ = (after, limit);
        Err(StoreError::Backend {
            context: "read audit log",
            message: "this store keeps no audit log".into(),
        })
    }
}

fn backend<E: std::fmt::Display>(context: &'static str) -> impl FnOnce(E) -> StoreError {
    move |error| StoreError::Backend {
        context,
        message: error.to_string(),
    }
}

fn decode<T: for<'de> Deserialize<'de>>(
    context: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        context,
        message: error.to_string(),
    })
}

fn encode<T: Serialize>(context: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(backend(context))
}

/// The redb store (`state_dir/console.redb`).
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens or creates the database and its tables.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let context = "open console database";
        let db = Database::create(path).map_err(backend(context))?;
        let txn = db.begin_write().map_err(backend(context))?;
        txn.open_table(VERSIONS).map_err(backend(context))?;
        txn.open_table(META).map_err(backend(context))?;
        txn.open_table(INITS).map_err(backend(context))?;
        txn.open_table(AUDIT).map_err(backend(context))?;
        txn.commit().map_err(backend(context))?;
        Ok(Self { db })
    }
}

impl Store for RedbStore {
    fn append_audit(&self, entry: &AuditEntry) -> Result<u64, StoreError> {
        let context = "append audit entry";
        let txn = self.db.begin_write().map_err(backend(context))?;
        let id = {
            let mut table = txn.open_table(AUDIT).map_err(backend(context))?;
            let last = table
                .last()
                .map_err(backend(context))?
                .map_or(0, |(key, _)| key.value());
            let id = last.saturating_add(1);
            let mut stored = entry.clone();
            stored.id = id;
            table
                .insert(id, encode(context, &stored)?.as_slice())
                .map_err(backend(context))?;
            let keep_from = id.saturating_sub(crate::audit::AUDIT_ENTRIES_MAX);
            if keep_from > 0 {
                table
                    .retain_in(..=keep_from, |_, _| false)
                    .map_err(backend(context))?;
            }
            id
        };
        txn.commit().map_err(backend(context))?;
        Ok(id)
    }

    fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let context = "read audit log";
        let txn = self.db.begin_read().map_err(backend(context))?;
        let table = txn.open_table(AUDIT).map_err(backend(context))?;
        let mut out = Vec::new();
        for entry in table
            .range(after.saturating_add(1)..)
            .map_err(backend(context))?
            .take(limit)
        {
            let (_, bytes) = entry.map_err(backend(context))?;
            out.push(decode(context, bytes.value())?);
        }
        Ok(out)
    }

    fn current(&self) -> Result<Option<ConfigVersion>, StoreError> {
        let context = "read current configuration version";
        let txn = self.db.begin_read().map_err(backend(context))?;
        let meta = txn.open_table(META).map_err(backend(context))?;
        let Some(current) = meta.get(CURRENT_VERSION_KEY).map_err(backend(context))? else {
            return Ok(None);
        };
        let versions = txn.open_table(VERSIONS).map_err(backend(context))?;
        let found = versions.get(current.value()).map_err(backend(context))?;
        found
            .map(|bytes| decode(context, bytes.value()))
            .transpose()
    }

    fn version(&self, version: u64) -> Result<Option<ConfigVersion>, StoreError> {
        let context = "read configuration version";
        let txn = self.db.begin_read().map_err(backend(context))?;
        let versions = txn.open_table(VERSIONS).map_err(backend(context))?;
        let found = versions.get(version).map_err(backend(context))?;
        found
            .map(|bytes| decode(context, bytes.value()))
            .transpose()
    }

    fn history(&self) -> Result<Vec<ConfigVersion>, StoreError> {
        let context = "read configuration history";
        let txn = self.db.begin_read().map_err(backend(context))?;
        let versions = txn.open_table(VERSIONS).map_err(backend(context))?;
        let mut out = Vec::new();
        for entry in versions.iter().map_err(backend(context))? {
            let (_, bytes) = entry.map_err(backend(context))?;
            out.push(decode(context, bytes.value())?);
        }
        Ok(out)
    }

    fn save_version(
        &self,
        version: &ConfigVersion,
        inits: &[InitRecord],
    ) -> Result<(), StoreError> {
        let context = "save configuration version";
        let txn = self.db.begin_write().map_err(backend(context))?;
        {
            let mut versions = txn.open_table(VERSIONS).map_err(backend(context))?;
            versions
                .insert(version.version, encode(context, version)?.as_slice())
                .map_err(backend(context))?;
            let mut meta = txn.open_table(META).map_err(backend(context))?;
            meta.insert(CURRENT_VERSION_KEY, version.version)
                .map_err(backend(context))?;
            let mut table = txn.open_table(INITS).map_err(backend(context))?;
            for record in inits {
                table
                    .insert(record.group.as_str(), encode(context, record)?.as_slice())
                    .map_err(backend(context))?;
            }
        }
        txn.commit().map_err(backend(context))
    }

    fn init(&self, group: &str) -> Result<Option<InitRecord>, StoreError> {
        let context = "read initialization record";
        let txn = self.db.begin_read().map_err(backend(context))?;
        let table = txn.open_table(INITS).map_err(backend(context))?;
        let found = table.get(group).map_err(backend(context))?;
        found
            .map(|bytes| decode(context, bytes.value()))
            .transpose()
    }

    fn inits(&self) -> Result<Vec<InitRecord>, StoreError> {
        let context = "read initialization records";
        let txn = self.db.begin_read().map_err(backend(context))?;
        let table = txn.open_table(INITS).map_err(backend(context))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(backend(context))? {
            let (_, bytes) = entry.map_err(backend(context))?;
            out.push(decode(context, bytes.value())?);
        }
        Ok(out)
    }

    fn put_init(&self, record: &InitRecord) -> Result<(), StoreError> {
        let context = "write initialization record";
        let txn = self.db.begin_write().map_err(backend(context))?;
        {
            let mut table = txn.open_table(INITS).map_err(backend(context))?;
            table
                .insert(record.group.as_str(), encode(context, record)?.as_slice())
                .map_err(backend(context))?;
        }
        txn.commit().map_err(backend(context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::InitState;

    fn record(group: &str, version: u64) -> InitRecord {
        InitRecord {
            group: group.to_string(),
            version,
            previous_version: None,
            destroy: false,
            state: InitState::Running,
            plan: serde_json::json!([{"group": group}]),
            steps: Vec::new(),
            started_unix_ms: 1,
            finished_unix_ms: None,
        }
    }

    #[test]
    fn versions_and_records_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.redb");
        {
            let store = RedbStore::open(&path).expect("open");
            assert_eq!(store.current().expect("current"), None);
            let v1 = ConfigVersion {
                version: 1,
                toml: "# one".into(),
                saved_unix_ms: 10,
                groups: vec!["erp".into()],
            };
            store
                .save_version(&v1, &[record("erp", 1)])
                .expect("save v1");
            let v2 = ConfigVersion {
                version: 2,
                toml: "# two".into(),
                saved_unix_ms: 20,
                groups: vec!["crm".into()],
            };
            store
                .save_version(&v2, &[record("crm", 2)])
                .expect("save v2");
            let mut erp = record("erp", 1);
            erp.state = InitState::Done;
            store.put_init(&erp).expect("put");
        }
        let store = RedbStore::open(&path).expect("reopen");
        assert_eq!(
            store.current().expect("current").map(|v| v.version),
            Some(2)
        );
        assert_eq!(
            store.version(1).expect("v1").map(|v| v.toml),
            Some("# one".to_string())
        );
        let history: Vec<u64> = store
            .history()
            .expect("history")
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(history, [1, 2]);
        assert_eq!(
            store.init("erp").expect("erp").map(|r| r.state),
            Some(InitState::Done)
        );
        assert_eq!(store.inits().expect("inits").len(), 2);
        assert_eq!(store.init("nope").expect("none"), None);
    }
}
