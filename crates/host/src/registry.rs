//! The attachments of a server, on disk: `<state_dir>/attachments.json`, written atomically
//! (temporary file, fsync, rename, fsync directory).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Attachment, HostError};

const FORMAT_VERSION: u32 = 1;
/// Largest registry read; far above any real one.
const REGISTRY_FILE_BYTES_MAX: u64 = 4 << 20;

#[derive(Serialize, Deserialize)]
struct OnDisk {
    format_version: u32,
    attachments: Vec<Attachment>,
}

pub struct Registry {
    path: PathBuf,
    pub attachments: BTreeMap<String, Attachment>,
}

impl Registry {
    pub fn load(path: &Path) -> Result<Registry, HostError> {
        let invalid = |message: String| HostError::Registry {
            path: path.to_path_buf(),
            message,
        };
        let mut bytes = Vec::new();
        match std::fs::File::open(path) {
            Ok(file) => {
                file.take(REGISTRY_FILE_BYTES_MAX + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|error| invalid(format!("read: {error}")))?;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Registry {
                    path: path.to_path_buf(),
                    attachments: BTreeMap::new(),
                })
            }
            Err(error) => return Err(invalid(format!("open: {error}"))),
        }
        if bytes.len() as u64 > REGISTRY_FILE_BYTES_MAX {
            return Err(invalid(format!(
                "larger than {REGISTRY_FILE_BYTES_MAX} bytes"
            )));
        }
        let on_disk: OnDisk =
            serde_json::from_slice(&bytes).map_err(|error| invalid(format!("parse: {error}")))?;
        if on_disk.format_version != FORMAT_VERSION {
            return Err(invalid(format!(
                "unsupported format_version {}",
                on_disk.format_version
            )));
        }
        Ok(Registry {
            path: path.to_path_buf(),
            attachments: on_disk
                .attachments
                .into_iter()
                .map(|attachment| (attachment.key(), attachment))
                .collect(),
        })
    }

    pub fn save(&self) -> Result<(), HostError> {
        let on_disk = OnDisk {
            format_version: FORMAT_VERSION,
            attachments: self.attachments.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&on_disk).map_err(|error| HostError::Registry {
            path: self.path.clone(),
            message: format!("encode: {error}"),
        })?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| HostError::Io {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        redoubt_durable::replace(&self.path, &bytes).map_err(io("replace durably", &self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Backend;

    #[test]
    fn attachments_survive_a_save_and_load_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attachments.json");
        let mut registry = Registry::load(&path).unwrap();
        let attachment = Attachment {
            group: "g".into(),
            volume: "lv0".into(),
            snapshot: Some("s1".into()),
            export: "nbd://127.0.0.1:10809/lv0".into(),
            read_only: true,
            backend: Backend::FuseLoop,
            device: "/dev/loop3".into(),
            link: "/dev/redoubt/g/lv0@s1".into(),
            fuse_file: Some("/var/lib/redoubt/attachments/g_lv0@s1/mnt/lv0".into()),
            helper_pid: Some(42),
            attached_unix_ms: 1,
        };
        registry
            .attachments
            .insert(attachment.key(), attachment.clone());
        registry.save().unwrap();
        let loaded = Registry::load(&path).unwrap();
        assert_eq!(loaded.attachments.get("g/lv0@s1"), Some(&attachment));

        std::fs::write(&path, b"{not json").unwrap();
        let error = Registry::load(&path).err().unwrap().to_string();
        assert!(
            error.contains("attachments.json") && error.contains("parse"),
            "{error}"
        );
    }
}
