//! `redoubt status --format xml` checked against docs/status.xsd by a real validator
//! (xmllint, libxml2-utils from scripts/deps.sh).

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Fails the test, with xmllint's complaint and the document, unless `xml` is valid.
/// `scratch` is a directory the test owns (the document is written there for xmllint).
pub fn assert_valid(xml: &str, scratch: &Path) {
    let xml_path = scratch.join("status.xml");
    std::fs::write(&xml_path, xml).unwrap();
    let schema = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/status.xsd");
    let lint = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(schema)
        .arg(&xml_path)
        .output()
        .expect("run xmllint (libxml2-utils, scripts/deps.sh)");
    assert!(
        lint.status.success(),
        "xmllint: {}\n{xml}",
        String::from_utf8_lossy(&lint.stderr)
    );
}
