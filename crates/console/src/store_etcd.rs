//! The console's [`Store`] on etcd (`redoubt console --store etcd://host:port,…`), for several
//! console instances sharing one state (`docs/ha.md`).
//!
//! Keys (all under `/redoubt/console/`):
//!
//! | key | value |
//! |---|---|
//! | `versions/<version, 20 digits>` | JSON [`ConfigVersion`] |
//! | `current_version` | the current version, decimal |
//! | `inits/<group>` | JSON [`InitRecord`] |
//! | `audit/<id, 20 digits>` | JSON [`AuditEntry`] (the newest `AUDIT_ENTRIES_MAX` kept) |
//! | `audit_last_id` | the last audit id, decimal |
//! | `token` | the API token every instance serves with |
//! | `leader` | the leader's advertised URL, on the leader's lease (`leader.rs`) |
//!
//! Every write is a transaction that, once this instance has been leader, also compares the
//! `leader` key's lease with this instance's: a deposed leader's late writes are refused
//! (a [`StoreError::Backend`] "no longer the leader") instead of overwriting the new leader's
//! row states. A version that changes more groups than fit one transaction
//! ([`TXN_OPS_MAX`], [`TXN_BYTES_MAX`]) writes the records first, in several transactions, and
//! the version and `current_version` last: records of a version that never became current are
//! invisible ([`Store::init`], [`Store::inits`] skip them).
//!
//! The [`Store`] trait is synchronous; this store runs its etcd client on a runtime of its own
//! and waits for each call (at most [`CALL_TIMEOUT_MS`]), so it may be called from inside
//! the console's runtime like the redb store.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use crate::audit::AuditEntry;
use crate::record::InitRecord;
use crate::store::{ConfigVersion, Store, StoreError};

/// Prefix of every console key.
pub const PREFIX: &str = "/redoubt/console/";
/// The leader key (value: advertised URL; on the leader's lease).
pub const LEADER_KEY: &str = "/redoubt/console/leader";
/// The shared API token.
pub const TOKEN_KEY: &str = "/redoubt/console/token";
const CURRENT_KEY: &str = "/redoubt/console/current_version";
const VERSIONS_PREFIX: &str = "/redoubt/console/versions/";
const INITS_PREFIX: &str = "/redoubt/console/inits/";
const AUDIT_PREFIX: &str = "/redoubt/console/audit/";
const AUDIT_LAST_KEY: &str = "/redoubt/console/audit_last_id";
/// Attempts of an audit append that races with another instance's.
pub const AUDIT_APPEND_ATTEMPTS_MAX: usize = 16;
/// Operations per transaction (etcd's `--max-txn-ops` defaults to 128).
pub const TXN_OPS_MAX: usize = 100;
/// Value bytes per transaction (etcd's `--max-request-bytes` defaults to 1.5 MiB).
pub const TXN_BYTES_MAX: usize = 1 << 20;
/// Deadline of one store call.
pub const CALL_TIMEOUT_MS: u64 = 5_000;

/// The console's state in etcd.
pub struct EtcdStore {
    runtime: Option<tokio::runtime::Runtime>,
    client: Client,
    /// The lease of the `leader` key while this instance leads (or led): writes compare it.
    leader_lease: Mutex<Option<i64>>,
    url: String,
}

fn backend<E: std::fmt::Display>(context: &'static str) -> impl FnOnce(E) -> StoreError {
    move |error| StoreError::Backend {
        context,
        message: error.to_string(),
    }
}

fn decode<T: for<'de> serde::Deserialize<'de>>(
    context: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        context,
        message: error.to_string(),
    })
}

fn audit_key(id: u64) -> String {
    format!("{AUDIT_PREFIX}{id:020}")
}

fn version_key(version: u64) -> String {
    format!("{VERSIONS_PREFIX}{version:020}")
}

