//! `c2d-gateway bench --quick --json PATH` from the built binary: it runs to
//! the end, and its JSON is well formed with every figure present. No
//! timing is asserted (a shared CI machine is noisy); exactly-once delivery
//! in the throughput runs is.

use serde_json::Value;
use std::process::Command;

fn num(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = match k.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[k],
        };
    }
    cur.as_f64().unwrap_or_else(|| panic!("{path} is not a number: {cur}"))
}

#[test]
fn quick_bench_writes_every_figure() {
    let dir = std::env::temp_dir().join(format!("c2d-bench-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_c2d-gateway"))
        .args(["bench", "--quick", "--dir"])
        .arg(&dir)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run the bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{stderr}", out.status);
    let text = std::fs::read_to_string(&json).expect("JSON written");
    let v: Value = serde_json::from_str(&text).expect("well-formed JSON");
    // Everything the bench made under --dir is gone but our JSON.
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("bench.json")], "scratch directories removed");
    std::fs::remove_dir_all(&dir).unwrap();

    assert_eq!(v["mode"], "quick");
    assert_eq!(v["errors"].as_array().map(Vec::len), Some(0), "{}", v["errors"]);
    for k in ["kernel", "cpu_model", "state_fs"] {
        assert!(v["machine"][k].as_str().is_some_and(|s| !s.is_empty()), "machine.{k}");
    }
    assert!(num(&v, "machine.nproc") >= 1.0);
    assert!(v["gateway"]["version"].as_str().is_some_and(|s| s.contains(env!("CARGO_PKG_VERSION"))));
    assert!(v["gateway"]["commit"].is_string());

    let runs = v["throughput"].as_array().expect("throughput runs");
    let devices: Vec<u64> = runs.iter().map(|r| r["devices"].as_u64().unwrap()).collect();
    assert_eq!(devices, [1, 8, 64]);
    for (i, r) in runs.iter().enumerate() {
        let n = num(r, "messages");
        assert!(n > 0.0 && num(r, "msg_per_s") > 0.0, "run {i}: {r}");
        assert_eq!(num(r, "delivered"), n, "run {i}: every message delivered");
        assert_eq!(num(r, "device_writes"), n, "run {i}: every message written exactly once");
        assert_eq!(num(r, "max_unacked"), 64.0);
        for f in [
            "write_bytes_per_msg",
            "cpu_us_per_msg",
            "journal_flushes_per_msg",
            "latency.gateway_added.p99_ms",
            "latency.publish_to_puback.max_ms",
        ] {
            assert!(num(r, f) >= 0.0, "run {i}: {f}");
        }
    }
    for which in ["fixed_rate.latency", "saturation"] {
        for f in ["gateway_added", "publish_to_puback"] {
            for p in ["p50_ms", "p99_ms", "max_ms"] {
                let x = num(&v["latency"], &format!("{which}.{f}.{p}"));
                assert!(x >= 0.0, "latency.{which}.{f}.{p}");
            }
        }
    }
    assert_eq!(num(&v, "latency.fixed_rate.offered_per_s"), 200.0);
    // The disk's own durable append at that rate (the floor under the latency).
    assert_eq!(num(&v, "latency.disk_append.samples"), 200.0);
    assert!(num(&v, "latency.disk_append.p99_ms") >= num(&v, "latency.disk_append.p50_ms"));
    let rtu = v["rtu"].as_array().expect("rtu runs");
    assert_eq!(rtu.iter().map(|r| r["baud"].as_u64().unwrap()).collect::<Vec<_>>(), [9600, 115_200]);
    for r in rtu {
        assert!(num(r, "writes_per_s") > 0.0 && num(r, "wire_limit_per_s") > 0.0 && num(r, "utilisation") > 0.0);
    }
    // One slow-ish simulated device: its ceiling, and the gateway through it.
    let c = &v["ceiling"];
    assert_eq!(c["device"], "simulated");
    let n = num(c, "messages");
    assert!(n > 0.0 && num(c, "ceiling_per_s") > 0.0 && num(c, "gateway_per_s") > 0.0, "{c}");
    assert_eq!((num(c, "delivered"), num(c, "device_writes")), (n, n), "each written exactly once: {c}");
    assert!(num(c, "share") > 0.0 && num(c, "cpu_us_per_msg") > 0.0 && num(c, "journal_flushes_per_msg") > 0.0);
    for f in [
        "rss_idle_kb",
        "queued.rss_kb",
        "queued.messages",
        "queued.body_bytes",
        "restart.ready_ms",
        "restart.queued",
        "idle_cpu.percent",
        "idle_cpu.clk_tck",
    ] {
        assert!(num(&v["footprint"], f) >= 0.0, "footprint.{f}");
    }
    assert!(num(&v, "footprint.rss_idle_kb") > 0.0);
    assert_eq!(v["footprint"]["queued"]["complete"], "after-device");
    // Every figure of the table has a value, and a verdict where it has a goal.
    let goals = v["goals"].as_array().expect("goals");
    assert!(goals.len() >= 20);
    for g in goals {
        assert!(g["value"].is_number(), "{g}");
        let has_goal = g["goal"].as_str().is_some_and(|s| !s.is_empty());
        assert_eq!(g["pass"].is_boolean(), has_goal, "{g}");
    }
    assert!(stdout.contains("throughput, 8 TCP device(s)"), "table printed:\n{stdout}");
}
