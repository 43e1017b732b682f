//! The benchmark keeps working: its quick mode runs end to end against the real kernel and
//! writes its report. Figures are not checked here (timing belongs to the benchmark, not to
//! tests); the report's existence and shape are.

use std::process::Command;

#[test]
fn quick_benchmark_runs_and_writes_its_report() {
    let out = std::env::temp_dir().join(format!("palisade-bench-quick-{}", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_palisade-bench"))
        .args(["--quick", "--out"])
        .arg(&out)
        .status()
        .expect("run palisade-bench");
    assert!(status.success(), "palisade-bench --quick failed: {status}");
    let md = std::fs::read_to_string(out.join("firewall-quick.md")).expect("markdown report");
    assert!(md.contains("above floor"), "{md}");
    let json = std::fs::read_to_string(out.join("firewall-quick.json")).expect("JSON report");
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert!(v.is_object(), "{json}");
    assert!(out.join("firewall-quick.svg").exists());
    let _ = std::fs::remove_dir_all(out);
}
