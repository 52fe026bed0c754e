//! `capsa-agent`: PID 1 of the guest.
//!
//! Boot path: mount the pseudo filesystems, make sure fds 0-2 are open, log to
//! /dev/kmsg, write the boot-timer mark, then serve the control protocol on
//! vsock port 1024 and stdio streams on port 1025. Nothing here may end the
//! process: PID 1 exiting panics the kernel, so every failure is logged and
//! the agent keeps serving (or idles until the VMM kills the VM).

// No function over 80 lines (clippy.toml).
#![warn(clippy::too_many_lines)]

use std::sync::Arc;
use std::time::Duration;

use capsa_agent::agent_log;
use capsa_agent::guest::{init, vsock::VsockListener, GuestPlatform};
use capsa_agent::protocol::{CONTROL_PORT, STREAM_PORT};
use capsa_agent::server::{self, uptime_ms, Agent};

fn bind_retrying(port: u32) -> VsockListener {
    let mut attempt = 0u32;
    loop {
        match VsockListener::bind(port) {
            Ok(l) => return l,
            Err(e) => {
                attempt = attempt.saturating_add(1);
                if attempt <= 3 {
                    agent_log!("vsock bind port {port}: {e}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn run() {
    let start_ms = uptime_ms();
    if std::process::id() == 1 {
        init::mount_pseudo_filesystems();
        init::ensure_stdio();
        init::log_to_kmsg();
        init::mark_boot_timer();
    }
    let agent = Agent::new(Arc::new(GuestPlatform::default()), start_ms);
    let control = bind_retrying(CONTROL_PORT);
    let streams = bind_retrying(STREAM_PORT);
    let stream_agent = agent.clone();
    if let Err(e) = std::thread::Builder::new()
        .name("capsa-streams".into())
        .spawn(move || server::serve_streams(stream_agent, streams))
    {
        agent_log!("cannot start the stream listener: {e}");
    }
    agent_log!("ready after {} ms of uptime", uptime_ms());
    if std::process::id() == 1 {
        // Both listeners are bound: the VMM may snapshot the VM here (a
        // template restored from it answers on the control port at once).
        init::mark_boot_timer_value(capsa_agent::protocol::BOOT_TIMER_AGENT_READY_MAGIC);
    }
    server::serve_control(agent, control);
}

fn main() {
    std::panic::set_hook(Box::new(|info| agent_log!("panic: {info}")));
    let _ = std::panic::catch_unwind(run);
    agent_log!("agent main loop ended; idling");
    loop {
        // SAFETY: pause(2) only waits for a signal.
        unsafe { libc::pause() };
    }
}
