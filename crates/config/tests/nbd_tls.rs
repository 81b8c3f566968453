//! `nbd_tls` on a `[[server]]`: a boolean, only with `nbd_listen`, rendered back.

use redoubt_config::{parse, render_toml};

fn file(server_extra: &str) -> String {
    format!(
        r#"
[[server]]
name = "prod-a"
address = "127.0.0.1:7411"
data_dir = "/var/lib/redoubt"
{server_extra}

[[server]]
name = "dr-b"
address = "127.0.0.1:7412"
data_dir = "/var/lib/redoubt"

[[group]]
name = "erp"
production = "prod-a"
recovery = ["dr-b"]

[group.containers]
replication = "64MiB"
log_record_file = "16MiB"
snapshot = "16MiB"

[[group.volume]]
name = "lv0"
size = "16MiB"
"#
    )
}

#[test]
fn nbd_tls_is_a_boolean_that_needs_nbd_listen_and_round_trips() {
    let on = parse(
        "test.toml",
        &file("nbd_listen = \"127.0.0.1:10809\"\nnbd_tls = true"),
    )
    .expect("valid");
    assert!(on.server("prod-a").is_some_and(|server| server.nbd_tls));
    assert!(on.server("dr-b").is_some_and(|server| !server.nbd_tls));
    let rendered = render_toml(&on);
    assert!(rendered.contains("nbd_tls = true"), "{rendered}");
    assert_eq!(parse("rendered.toml", &rendered).expect("round trip"), on);

    let off = parse("test.toml", &file("nbd_listen = \"127.0.0.1:10809\"")).expect("valid");
    assert!(off.server("prod-a").is_some_and(|server| !server.nbd_tls));
    assert!(!render_toml(&off).contains("nbd_tls"));

    let Err(errors) = parse(
        "test.toml",
        &file("nbd_listen = \"127.0.0.1:10809\"\nnbd_tls = \"yes\""),
    ) else {
        panic!("a string is not a boolean");
    };
    assert!(
        errors.iter().any(|e| e.line == 7
            && e.field == "server[prod-a].nbd_tls"
            && e.reason.contains("expected true or false")),
        "{errors:?}"
    );
    let Err(errors) = parse("test.toml", &file("nbd_tls = true")) else {
        panic!("nbd_tls without nbd_listen protects nothing");
    };
    assert!(
        errors
            .iter()
            .any(|e| e.line == 6 && e.reason.contains("needs nbd_listen")),
        "{errors:?}"
    );
}
