//! Property-based fuzzing of every parser that reads input from outside the
//! gateway: IoT Hub property bags and topics, connection strings, SAS tokens,
//! MQTT topics, C2D bodies for Modbus devices (with the no-raw-write and
//! min/max guarantees checked on the decoded Modbus requests) and serial
//! device replies.
//!
//! One test, `fuzz`, runs every property with a share of a total case budget:
//!
//! ```sh
//! cargo test --test fuzz -- --nocapture                          # 20 000 cases
//! C2D_FUZZ_CASES=1000000 cargo test --test fuzz -- --nocapture   # a million
//! ```
//!
//! Environment: `C2D_FUZZ_CASES` (total budget, default 20 000),
//! `C2D_FUZZ_SEED` (u64; default: random, printed so a failing run can be
//! repeated), `C2D_FUZZ_THREADS` (default: the machine's parallelism + 1),
//! `C2D_FUZZ_JSON` (write the figures there as JSON), `C2D_FUZZ_ONLY`
//! (comma-separated target names: run only those). Failures are shrunk by
//! proptest and printed with the minimal input; a panic in a parser is a
//! failure like any other. Bugs found this way are kept below as plain
//! regression tests.

#[path = "fuzz/connstr.rs"]
mod connstr;
#[path = "fuzz/gens.rs"]
mod gens;
#[path = "fuzz/modbus.rs"]
mod modbus;
#[path = "fuzz/propbag.rs"]
mod propbag;
#[path = "fuzz/sas.rs"]
mod sas;
#[path = "fuzz/serial.rs"]
mod serial;
#[path = "fuzz/topics.rs"]
mod topics;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestCaseError, TestRunner};
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default total budget: small enough that a plain `cargo test` stays quick.
const DEFAULT_CASES: u64 = 20_000;
/// A property's cases are split into chunks of at most this many (each with
/// its own seed) so that the worker threads share the load evenly.
const CHUNK: u64 = 25_000;

/// One property: `run` checks `ctx.cases` generated cases.
pub struct Property {
    pub target: &'static str,
    pub name: &'static str,
    /// Share of the total budget, relative to the other properties.
    pub weight: u64,
    pub run: fn(&Ctx) -> Result<(), String>,
}

/// What a property run is given.
pub struct Ctx {
    pub cases: u32,
    pub seed: u64,
    /// Test-function calls, counted by [`check`].
    calls: AtomicU64,
}

