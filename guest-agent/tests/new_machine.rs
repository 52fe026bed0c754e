//! `new_machine` through the real server, on a [`DirectoryPlatform`] that
//! records its steps (the host's RNG, clock and devices are not touched):
//! the steps in order, the checks of every field before any step, and the
//! state rules (before `create`, once).

mod common;

use capsa_agent::client::ClientError;
use capsa_agent::protocol::*;
use capsa_agent::server::{DirectoryPlatform, MachineStep};
use common::*;

const NOW_NS: u64 = 1_750_000_000_123_456_789;

fn params(entropy_bytes: usize, devices: &[&str]) -> NewMachineParams {
    NewMachineParams {
        realtime_ns: NOW_NS,
        entropy: "a5".repeat(entropy_bytes),
        devices: devices.iter().map(|d| d.to_string()).collect(),
    }
}

fn invalid_params(r: Result<NewMachineResult, ClientError>, field: &str) {
    let e = r.unwrap_err();
    assert_eq!(e.rpc_code(), Some(ErrorCode::InvalidParams), "{e}");
    assert!(e.to_string().contains(field), "{field}: {e}");
}

#[test]
fn steps_run_in_order_and_the_result_names_the_devices() {
    let fx = start("new-machine");
    let c = fx.client();
    let got = c
        .new_machine(&params(
            64,
            &["virtio-mmio.2", "virtio-mmio.0", "virtio-mmio.1"],
        ))
        .unwrap();
    assert_eq!(
        got.bound,
        ["virtio-mmio.2", "virtio-mmio.0", "virtio-mmio.1"]
    );
    assert_eq!(
        *fx.platform.machine.lock().unwrap(),
        [
            MachineStep::Reseed { bytes: 64 },
            MachineStep::Clock {
                realtime_ns: NOW_NS
            },
            MachineStep::Bind("virtio-mmio.2".into()),
            MachineStep::Bind("virtio-mmio.0".into()),
            MachineStep::Bind("virtio-mmio.1".into()),
        ]
    );
    // Once only, and `create` still follows.
    let e = c.new_machine(&params(32, &[])).unwrap_err();
    assert_eq!(e.rpc_code(), Some(ErrorCode::InvalidState), "{e}");
    assert!(e.to_string().contains("already"), "{e}");
    assert_eq!(fx.platform.machine.lock().unwrap().len(), 5);
    fx.create(&c, &["true"]);
}

#[test]
fn every_field_is_checked_before_any_step() {
    let fx = start("new-machine-checks");
    let c = fx.client();
    for device in [
        "virtio-mmio.2x",
        "../x",
        "virtio-mmio.256",
        "virtio-mmio.01",
        "",
    ] {
        invalid_params(
            c.new_machine(&params(32, &["virtio-mmio.0", device])),
            "devices[1]",
        );
    }
    invalid_params(
        c.new_machine(&params(32, &["virtio-mmio.3", "virtio-mmio.3"])),
        "devices[1]",
    );
    let many: Vec<String> = (0..33).map(|i| format!("virtio-mmio.{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    invalid_params(c.new_machine(&params(32, &many)), "devices");
    invalid_params(c.new_machine(&params(31, &[])), "entropy");
    invalid_params(c.new_machine(&params(257, &[])), "entropy");
    let mut odd = params(32, &[]);
    odd.entropy.push('0');
    invalid_params(c.new_machine(&odd), "entropy");
    let mut not_hex = params(32, &[]);
    not_hex.entropy.replace_range(10..12, "g0");
    invalid_params(c.new_machine(&not_hex), "entropy");
    // A missing or mistyped field, as any method's params.
    let e = c
        .call_value(
            method::NewMachine::NAME,
            serde_json::json!({"entropy": "00"}),
            None,
        )
        .unwrap_err();
    assert_eq!(e.rpc_code(), Some(ErrorCode::InvalidParams), "{e}");
    assert!(e.to_string().contains("realtimeNs"), "{e}");
    let e = c
        .call_value(
            method::NewMachine::NAME,
            serde_json::json!({"realtimeNs": -1, "entropy": "00"}),
            None,
        )
        .unwrap_err();
    assert_eq!(e.rpc_code(), Some(ErrorCode::InvalidParams), "{e}");
    // Nothing was done, and rejected calls do not count: an empty device
    // list and the extreme sizes are fine.
    assert!(fx.platform.machine.lock().unwrap().is_empty());
    let got = c.new_machine(&params(256, &[])).unwrap();
    assert!(got.bound.is_empty());
    assert_eq!(
        fx.platform.machine.lock().unwrap()[0],
        MachineStep::Reseed { bytes: 256 }
    );
}

#[test]
fn not_after_create_nor_shutdown() {
    let fx = start("new-machine-late");
    let c = fx.client();
    fx.create(&c, &["true"]);
    let e = c.new_machine(&params(32, &["virtio-mmio.0"])).unwrap_err();
    assert_eq!(e.rpc_code(), Some(ErrorCode::InvalidState), "{e}");
    assert!(e.to_string().contains("create"), "{e}");
    assert!(fx.platform.machine.lock().unwrap().is_empty());

    let fx = start("new-machine-down");
    let c = fx.client();
    c.call::<method::Shutdown>(&Empty {}, None).unwrap();
    let e = c.new_machine(&params(32, &[])).unwrap_err();
    assert_eq!(e.rpc_code(), Some(ErrorCode::ShuttingDown), "{e}");
}

#[test]
fn a_failed_bind_names_the_device_and_its_errno_and_counts() {
    let fx = start_with(
        "new-machine-enodev",
        DirectoryPlatform {
            missing_device: Some("virtio-mmio.4".into()),
            ..Default::default()
        },
    );
    let c = fx.client();
    let e = c
        .new_machine(&params(
            32,
            &["virtio-mmio.3", "virtio-mmio.4", "virtio-mmio.5"],
        ))
        .unwrap_err();
    assert_eq!(e.rpc_code(), Some(ErrorCode::OsError), "{e}");
    let ClientError::Rpc(rpc) = &e else {
        panic!("{e}")
    };
    assert_eq!(rpc.data.as_ref().and_then(|d| d.errno), Some(libc::ENODEV));
    assert!(rpc.message.contains("devices[1]"), "{e}");
    assert!(rpc.message.contains("virtio-mmio.4"), "{e}");
    // The steps before it ran; none after it.
    assert_eq!(
        fx.platform.machine.lock().unwrap().last(),
        Some(&MachineStep::Bind("virtio-mmio.3".into()))
    );
    // It went past its checks: it counts.
    let e = c.new_machine(&params(32, &[])).unwrap_err();
    assert_eq!(e.rpc_code(), Some(ErrorCode::InvalidState), "{e}");
}

/// The names on the wire: `new_machine`, `realtimeNs`, `entropy`,
/// `devices`, and `bound` in the result.
#[test]
fn wire_names() {
    let fx = start("new-machine-wire");
    let (mut w, mut r) = fx.raw();
    let entropy = "0f".repeat(32);
    send_line(
        &mut w,
        &format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"new_machine","params":{{"realtimeNs":{NOW_NS},"entropy":"{entropy}","devices":["virtio-mmio.0"]}}}}"#
        ),
    );
    let v = recv_json(&mut r);
    assert_eq!(v["id"], 1);
    assert_eq!(v["result"], serde_json::json!({"bound": ["virtio-mmio.0"]}));
}
