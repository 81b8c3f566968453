//! Online verify and checksum resync, orchestrated across a group's servers
//! (`docs/verify.md`, `docs/recovery-api.md`).
//!
//! ```text
//!  POST /v1/groups/{g}/verify ─▶ operation ─▶ production: start hashing at S (S = its durable seq)
//!                                        └─▶ each replica: start hashing at S
//!                                              (already past S? clear all, pick a new S, retry)
//!                                   poll until every server hashed its LVs as of S,
//!                                   fetch the hashes page by page, compare, report differences
//!  POST /v1/groups/{g}/resync {"server","checksum":true}
//!       ─▶ the same hashing on production and that server (1 MiB regions)
//!       ─▶ production marks the differing regions for resync (super transaction)
//!       ─▶ done once the regions are resent and the server applied them
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::agent::AgentError;
use crate::operations::Operation;
use crate::runner::Shared;

/// How often the console polls the agents while they hash.
pub const VERIFY_POLL_MS: u64 = 200;
/// How many times the console picks a new verify point when a replica is already past it.
pub const VERIFY_START_ATTEMPTS_MAX: u32 = 8;
/// Longest a whole verify or checksum resync may take.
pub const VERIFY_DURATION_MS_MAX: u64 = 12 * 3600 * 1000;
/// Most differing regions listed in a result (the count is always exact).
pub const DIFFERENCES_LISTED_MAX: usize = 10_000;
/// Hashes asked for per page (the agent's `HASHES_PER_PAGE_MAX`).
pub const HASHES_PER_PAGE: u64 = 65_536;
/// Region size of the checksum resync: the datatap's dirty-region size
/// (`redoubt_datatap::state::DIRTY_REGION_BYTES`).
pub const RESYNC_REGION_BYTES: u64 = 1 << 20;

pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/groups/{group}/verify", post(verify))
        .route("/v1/groups/{group}/resync", post(resync))
}

fn answer(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// A server of the group as the console addresses it.
#[derive(Clone, Debug)]
pub(crate) struct Member {
    pub(crate) name: String,
    pub(crate) role: String,
    pub(crate) address: String,
}

/// Production first, then the recovery servers, from the current configuration.
/// (A `Response` error: handlers return it as it is.)
#[allow(clippy::result_large_err)]
pub(crate) fn members(shared: &Shared, group: &str) -> Result<Vec<Member>, Response> {
    let current = shared
        .store
        .current()
        .map_err(|error| answer(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()))?
        .ok_or_else(|| answer(StatusCode::NOT_FOUND, "no configuration was applied yet"))?;
    let config = redoubt_config::parse("current.toml", &current.toml).map_err(|_| {
        answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "the stored configuration version {} no longer parses",
                current.version
            ),
        )
    })?;
    let Some(entry) = config.groups.iter().find(|entry| entry.name == group) else {
        return Err(answer(
            StatusCode::NOT_FOUND,
            format!(
                "no group {group} in configuration version {}",
                current.version
            ),
        ));
    };
    let address = |name: &str| {
        config
            .servers
            .iter()
            .find(|server| server.name == name)
            .map(|server| server.address.clone())
            .unwrap_or_default()
    };
    let mut out = vec![Member {
        name: entry.production.clone(),
        role: "production".into(),
        address: address(&entry.production),
    }];
    for (index, name) in entry.recovery.iter().enumerate() {
        out.push(Member {
            name: name.clone(),
            role: format!("recovery{}", index + 1),
            address: address(name),
        });
    }
    Ok(out)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    region_size_bytes: Option<u64>,
}

#[allow(clippy::result_large_err)]
pub(crate) fn parse_body<T: for<'de> Deserialize<'de> + Default>(
    body: &Bytes,
) -> Result<T, Response> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|error| {
        answer(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body: {error}"),
        )
    })
}

