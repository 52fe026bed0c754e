//! The protocol's methods, defined once. Each entry of the list below gives
//! a method's wire name, its params and result types, and the name of its
//! handler; from it come:
//!
//! - a marker type per method in [`method`], implementing [`Method`] (what
//!   the client calls:
//!   [`Client::call`](crate::client::Client::call)`::<method::Ps>(…)`),
//! - the [`Service`] trait, one handler per method, which the agent
//!   implements (an unserved method does not compile),
//! - [`dispatch`], the server's routing of a request to its handler,
//! - [`visit_methods`] and [`METHOD_NAMES`], from which the JSON Schema
//!   ([`super::schema`]) lists the methods.
//!
//! Notifications (the agent's pushed messages) implement
//! [`AgentNotification`].

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::*;

/// One method of the protocol.
pub trait Method {
    /// Its name on the wire (the request's `method`).
    const NAME: &'static str;
    /// Its `params`.
    type Params: Serialize + DeserializeOwned + JsonSchema;
    /// Its `result`.
    type Result: Serialize + DeserializeOwned + JsonSchema;
}

/// A notification the agent pushes (a request without `id`).
pub trait AgentNotification {
    /// Its name on the wire.
    const NAME: &'static str;
    /// Its `params`.
    type Params: Serialize + DeserializeOwned + JsonSchema;
}

/// `exit`: a process of the container exited.
#[derive(Debug, Clone, Copy)]
pub struct Exit;

impl AgentNotification for Exit {
    const NAME: &'static str = "exit";
    type Params = ProcessExit;
}

/// Looks at every method in turn ([`visit_methods`]).
pub trait MethodVisitor {
    /// Called once per method.
    fn visit<M: Method>(&mut self);
}

/// Why a request did not reach its handler, or its result could not be
/// encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DispatchError {
    /// No method of this name ([`ErrorCode::MethodNotFound`]).
    #[error("method not found: {0}")]
    MethodNotFound(String),
    /// The params are not an object, or not the method's params
    /// ([`ErrorCode::InvalidParams`]).
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// The result could not be encoded ([`ErrorCode::InternalError`]).
    #[error("cannot encode the result: {0}")]
    Result(String),
}

/// Decodes `params` (absent: `{}`; anything but an object is an error) as
/// `M`'s, calls `handler` and encodes its result.
fn call<M: Method, E: From<DispatchError>>(
    params: Value,
    handler: impl FnOnce(M::Params) -> Result<M::Result, E>,
) -> Result<Value, E> {
    let params = match params {
        Value::Null => Value::Object(Default::default()),
        obj @ Value::Object(_) => obj,
        _ => return Err(DispatchError::InvalidParams("params must be an object".into()).into()),
    };
    let p: M::Params =
        serde_json::from_value(params).map_err(|e| DispatchError::InvalidParams(e.to_string()))?;
    let result = handler(p)?;
    serde_json::to_value(result).map_err(|e| DispatchError::Result(e.to_string()).into())
}

macro_rules! methods {
    ($(
        $(#[$doc:meta])*
        $ty:ident = $name:literal, $params:ty => $result:ty, $handler:ident;
    )*) => {
        /// One marker type per method, implementing [`Method`].
        pub mod method {
            use super::*;
            $(
                $(#[$doc])*
                #[derive(Debug, Clone, Copy)]
                pub struct $ty;

                impl Method for $ty {
                    const NAME: &'static str = $name;
                    type Params = $params;
                    type Result = $result;
                }
            )*
        }

        /// Every method's wire name.
        pub const METHOD_NAMES: &[&str] = &[$($name),*];

        /// Calls `visitor` for every method.
        pub fn visit_methods(visitor: &mut impl MethodVisitor) {
            $( visitor.visit::<method::$ty>(); )*
        }

        /// The server side of the protocol: one handler per method, which
        /// does the work of the method (Kata's `do_<method>`).
        pub trait Service {
            /// The handlers' error; also what [`dispatch`] returns when a
            /// request does not reach a handler.
            type Error: From<DispatchError>;
            $(
                #[doc = concat!("Handles `", $name, "`.")]
                fn $handler(&self, params: $params) -> Result<$result, Self::Error>;
            )*
        }

        /// Routes a request for `method` to `service`'s handler and returns
        /// the encoded result.
        pub fn dispatch<S: Service + ?Sized>(
            service: &S,
            method: &str,
            params: Value,
        ) -> Result<Value, S::Error> {
            match method {
                $( $name => call::<method::$ty, S::Error>(params, |p| service.$handler(p)), )*
                other => Err(DispatchError::MethodNotFound(other.to_string()).into()),
            }
        }
    };
}

methods! {
    /// `hello`: checks the protocol version; returns the agent's boot info.
    Hello = "hello", HelloParams => HelloResult, do_hello;
    /// `new_machine`: makes a guest restored from a template a machine of
    /// its own (RNG, clock, devices); before `create`, once.
    NewMachine = "new_machine", NewMachineParams => NewMachineResult, do_new_machine;
    /// `create`: sets up the container; its init process waits for `start`.
    Create = "create", CreateParams => CreateResult, do_create;
    /// `start`: starts the container's init process.
    Start = "start", StartParams => StartResult, do_start;
    /// `exec`: starts another process in the container.
    Exec = "exec", ExecParams => ExecResult, do_exec;
    /// `wait`: blocks until a process exited.
    Wait = "wait", WaitParams => ProcessExit, do_wait;
    /// `signal`: a signal to one process (its group) or to all.
    Signal = "signal", SignalParams => Empty, do_signal;
    /// `resize`: a process's terminal size.
    Resize = "resize", ResizeParams => Empty, do_resize;
    /// `stats`: memory, cpu time and pid count.
    Stats = "stats", Empty => StatsResult, do_stats;
    /// `ps`: the container's processes.
    Ps = "ps", Empty => PsResult, do_ps;
    /// `pause`: freezes the container's processes (cgroup v2
    /// `cgroup.freeze` in the guest).
    Pause = "pause", Empty => Empty, do_pause;
    /// `resume`: thaws them.
    Resume = "resume", Empty => Empty, do_resume;
    /// `shutdown`: the agent answers, then ends the guest.
    Shutdown = "shutdown", Empty => Empty, do_shutdown;
}
