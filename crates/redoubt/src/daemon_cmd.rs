//! `redoubt agent` and `redoubt console`: the two daemons, in the foreground; SIGTERM or
//! Ctrl-C stops them cleanly (final checkpoints, data paths closed).

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::cli::{AgentArgs, ConsoleArgs};
use crate::exit::{ExitCodeKind, Failure};

fn failed(what: &str, error: &dyn std::fmt::Display) -> Failure {
    Failure::new(ExitCodeKind::Failed, format!("{what}: {error}"))
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| failed("start the runtime", &error))
}

/// A channel that turns true on SIGTERM or Ctrl-C.
fn stop_on_signal() -> Result<watch::Receiver<bool>, Failure> {
    let (stop, stopped) = watch::channel(false);
    let mut terminate = signal(SignalKind::terminate())
        .map_err(|error| failed("install SIGTERM handler", &error))?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = stop.send(true);
    });
    Ok(stopped)
}

pub fn agent(args: AgentArgs) -> Result<(), Failure> {
    let tls = crate::ca_cmd::identity(args.tls_dir.as_deref(), &args.state_dir, &args.name)?;
    runtime()?.block_on(async {
        let config = redoubt_agent::AgentConfig {
            name: args.name.clone(),
            listen: args.listen.clone(),
            state_dir: args.state_dir.clone(),
            tls,
        };
        if let Some(url) = &args.fence {
            redoubt_agent::fencing::install_etcd(url)
                .await
                .map_err(|error| failed("connect the production fence", &error))?;
        }
        let bound = redoubt_agent::bind(config)
            .await
            .map_err(|error| failed("start the agent", &error))?;
        let address = bound
            .local_addr()
            .map_err(|error| failed("read the listening address", &error))?;
        println!("ready {address}");
        let stopped = stop_on_signal()?;
        bound
            .serve(stopped)
            .await
            .map_err(|error| failed("agent", &error))
    })
}

pub fn console(args: ConsoleArgs) -> Result<(), Failure> {
    let tls = crate::ca_cmd::identity(
        args.tls_dir.as_deref(),
        &args.state_dir,
        redoubt_tls::CONSOLE_NAME,
    )?;
    runtime()?.block_on(async {
        let config = redoubt_console::ConsoleConfig {
            listen: args.listen.clone(),
            state_dir: args.state_dir.clone(),
        };
        let agents = redoubt_console::HttpAgentClient::with_tls(tls.clone())
            .map_err(|error| failed("start the console", &error))?;
        let console =
            redoubt_console::Console::bind_with_agent(config, std::sync::Arc::new(agents))
                .await
                .map_err(|error| failed("start the console", &error))?;
        // With a TLS identity the API and the web console are HTTPS only (docs/security.md).
        let console = match tls {
            Some(tls) => console.with_https(tls),
            None => {
                let address = console
                    .local_addr()
                    .map_err(|error| failed("read the listening address", &error))?;
                if let Some(banner) = plaintext_api_warning(address) {
                    eprintln!("{banner}");
                    tracing::warn!(%address, "the console API is plain HTTP on a non-loopback address");
                }
                console
            }
        };
        let console = match &args.store {
            Some(store) => redoubt_console::leader::into_etcd(
                console,
                store,
                args.advertise.clone(),
                redoubt_console::leader::LEADER_TIMING,
            )
            .await
            .map_err(|error| failed("start the console on etcd", &error))?,
            None => console,
        };
        let url = console
            .url()
            .map_err(|error| failed("read the listening address", &error))?;
        println!("ready {url}");
        println!("token {}", console.token_path().display());
        let stopped = stop_on_signal()?;
        console
            .serve(stopped)
            .await
            .map_err(|error| failed("console", &error))
    })
}

/// The banner of a console whose API is plain HTTP on `address` (None on loopback): a
/// non-loopback address sends every client's token in clear text.
fn plaintext_api_warning(address: std::net::SocketAddr) -> Option<String> {
    if address.ip().is_loopback() {
        return None;
    }
    let banner = "!".repeat(78);
    Some(format!(
        "{banner}\nWARNING: the console API listens on {address} in PLAIN HTTP: every client's \
         token crosses the network in clear text.\nServe it over HTTPS: --tls-dir DIR with \
         ca.pem, console.pem, console.key (`redoubt ca issue console --san HOST`; \
         docs/security.md).\n{banner}"
    ))
}

#[cfg(test)]
mod tests {
    use super::plaintext_api_warning;

    #[test]
    fn plain_http_off_loopback_gets_a_loud_warning() {
        for loopback in ["127.0.0.1:7400", "[::1]:7400"] {
            assert_eq!(plaintext_api_warning(loopback.parse().unwrap()), None);
        }
        for exposed in ["0.0.0.0:7400", "198.18.0.1:7400", "[::]:7400"] {
            let banner = plaintext_api_warning(exposed.parse().unwrap()).unwrap();
            assert!(banner.contains("PLAIN HTTP"), "{banner}");
            assert!(banner.contains(exposed), "{banner}");
            assert!(banner.contains("--tls-dir"), "{banner}");
        }
    }
}
