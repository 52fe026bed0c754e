//! Every method of the protocol is served by the agent and appears in the
//! JSON Schema (generated and checked in) and in docs/agent-protocol.md:
//! this fails when a method is added to `protocol::service`'s list without
//! being documented, and when the server stops routing one of them.

mod common;

use std::path::PathBuf;

use capsa_agent::protocol::*;
use common::*;

fn repo_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn schema_methods(schema: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = schema["methods"]
        .as_object()
        .expect("the schema has `methods`")
        .keys()
        .cloned()
        .collect();
    names.sort();
    names
}

#[test]
fn every_method_is_in_the_schema_and_the_docs() {
    let mut names: Vec<String> = METHOD_NAMES.iter().map(|s| s.to_string()).collect();
    names.sort();
    let generated = schema::generate();
    assert_eq!(schema_methods(&generated), names);
    let checked_in: serde_json::Value =
        serde_json::from_str(&repo_file("docs/agent-protocol.schema.json")).unwrap();
    assert_eq!(schema_methods(&checked_in), names);
    for name in &names {
        let entry = &generated["methods"][name];
        assert!(entry["params"].is_object(), "{name}: no params schema");
        assert!(entry["result"].is_object(), "{name}: no result schema");
    }
    let doc = repo_file("docs/agent-protocol.md");
    for name in &names {
        assert!(
            doc.contains(&format!("### `{name}`")),
            "docs/agent-protocol.md has no section for `{name}`"
        );
    }
    let codes = generated["errorCodes"].as_object().unwrap();
    for code in ErrorCode::ALL {
        assert_eq!(codes[code.name()], code.code(), "{}", code.name());
        assert!(
            doc.contains(code.name()),
            "docs/agent-protocol.md does not name {}",
            code.name()
        );
    }
}

/// Each method, called with params of the wrong type, reaches its handler
/// (INVALID_PARAMS from decoding its params), not METHOD_NOT_FOUND; and an
/// unknown name does not.
#[test]
fn every_method_is_served() {
    let fx = start("methods");
    let client = fx.client();
    // `shutdown` last: it ends the agent's container.
    let mut names = METHOD_NAMES.to_vec();
    names.sort_by_key(|n| *n == method::Shutdown::NAME);
    for name in names {
        let err = client
            .call_value(name, serde_json::json!(["not", "an", "object"]), None)
            .unwrap_err();
        assert_eq!(
            err.rpc_code(),
            Some(ErrorCode::InvalidParams),
            "{name}: {err}"
        );
    }
    let err = client
        .call_value("frobnicate", serde_json::json!({}), None)
        .unwrap_err();
    assert_eq!(err.rpc_code(), Some(ErrorCode::MethodNotFound));
}
