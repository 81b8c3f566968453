//! `redoubt apply`: the apply process (ABA) of one group on a recovery server.

use redoubt_config::units::parse_size_bytes;
use redoubt_replication::{Aba, AbaConfig};
use redoubt_volume::ContainerCapacities;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::ApplyArgs;
use crate::datatap_cmd::{invalid, parse_volume};
use crate::exit::{ExitCodeKind, Failure};

pub fn run(args: ApplyArgs) -> Result<(), Failure> {
    let specs = args
        .volumes
        .iter()
        .map(|v| parse_volume(v))
        .collect::<Result<Vec<_>, _>>()?;
    if specs.iter().any(|spec| spec.source.is_some()) {
        return Err(invalid(
            "a replica is never a source volume: use NAME:SIZE".into(),
        ));
    }
    if !redoubt_config::is_valid_name(&args.name) || !redoubt_config::is_valid_name(&args.group) {
        return Err(invalid(
            "--name and --group: 1 to 63 of a-z, 0-9, '.', '_', '-'".into(),
        ));
    }
    let journal_capacity_bytes = parse_size_bytes(&args.journal_capacity)
        .map_err(|reason| invalid(format!("--journal-capacity: {reason}")))?;
    let failed = |what: &str, error: &dyn std::fmt::Display| {
        Failure::new(ExitCodeKind::Failed, format!("{what}: {error}"))
    };
    let capacities = ContainerCapacities {
        replication_bytes: specs.iter().map(|s| s.size_bytes).sum::<u64>().max(4096),
        log_record_file_bytes: journal_capacity_bytes,
        snapshot_bytes: 4096,
    };
    let (aba, apply_thread) = Aba::open(AbaConfig {
        server_name: args.name.clone(),
        group: args.group.clone(),
        data_dir: args.dir.clone(),
        volumes: specs,
        capacities,
        config_version: 0,
        retention_seconds: 24 * 3600,
        production: args.production.clone(),
    })
    .map_err(|error| failed("open the apply process", &error))?;
    let tls = match &args.tls_dir {
        Some(dir) => {
            redoubt_tls::install_provider();
            let context = redoubt_tls::TlsContext::load(dir, &args.name).map_err(|error| {
                invalid(format!(
                    "--tls-dir {}: load the TLS identity of {}: {error}",
                    dir.display(),
                    args.name
                ))
            })?;
            Some(std::sync::Arc::new(context))
        }
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| failed("start the runtime", &error))?;
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|error| failed(&format!("listen on {}", args.listen), &error))?;
        let address = listener
            .local_addr()
            .map_err(|error| failed("read the listening address", &error))?;
        println!("ready {address}");
        warn_if_open(&args, &address);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = match (&tls, &args.production) {
            (Some(tls), Some(production)) => tokio::spawn(serve_tls(
                aba.clone(),
                listener,
                tls.clone(),
                production.clone(),
                stopped.clone(),
            )),
            _ => tokio::spawn(aba.clone().serve(listener, stopped.clone())),
        };
        if let Some(path) = args.status_file.clone() {
            let status = aba.status().clone();
            tokio::spawn(crate::status_file::keep_writing(path, stopped, move || {
                crate::status_file::recovery_json(&status)
            }));
        }
        let mut terminate = signal(SignalKind::terminate())
            .map_err(|error| failed("install SIGTERM handler", &error))?;
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = stop.send(true);
        let _ = server.await;
        Ok::<(), Failure>(())
    });
    drop(runtime);
    drop(aba);
    let _ = apply_thread.join();
    result
}

/// Says loudly what an unprotected apply process lets anyone do.
fn warn_if_open(args: &ApplyArgs, address: &std::net::SocketAddr) {
    if args.tls_dir.is_none() {
        eprintln!(
            "redoubt apply: WARNING: replication on {address} is plain text and unauthenticated: anyone who can reach it {}; give --tls-dir DIR --production NAME",
            match &args.production {
                Some(production) => format!("and calls itself {production} can write into these replicas"),
                None => "can write into these replicas".to_string(),
            }
        );
    }
}

/// Accepts replication connections over mutual TLS: a sender whose certificate (of the
/// cluster CA) does not name `production` is dropped before it can send a Hello.
async fn serve_tls(
    aba: std::sync::Arc<redoubt_replication::Aba>,
    listener: tokio::net::TcpListener,
    tls: std::sync::Arc<redoubt_tls::TlsContext>,
    production: String,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (aba, tls, production, shutdown) = (
            aba.clone(),
            tls.clone(),
            production.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            // Refusals (no certificate, another CA) are logged and counted by the context.
            let Some((stream, identity)) = tls.accept(stream, "replication sender").await else {
                return;
            };
            if !identity.is(&production) {
                eprintln!(
                    "redoubt apply: refused a replication connection from {peer}: its certificate does not name {production}"
                );
                return;
            }
            if let Err(error) = aba
                .serve_stream(Box::new(stream), Some(production), shutdown)
                .await
            {
                tracing::info!(%peer, %error, "replication connection ended");
            }
        });
    }
}
