//! Running the real `compare` binary (it runs the real producer and consumer built beside it:
//! `cargo build --workspace --bins` first).
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

pub fn compare_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_compare"));
    for b in ["producer", "consumer"] {
        let bin = p.with_file_name(b);
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build --workspace --bins` first",
            bin.display()
        );
    }
    p
}

/// Run `compare ARGS --json FILE`; assert it succeeded and return the JSON.
pub fn compare(tag: &str, args: &[&str]) -> serde_json::Value {
    let json = std::env::temp_dir().join(format!("compare-test-{}-{tag}.json", std::process::id()));
    let out = Command::new(compare_bin())
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("running compare");
    assert!(
        out.status.success(),
        "compare {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&json).expect("compare wrote --json");
    let _ = std::fs::remove_file(&json);
    serde_json::from_str(&text).expect("valid JSON")
}

pub fn entry<'a>(v: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == path)
        .unwrap_or_else(|| panic!("no entry for {path} in {v:#}"))
}

pub fn num(v: &serde_json::Value, ptr: &str) -> f64 {
    v.pointer(ptr)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or_else(|| panic!("{ptr} is not a number in {v:#}"))
}

/// Every figure the comparison promises, present and sane, for one entry.
pub fn assert_complete(e: &serde_json::Value, paced: bool) {
    let path = e["path"].as_str().unwrap();
    assert!(e["error"].is_null(), "{path}: {}", e["error"]);
    for side in ["producer", "consumer"] {
        for k in [
            "cpu_us_p50",
            "cpu_us_mean",
            "transport_us_p50",
            "transport_us_mean",
        ] {
            let v = num(e, &format!("/{side}/{k}"));
            assert!(v > 0.0 && v.is_finite(), "{path} {side} {k} = {v}");
        }
        for k in ["work_us_p50", "minflt_per_frame", "majflt_per_frame"] {
            let v = num(e, &format!("/{side}/{k}"));
            assert!(v >= 0.0 && v.is_finite(), "{path} {side} {k} = {v}");
        }
        let cpu = num(e, &format!("/{side}/cpu_us_mean"));
        let tr = num(e, &format!("/{side}/transport_us_mean"));
        assert!(
            tr <= cpu * 1.0001,
            "{path} {side}: transport {tr} > total {cpu}"
        );
        if paced {
            let pct = num(e, &format!("/{side}/core_percent_paced"));
            assert!(
                pct > 0.0 && pct < 250.0,
                "{path} {side} % of a core = {pct}"
            );
        }
    }
    assert!(num(e, "/fps_unpaced") > 0.0, "{path}: fps");
    assert!(
        num(e, "/steady_frames_unpaced") >= 1.0,
        "{path}: steady frames"
    );
    assert!(num(e, "/frame_bytes") > 0.0);
    if paced {
        let p50 = num(e, "/visible_us_p50");
        let p99 = num(e, "/visible_us_p99");
        assert!(
            p50 > 0.0 && p99 >= p50,
            "{path}: latency p50 {p50} p99 {p99}"
        );
    }
    for run in ["unpaced", "paced"] {
        if run == "paced" && !paced {
            continue;
        }
        assert!(e["raw"][run]["producer"].is_object(), "{path}: raw {run}");
        assert!(e["raw"][run]["consumer"].is_object(), "{path}: raw {run}");
    }
}
