//! Negative tests of the control protocol: the server answers every bad
//! input with the documented error and keeps serving.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use capsa_agent::protocol::*;
use common::*;

fn code(v: &serde_json::Value) -> ErrorCode {
    v["error"]["code"]
        .as_i64()
        .and_then(ErrorCode::from_code)
        .unwrap_or_else(|| panic!("no error in {v}"))
}

#[test]
fn bad_json_unknown_method_and_bad_requests() {
    let fx = start("errors");
    let (mut w, mut r) = fx.raw();
    send_line(&mut w, "{not json");
    let v = recv_json(&mut r);
    assert_eq!(code(&v), ErrorCode::ParseError);
    assert!(v["id"].is_null());

    send_line(&mut w, "[1,2]");
    assert_eq!(code(&recv_json(&mut r)), ErrorCode::InvalidRequest);

    send_line(&mut w, r#"{"jsonrpc":"1.0","id":1,"method":"ps"}"#);
    let v = recv_json(&mut r);
    assert_eq!(
        (code(&v), v["id"].as_i64()),
        (ErrorCode::InvalidRequest, Some(1))
    );

    send_line(&mut w, r#"{"jsonrpc":"2.0","id":{"x":1},"method":"ps"}"#);
    assert_eq!(code(&recv_json(&mut r)), ErrorCode::InvalidRequest);

    send_line(&mut w, r#"{"jsonrpc":"2.0","id":2,"method":"frobnicate"}"#);
    let v = recv_json(&mut r);
    assert_eq!(
        (code(&v), v["id"].as_i64()),
        (ErrorCode::MethodNotFound, Some(2))
    );

    send_line(
        &mut w,
        r#"{"jsonrpc":"2.0","id":"s","method":"hello","params":{"protocolVersion":"one"}}"#,
    );
    let v = recv_json(&mut r);
    assert_eq!(
        (code(&v), v["id"].as_str()),
        (ErrorCode::InvalidParams, Some("s"))
    );

    send_line(
        &mut w,
        r#"{"jsonrpc":"2.0","id":3,"method":"hello","params":{"protocolVersion":1,"extra":true}}"#,
    );
    assert_eq!(code(&recv_json(&mut r)), ErrorCode::InvalidParams);

    send_line(
        &mut w,
        r#"{"jsonrpc":"2.0","id":4,"method":"ps","params":[1]}"#,
    );
    assert_eq!(code(&recv_json(&mut r)), ErrorCode::InvalidParams);

    send_line(
        &mut w,
        r#"{"jsonrpc":"2.0","id":5,"method":"hello","params":{"protocolVersion":999}}"#,
    );
    let v = recv_json(&mut r);
    assert_eq!(code(&v), ErrorCode::UnsupportedVersion);
    assert_eq!(v["error"]["data"]["supportedVersions"][0], PROTOCOL_VERSION);

    // A notification (no id) gets no answer; the next request still does.
    send_line(&mut w, r#"{"jsonrpc":"2.0","method":"ps"}"#);
    send_line(
        &mut w,
        r#"{"jsonrpc":"2.0","id":6,"method":"hello","params":{"protocolVersion":1}}"#,
    );
    let v = recv_json(&mut r);
    assert_eq!(v["id"].as_i64(), Some(6));
    assert_eq!(v["result"]["protocolVersion"], PROTOCOL_VERSION);
}

#[test]
fn invalid_state_and_no_such_process() {
    let fx = start("state");
    let c = fx.client();
    assert_eq!(
        c.start().unwrap_err().rpc_code(),
        Some(ErrorCode::InvalidState)
    );
    let exec = ExecParams {
        process: process(&["true"]),
        stdin: false,
    };
    assert_eq!(
        c.exec(&exec).unwrap_err().rpc_code(),
        Some(ErrorCode::InvalidState)
    );
    assert_eq!(
        c.wait(99).unwrap_err().rpc_code(),
        Some(ErrorCode::NoSuchProcess)
    );
    assert_eq!(
        c.signal(99, 15).unwrap_err().rpc_code(),
        Some(ErrorCode::NoSuchProcess)
    );
    assert_eq!(
        c.resize(99, 1, 1).unwrap_err().rpc_code(),
        Some(ErrorCode::NoSuchProcess)
    );
    assert_eq!(
        c.signal_all(99).unwrap_err().rpc_code(),
        Some(ErrorCode::InvalidParams)
    );

    let mut bad = create_params(&["true"]);
    bad.rootfs.source = Some("/nonexistent/rootfs".into());
    assert_eq!(
        c.create(&bad).unwrap_err().rpc_code(),
        Some(ErrorCode::MountFailed)
    );
    let mut bad = create_params(&[]);
    bad.process.args.clear();
    assert_eq!(
        c.create(&bad).unwrap_err().rpc_code(),
        Some(ErrorCode::InvalidParams)
    );

    for tag in ["", "..", "a/b", &"x".repeat(37)] {
        let mut bad = create_params(&["true"]);
        bad.shares = vec![ShareSpec { tag: tag.into() }];
        let e = c.create(&bad).unwrap_err();
        assert_eq!(e.rpc_code(), Some(ErrorCode::InvalidParams), "{tag:?}");
    }
    assert!(fx.platform.shares.lock().unwrap().is_empty());

    let mut params = create_params(&["true"]);
    params.shares = vec![ShareSpec {
        tag: "capsa".into(),
    }];
    let created = c.create(&params).unwrap();
    assert_eq!(
        *fx.platform.shares.lock().unwrap(),
        [ShareSpec {
            tag: "capsa".into()
        }]
    );
    assert_eq!(
        c.create(&create_params(&["true"])).unwrap_err().rpc_code(),
        Some(ErrorCode::InvalidState)
    );
    // Not started yet: cannot signal or resize (no tty).
    assert_eq!(
        c.signal(created.process_id, 15).unwrap_err().rpc_code(),
        Some(ErrorCode::InvalidState)
    );
    assert_eq!(
        c.resize(created.process_id, 1, 1).unwrap_err().rpc_code(),
        Some(ErrorCode::InvalidState)
    );
}

#[test]
fn huge_lines_are_rejected_and_the_connection_stays_usable() {
    let fx = start("huge");
    let (mut w, mut r) = fx.raw();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..3 {
            w.write_all(&chunk).unwrap();
        }
        send_line(&mut w, "");
        send_line(
            &mut w,
            r#"{"jsonrpc":"2.0","id":7,"method":"hello","params":{"protocolVersion":1}}"#,
        );
        w
    });
    let v = recv_json(&mut r);
    assert_eq!(code(&v), ErrorCode::LineTooLong);
    let v = recv_json(&mut r);
    assert_eq!(v["id"].as_i64(), Some(7));
    writer.join().unwrap();
}

#[test]
fn vanishing_clients_do_not_hurt_the_server() {
    let fx = start("vanish");
    for _ in 0..5 {
        let mut s = UnixStream::connect(&fx.connector.ports[&CONTROL_PORT]).unwrap();
        let _ = s.write_all(br#"{"jsonrpc":"2.0","id":1,"method":"hel"#);
        drop(s);
    }
    // A stream connection that vanishes before its header, and one with a bad token.
    drop(UnixStream::connect(&fx.connector.ports[&STREAM_PORT]).unwrap());
    let err = capsa_agent::client::attach_stream(&fx.connector, "nope").unwrap_err();
    assert!(err.to_string().contains("unknown"), "{err}");

    let c = fx.client();
    let created = fx.create(&c, &["sh", "-c", "echo hi; sleep 0.2"]);
    // A client that attaches stdout, then vanishes mid-stream while a wait is pending.
    let out = fx.attach(&created.streams.stdout);
    {
        let c2 = fx.client();
        c2.start().unwrap();
        let (s, _r) = fx.raw();
        let mut s = s;
        send_line(
            &mut s,
            &format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"wait","params":{{"processId":{}}}}}"#,
                created.process_id
            ),
        );
        drop(s);
    }
    drop(out);
    let exit = c.wait(created.process_id).unwrap();
    assert!(exit.exit_code.is_some() || exit.signal.is_some());
    assert!(c.hello(Duration::from_secs(5)).is_ok());
}

