//! The cluster CA (`redoubt ca init`) and the certificates it issues (`redoubt ca issue`).
//!
//! Every issued certificate carries its name as its only subject alternative name and may
//! serve both ends of a connection (server and client authentication): an agent accepts
//! replication and HTTP connections and opens replication and peer-health connections.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::{is_valid_name, TlsError, CA_CERT_FILE, CA_KEY_FILE};

/// The CA's common name; leaf certificates name it as their issuer.
const CA_COMMON_NAME: &str = "Redoubt cluster CA";
/// How long the CA is valid.
pub const CA_VALIDITY_YEARS: i32 = 20;
/// How long an issued certificate is valid.
pub const CERT_VALIDITY_YEARS: i32 = 5;
/// Mode of every key file written here.
pub const KEY_FILE_MODE: u32 = 0o600;
/// Mode of certificate files (public).
pub const CERT_FILE_MODE: u32 = 0o644;

/// Files written by [`init`] or [`issue`].
#[derive(Debug, Clone)]
pub struct Written {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn current_year() -> i32 {
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    // 365.2425 days per year: exact enough for a validity window measured in years.
    1970 + i32::try_from(seconds / 31_556_952).unwrap_or(0)
}

/// The CA's parameters: the same every time, so [`issue`] can sign with the key alone.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_COMMON_NAME);
    name.push(DnType::OrganizationName, "Redoubt");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + CA_VALIDITY_YEARS, 1, 1);
    params
}

/// Creates the cluster CA in `dir`: `ca.pem` and `ca.key` (0600). Refuses, changing nothing,
/// when either exists.
pub fn init(dir: &Path) -> Result<Written, TlsError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(TlsError::AlreadyExists(path.clone()));
        }
    }
    create_dir(dir)?;
    let key = KeyPair::generate()?;
    let cert = ca_params().self_signed(&key)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), KEY_FILE_MODE)?;
    write_new(&cert_path, cert.pem().as_bytes(), CERT_FILE_MODE)?;
    Ok(Written {
        cert: cert_path,
        key: key_path,
    })
}

/// Issues the certificate of `name` (a server, or `console`) with the CA in `dir`:
/// `NAME.pem` and `NAME.key` (0600). Refuses, changing nothing, when either exists or the
/// name is not a valid server name.
pub fn issue(dir: &Path, name: &str) -> Result<Written, TlsError> {
    issue_with_names(dir, name, &[])
}

/// Most extra names one certificate carries.
pub const EXTRA_NAMES_MAX: usize = 32;

/// Whether `name` may be an extra subject alternative name: an IP address or a DNS name.
pub fn is_valid_extra_name(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_ok()
        || (name.len() <= 253 && rustls::pki_types::DnsName::try_from(name).is_ok())
}

/// [`issue`] with more subject alternative names than `name` (DNS names or IP addresses):
/// what a browser or the CLI checks when it connects to `https://HOST:PORT` (the console's
/// API: `localhost`, `127.0.0.1`, the host's name and addresses).
pub fn issue_with_names(dir: &Path, name: &str, extra: &[String]) -> Result<Written, TlsError> {
    if !is_valid_name(name) || name == "ca" {
        return Err(TlsError::InvalidName(name.to_string()));
    }
    if extra.len() > EXTRA_NAMES_MAX {
        return Err(TlsError::InvalidExtraName(format!(
            "{} names (at most {EXTRA_NAMES_MAX})",
            extra.len()
        )));
    }
    if let Some(bad) = extra.iter().find(|extra| !is_valid_extra_name(extra)) {
        return Err(TlsError::InvalidExtraName(bad.clone()));
    }
    let ca_key_path = dir.join(CA_KEY_FILE);
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(TlsError::AlreadyExists(path.clone()));
        }
    }
    if !dir.join(CA_CERT_FILE).exists() || !ca_key_path.exists() {
        return Err(TlsError::Missing {
            path: ca_key_path,
            why: "run `redoubt ca init` in this directory first",
        });
    }
    let ca_pem = read(&ca_key_path)?;
    let ca_key = KeyPair::from_pem(&ca_pem).map_err(|_| TlsError::BadPem {
        path: ca_key_path.clone(),
        what: "private key",
    })?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let mut names = vec![name.to_string()];
    names.extend(extra.iter().filter(|extra| *extra != name).cloned());
    let mut params = CertificateParams::new(names)?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, name);
    subject.push(DnType::OrganizationName, "Redoubt");
    params.distinguished_name = subject;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let year = current_year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + CERT_VALIDITY_YEARS, 1, 1);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), KEY_FILE_MODE)?;
    write_new(&cert_path, cert.pem().as_bytes(), CERT_FILE_MODE)?;
    Ok(Written {
        cert: cert_path,
        key: key_path,
    })
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
        action: "create directory",
        path: dir.to_path_buf(),
        source,
    })
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file that must not exist yet, with `mode` from its creation on (a key is never
/// readable by others, not even for a moment), then syncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let io = |action| {
        move |source| TlsError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io("create"))?;
    file.write_all(bytes).map_err(io("write"))?;
    file.sync_all().map_err(io("sync"))?;
    Ok(())
}
