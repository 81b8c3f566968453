//! `redoubt ca init|issue`: the cluster CA and the certificates of servers and the console
//! (`docs/security.md`).

use std::path::Path;
use std::sync::Arc;

use crate::cli::CaCommand;
use crate::exit::{ExitCodeKind, Failure};

fn failure(error: redoubt_tls::TlsError) -> Failure {
    let code = match error {
        redoubt_tls::TlsError::AlreadyExists(_)
        | redoubt_tls::TlsError::InvalidName(_)
        | redoubt_tls::TlsError::InvalidExtraName(_)
        | redoubt_tls::TlsError::Missing { .. } => ExitCodeKind::Invalid,
        _ => ExitCodeKind::Failed,
    };
    Failure::new(code, error.to_string())
}

pub fn run(command: CaCommand) -> Result<(), Failure> {
    match command {
        CaCommand::Init { dir } => {
            let written = redoubt_tls::ca::init(&dir).map_err(failure)?;
            println!("CA certificate {}", written.cert.display());
            println!(
                "CA key         {} (0600; keep it off the servers)",
                written.key.display()
            );
        }
        CaCommand::Issue { name, dir, san } => {
            let written = redoubt_tls::ca::issue_with_names(&dir, &name, &san).map_err(failure)?;
            println!("certificate {}", written.cert.display());
            println!("key         {} (0600)", written.key.display());
        }
    }
    Ok(())
}

/// The TLS identity of a daemon named `name`: from `--tls-dir` when given (it must load),
/// else from `<state_dir>/tls` when that holds a CA certificate, else none (plaintext, with a
/// warning).
pub fn identity(
    tls_dir: Option<&Path>,
    state_dir: &Path,
    name: &str,
) -> Result<Option<Arc<redoubt_tls::TlsContext>>, Failure> {
    redoubt_tls::install_provider();
    let default_dir = state_dir.join("tls");
    let dir = match tls_dir {
        Some(dir) => dir.to_path_buf(),
        None if default_dir.join(redoubt_tls::CA_CERT_FILE).exists() => default_dir,
        None => {
            tracing::warn!(
                "TLS is off: no --tls-dir and no {}/{}; connections between Redoubt processes are plaintext",
                default_dir.display(),
                redoubt_tls::CA_CERT_FILE
            );
            return Ok(None);
        }
    };
    let context = redoubt_tls::TlsContext::load(&dir, name).map_err(|error| {
        Failure::new(
            ExitCodeKind::Invalid,
            format!(
                "load the TLS identity {name:?} from {}: {error}",
                dir.display()
            ),
        )
    })?;
    Ok(Some(Arc::new(context)))
}
