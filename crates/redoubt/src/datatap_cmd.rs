//! `redoubt datatap`: one group's datatap served straight from the command line.

use std::path::PathBuf;
use std::sync::Arc;

use redoubt_config::units::parse_size_bytes;
use redoubt_datatap::{bind, serve, Engine, EngineConfig, Export, Exports, Listen, Op};
use redoubt_volume::{ContainerCapacities, GroupStore, IoMode, VolumeSpec};
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::DatatapArgs;
use crate::exit::{ExitCodeKind, Failure};

fn invalid(message: String) -> Failure {
    Failure::new(ExitCodeKind::Invalid, message)
}

fn parse_volume(text: &str) -> Result<VolumeSpec, Failure> {
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
    let (engine, volumes, commit_thread) = Engine::open(&mut store, &specs, config)
        .map_err(|error| failed("open the datatap", &error))?;
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
    let exports = Arc::new(Exports::new(exports));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| failed("start the runtime", &error))?;
    let result = runtime.block_on(async {
        let bound = bind(&listen)
            .await
            .map_err(|error| failed(&format!("listen on {}", args.listen), &error))?;
        for name in &names {
            println!("ready {}", bound.uri(name));
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve(bound, exports, stopped));
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
