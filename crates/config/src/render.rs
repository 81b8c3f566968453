//! [`Config`] → TOML text in the user-facing format, so that a rendered config parses back to
//! the same value (the round trip is tested).

use std::fmt::Write;

use crate::model::{Compression, Config, Mode};
use crate::units::{Bytes, Seconds};

pub fn render_toml(config: &Config) -> String {
    let mut out = String::new();
    for server in &config.servers {
        out.push_str("[[server]]\n");
        let _ = writeln!(out, "name = {}", quote(&server.name));
        let _ = writeln!(out, "address = {}", quote(&server.address));
        let _ = writeln!(
            out,
            "data_dir = {}",
            quote(&server.data_dir.display().to_string())
        );
        if let Some(listen) = &server.nbd_listen {
            let _ = writeln!(out, "nbd_listen = {}", quote(&listen.to_string()));
        }
        if server.nbd_tls {
            let _ = writeln!(out, "nbd_tls = true");
        }
        out.push('\n');
    }
    for group in &config.groups {
        out.push_str("[[group]]\n");
        let _ = writeln!(out, "name = {}", quote(&group.name));
        let _ = writeln!(out, "production = {}", quote(&group.production));
        let recovery: Vec<String> = group.recovery.iter().map(|name| quote(name)).collect();
        let _ = writeln!(out, "recovery = [{}]", recovery.join(", "));
        let mode = match group.mode {
            Mode::Async => "async",
            Mode::Sync => "sync",
        };
        let _ = writeln!(out, "mode = {}", quote(mode));
        let _ = writeln!(
            out,
            "retention = {}",
            quote(&Seconds(group.retention_seconds).to_string())
        );
        let throttle = if group.throttle_bytes_per_second == 0 {
            "0".to_string()
        } else {
            format!("{}/s", Bytes(group.throttle_bytes_per_second))
        };
        let _ = writeln!(out, "throttle = {}", quote(&throttle));
        let compression = match group.compression {
            Compression::None => "none",
            Compression::Zstd => "zstd",
        };
        let _ = writeln!(out, "compression = {}", quote(compression));
        out.push_str("\n[group.containers]\n");
        let containers = &group.containers;
        let _ = writeln!(
            out,
            "replication = {}",
            quote(&Bytes(containers.replication_bytes).to_string())
        );
        let _ = writeln!(
            out,
            "log_record_file = {}",
            quote(&Bytes(containers.log_record_file_bytes).to_string())
        );
        let _ = writeln!(
            out,
            "snapshot = {}",
            quote(&Bytes(containers.snapshot_bytes).to_string())
        );
        for volume in &group.volumes {
            out.push_str("\n[[group.volume]]\n");
            let _ = writeln!(out, "name = {}", quote(&volume.name));
            let _ = writeln!(
                out,
                "size = {}",
                quote(&Bytes(volume.size_bytes).to_string())
            );
            if let Some(source) = &volume.source {
                let _ = writeln!(out, "source = {}", quote(&source.display().to_string()));
            }
        }
        out.push('\n');
    }
    out
}

/// A TOML basic string with every character that needs it escaped.
fn quote(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(quoted, "\\u{:04X}", c as u32);
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}
