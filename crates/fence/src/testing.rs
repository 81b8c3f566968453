//! Test support (feature `testing`, never in the binary): a real etcd cluster of `n` members,
//! each an `etcd` process (Debian `etcd-server`, installed by `scripts/deps.sh`) on loopback
//! ports with its data in a temporary directory; killed and reaped on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a new cluster gets to elect a leader and answer.
pub const CLUSTER_START_TIMEOUT_MS: u64 = 20_000;

pub struct EtcdCluster {
    members: Vec<Option<Child>>,
    client_ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

/// Free loopback ports, all distinct: each listener is held until every port is chosen (a
/// port closed at once can come back from the next bind).
fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|listener| Ok(listener.local_addr()?.port()))
        .collect()
}

impl EtcdCluster {
    /// Starts `members` etcd processes as one cluster and waits until it answers.
    pub async fn start(members: usize) -> std::io::Result<EtcdCluster> {
        let dir = tempfile::tempdir()?;
        let mut client_ports = free_ports(members * 2)?;
        let peer_ports = client_ports.split_off(members);
        let initial: Vec<String> = peer_ports
            .iter()
            .enumerate()
            .map(|(index, port)| format!("m{index}=http://127.0.0.1:{port}"))
            .collect();
        let initial = initial.join(",");
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            client_ports,
            _dir: dir,
        };
        for (index, peer_port) in peer_ports.iter().enumerate() {
            let data: PathBuf = cluster._dir.path().join(format!("m{index}"));
            let client = format!("http://127.0.0.1:{}", cluster.client_ports[index]);
            let peer = format!("http://127.0.0.1:{peer_port}");
            let log = std::fs::File::create(cluster._dir.path().join(format!("m{index}.log")))?;
            let child = Command::new("etcd")
                .arg("--name")
                .arg(format!("m{index}"))
                .arg("--data-dir")
                .arg(&data)
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer])
                .args(["--initial-advertise-peer-urls", &peer])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "redoubt-test"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--max-txn-ops", "1024"])
                .args(["--logger", "zap", "--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            cluster.members.push(Some(child));
        }
        cluster.wait_ready().await?;
        Ok(cluster)
    }

    async fn wait_ready(&self) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_millis(CLUSTER_START_TIMEOUT_MS);
        let mut last = String::new();
        while Instant::now() < deadline {
            match crate::etcd::connect(&self.endpoints()).await {
                Ok(mut client) => match client.put("/redoubt/test/ready", "1", None).await {
                    Ok(_) => return Ok(()),
                    Err(error) => last = error.to_string(),
                },
                Err(error) => last = error.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(std::io::Error::other(format!(
            "the etcd cluster did not answer within {CLUSTER_START_TIMEOUT_MS} ms: {last}"
        )))
    }

    /// `http://127.0.0.1:port` of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.client_ports
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect()
    }

    pub fn client_ports(&self) -> &[u16] {
        &self.client_ports
    }

    /// `etcd://127.0.0.1:p1,127.0.0.1:p2,…`: what `--store` and `--fence` take.
    pub fn url(&self) -> String {
        let list: Vec<String> = self
            .client_ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("etcd://{}", list.join(","))
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for child in self.members.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TCP forwarder on loopback whose link can be cut (every connection closed, new ones
/// closed at once) and restored: a partition between one client and etcd.
pub struct CuttableProxy {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttableProxy {
    /// Forwards `127.0.0.1:<port>` to `127.0.0.1:<target_port>`.
    pub async fn start(target_port: u16) -> std::io::Result<CuttableProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (cut, cut_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut cut_rx = cut_rx.clone();
                if *cut_rx.borrow() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Ok(CuttableProxy { port, cut, task })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every forwarded connection and refuses new ones until [`CuttableProxy::restore`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn restore(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.cut.send_replace(true);
        self.task.abort();
    }
}
