//! The *Change Replication Group* wizard's decision: the current configuration plus the
//! operator's edits of one group (LVs added, removed or grown, containers resized, recovery
//! servers added or removed, tunables) → the new configuration's TOML. Pure: no I/O; the
//! result is validated by the same parser as any configuration file, and planned by the same
//! planner as `POST /v1/config/plan`.

use serde::Deserialize;

use redoubt_config::units::{
    parse_duration_seconds, parse_rate_bytes_per_second, parse_size_bytes, Bytes, Seconds,
};
use redoubt_config::{Compression, Config, Mode, NbdListen, Server, Volume};

/// Most LV edits one wizard submission may carry (the group's limit is larger, but nobody
/// types more than this into one form).
pub const FORM_VOLUMES_MAX: usize = 256;

/// The wizard's form, as the page's script sends it (`POST /ui/groups/{group}/change/plan`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ChangeForm {
    /// Every current LV with its (possibly grown) size and whether to remove it.
    #[serde(default)]
    pub volumes: Vec<VolumeEdit>,
    /// New LVs.
    #[serde(default)]
    pub add_volumes: Vec<NewVolume>,
    pub replication: String,
    pub log_record_file: String,
    pub snapshot: String,
    /// The recovery servers, in role order (recovery 1 first): names of configured servers.
    #[serde(default)]
    pub recovery: Vec<String>,
    /// A server not yet in the configuration, to add as a recovery server.
    #[serde(default)]
    pub new_server: Option<NewServer>,
    pub mode: String,
    pub retention: String,
    pub throttle: String,
    pub compression: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct VolumeEdit {
    pub name: String,
    pub size: String,
    #[serde(default)]
    pub remove: bool,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct NewVolume {
    pub name: String,
    pub size: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct NewServer {
    pub name: String,
    pub address: String,
    pub data_dir: String,
}

/// The form's initial values: the group as configured now.
pub fn form_of(config: &Config, group: &str) -> Option<ChangeForm> {
    let group = config.group(group)?;
    Some(ChangeForm {
        volumes: group
            .volumes
            .iter()
            .map(|volume| VolumeEdit {
                name: volume.name.clone(),
                size: Bytes(volume.size_bytes).to_string(),
                remove: false,
            })
            .collect(),
        add_volumes: Vec::new(),
        replication: Bytes(group.containers.replication_bytes).to_string(),
        log_record_file: Bytes(group.containers.log_record_file_bytes).to_string(),
        snapshot: Bytes(group.containers.snapshot_bytes).to_string(),
        recovery: group.recovery.clone(),
        new_server: None,
        mode: group.mode.as_str().to_string(),
        retention: Seconds(group.retention_seconds).to_string(),
        throttle: if group.throttle_bytes_per_second == 0 {
            "0".to_string()
        } else {
            format!("{}/s", Bytes(group.throttle_bytes_per_second))
        },
        compression: group.compression.as_str().to_string(),
    })
}

/// Applies `form` to group `group_name` of `current`: the new configuration's TOML, or every
/// problem found (what, which field, why). The TOML still has to pass the configuration parser
/// (sizes against containers, names, roles), which the caller runs.
pub fn compose(
    current: &Config,
    group_name: &str,
    form: &ChangeForm,
) -> Result<String, Vec<String>> {
    let mut config = current.clone();
    let mut errors = Vec::new();
    let Some(index) = config.groups.iter().position(|g| g.name == group_name) else {
        return Err(vec![format!(
            "no group named {group_name} in the configuration"
        )]);
    };
    if form.volumes.len() + form.add_volumes.len() > FORM_VOLUMES_MAX {
        return Err(vec![format!(
            "too many volume edits in one change: at most {FORM_VOLUMES_MAX}"
        )]);
    }
    let size = |field: &str, text: &str, errors: &mut Vec<String>| -> Option<u64> {
        match parse_size_bytes(text) {
            Ok(bytes) => Some(bytes),
            Err(reason) => {
                errors.push(format!("{field}: {reason}"));
                None
            }
        }
    };

    // Servers first: a new recovery server must exist before the group names it.
    if let Some(new_server) = &form.new_server {
        let name = new_server.name.trim();
        if !name.is_empty() {
            if config.server(name).is_some() {
                errors.push(format!("new server {name}: a server of that name exists already; tick it in the list instead"));
            } else {
                config.servers.push(Server {
                    name: name.to_string(),
                    address: new_server.address.trim().to_string(),
                    data_dir: new_server.data_dir.trim().into(),
                    nbd_listen: None::<NbdListen>,
                    nbd_tls: false,
                });
            }
        }
    }
    let group = &mut config.groups[index];

    let mut volumes = Vec::with_capacity(group.volumes.len() + form.add_volumes.len());
    for volume in &group.volumes {
        let edit = form.volumes.iter().find(|edit| edit.name == volume.name);
        match edit {
            Some(edit) if edit.remove => {}
            Some(edit) => {
                let field = format!("volume {} size", volume.name);
                let size_bytes = size(&field, &edit.size, &mut errors).unwrap_or(volume.size_bytes);
                if size_bytes < volume.size_bytes {
                    errors.push(format!(
                        "{field}: {} is smaller than the current {}; an LV can grow, never shrink",
                        edit.size.trim(),
                        Bytes(volume.size_bytes)
                    ));
                }
                volumes.push(Volume {
                    size_bytes,
                    ..volume.clone()
                });
            }
            None => volumes.push(volume.clone()),
        }
    }
    for edit in &form.volumes {
        if group.volume(&edit.name).is_none() {
            errors.push(format!("volume {}: not in group {group_name}", edit.name));
        }
    }
    for added in &form.add_volumes {
        let name = added.name.trim();
        if name.is_empty() && added.size.trim().is_empty() {
            continue;
        }
        if volumes.iter().any(|volume| volume.name == name) {
            errors.push(format!(
                "new volume {name}: the group has a volume of that name"
            ));
            continue;
        }
        let field = format!("new volume {name} size");
        if let Some(size_bytes) = size(&field, &added.size, &mut errors) {
            volumes.push(Volume {
                name: name.to_string(),
                size_bytes,
                source: None,
            });
        }
    }
    group.volumes = volumes;

    if let Some(bytes) = size("replication container", &form.replication, &mut errors) {
        group.containers.replication_bytes = bytes;
    }
    if let Some(bytes) = size(
        "log record file container",
        &form.log_record_file,
        &mut errors,
    ) {
        group.containers.log_record_file_bytes = bytes;
    }
    if let Some(bytes) = size("snapshot container", &form.snapshot, &mut errors) {
        group.containers.snapshot_bytes = bytes;
    }

    let mut recovery: Vec<String> = Vec::new();
    for name in form
        .recovery
        .iter()
        .map(|name| name.trim().to_string())
        .chain(
            form.new_server
                .as_ref()
                .map(|server| server.name.trim().to_string())
                .filter(|name| !name.is_empty()),
        )
    {
        if !recovery.contains(&name) {
            recovery.push(name);
        }
    }
    group.recovery = recovery;

    match form.mode.trim() {
        "async" => group.mode = Mode::Async,
        "sync" => group.mode = Mode::Sync,
        other => errors.push(format!("mode: `{other}` is neither async nor sync")),
    }
    match parse_duration_seconds(&form.retention) {
        Ok(seconds) => group.retention_seconds = seconds,
        Err(reason) => errors.push(format!("retention: {reason}")),
    }
    match parse_rate_bytes_per_second(&form.throttle) {
        Ok(rate) => group.throttle_bytes_per_second = rate,
        Err(reason) => errors.push(format!("throttle: {reason}")),
    }
    match form.compression.trim() {
        "zstd" => group.compression = Compression::Zstd,
        "none" => group.compression = Compression::None,
        other => errors.push(format!("compression: `{other}` is neither zstd nor none")),
    }
    if errors.is_empty() {
        Ok(redoubt_config::render_toml(&config))
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[[server]]
name = "prod-a"
address = "127.0.0.1:7411"
data_dir = "/d/a"
nbd_listen = "127.0.0.1:10809"

[[server]]
name = "dr-b"
address = "127.0.0.1:7412"
data_dir = "/d/b"

[[server]]
name = "dr-c"
address = "127.0.0.1:7413"
data_dir = "/d/c"

[[group]]
name = "erp"
production = "prod-a"
recovery = ["dr-b"]
mode = "async"
retention = "24h"
throttle = "0"
compression = "zstd"

[group.containers]
replication = "4GiB"
log_record_file = "1GiB"
snapshot = "1GiB"

[[group.volume]]
name = "lv_data01"
size = "1GiB"

[[group.volume]]
name = "lv_logs"
size = "64MiB"
"#;

    fn config() -> Config {
        redoubt_config::parse("c.toml", CONFIG).expect("valid")
    }

    #[test]
    fn the_unchanged_form_gives_the_same_configuration() {
        let config = config();
        let form = form_of(&config, "erp").expect("group");
        let toml = compose(&config, "erp", &form).expect("composes");
        assert_eq!(
            redoubt_config::parse("new.toml", &toml).expect("valid"),
            config
        );
    }

    #[test]
    fn every_kind_of_edit_lands_in_the_new_configuration() {
        let config = config();
        let mut form = form_of(&config, "erp").expect("group");
        form.volumes[0].size = "2GiB".into();
        form.volumes[1].remove = true;
        form.add_volumes.push(NewVolume {
            name: "lv_index".into(),
            size: "32MiB".into(),
        });
        form.recovery = vec!["dr-b".into(), "dr-c".into()];
        form.snapshot = "2GiB".into();
        form.mode = "sync".into();
        form.retention = "48h".into();
        form.throttle = "100MiB/s".into();
        form.compression = "none".into();
        let toml = compose(&config, "erp", &form).expect("composes");
        let new = redoubt_config::parse("new.toml", &toml).expect("valid");
        let group = new.group("erp").expect("group");
        let volumes: Vec<(&str, u64)> = group
            .volumes
            .iter()
            .map(|v| (v.name.as_str(), v.size_bytes))
            .collect();
        assert_eq!(
            volumes,
            vec![("lv_data01", 2 << 30), ("lv_index", 32 << 20)]
        );
        assert_eq!(group.recovery, vec!["dr-b", "dr-c"]);
        assert_eq!(group.containers.snapshot_bytes, 2 << 30);
        assert_eq!(group.mode, Mode::Sync);
        assert_eq!(group.retention_seconds, 48 * 3600);
        assert_eq!(group.throttle_bytes_per_second, 100 << 20);
        assert_eq!(group.compression, Compression::None);
    }

    #[test]
    fn a_new_server_is_added_to_the_servers_and_the_group() {
        let config = config();
        let mut form = form_of(&config, "erp").expect("group");
        form.new_server = Some(NewServer {
            name: "dr-d".into(),
            address: "127.0.0.1:7414".into(),
            data_dir: "/d/d".into(),
        });
        let toml = compose(&config, "erp", &form).expect("composes");
        let new = redoubt_config::parse("new.toml", &toml).expect("valid");
        assert!(new.server("dr-d").is_some());
        assert_eq!(
            new.group("erp").expect("group").recovery,
            vec!["dr-b", "dr-d"]
        );
    }

    #[test]
    fn bad_input_is_named_and_nothing_is_composed() {
        let config = config();
        let mut form = form_of(&config, "erp").expect("group");
        form.volumes[0].size = "512MiB".into();
        form.add_volumes.push(NewVolume {
            name: "lv_x".into(),
            size: "lots".into(),
        });
        form.mode = "fast".into();
        form.retention = "forever".into();
        let errors = compose(&config, "erp", &form).expect_err("refused");
        let text = errors.join("\n");
        assert!(text.contains("volume lv_data01 size"), "{text}");
        assert!(text.contains("never shrink"), "{text}");
        assert!(text.contains("new volume lv_x size"), "{text}");
        assert!(text.contains("mode: `fast`"), "{text}");
        assert!(text.contains("retention:"), "{text}");
        assert_eq!(errors.len(), 4, "{text}");
        assert!(compose(&config, "nope", &form).is_err());
    }
}
