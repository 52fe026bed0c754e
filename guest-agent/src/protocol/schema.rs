//! JSON Schema of the protocol, generated from the Rust types with `schemars`.
//!
//! The checked-in copy is `docs/agent-protocol.schema.json`; the test
//! `tests/schema.rs` fails when it is stale. Regenerate it with
//! `CAPSA_UPDATE_SCHEMA=1 cargo test -p capsa-agent --test schema`.

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use super::*;

/// Adds each method's params and result schemas to `methods`.
struct Entries<'a> {
    generator: &'a mut schemars::SchemaGenerator,
    methods: Map<String, Value>,
}

impl MethodVisitor for Entries<'_> {
    fn visit<M: Method>(&mut self) {
        let params = self.generator.subschema_for::<M::Params>().to_value();
        let result = self.generator.subschema_for::<M::Result>().to_value();
        self.methods.insert(
            M::NAME.to_string(),
            json!({ "params": params, "result": result }),
        );
    }
}

/// Builds the schema document: `methods` maps each method name (every one of
/// [`super::service`]'s list) to the schemas of its `params` and `result`,
/// `notifications` each notification to its `params`, `errorCodes` each
/// [`ErrorCode`] name to its number, `envelope` the JSON-RPC objects and
/// stream lines, and `definitions` holds every type (draft-07).
pub fn generate() -> Value {
    let mut generator = SchemaSettings::draft07().into_generator();
    let mut entries = Entries {
        generator: &mut generator,
        methods: Map::new(),
    };
    visit_methods(&mut entries);
    let methods = entries.methods;
    let exit = generator
        .subschema_for::<<Exit as AgentNotification>::Params>()
        .to_value();
    let error_codes: Map<String, Value> = ErrorCode::ALL
        .iter()
        .map(|c| (c.name().to_string(), json!(c.code())))
        .collect();
    let envelope = json!({
        "request": generator.subschema_for::<Request>().to_value(),
        "response": generator.subschema_for::<Response>().to_value(),
        "streamHeader": generator.subschema_for::<StreamHeader>().to_value(),
        "streamAck": generator.subschema_for::<StreamAck>().to_value(),
    });
    let definitions = generator.take_definitions(true);
    json!({
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "capsa agent protocol",
        "description": "JSON-RPC 2.0 over vsock between the capsa host and its guest agent; see docs/agent-protocol.md",
        "protocolVersion": PROTOCOL_VERSION,
        "constants": {
            "controlPort": CONTROL_PORT,
            "streamPort": STREAM_PORT,
            "maxLineBytes": MAX_LINE_BYTES,
            "maxStreamHeaderBytes": MAX_STREAM_HEADER_BYTES,
        },
        "errorCodes": error_codes,
        "methods": methods,
        "notifications": { Exit::NAME: { "params": exit } },
        "envelope": envelope,
        "definitions": definitions,
    })
}

/// [`generate`] as pretty-printed text with a trailing newline, as checked in.
pub fn generate_pretty() -> String {
    let mut text = serde_json::to_string_pretty(&generate()).unwrap_or_default();
    text.push('\n');
    text
}
