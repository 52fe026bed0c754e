//! JSON Schema of the protocol, generated from the Rust types with `schemars`.
//!
//! The checked-in copy is `docs/agent-protocol.schema.json`; the test
//! `tests/schema.rs` fails when it is stale. Regenerate it with
//! `CAPSA_UPDATE_SCHEMA=1 cargo test -p capsa-agent --test schema`.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};

use super::*;

fn entry<P: JsonSchema, R: JsonSchema>(
    generator: &mut schemars::SchemaGenerator,
    methods: &mut Map<String, Value>,
    name: &str,
) {
    let params = generator.subschema_for::<P>().to_value();
    let result = generator.subschema_for::<R>().to_value();
    methods.insert(
        name.to_string(),
        json!({ "params": params, "result": result }),
    );
}

/// Builds the schema document: `methods` maps each method name to the schemas
/// of its `params` and `result`, `notifications` each notification to its
/// `params`, `envelope` the JSON-RPC objects and stream lines, and
/// `definitions` holds every type (draft-07).
pub fn generate() -> Value {
    let mut generator = SchemaSettings::draft07().into_generator();
    let mut methods = Map::new();
    entry::<HelloParams, HelloResult>(&mut generator, &mut methods, method::HELLO);
    entry::<CreateParams, CreateResult>(&mut generator, &mut methods, method::CREATE);
    entry::<StartParams, StartResult>(&mut generator, &mut methods, method::START);
    entry::<ExecParams, ExecResult>(&mut generator, &mut methods, method::EXEC);
    entry::<WaitParams, ProcessExit>(&mut generator, &mut methods, method::WAIT);
    entry::<SignalParams, Empty>(&mut generator, &mut methods, method::SIGNAL);
    entry::<ResizeParams, Empty>(&mut generator, &mut methods, method::RESIZE);
    entry::<Empty, StatsResult>(&mut generator, &mut methods, method::STATS);
    entry::<Empty, PsResult>(&mut generator, &mut methods, method::PS);
    entry::<Empty, Empty>(&mut generator, &mut methods, method::PAUSE);
    entry::<Empty, Empty>(&mut generator, &mut methods, method::RESUME);
    entry::<Empty, Empty>(&mut generator, &mut methods, method::SHUTDOWN);
    let exit = generator.subschema_for::<ProcessExit>().to_value();
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
        "methods": methods,
        "notifications": { method::EXIT: { "params": exit } },
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