fn busy(shared: &Shared, group: &str) -> Option<Response> {
    for kind in ["verify", "resync"] {
        if let Some(running) = shared.operations.running(kind, group) {
            return Some(
                (
                    StatusCode::CONFLICT,
                    Json(json!({
                        "error": format!("a {kind} of group {group} is running ({})", running.id),
                        "operation": running.id,
                    })),
                )
                    .into_response(),
            );
        }
    }
    None
}

async fn verify(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    let request: VerifyBody = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    let members = match members(&shared, &group) {
        Ok(members) => members,
        Err(response) => return response,
    };
    if let Some(response) = busy(&shared, &group) {
        return response;
    }
    let operation = shared.operations.start("verify", &group);
    let id = operation.id.clone();
    let region_size_bytes = request.region_size_bytes;
    tokio::spawn(async move {
        let outcome = tokio::time::timeout(
            Duration::from_millis(VERIFY_DURATION_MS_MAX),
            run_verify(&shared, &operation, &group, &members, region_size_bytes),
        )
        .await;
        match outcome {
            Ok(Ok((message, result))) => operation.finish(message, result),
            Ok(Err(error)) => operation.fail(error),
            Err(_) => operation.fail(format!(
                "the verify took longer than {VERIFY_DURATION_MS_MAX} ms"
            )),
        }
    });
    (StatusCode::ACCEPTED, Json(json!({"operation": id}))).into_response()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResyncBody {
    server: Option<String>,
    #[serde(default)]
    checksum: bool,
}

async fn resync(
    State(shared): State<Arc<Shared>>,
    Path(group): Path<String>,
    body: Bytes,
) -> Response {
    let request: ResyncBody = match parse_body(&body) {
        Ok(request) => request,
        Err(response) => return response,
    };
    if !request.checksum {
        return answer(
            StatusCode::BAD_REQUEST,
            "only the checksum resync is started by hand (\"checksum\": true); full and bitmap resyncs run on their own",
        );
    }
    let members = match members(&shared, &group) {
        Ok(members) => members,
        Err(response) => return response,
    };
    let Some(server) = request.server else {
        return answer(
            StatusCode::BAD_REQUEST,
            "a checksum resync needs \"server\": the recovery server to resync",
        );
    };
    let Some(target) = members
        .iter()
        .skip(1)
        .find(|member| member.name == server)
        .cloned()
    else {
        return answer(
            StatusCode::BAD_REQUEST,
            format!("{server} is not a recovery server of group {group}"),
        );
    };
    if let Some(response) = busy(&shared, &group) {
        return response;
    }
    let operation = shared.operations.start("resync", &group);
    let id = operation.id.clone();
    let production = members[0].clone();
    tokio::spawn(async move {
        let outcome = tokio::time::timeout(
            Duration::from_millis(VERIFY_DURATION_MS_MAX),
            run_resync(&shared, &operation, &group, &production, &target),
        )
        .await;
        match outcome {
            Ok(Ok((message, result))) => operation.finish(message, result),
            Ok(Err(error)) => operation.fail(error),
            Err(_) => operation.fail(format!(
                "the resync took longer than {VERIFY_DURATION_MS_MAX} ms"
            )),
        }
    });
    (StatusCode::ACCEPTED, Json(json!({"operation": id}))).into_response()
}

/// An agent's answer that was not a 2xx (`status` when it answered at all).
struct CallError {
    status: Option<u16>,
    message: String,
}

/// The console's agent client, for the calls of one operation.
struct Agents {
    client: Arc<dyn crate::agent::AgentClient>,
}

impl Agents {
    fn new(shared: &Shared) -> Agents {
        Agents {
            client: Arc::clone(&shared.agent),
        }
    }

    async fn call(
        &self,
        member: &Member,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, CallError> {
        self.client
            .call(&member.name, &member.address, method, path, body.as_ref())
            .await
            .map_err(|error| CallError {
                status: match &error {
                    AgentError::Refused { status, .. } => Some(*status),
                    _ => None,
                },
                message: format!("{}: {error}", member.name),
            })
    }

    async fn clear(&self, group: &str, members: &[Member]) {
        for member in members {
            let _ = self
                .call(
                    member,
                    "DELETE",
                    &format!("/v1/groups/{group}/verify/hashes"),
                    None,
                )
                .await;
        }
    }
}

/// One server's hashes as of the verify point: (volume, size, hex hashes).
struct Hashed {
    member: Member,
    volumes: Vec<(String, u64, Vec<String>)>,
    before_write: u64,
    bytes_read: u64,
}

/// Starts hashing at one seq on every member (retrying with a new seq when a replica is
/// already past it), waits until all are done, fetches the hashes. Progress goes to
/// `operation` scaled into `pct_from..pct_to`.
async fn hash_at_one_point(
    agents: &Agents,
    operation: &Operation,
    group: &str,
    members: &[Member],
    region_size_bytes: Option<u64>,
    pct_span: (f64, f64),
) -> Result<(u64, u64, Vec<Hashed>), String> {
    let hashes_path = format!("/v1/groups/{group}/verify/hashes");
    let (production, replicas) = members
        .split_first()
        .ok_or_else(|| format!("group {group} has no servers"))?;
    let mut chosen: Option<(u64, u64)> = None;
    for attempt in 1..=VERIFY_START_ATTEMPTS_MAX {
        let mut body = json!({});
        if let Some(region_size_bytes) = region_size_bytes {
            body["region_size_bytes"] = json!(region_size_bytes);
        }
        let started = agents
            .call(production, "POST", &hashes_path, Some(body))
            .await
            .map_err(|error| format!("start hashing on production: {}", error.message))?;
        let seq = started
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("{} answered no verify point: {started}", production.name))?;
        let region = started
            .get("region_size_bytes")
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("{} answered no region size: {started}", production.name))?;
        let mut past = false;
        for replica in replicas {
            let body = json!({"seq": seq, "region_size_bytes": region});
            match agents.call(replica, "POST", &hashes_path, Some(body)).await {
                Ok(_) => {}
                // The agent's PastSeq refusal: this replica applied past the point.
                Err(error)
                    if error.status == Some(409)
                        && error.message.contains("past the verify point") =>
                {
                    past = true;
                    break;
                }
                Err(error) => {
                    agents.clear(group, members).await;
                    return Err(format!(
                        "start hashing on {}: {}",
                        replica.name, error.message
                    ));
                }
            }
        }
        if past {
            // A replica applied records past the point between the two calls: a new point.
            agents.clear(group, members).await;
            operation.set_progress(
                pct_span.0,
                format!("a replica was past seq {seq}; picking a new point (attempt {attempt})"),
            );
            continue;
        }
        chosen = Some((seq, region));
        break;
    }
    let Some((seq, region)) = chosen else {
        return Err(format!(
            "no verify point in {VERIFY_START_ATTEMPTS_MAX} attempts: a replica kept applying past production's durable seq"
        ));
    };
    // Poll until every member hashed its LVs as of `seq`.
    let mut last: Vec<Value>;
    loop {
        last = Vec::with_capacity(members.len());
        let mut pcts = Vec::new();
        let mut parts = Vec::new();
        let mut all_done = true;
        for member in members {
            let progress = match agents.call(member, "GET", &hashes_path, None).await {
                Ok(progress) => progress,
                Err(error) => {
                    agents.clear(group, members).await;
                    return Err(format!(
                        "follow the hashing on {}: {}",
                        member.name, error.message
                    ));
                }
            };
            let state = progress.get("state").and_then(Value::as_str).unwrap_or("");
            if state == "failed" {
                let reason = progress
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
                    .to_string();
                agents.clear(group, members).await;
                return Err(format!("hashing on {} failed: {reason}", member.name));
            }
            all_done &= state == "done";
            let pct = progress.get("pct").and_then(Value::as_f64).unwrap_or(0.0);
            let applied = progress
                .get("applied_seq")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            pcts.push(pct);
            parts.push(if applied < seq {
                format!("{} waits to apply seq {seq} (at {applied})", member.name)
            } else {
                format!("{} {pct:.0}%", member.name)
            });
            last.push(progress);
        }
        let mean = pcts.iter().sum::<f64>() / pcts.len().max(1) as f64;
        operation.set_progress(
            pct_span.0 + (pct_span.1 - pct_span.0) * mean / 100.0 * 0.95,
            format!("hashing as of seq {seq}: {}", parts.join(", ")),
        );
        if all_done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(VERIFY_POLL_MS)).await;
    }
    // Fetch the hashes, volume by volume, page by page.
    let mut out = Vec::new();
    for (member, progress) in members.iter().zip(&last) {
        let mut volumes = Vec::new();
        let listed = progress
            .get("volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for volume in listed {
            let name = volume.get("volume").and_then(Value::as_str).unwrap_or("");
            let size = volume
                .get("size_bytes")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let regions = volume.get("regions").and_then(Value::as_u64).unwrap_or(0);
            let mut hashes: Vec<String> = Vec::new();
            while (hashes.len() as u64) < regions {
                let path = format!(
                    "{hashes_path}?volume={name}&from={}&count={HASHES_PER_PAGE}",
                    hashes.len()
                );
                let page = agents
                    .call(member, "GET", &path, None)
                    .await
                    .map_err(|error| {
                        format!(
                            "fetch hashes of {name} from {}: {}",
                            member.name, error.message
                        )
                    })?;
                let page: Vec<String> = page
                    .pointer("/page/hashes")
                    .and_then(Value::as_array)
                    .map(|hashes| {
                        hashes
                            .iter()
                            .filter_map(|hash| hash.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default();
                if page.is_empty() {
                    return Err(format!(
                        "{} gave no hashes for {name} from region {}",
                        member.name,
                        hashes.len()
                    ));
                }
                hashes.extend(page);
            }
            volumes.push((name.to_string(), size, hashes));
        }
        out.push(Hashed {
            member: member.clone(),
            volumes,
            before_write: progress
                .get("regions_hashed_before_write")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            bytes_read: progress
                .get("bytes_read")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        });
    }
    agents.clear(group, members).await;
    Ok((seq, region, out))
}

/// Pure: the regions of `replica` that differ from `production` (matched by volume name);
/// a volume missing on the replica, or of another size, differs in every region.
fn compare(production: &Hashed, replica: &Hashed, region_size_bytes: u64) -> Vec<Value> {
    let mut out = Vec::new();
    for (name, size_bytes, hashes) in &production.volumes {
        let theirs = replica
            .volumes
            .iter()
            .find(|(other, other_size, _)| other == name && other_size == size_bytes);
        for (region, hash) in hashes.iter().enumerate() {
            let same = theirs.is_some_and(|(_, _, other)| other.get(region) == Some(hash));
            if !same {
                let offset_bytes = region as u64 * region_size_bytes;
                out.push(json!({
                    "server": replica.member.name,
                    "volume": name,
                    "region": region,
                    "offset_bytes": offset_bytes,
                    "length_bytes": region_size_bytes.min(size_bytes.saturating_sub(offset_bytes)),
                }));
            }
        }
    }
    out
}

async fn run_verify(
    shared: &Shared,
    operation: &Operation,
    group: &str,
    members: &[Member],
    region_size_bytes: Option<u64>,
) -> Result<(String, Value), String> {
    let agents = Agents::new(shared);
    let (seq, region, hashed) = hash_at_one_point(
        &agents,
        operation,
        group,
        members,
        region_size_bytes,
        (0.0, 100.0),
    )
    .await?;
    let Some((production, replicas)) = hashed.split_first() else {
        return Err(format!("group {group} has no servers"));
    };
    let mut differences = Vec::new();
    for replica in replicas {
        differences.extend(compare(production, replica, region));
    }
    let total = differences.len();
    differences.truncate(DIFFERENCES_LISTED_MAX);
    let regions: usize = production.volumes.iter().map(|(_, _, h)| h.len()).sum();
    let servers: Vec<Value> = hashed
        .iter()
        .map(|one| {
            json!({
                "server": one.member.name,
                "role": one.member.role,
                "regions_hashed_before_write": one.before_write,
                "bytes_read": one.bytes_read,
            })
        })
        .collect();
    // A running super transaction (full sync, overflow or checksum resync) explains
    // differences: its regions reach the replicas only as the resync passes send them.
    let resync_running = match members.first() {
        Some(production) => agents
            .call(production, "GET", "/v1/status", None)
            .await
            .ok()
            .and_then(|status| {
                status["groups"]
                    .as_array()?
                    .iter()
                    .find(|entry| entry["name"] == group)?
                    .get("needs_resync")?
                    .as_bool()
            })
            .unwrap_or(false),
        None => false,
    };
    let mut message = if total == 0 {
        format!(
            "every replica equals production as of seq {seq} ({regions} regions of {region} bytes)"
        )
    } else {
        format!("{total} region(s) differ from production as of seq {seq}")
    };
    if resync_running && total > 0 {
        message.push_str(" (a resync is running: the replicas are not consistent until it ends)");
    }
    Ok((
        message,
        json!({
            "seq": seq,
            "region_size_bytes": region,
            "regions": regions,
            "servers": servers,
            "differences_total": total,
            "differences": differences,
            "resync_running": resync_running,
        }),
    ))
}

/// Production's status entry of `group`, and `server`'s entry among its targets.
async fn production_status(
    agents: &Agents,
    production: &Member,
    group: &str,
    server: &str,
) -> Result<(Value, Value), String> {
    let status = agents
        .call(production, "GET", "/v1/status", None)
        .await
        .map_err(|error| format!("read production's status: {}", error.message))?;
    let entry = status
        .get("groups")
        .and_then(Value::as_array)
        .and_then(|groups| {
            groups
                .iter()
                .find(|entry| entry.get("name").and_then(Value::as_str) == Some(group))
        })
        .cloned()
        .ok_or_else(|| format!("{} does not report group {group}", production.name))?;
    let target = entry
        .get("targets")
        .and_then(Value::as_array)
        .and_then(|targets| {
            targets
                .iter()
                .find(|target| target.get("server").and_then(Value::as_str) == Some(server))
        })
        .cloned()
        .ok_or_else(|| {
            format!(
                "{} has no target {server} for group {group}",
                production.name
            )
        })?;
    Ok((entry, target))
}

async fn run_resync(
    shared: &Shared,
    operation: &Operation,
    group: &str,
    production: &Member,
    target: &Member,
) -> Result<(String, Value), String> {
    let agents = Agents::new(shared);
    let members = [production.clone(), target.clone()];
    let (seq, region, hashed) = hash_at_one_point(
        &agents,
        operation,
        group,
        &members,
        Some(RESYNC_REGION_BYTES),
        (0.0, 40.0),
    )
    .await?;
    let [ours, theirs] = hashed.as_slice() else {
        return Err("hashing answered for the wrong servers".into());
    };
    let differences = compare(ours, theirs, region);
    let volumes_bytes: u64 = ours.volumes.iter().map(|(_, size, _)| size).sum();
    let regions: usize = ours.volumes.iter().map(|(_, _, h)| h.len()).sum();
    let listed: Vec<Value> = differences
        .iter()
        .take(DIFFERENCES_LISTED_MAX)
        .cloned()
        .collect();
    let resent_bytes: u64 = differences
        .iter()
        .filter_map(|difference| difference.get("length_bytes").and_then(Value::as_u64))
        .sum();
    let result = |applied_seq: u64| {
        json!({
            "seq": seq,
            "server": target.name,
            "region_size_bytes": region,
            "regions": regions,
            "regions_differing": differences.len(),
            "resent_bytes": resent_bytes,
            "volumes_bytes": volumes_bytes,
            "applied_seq": applied_seq,
            "differences": listed,
        })
    };
    if differences.is_empty() {
        return Ok((
            format!(
                "{} equals production as of seq {seq}: nothing to resend",
                target.name
            ),
            result(seq),
        ));
    }
    let regions_body: Vec<Value> = differences
        .iter()
        .map(|difference| json!({"volume": difference["volume"], "region": difference["region"]}))
        .collect();
    agents
        .call(
            production,
            "POST",
            &format!("/v1/groups/{group}/resync/regions"),
            Some(json!({"regions": regions_body, "targets": [target.name]})),
        )
        .await
        .map_err(|error| {
            format!(
                "mark the differing regions on production: {}",
                error.message
            )
        })?;
    operation.set_progress(
        40.0,
        format!(
            "resending {} region(s) ({} bytes) to {}",
            differences.len(),
            resent_bytes,
            target.name
        ),
    );
    // The super transaction: wait until production journaled every marked region…
    let started = Instant::now();
    let journal_seq = loop {
        let (entry, _) = production_status(&agents, production, group, &target.name).await?;
        let pct = entry
            .pointer("/targets/0/super_transaction_pct")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let remaining = entry
            .get("resync_remaining_bytes")
            .and_then(Value::as_u64)
            .unwrap_or(u64::MAX);
        operation.set_progress(
            40.0 + pct * 0.4,
            format!(
                "super transaction {pct:.0}% ({remaining} bytes left) to {}",
                target.name
            ),
        );
        if remaining == 0 {
            break entry
                .get("journal_seq")
                .and_then(Value::as_u64)
                .unwrap_or(0);
        }
        tokio::time::sleep(Duration::from_millis(VERIFY_POLL_MS)).await;
    };
    // …and the server applied it.
    loop {
        let (_, status) = production_status(&agents, production, group, &target.name).await?;
        let applied = status
            .get("applied_seq")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if applied >= journal_seq {
            let message = format!(
                "{}: {} of {} regions differed; resent {resent_bytes} of {volumes_bytes} bytes in {} ms",
                target.name,
                differences.len(),
                regions,
                started.elapsed().as_millis()
            );
            return Ok((message, result(applied)));
        }
        operation.set_progress(
            80.0 + 20.0 * applied.min(journal_seq) as f64 / journal_seq.max(1) as f64,
            format!(
                "{} applies up to seq {journal_seq} (at {applied})",
                target.name
            ),
        );
        tokio::time::sleep(Duration::from_millis(VERIFY_POLL_MS)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashed(server: &str, volumes: &[(&str, u64, &[&str])]) -> Hashed {
        Hashed {
            member: Member {
                name: server.into(),
                role: "recovery1".into(),
                address: String::new(),
            },
            volumes: volumes
                .iter()
                .map(|(name, size, hashes)| {
                    (
                        name.to_string(),
                        *size,
                        hashes.iter().map(|h| h.to_string()).collect(),
                    )
                })
                .collect(),
            before_write: 0,
            bytes_read: 0,
        }
    }

    #[test]
    fn compare_names_server_volume_region_offset_and_length() {
        let production = hashed(
            "prod-a",
            &[("a", 2560, &["x", "y", "z"]), ("b", 1024, &["q"])],
        );
        let same = hashed(
            "dr-b",
            &[("a", 2560, &["x", "y", "z"]), ("b", 1024, &["q"])],
        );
        assert!(compare(&production, &same, 1024).is_empty());
        // The last, short region differs: its length is what is left of the LV.
        let flipped = hashed(
            "dr-b",
            &[("a", 2560, &["x", "y", "Z"]), ("b", 1024, &["q"])],
        );
        assert_eq!(
            compare(&production, &flipped, 1024),
            vec![json!({"server": "dr-b", "volume": "a", "region": 2,
                        "offset_bytes": 2048, "length_bytes": 512})]
        );
        // A missing volume, or one of another size, differs everywhere.
        let missing = hashed("dr-c", &[("a", 2560, &["x", "y", "z"])]);
        assert_eq!(compare(&production, &missing, 1024).len(), 1);
        let resized = hashed(
            "dr-c",
            &[("a", 3072, &["x", "y", "z"]), ("b", 1024, &["q"])],
        );
        assert_eq!(compare(&production, &resized, 1024).len(), 3);
    }
}
