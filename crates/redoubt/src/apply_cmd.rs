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
        production: None,
    })
    .map_err(|error| failed("open the apply process", &error))?;
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
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(aba.clone().serve(listener, stopped.clone()));
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