#[test]
fn create_checks_the_network_and_hands_it_to_the_platform() {
    let fx = start("network");
    let client = fx.client();
    let iface = InterfaceSpec {
        name: "eth0".into(),
        mac: "02:42:ac:11:00:02".into(),
        mtu: 1500,
        addresses: vec!["10.88.0.5/16".into()],
        routes: vec![RouteSpec {
            destination: "0.0.0.0/0".into(),
            gateway: Some("10.88.0.1".into()),
            metric: None,
        }],
    };
    // A bad address: INVALID_PARAMS naming the field, nothing created.
    let mut bad = create_params(&["true"]);
    let mut wrong = iface.clone();
    wrong.addresses = vec!["10.88.0.5".into()];
    bad.network = Some(NetworkSpec {
        interfaces: vec![wrong],
    });
    let e = client.create(&bad).unwrap_err();
    assert_eq!(e.rpc_code(), Some(ErrorCode::InvalidParams));
    assert!(e.to_string().contains("addresses[0]"), "{e}");
    assert!(fx.platform.network.lock().unwrap().is_none());
    // A good one reaches the platform, checked.
    let mut good = create_params(&["true"]);
    good.network = Some(NetworkSpec {
        interfaces: vec![iface],
    });
    client.create(&good).unwrap();
    let plan = fx.platform.network.lock().unwrap().clone().unwrap();
    assert_eq!(plan.interfaces[0].mac, [0x02, 0x42, 0xac, 0x11, 0, 2]);
    assert_eq!(plan.interfaces[0].routes.len(), 1);
}
