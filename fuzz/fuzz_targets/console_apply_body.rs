//! Feed arbitrary bytes to the path of the console's `POST /v1/config` and
//! `POST /v1/config/plan` bodies: the JSON body (`{"toml", "destroy"?, "confirm"?, "file"?}`),
//! the configuration inside it, and the planner against an empty and against a valid
//! current configuration. None of it may panic; a plan is only made from a valid config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redoubt_plan::PlanOptions;
use serde::Deserialize;

/// The body as the console decodes it (`redoubt_console::api::ConfigBody`).
#[derive(Deserialize)]
struct ConfigBody {
    toml: String,
    #[serde(default)]
    destroy: bool,
    #[serde(default)]
    #[allow(dead_code)]
    confirm: bool,
    #[serde(default)]
    file: Option<String>,
}

const CURRENT: &str = r#"
[[server]]
name = "prod-a"
address = "10.0.0.1:7411"
data_dir = "/var/lib/redoubt"
[[server]]
name = "dr-b"
address = "10.0.0.2:7411"
data_dir = "/var/lib/redoubt"
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
"#;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<ConfigBody>(data) else {
        return;
    };
    let file = body.file.as_deref().unwrap_or("config.toml");
    let Ok(new) = redoubt_config::parse(file, &body.toml) else {
        return;
    };
    let options = PlanOptions {
        destroy_production_data: body.destroy,
    };
    let _ = redoubt_plan::plan(None, &new, options);
    if let Ok(current) = redoubt_config::parse("current.toml", CURRENT) {
        if let Ok(plans) = redoubt_plan::plan(Some(&current), &new, options) {
            let _ = redoubt_plan::report::to_json(&plans);
        }
    }
});