/// Runs `test` on `ctx.cases` values of `strategy` (proptest shrinks a
/// failure and reports the minimal input; a panic is caught as a failure).
pub fn check<S>(ctx: &Ctx, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) -> Result<(), String>
where
    S: Strategy,
    S::Value: Debug,
{
    let config = Config {
        cases: ctx.cases,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(ctx.seed),
        max_shrink_iters: 4096,
        // ChaCha is very slow in a debug build; XorShift is plenty here.
        rng_algorithm: RngAlgorithm::XorShift,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let calls = AtomicU64::new(0);
    let result = runner.run(&strategy, |v| {
        calls.fetch_add(1, Ordering::Relaxed);
        test(v)
    });
    ctx.calls.fetch_add(calls.load(Ordering::Relaxed), Ordering::Relaxed);
    result.map_err(|e| e.to_string())
}

fn all_properties() -> Vec<Property> {
    [
        propbag::properties(),
        connstr::properties(),
        topics::properties(),
        modbus::properties(),
        serial::properties(),
        sas::properties(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim().replace('_', "");
    Some(v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")))
}

/// Splits `total` by weight; the shares add up to exactly `total`, each at
/// least 1.
fn shares(props: &[Property], total: u64) -> Vec<u64> {
    let sum: u64 = props.iter().map(|p| p.weight).sum();
    let mut out: Vec<u64> = props.iter().map(|p| (total * p.weight / sum).max(1)).collect();
    let given: u64 = out.iter().sum();
    if given < total {
        // The remainder goes to the heaviest property.
        let i = (0..props.len()).max_by_key(|&i| props[i].weight).unwrap_or(0);
        out[i] += total - given;
    }
    out
}

#[derive(Default)]
struct Tally {
    cases: u64,
    busy: Duration,
    failures: Vec<String>,
}

fn json_escape(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

#[test]
fn fuzz() {
    let total = env_u64("C2D_FUZZ_CASES").unwrap_or(DEFAULT_CASES);
    let seed = env_u64("C2D_FUZZ_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
    });
    // One more thread than cores: the serial exchange property spends most
    // of its time waiting on timers, another property can use that core.
    let threads = env_u64("C2D_FUZZ_THREADS")
        .map(|n| n.max(1) as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()) + 1);
    let only: Option<Vec<String>> =
        std::env::var("C2D_FUZZ_ONLY").ok().map(|s| s.split(',').map(|t| t.trim().to_owned()).collect());

    let mut props = all_properties();
    if let Some(only) = &only {
        props.retain(|p| only.iter().any(|t| t == p.target));
        assert!(!props.is_empty(), "C2D_FUZZ_ONLY={only:?} names no target");
    }
    let shares = shares(&props, total);

    // Work items: (property, cases, seed), biggest first.
    let mut work: Vec<(usize, u64, u64)> = Vec::new();
    for (i, &n) in shares.iter().enumerate() {
        let chunks = n.div_ceil(CHUNK).max(1);
        for c in 0..chunks {
            let cases = n / chunks + u64::from(c < n % chunks);
            let s = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ c.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
            work.push((i, cases, s));
        }
    }
    work.sort_by_key(|w| std::cmp::Reverse(w.1 * props[w.0].weight));
    println!(
        "fuzz: {total} cases over {} properties, seed {seed} (C2D_FUZZ_SEED={seed} repeats this run), {threads} threads",
        props.len()
    );

    let queue = Mutex::new(work.into_iter());
    let tallies: Vec<Mutex<Tally>> = props.iter().map(|_| Mutex::new(Tally::default())).collect();
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let Some((i, cases, seed)) = queue.lock().unwrap().next() else { break };
                let ctx = Ctx { cases: cases as u32, seed, calls: AtomicU64::new(0) };
                let t0 = Instant::now();
                let result = (props[i].run)(&ctx);
                let busy = t0.elapsed();
                let mut t = tallies[i].lock().unwrap();
                t.busy += busy;
                match result {
                    Ok(()) => {
                        // No filters anywhere: every call is one passing case.
                        assert_eq!(ctx.calls.load(Ordering::Relaxed), cases, "{}: case count", props[i].name);
                        t.cases += cases;
                    }
                    Err(e) => {
                        eprintln!("fuzz: {}/{} FAILED (chunk seed {seed}):\n{e}", props[i].target, props[i].name);
                        t.cases += ctx.calls.load(Ordering::Relaxed).min(cases);
                        t.failures.push(format!("chunk seed {seed}: {e}"));
                    }
                }
            });
        }
    });
    let wall = started.elapsed();

    // Per target, then per property.
    let tallies: Vec<Tally> = tallies.into_iter().map(|m| m.into_inner().unwrap()).collect();
    let mut targets: Vec<&str> = Vec::new();
    for p in &props {
        if !targets.contains(&p.target) {
            targets.push(p.target);
        }
    }
    let mut json_targets = Vec::new();
    let (mut all_cases, mut all_failures) = (0u64, 0usize);
    for target in &targets {
        let idx: Vec<usize> = (0..props.len()).filter(|&i| props[i].target == *target).collect();
        let cases: u64 = idx.iter().map(|&i| tallies[i].cases).sum();
        let busy: Duration = idx.iter().map(|&i| tallies[i].busy).sum();
        let failures: usize = idx.iter().map(|&i| tallies[i].failures.len()).sum();
        println!("fuzz: {target:<8} {cases:>9} cases {:>8.2}s cpu  {failures} failures", busy.as_secs_f64());
        let mut json_props = Vec::new();
        for &i in &idx {
            let t = &tallies[i];
            println!(
                "fuzz:   {:<40} {:>9} cases {:>8.2}s{}",
                props[i].name,
                t.cases,
                t.busy.as_secs_f64(),
                if t.failures.is_empty() { String::new() } else { format!("  {} FAILED", t.failures.len()) }
            );
            let fails: Vec<String> = t.failures.iter().map(|f| json_escape(f)).collect();
            json_props.push(format!(
                "{{\"name\":{},\"cases\":{},\"seconds\":{:.3},\"failures\":[{}]}}",
                json_escape(props[i].name),
                t.cases,
                t.busy.as_secs_f64(),
                fails.join(",")
            ));
        }
        json_targets.push(format!(
            "{{\"target\":{},\"cases\":{cases},\"seconds\":{:.3},\"failures\":{failures},\"properties\":[{}]}}",
            json_escape(target),
            busy.as_secs_f64(),
            json_props.join(",")
        ));
        all_cases += cases;
        all_failures += failures;
    }
    println!("fuzz: {all_cases} cases, {all_failures} failures, {:.1}s wall, {threads} threads", wall.as_secs_f64());
    if let Ok(path) = std::env::var("C2D_FUZZ_JSON") {
        let json = format!(
            "{{\"cases\":{all_cases},\"budget\":{total},\"failures\":{all_failures},\"panics_or_violations\":{all_failures},\"seconds\":{:.3},\"threads\":{threads},\"seed\":{seed},\"targets\":[{}]}}\n",
            wall.as_secs_f64(),
            json_targets.join(",")
        );
        // Check it is valid JSON before writing it.
        serde_json::from_str::<serde_json::Value>(&json).expect("fuzz JSON");
        std::fs::write(&path, json).unwrap_or_else(|e| panic!("C2D_FUZZ_JSON={path}: {e}"));
    }
    assert_eq!(all_failures, 0, "fuzz: {all_failures} properties failed (see above)");
    assert_eq!(all_cases, shares.iter().sum::<u64>(), "fuzz: case count");
}