impl EtcdStore {
    /// Connects to `url` (`etcd://host:port,…`) and checks that etcd answers.
    pub fn connect(url: &str) -> Result<EtcdStore, StoreError> {
        let context = "connect to the etcd store";
        let endpoints = redoubt_fence::parse_endpoints(url).map_err(backend(context))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-store")
            .enable_all()
            .build()
            .map_err(backend(context))?;
        let (sender, receiver) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let _ = sender.send(redoubt_fence::etcd_connect(&endpoints).await);
        });
        let client = receiver
            .recv_timeout(Duration::from_millis(CALL_TIMEOUT_MS))
            .map_err(backend(context))?
            .map_err(backend(context))?;
        let store = EtcdStore {
            runtime: Some(runtime),
            client,
            leader_lease: Mutex::new(None),
            url: url.to_string(),
        };
        // Fail now, not at the first request, when etcd is not there.
        store.get_one(context, CURRENT_KEY)?;
        Ok(store)
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Writes from now on require the `leader` key to be on `lease` (`None`: no condition).
    pub fn set_leader_lease(&self, lease: Option<i64>) {
        *self
            .leader_lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = lease;
    }

    fn leader_lease(&self) -> Option<i64> {
        *self
            .leader_lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `call` on the store's runtime and waits for it.
    fn block<T, F, Fut>(&self, context: &'static str, call: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return Err(StoreError::Backend {
                context,
                message: "the store is closed".into(),
            });
        };
        let (sender, receiver) = std::sync::mpsc::channel();
        let future = call(self.client.clone());
        runtime.spawn(async move {
            let outcome =
                tokio::time::timeout(Duration::from_millis(CALL_TIMEOUT_MS), future).await;
            let _ = sender.send(outcome);
        });
        match receiver.recv() {
            Ok(Ok(result)) => result.map_err(backend(context)),
            Ok(Err(_)) | Err(_) => Err(StoreError::Backend {
                context,
                message: format!("etcd did not answer within {CALL_TIMEOUT_MS} ms"),
            }),
        }
    }

    fn get_one(&self, context: &'static str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_string();
        let answer = self.block(context, move |mut client| async move {
            client.get(key, None).await
        })?;
        Ok(answer.kvs().first().map(|kv| kv.value().to_vec()))
    }

    fn get_prefix(
        &self,
        context: &'static str,
        prefix: &str,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let prefix = prefix.to_string();
        let answer = self.block(context, move |mut client| async move {
            client
                .get(prefix, Some(GetOptions::new().with_prefix()))
                .await
        })?;
        Ok(answer
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    kv.value().to_vec(),
                )
            })
            .collect())
    }

    /// One transaction of puts, under the leader condition.
    fn put_all(
        &self,
        context: &'static str,
        puts: Vec<(String, Vec<u8>)>,
    ) -> Result<(), StoreError> {
        let lease = self.leader_lease();
        let ops: Vec<TxnOp> = puts
            .into_iter()
            .map(|(key, value)| TxnOp::put(key, value, None))
            .collect();
        let mut txn = Txn::new();
        if let Some(lease) = lease {
            txn = txn.when([Compare::lease(LEADER_KEY, CompareOp::Equal, lease)]);
        }
        let txn = txn.and_then(ops);
        let answer = self.block(
            context,
            move |mut client| async move { client.txn(txn).await },
        )?;
        if !answer.succeeded() {
            return Err(StoreError::Backend {
                context,
                message: "this console is no longer the leader (another instance took over)".into(),
            });
        }
        Ok(())
    }

    fn current_version(&self, context: &'static str) -> Result<Option<u64>, StoreError> {
        let Some(bytes) = self.get_one(context, CURRENT_KEY)? else {
            return Ok(None);
        };
        String::from_utf8_lossy(&bytes)
            .trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|error| StoreError::Corrupt {
                context,
                message: format!("current_version: {error}"),
            })
    }

    /// The API token of every instance: `candidate` if none is stored yet, else the stored one.
    pub fn shared_token(&self, candidate: &str) -> Result<String, StoreError> {
        let context = "share the API token";
        let candidate = candidate.to_string();
        let answer = self.block(context, move |mut client| async move {
            let txn = Txn::new()
                .when([Compare::create_revision(TOKEN_KEY, CompareOp::Equal, 0)])
                .and_then([TxnOp::put(TOKEN_KEY, candidate, None)])
                .or_else([TxnOp::get(TOKEN_KEY, None)]);
            client.txn(txn).await
        })?;
        if answer.succeeded() {
            return self
                .get_one(context, TOKEN_KEY)?
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .ok_or(StoreError::Corrupt {
                    context,
                    message: "the token vanished".into(),
                });
        }
        for response in answer.op_responses() {
            if let etcd_client::TxnOpResponse::Get(get) = response {
                if let Some(kv) = get.kvs().first() {
                    return Ok(String::from_utf8_lossy(kv.value()).into_owned());
                }
            }
        }
        Err(StoreError::Corrupt {
            context,
            message: "no token stored".into(),
        })
    }

    /// The leader's advertised URL, if one leads.
    pub fn leader_url(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .get_one("read the leader", LEADER_KEY)?
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime inside another one must not block.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Store for EtcdStore {
    /// Not leader-guarded (followers audit the requests they refuse): an optimistic
    /// transaction on `audit_last_id`'s revision, retried when another instance appended.
    fn append_audit(&self, entry: &AuditEntry) -> Result<u64, StoreError> {
        let context = "append audit entry";
        for _ in 0..AUDIT_APPEND_ATTEMPTS_MAX {
            let answer = self.block(context, move |mut client| async move {
                client.get(AUDIT_LAST_KEY, None).await
            })?;
            let (last, revision) = match answer.kvs().first() {
                Some(kv) => (
                    String::from_utf8_lossy(kv.value())
                        .trim()
                        .parse::<u64>()
                        .map_err(|error| StoreError::Corrupt {
                            context,
                            message: format!("audit_last_id: {error}"),
                        })?,
                    kv.mod_revision(),
                ),
                None => (0, 0),
            };
            let id = last.saturating_add(1);
            let mut stored = entry.clone();
            stored.id = id;
            let bytes = serde_json::to_vec(&stored).map_err(backend(context))?;
            let mut ops = vec![
                TxnOp::put(audit_key(id), bytes, None),
                TxnOp::put(AUDIT_LAST_KEY, id.to_string(), None),
            ];
            let drop_id = id.saturating_sub(crate::audit::AUDIT_ENTRIES_MAX);
            if drop_id > 0 {
                ops.push(TxnOp::delete(audit_key(drop_id), None));
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    AUDIT_LAST_KEY,
                    CompareOp::Equal,
                    revision,
                )])
                .and_then(ops);
            let answer = self.block(
                context,
                move |mut client| async move { client.txn(txn).await },
            )?;
            if answer.succeeded() {
                return Ok(id);
            }
        }
        Err(StoreError::Backend {
            context,
            message: format!(
                "{AUDIT_APPEND_ATTEMPTS_MAX} attempts raced with other consoles' appends"
            ),
        })
    }

    fn audit_entries(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let context = "read audit log";
        let from = audit_key(after.saturating_add(1));
        let end = format!("{AUDIT_PREFIX}~");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let answer = self.block(context, move |mut client| async move {
            client
                .get(
                    from,
                    Some(GetOptions::new().with_range(end).with_limit(limit)),
                )
                .await
        })?;
        answer
            .kvs()
            .iter()
            .map(|kv| decode(context, kv.value()))
            .collect()
    }

    fn current(&self) -> Result<Option<ConfigVersion>, StoreError> {
        let context = "read current configuration version";
        match self.current_version(context)? {
            Some(version) => self.version(version),
            None => Ok(None),
        }
    }

    fn version(&self, version: u64) -> Result<Option<ConfigVersion>, StoreError> {
        let context = "read configuration version";
        self.get_one(context, &version_key(version))?
            .map(|bytes| decode(context, &bytes))
            .transpose()
    }

    fn history(&self) -> Result<Vec<ConfigVersion>, StoreError> {
        let context = "read configuration history";
        let current = self.current_version(context)?.unwrap_or(0);
        let mut out: Vec<ConfigVersion> = Vec::new();
        for (_, bytes) in self.get_prefix(context, VERSIONS_PREFIX)? {
            let version: ConfigVersion = decode(context, &bytes)?;
            if version.version <= current {
                out.push(version);
            }
        }
        out.sort_by_key(|version| version.version);
        Ok(out)
    }

    fn save_version(
        &self,
        version: &ConfigVersion,
        inits: &[InitRecord],
    ) -> Result<(), StoreError> {
        let context = "save configuration version";
        let mut records = Vec::with_capacity(inits.len());
        for record in inits {
            let bytes = serde_json::to_vec(record).map_err(backend(context))?;
            records.push((format!("{INITS_PREFIX}{}", record.group), bytes));
        }
        let last = vec![
            (
                version_key(version.version),
                serde_json::to_vec(version).map_err(backend(context))?,
            ),
            (
                CURRENT_KEY.to_string(),
                version.version.to_string().into_bytes(),
            ),
        ];
        let last_bytes: usize = last
            .iter()
            .map(|(key, value)| key.len() + value.len())
            .sum();
        if last_bytes > TXN_BYTES_MAX {
            return Err(StoreError::Backend {
                context,
                message: format!(
                    "the configuration is {last_bytes} bytes; the etcd store takes at most {TXN_BYTES_MAX}"
                ),
            });
        }
        // Records first, in transactions that fit etcd's limits; the version last, so that
        // nothing of this version is visible before all of it is stored.
        let mut chunk: Vec<(String, Vec<u8>)> = Vec::new();
        let mut chunk_bytes = 0usize;
        let total_bytes: usize = records
            .iter()
            .map(|(key, value)| key.len() + value.len())
            .sum::<usize>()
            + last_bytes;
        if records.len() + last.len() <= TXN_OPS_MAX && total_bytes <= TXN_BYTES_MAX {
            records.extend(last);
            return self.put_all(context, records);
        }
        for (key, value) in records {
            let bytes = key.len() + value.len();
            if bytes > TXN_BYTES_MAX {
                return Err(StoreError::Backend {
                    context,
                    message: format!(
                        "the initialization record {key} is {bytes} bytes; the etcd store takes at most {TXN_BYTES_MAX}"
                    ),
                });
            }
            if chunk.len() == TXN_OPS_MAX || chunk_bytes + bytes > TXN_BYTES_MAX {
                self.put_all(context, std::mem::take(&mut chunk))?;
                chunk_bytes = 0;
            }
            chunk_bytes += bytes;
            chunk.push((key, value));
        }
        if !chunk.is_empty() {
            self.put_all(context, chunk)?;
        }
        self.put_all(context, last)
    }

    fn init(&self, group: &str) -> Result<Option<InitRecord>, StoreError> {
        let context = "read initialization record";
        let Some(bytes) = self.get_one(context, &format!("{INITS_PREFIX}{group}"))? else {
            return Ok(None);
        };
        let record: InitRecord = decode(context, &bytes)?;
        let current = self.current_version(context)?.unwrap_or(0);
        Ok((record.version <= current).then_some(record))
    }

    fn inits(&self) -> Result<Vec<InitRecord>, StoreError> {
        let context = "read initialization records";
        let current = self.current_version(context)?.unwrap_or(0);
        let mut out = Vec::new();
        for (_, bytes) in self.get_prefix(context, INITS_PREFIX)? {
            let record: InitRecord = decode(context, &bytes)?;
            if record.version <= current {
                out.push(record);
            }
        }
        Ok(out)
    }

    fn put_init(&self, record: &InitRecord) -> Result<(), StoreError> {
        let context = "write initialization record";
        let bytes = serde_json::to_vec(record).map_err(backend(context))?;
        self.put_all(
            context,
            vec![(format!("{INITS_PREFIX}{}", record.group), bytes)],
        )
    }
}
