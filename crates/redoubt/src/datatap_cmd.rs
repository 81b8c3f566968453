//! `redoubt datatap`: one group's datatap served straight from the command line.

use std::path::PathBuf;
use std::sync::Arc;

use redoubt_config::units::parse_size_bytes;
use redoubt_datatap::{bind, serve, Engine, EngineConfig, Export, Exports, Listen, Op};
use redoubt_replication::{lca, LcaConfig, TargetStatus, Targets};
use redoubt_volume::{ContainerCapacities, GroupStore, IoMode, VolumeSpec};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::DatatapArgs;
use crate::exit::{ExitCodeKind, Failure};

pub fn invalid(message: String) -> Failure {
    Failure::new(ExitCodeKind::Invalid, message)
}

pub fn parse_volume(text: &str) -> Result<VolumeSpec, Failure> {
    let mut parts = text.splitn(3, ':');
    let (Some(name), Some(size)) = (parts.next(), parts.next()) else {
        return Err(invalid(format!(
            "--volume {text:?}: expected NAME:SIZE or NAME:SIZE:SOURCE"
        )));
    };
    if !redoubt_config::is_valid_name(name) {
        return Err(invalid(format!(
            "--volume {text:?}: invalid name {name:?} (1 to 63 of a-z, 0-9, '.', '_', '-')"
        )));
    }
    let size_bytes =
        parse_size_bytes(size).map_err(|reason| invalid(format!("--volume {text:?}: {reason}")))?;
    if size_bytes == 0 || size_bytes % redoubt_config::VOLUME_BLOCK_SIZE_BYTES != 0 {
        return Err(invalid(format!(
            "--volume {text:?}: the size must be a positive multiple of 4096"
        )));
    }
    Ok(VolumeSpec {
        name: name.to_string(),
        size_bytes,
        source: parts.next().map(PathBuf::from),
    })
}