// ---------------------------------------------------------------------------
// Regression tests for what the fuzzing found.

/// Found by `modbus/any body`: a value within min/max was rounded through
/// `scale` onto a raw value whose engineering value lies past the limit
/// (min = 3 with scale = 1e6 wrote raw 0, i.e. 0; max = 10.06 with scale 0.1
/// wrote 10.1). Fixed in src/router/modbus.rs: such a value is rejected.
#[test]
fn scaled_write_never_lands_past_a_limit() {
    use c2d_gateway::config::DeviceConfig;
    use c2d_gateway::router::modbus::{parse_body, Write};
    let device: DeviceConfig = toml::from_str(
        r#"
bus = "plc"
unit = 1
points.a = { table = "holding", address = 1, type = "u16", scale = 0.1, max = 10.06 }
points.b = { table = "holding", address = 2, type = "u32", scale = 1e6, min = 3.0 }
points.c = { table = "holding", address = 4, type = "i16", scale = -0.1, min = -10.06 }
points.speed = { table = "holding", address = 200, type = "i32", word_order = "little", scale = 0.1, min = -1500.0, max = 1500.0 }
points.d = { table = "holding", address = 6, type = "u16", scale = 0.1, max = 10.0 }
"#,
    )
    .unwrap();
    let write = |point: &str, value: &str| {
        parse_body(format!(r#"{{"point": "{point}", "value": {value}}}"#).as_bytes(), "dev", &device)
    };
    for (point, value) in [("a", "10.06"), ("a", "10.059"), ("b", "3"), ("b", "499999"), ("c", "-10.06")] {
        let err = write(point, value).expect_err(value);
        assert!(err.to_string().contains("outside its limits"), "{point} = {value}: {err}");
    }
    // Values that round onto the grid inside the limits still go through,
    // limits that are multiples of the scale included (no float noise).
    assert_eq!(write("a", "10.04"), Ok(vec![Write::SingleRegister { address: 1, value: 100 }]));
    assert_eq!(write("a", "0"), Ok(vec![Write::SingleRegister { address: 1, value: 0 }]));
    assert_eq!(write("d", "10.0"), Ok(vec![Write::SingleRegister { address: 6, value: 100 }]));
    assert_eq!(write("b", "3000000"), Ok(vec![Write::MultipleRegisters { address: 2, values: vec![0, 3] }]));
    assert_eq!(write("c", "-10.0"), Ok(vec![Write::SingleRegister { address: 4, value: 100 }]));
    assert_eq!(write("speed", "1500"), Ok(vec![Write::MultipleRegisters { address: 200, values: vec![15000, 0] }]));
    assert_eq!(
        write("speed", "-1500"),
        Ok(vec![Write::MultipleRegisters { address: 200, values: vec![(-15000i32) as u16, 0xFFFF] }])
    );
}

/// Found by `serial/router: accepted body is one frame`: with a line ending
/// other than CR/LF (here `;`) a body containing it reached the device as
/// two commands ("SET 1;RESET" ran RESET too). Fixed in src/router/mod.rs.
#[test]
fn serial_body_never_carries_the_line_ending() {
    use c2d_gateway::bus::Request;
    use c2d_gateway::config::{BusConfig, DeviceConfig};
    use c2d_gateway::router::{command, Route};
    let device: DeviceConfig = toml::from_str("bus = \"panel\"").unwrap();
    let run = |framing: &str, le: &str, body: &[u8]| {
        let bus: BusConfig = toml::from_str(&format!(
            "kind = \"serial\"\nport = \"/dev/null\"\nframing = \"{framing}\"\nline_ending = {}",
            serde_json::Value::String(le.to_owned())
        ))
        .unwrap();
        let route = Route { device: "panel", config: &device, bus_name: "panel", bus: &bus };
        command(&route, body).map(|r| match r {
            Request::Serial(b) => b,
            other => panic!("{other:?}"),
        })
    };
    let err = run("line", ";", b"SET 1;RESET").unwrap_err().to_string();
    assert!(err.contains("line_ending") && err.contains("several frames"), "{err}");
    // Straddling the joint: "xab" + "abab" holds "abab" from byte 1.
    assert!(run("line", "abab", b"xab").is_err());
    assert!(run("line", "END", b"SEND").is_err());
    assert!(run("line", "\r\n", b"SET\r1").is_err());
    assert_eq!(run("line", ";", b"SET 1").unwrap(), b"SET 1");
    assert_eq!(run("line", "\r\n", b"SET 1;RESET").unwrap(), b"SET 1;RESET");
    assert_eq!(run("line", "END", b"SEN").unwrap(), b"SEN");
    assert_eq!(run("line", "", b"A;B").unwrap(), b"A;B");
    assert_eq!(run("raw", ";", b"A;B\n").unwrap(), b"A;B\n");
}

/// Found by `topics/mqtt: broker url`: an IPv6 broker address without a port
/// was refused, its last group taken for a port ("bad port \"2]\"").
#[test]
fn mqtt_url_ipv6_without_port() {
    use c2d_gateway::hub::net::parse_url;
    let hp = |u: &str| parse_url(u).map(|e| (e.scheme.tls(), e.host, e.port));
    assert_eq!(hp("mqtt://[fe80::1:2]"), Ok((false, "[fe80::1:2]".to_owned(), 1883)));
    assert_eq!(hp("mqtts://[2001:db8::5]/"), Ok((true, "[2001:db8::5]".to_owned(), 8883)));
    assert_eq!(hp("mqtt://[fe80::1:2]:1884"), Ok((false, "[fe80::1:2]".to_owned(), 1884)));
}
