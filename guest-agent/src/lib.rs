//! capsa guest agent and the host↔guest control protocol.
//!
//! The crate has two faces:
//!
//! - the **library**, shared with the host: [`protocol`] (JSON-RPC 2.0 types,
//!   one JSON object per line), [`client`] (the typed blocking host-side client)
//!   and [`server`] (the agent's RPC server, generic over its transport so that
//!   protocol tests run the real server on the host over Unix sockets);
//! - the **binary** `capsa-agent`, PID 1 of the guest, which adds the guest
//!   specifics in [`guest`] (early mounts, boot-timer mark, vsock listeners,
//!   rootfs mounting).
//!
//! The wire protocol is documented in `docs/agent-protocol.md`; its JSON
//! Schema (`docs/agent-protocol.schema.json`) is generated from the types in
//! [`protocol`] by [`protocol::schema::generate`].
#![deny(missing_docs)]
// No function over 80 lines (clippy.toml): each does one step a reader can follow.
#![warn(clippy::too_many_lines)]

pub mod client;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod guest;
pub mod log;
pub mod protocol;
pub mod server;
