//! The etcd lock: a lease plus a key taken by a transaction only when absent or already ours,
//! renewed by a background task ([`LeaseLock`]); the production fence ([`EtcdFence`]) is that
//! lock on `/redoubt/fence/<group>`.

use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp};
use tokio::sync::{oneshot, watch};

use crate::{
    valid_until_after_renewal, AcquireFuture, Fence, FenceError, FenceLease, FenceTiming, Validity,
    CONNECT_TIMEOUT_MS, FENCE_KEY_PREFIX,
};

/// Endpoints in one `etcd://` URL.
pub const ENDPOINTS_MAX: usize = 16;

/// `etcd://host:port,host:port` → `["http://host:port", …]`.
pub fn parse_endpoints(given: &str) -> Result<Vec<String>, FenceError> {
    let bad = |reason: &str| FenceError::Endpoints {
        given: given.to_string(),
        reason: reason.to_string(),
    };
    let Some(list) = given.strip_prefix("etcd://") else {
        return Err(bad("expected etcd://host:port[,host:port…]"));
    };
    let mut out = Vec::new();
    for endpoint in list.split(',') {
        let Some((host, port)) = endpoint.rsplit_once(':') else {
            return Err(bad(&format!("endpoint {endpoint:?} has no :port")));
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad(&format!("endpoint {endpoint:?} has no host")));
        }
        if port.parse::<u16>().map_or(true, |port| port == 0) {
            return Err(bad(&format!("endpoint {endpoint:?}: port must be 1-65535")));
        }
        out.push(format!("http://{host}:{port}"));
    }
    if out.len() > ENDPOINTS_MAX {
        return Err(bad(&format!("more than {ENDPOINTS_MAX} endpoints")));
    }
    Ok(out)
}

fn etcd_error(context: &'static str) -> impl FnOnce(etcd_client::Error) -> FenceError {
    move |error| FenceError::Etcd {
        context,
        message: error.to_string(),
    }
}

/// Runs one etcd call with a deadline.
async fn call<T>(
    context: &'static str,
    timeout_ms: u64,
    future: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, FenceError> {
    match tokio::time::timeout(Duration::from_millis(timeout_ms), future).await {
        Ok(result) => result.map_err(etcd_error(context)),
        Err(_) => Err(FenceError::Timeout {
            context,
            timeout_ms,
        }),
    }
}

/// Connects to etcd (lazily: a cluster that is down fails the first call, not this one).
pub async fn connect(endpoints: &[String]) -> Result<Client, FenceError> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .with_timeout(Duration::from_millis(CONNECT_TIMEOUT_MS))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    call(
        "connect to etcd",
        CONNECT_TIMEOUT_MS,
        Client::connect(endpoints, Some(options)),
    )
    .await
}

enum Take {
    Taken { lease_id: i64, until: Instant },
    HeldBy(String),
}

/// Attempts of [`try_take`] when etcd no longer knows the lease it just granted: on a loaded
/// cluster the lease can expire between its grant and the transaction that uses it.
const TAKE_ATTEMPTS_MAX: usize = 3;

