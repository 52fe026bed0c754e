//! Smoke test of the benchmark: one capsa launch (block rootfs) cold and
//! one warm (restored from the bench's template VM), no peers, no parallel
//! round. It checks that the bench runs and writes well-formed results and
//! a chart; it never asserts a timing (the figures are measured, not
//! tested). It boots one real guest, so it needs /dev/kvm.

use std::process::Command;

#[test]
fn one_iteration_writes_json_and_chart() {
    let out = std::env::temp_dir().join(format!("capsa-benches-smoke-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_capsa-benches"))
        .args([
            "boot",
            "--iterations",
            "1",
            "--peers",
            "none",
            "--parallel",
            "0",
            "--rootfs-transports",
            "block",
            "--smp-iterations",
            "0",
            "--timeout-s",
            "240",
            "--out",
        ])
        .arg(&out)
        .output()
        .expect("run capsa-benches");
    let stderr = String::from_utf8_lossy(&run.stderr);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "capsa-benches failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        run.status
    );

    let text = std::fs::read_to_string(out.join("results.json")).expect("results.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("results.json is JSON");
    assert_eq!(v["schema"], "capsa-benches/boot/1");
    assert_eq!(v["config"]["iterations"], 1);
    let launches = v["launches"].as_array().expect("launches is an array");
    assert_eq!(launches.len(), 2, "{text}");
    let cold_marks = [
        "first_kvm_run",
        "init",
        "agent_ready",
        "first_output",
        "exit",
    ];
    let warm_marks = [
        "restored",
        "first_kvm_run",
        "agent_ready",
        "new_machine",
        "first_output",
        "exit",
    ];
    for (launch, workload, marks) in [
        (&launches[0], "launch", &cold_marks[..]),
        (&launches[1], "launch-warm", &warm_marks[..]),
    ] {
        assert_eq!(launch["vmm"], "capsa");
        assert_eq!(launch["workload"], workload);
        assert!(
            launch["error"].is_null(),
            "the {workload} launch failed: {}",
            launch["error"]
        );
        for key in marks {
            assert!(
                launch["marks_ms"][key].is_number(),
                "no {key} mark in {workload}: {}",
                launch["marks_ms"]
            );
        }
    }
    assert!(v["summary"].as_array().is_some_and(|s| !s.is_empty()));

    let png = std::fs::read(out.join("boot.png")).expect("boot.png");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "boot.png is not a PNG"
    );
    assert!(out.join("table.md").is_file());
    let _ = std::fs::remove_dir_all(&out);
}