pub fn run(args: DatatapArgs) -> Result<(), Failure> {
    let specs = args
        .volumes
        .iter()
        .map(|v| parse_volume(v))
        .collect::<Result<Vec<_>, _>>()?;
    let journal_capacity_bytes = parse_size_bytes(&args.journal_capacity)
        .map_err(|reason| invalid(format!("--journal-capacity: {reason}")))?;
    if journal_capacity_bytes < redoubt_config::LOG_RECORD_FILE_BYTES_MIN {
        return Err(invalid("--journal-capacity: at least 16MiB".into()));
    }
    let listen = match args.listen.strip_prefix("unix:") {
        Some(path) => Listen::Unix(PathBuf::from(path)),
        None => Listen::Tcp(args.listen.clone()),
    };
    let created_bytes: u64 = specs
        .iter()
        .filter(|s| s.source.is_none())
        .map(|s| s.size_bytes)
        .sum();
    let capacities = ContainerCapacities {
        replication_bytes: created_bytes.max(4096),
        log_record_file_bytes: journal_capacity_bytes,
        snapshot_bytes: 4096,
    };
    let failed = |what: &str, error: &dyn std::fmt::Display| {
        Failure::new(ExitCodeKind::Failed, format!("{what}: {error}"))
    };
    let mut store = GroupStore::open_or_create(&args.dir, &args.group, capacities)
        .map_err(|error| failed("open the group's containers", &error))?;
    let mut config = EngineConfig::new(&args.group, journal_capacity_bytes);
    if args.direct {
        config.io_mode = IoMode::Auto;
    }
    config.sync_replication = match args.mode.as_str() {
        "async" => false,
        "sync" if args.targets.is_empty() => {
            return Err(invalid("--mode sync needs at least one --target".into()))
        }
        "sync" => true,
        other => return Err(invalid(format!("--mode {other:?}: use async or sync"))),
    };
    let (engine, volumes, commit_thread) = Engine::open(&mut store, &specs, config)
        .map_err(|error| failed("open the datatap", &error))?;
    let compression_level = match args.compression.as_str() {
        "zstd" => Some(1),
        "none" => None,
        other => {
            return Err(invalid(format!(
                "--compression {other:?}: use zstd or none"
            )))
        }
    };
    let throttle_bytes_per_second =
        redoubt_config::units::parse_rate_bytes_per_second(&args.throttle)
            .map_err(|reason| invalid(format!("--throttle: {reason}")))?;
    if args.targets.len() > redoubt_config::RECOVERY_SERVERS_PER_GROUP_MAX {
        return Err(invalid(
            "at most two --target (recovery 1 and recovery 2)".into(),
        ));
    }
    let mut replication = Vec::new();
    let mut target_names = Vec::new();
    for target in &args.targets {
        let Some((name, address)) = target.split_once('=') else {
            return Err(invalid(format!(
                "--target {target:?}: expected NAME=HOST:PORT"
            )));
        };
        redoubt_config::parse::check_host_port(address)
            .map_err(|reason| invalid(format!("--target {target:?}: {reason}")))?;
        target_names.push(name.to_string());
        replication.push(LcaConfig {
            group: args.group.clone(),
            sender_name: args.name.clone(),
            target_name: name.to_string(),
            target_address: address.to_string(),
            config_version: 0,
            journal: engine.journal().clone(),
            compression_level,
            throttle_bytes_per_second,
            batch_bytes: lca::BATCH_BYTES_DEFAULT,
        });
    }
    let exports: Vec<Export> = volumes
        .into_iter()
        .map(|opened| Export {
            description: format!("redoubt LV {} of group {}", opened.name, args.group),
            name: opened.name,
            lv_id: opened.lv_id,
            volume: opened.volume,
            engine: engine.clone(),
            read_only: false,
        })
        .collect();
    let names: Vec<String> = exports.iter().map(|e| e.name.clone()).collect();
    let mut exports =
        Exports::new(exports).with_reply_stall_timeout_ms(args.reply_stall_timeout_ms);
    if let (Some(dir), Some(name)) = (&args.tls_dir, &args.tls_name) {
        redoubt_tls::install_provider();
        let tls = redoubt_tls::TlsContext::load(dir, name).map_err(|error| {
            invalid(format!(
                "--tls-dir {} --tls-name {name}: load the TLS identity: {error}",
                dir.display()
            ))
        })?;
        let tls = Arc::new(tls);
        if !args.targets.is_empty() {
            // The send processes present this identity; a recovery server checks it names
            // the sender it follows.
            if name != &args.name {
                return Err(invalid(format!(
                    "--tls-name {name} with --target: replication presents this certificate, so it must be this server's --name ({})",
                    args.name
                )));
            }
            redoubt_tls::registry::register(tls.clone());
        }
        exports = exports.with_tls(tls);
    } else if !args.targets.is_empty() {
        eprintln!(
            "redoubt datatap: WARNING: replication to {} is plain text and unauthenticated; give --tls-dir DIR --tls-name {} (the recovery servers: redoubt apply --tls-dir … --production {})",
            args.targets.join(", "),
            args.name,
            args.name
        );
    }
    let exports = Arc::new(exports);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| failed("start the runtime", &error))?;
    let result = runtime.block_on(async {
        let bound = bind(&listen)
            .await
            .map_err(|error| failed(&format!("listen on {}", args.listen), &error))?;
        for name in &names {
            println!("ready {}", bound.uri_with_tls(name, exports.requires_tls()));
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve(bound, exports, stopped.clone()));
        let targets = Arc::new(Targets {
            statuses: replication
                .iter()
                .map(|_| Arc::new(TargetStatus::default()))
                .collect(),
        });
        if !replication.is_empty() {
            // Nothing is shipped yet: the journal keeps every record until targets hold it.
            engine
                .watermarks()
                .shipped_seq
                .store(0, std::sync::atomic::Ordering::Release);
        }
        for (config, status) in replication.into_iter().zip(targets.statuses.iter()) {
            tokio::spawn(lca::run(
                config,
                engine.watermarks().clone(),
                status.clone(),
                targets.clone(),
                stopped.clone(),
            ));
        }
        if args.full_sync {
            engine
                .submit(Op::FullSync {
                    lv_ids: Vec::new(),
                    targets: redoubt_datatap::ResyncTargets::Every,
                })
                .await
                .map_err(|error| failed("start the full sync", &error))?;
        }
        if let Some(path) = args.status_file.clone() {
            let watermarks = engine.watermarks().clone();
            let targets = targets.clone();
            let names = target_names.clone();
            tokio::spawn(crate::status_file::keep_writing(
                path,
                stopped.clone(),
                move || crate::status_file::production_json(&watermarks, &names, &targets),
            ));
        }
        let mut terminate = signal(SignalKind::terminate())
            .map_err(|error| failed("install SIGTERM handler", &error))?;
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = stop.send(true);
        let _ = server.await;
        engine
            .submit(Op::Checkpoint)
            .await
            .map_err(|error| failed("final checkpoint", &error))?;
        Ok::<(), Failure>(())
    });
    drop(engine);
    drop(runtime);
    let _ = commit_thread.join();
    result
}