/// [`try_take`], again with a fresh lease when the one it granted expired before use.
async fn take(
    client: &mut Client,
    key: &str,
    value: &str,
    timing: &FenceTiming,
) -> Result<Take, FenceError> {
    let mut attempt = 1;
    loop {
        match try_take(client, key, value, timing).await {
            Err(FenceError::Etcd { message, .. })
                if attempt < TAKE_ATTEMPTS_MAX && message.contains("requested lease not found") =>
            {
                tracing::warn!(
                    key,
                    attempt,
                    "the new etcd lease expired before use; taking again"
                );
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

/// One attempt to take `key` for `value`: a new lease, then a transaction that puts the key
/// only if it is absent, else (a second one) only if it holds `value` already.
async fn try_take(
    client: &mut Client,
    key: &str,
    value: &str,
    timing: &FenceTiming,
) -> Result<Take, FenceError> {
    let timeout_ms = CONNECT_TIMEOUT_MS;
    let sent_at = Instant::now();
    let grant = call(
        "grant an etcd lease",
        timeout_ms,
        client.lease_grant(timing.lease_ttl_seconds(), None),
    )
    .await?;
    let lease_id = grant.id();
    let granted_ttl_ms = u64::try_from(grant.ttl()).unwrap_or(0).saturating_mul(1000);
    let put = || TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease_id)));
    let absent = Txn::new()
        .when([Compare::create_revision(key, CompareOp::Equal, 0)])
        .and_then([put()])
        .or_else([TxnOp::get(key, None)]);
    let answer = call("take the key", timeout_ms, client.txn(absent)).await?;
    let mut holder = None;
    if !answer.succeeded() {
        for response in answer.op_responses() {
            if let etcd_client::TxnOpResponse::Get(get) = response {
                holder = get
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
            }
        }
    }
    let taken = match &holder {
        None => true,
        Some(current) if current == value => {
            let ours = Txn::new()
                .when([Compare::value(key, CompareOp::Equal, value)])
                .and_then([put()]);
            call("take back our key", timeout_ms, client.txn(ours))
                .await?
                .succeeded()
        }
        Some(_) => false,
    };
    if taken {
        return match valid_until_after_renewal(sent_at, granted_ttl_ms, timing) {
            Some(until) => Ok(Take::Taken { lease_id, until }),
            None => Err(FenceError::Etcd {
                context: "take the key",
                message: format!("etcd granted a lease of {granted_ttl_ms} ms only"),
            }),
        };
    }
    // Best effort: an unused lease expires anyway.
    let _ = call(
        "revoke an unused lease",
        timeout_ms,
        client.lease_revoke(lease_id),
    )
    .await;
    Ok(Take::HeldBy(holder.unwrap_or_default()))
}

/// One renewal: `Ok(true)` renewed and the key is still ours; `Ok(false)` the lease or the key
/// is gone; `Err` etcd did not answer (transient).
async fn renew_once(
    client: &mut Client,
    lease_id: i64,
    key: &str,
    value: &str,
) -> Result<bool, etcd_client::Error> {
    match client.lease_keep_alive(lease_id).await {
        Ok(_) => {}
        Err(etcd_client::Error::LeaseKeepAliveError(_)) => return Ok(false),
        Err(error) => return Err(error),
    }
    let got = client.get(key, None).await?;
    Ok(got
        .kvs()
        .first()
        .is_some_and(|kv| kv.value() == value.as_bytes() && kv.lease() == lease_id))
}

/// The lock a [`FenceLease`] of etcd holds: a key and a lease, renewed by [`keep`].
pub struct LeaseLock {
    client: Client,
    timing: FenceTiming,
}

impl LeaseLock {
    pub async fn connect(endpoints: &[String], timing: FenceTiming) -> Result<Self, FenceError> {
        timing.validate()?;
        Ok(LeaseLock {
            client: connect(endpoints).await?,
            timing,
        })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn timing(&self) -> FenceTiming {
        self.timing
    }

    /// Takes `key` for `value` (absent or already ours) and keeps it renewed; fails with
    /// [`FenceError::HeldBy`] when another value holds it.
    pub async fn acquire(&self, key: &str, value: &str) -> Result<FenceLease, FenceError> {
        let mut client = self.client.clone();
        match take(&mut client, key, value, &self.timing).await? {
            Take::HeldBy(holder) => Err(FenceError::HeldBy {
                key: key.to_string(),
                holder,
            }),
            Take::Taken { lease_id, until } => {
                tracing::info!(key, value, lease_id, "took the etcd lock");
                let (publish, validity) = watch::channel(Validity::Held { until, lease_id });
                let (stop, stopped) = oneshot::channel();
                let task = tokio::spawn(keep(
                    client,
                    Held {
                        key: key.to_string(),
                        value: value.to_string(),
                        timing: self.timing,
                        lease_id,
                        until,
                    },
                    publish,
                    stopped,
                ));
                Ok(FenceLease::renewed(
                    key.to_string(),
                    value.to_string(),
                    validity,
                    stop,
                    task,
                ))
            }
        }
    }
}

struct Held {
    key: String,
    value: String,
    timing: FenceTiming,
    lease_id: i64,
    until: Instant,
}

/// Renews the lease every `renew_interval_ms`; when the lease or the key is gone, takes the
/// key again if it is absent or ours, and gives up for good when another holder has it.
/// `stop`: `true` releases (revokes the lease), `false` or dropped just stops.
async fn keep(
    mut client: Client,
    mut held: Held,
    publish: watch::Sender<Validity>,
    mut stop: oneshot::Receiver<bool>,
) {
    let renew = Duration::from_millis(held.timing.renew_interval_ms);
    let mut holding = true;
    loop {
        tokio::select! {
            release = &mut stop => {
                publish.send_replace(Validity::Lost);
                if release.unwrap_or(false) && holding {
                    let _ = call(
                        "revoke the lease",
                        CONNECT_TIMEOUT_MS,
                        client.lease_revoke(held.lease_id),
                    )
                    .await;
                    tracing::info!(key = %held.key, "released the etcd lock");
                }
                return;
            }
            _ = tokio::time::sleep(renew) => {}
        }
        if holding {
            let sent_at = Instant::now();
            let renewed = tokio::time::timeout(
                renew,
                renew_once(&mut client, held.lease_id, &held.key, &held.value),
            )
            .await;
            match renewed {
                Ok(Ok(true)) => {
                    let granted_ms = held.timing.lease_ttl_ms;
                    match valid_until_after_renewal(sent_at, granted_ms, &held.timing) {
                        Some(until) => {
                            held.until = until;
                            publish.send_replace(Validity::Held {
                                until,
                                lease_id: held.lease_id,
                            });
                        }
                        None => holding = false,
                    }
                }
                Ok(Ok(false)) => {
                    tracing::warn!(key = %held.key, "the etcd lease or key is gone");
                    holding = false;
                }
                Ok(Err(error)) => {
                    tracing::warn!(key = %held.key, "renew the etcd lease: {error}");
                }
                Err(_) => {
                    tracing::warn!(key = %held.key, "renew the etcd lease: no answer in time");
                }
            }
            if !holding || Instant::now() >= held.until {
                if *publish.borrow() != Validity::Lost {
                    tracing::error!(key = %held.key, "lost the etcd lock");
                }
                publish.send_replace(Validity::Lost);
            }
        }
        if !holding {
            match take(&mut client, &held.key, &held.value, &held.timing).await {
                Ok(Take::Taken { lease_id, until }) => {
                    tracing::warn!(key = %held.key, lease_id, "took the etcd lock again");
                    held.lease_id = lease_id;
                    held.until = until;
                    holding = true;
                    publish.send_replace(Validity::Held { until, lease_id });
                }
                Ok(Take::HeldBy(holder)) => {
                    tracing::error!(key = %held.key, holder, "the etcd lock is held by another: giving up");
                    publish.send_replace(Validity::Lost);
                    return;
                }
                Err(error) => {
                    tracing::warn!(key = %held.key, "take the etcd lock again: {error}");
                }
            }
        }
    }
}

/// The production fence on etcd: `/redoubt/fence/<group>` holds the production server's name.
pub struct EtcdFence {
    lock: LeaseLock,
    url: String,
}

impl EtcdFence {
    /// `url`: `etcd://host:port,host:port…`.
    pub async fn connect(url: &str, timing: FenceTiming) -> Result<EtcdFence, FenceError> {
        let endpoints = parse_endpoints(url)?;
        Ok(EtcdFence {
            lock: LeaseLock::connect(&endpoints, timing).await?,
            url: url.to_string(),
        })
    }

    /// Who holds the production role of `group`, if anyone.
    pub async fn holder(&self, group: &str) -> Result<Option<String>, FenceError> {
        let mut client = self.lock.client();
        let got = call(
            "read the fence key",
            CONNECT_TIMEOUT_MS,
            client.get(format!("{FENCE_KEY_PREFIX}{group}"), None),
        )
        .await?;
        Ok(got
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }
}

impl Fence for EtcdFence {
    fn acquire_production<'a>(&'a self, group: &'a str, server: &'a str) -> AcquireFuture<'a> {
        Box::pin(async move {
            self.lock
                .acquire(&format!("{FENCE_KEY_PREFIX}{group}"), server)
                .await
        })
    }

    fn describe(&self) -> String {
        self.url.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_bad_ones_are_named() {
        assert_eq!(
            parse_endpoints("etcd://127.0.0.1:2379,10.0.0.2:2379").expect("two"),
            ["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        for bad in [
            "http://127.0.0.1:2379",
            "etcd://",
            "etcd://host",
            "etcd://:2379",
            "etcd://h:0",
            "etcd://h:99999",
            "etcd://a:1,",
        ] {
            let error = parse_endpoints(bad).expect_err(bad);
            assert!(error.to_string().contains(bad), "{error}");
        }
    }
}
