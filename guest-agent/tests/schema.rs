//! The checked-in JSON Schema must match the Rust types. Regenerate with
//! `CAPSA_UPDATE_SCHEMA=1 cargo test -p capsa-agent --test schema`.

use std::path::PathBuf;

#[test]
fn checked_in_schema_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/agent-protocol.schema.json");
    let fresh = capsa_agent::protocol::schema::generate_pretty();
    if std::env::var_os("CAPSA_UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &fresh).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == fresh,
        "{} is stale: run CAPSA_UPDATE_SCHEMA=1 cargo test -p capsa-agent --test schema",
        path.display()
    );
}
