//! Serial devices: src/bus/serial.rs (framing, reply framing, ack/nack) and
//! the serial half of src/router/mod.rs (`command`). Reply framing never
//! panics and gives the same frames however the bytes are split into reads;
//! a body the router accepts always reaches the device as exactly one frame;
//! the whole send/reply exchange over an in-memory port ends with the verdict
//! the first classified reply frame calls for.

use crate::gens::{alphabet_string, tricky_string};
use crate::{check, Ctx, Property};
use c2d_gateway::bus::port::{BoxStream, Opener};
use c2d_gateway::bus::serial::{frame, take_frames, Patterns, SerialLink};
use c2d_gateway::bus::{Request, Wire};
use c2d_gateway::config::{BusConfig, DeviceConfig, Framing};
use c2d_gateway::router::{command, Route};
use proptest::prelude::*;
use std::sync::OnceLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn properties() -> Vec<Property> {
    vec![
        Property { target: "serial", name: "reply framing: any bytes, any reads", weight: 8, run: reply_framing },
        Property { target: "serial", name: "router: accepted body is one frame", weight: 6, run: one_frame },
        Property { target: "serial", name: "exchange over an in-memory port", weight: 2, run: exchange },
    ]
}

const STX: u8 = 0x02;
const ETX: u8 = 0x03;
const FRAMINGS: [Framing; 3] = [Framing::Line, Framing::StxEtx, Framing::Raw];

fn reply_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        3 => proptest::sample::select(&b"\n\r\x02\x03OKERR 1"[..]),
        1 => any::<u8>(),
        1 => proptest::sample::select(&[0xC3, 0xA9, 0xFF, 0xE2, 0x82, 0xAC][..]),
    ];
    proptest::collection::vec(byte, 0..=max)
}

/// Splits `bytes` at the given cut points (modulo its length).
fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.push(0);
    at.push(bytes.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

fn reply_framing(ctx: &Ctx) -> Result<(), String> {
    let cuts = proptest::collection::vec(any::<usize>(), 0..8);
    check(ctx, (proptest::sample::select(&FRAMINGS[..]), reply_bytes(96), cuts), |(framing, bytes, cuts)| {
        let mut whole = bytes.clone();
        let frames = take_frames(framing, &mut whole);
        match framing {
            Framing::Line => {
                prop_assert!(!whole.contains(&b'\n'), "a full line left behind: {whole:?}");
                for f in &frames {
                    prop_assert!(!f.is_empty() && !f.contains('\n') && !f.ends_with('\r'), "{f:?}");
                }
            }
            Framing::StxEtx => {
                prop_assert!(whole.is_empty() || (whole[0] == STX && !whole.contains(&ETX)), "left {whole:?}");
                for f in &frames {
                    prop_assert!(!f.contains(char::from(ETX)), "{f:?}");
                }
            }
            Framing::Raw => {
                prop_assert_eq!(&whole, &bytes);
                prop_assert_eq!(frames.len(), usize::from(!bytes.is_empty()));
                return Ok(());
            }
        }
        // The same bytes in arbitrary reads give the same frames and leave
        // the same partial frame.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for c in chunks(&bytes, &cuts) {
            buf.extend_from_slice(&c);
            got.extend(take_frames(framing, &mut buf));
        }
        prop_assert_eq!(&got, &frames);
        prop_assert_eq!(&buf, &whole);
        Ok(())
    })
}

fn serial_bus(framing: &str, line_ending: &str, timeout: &str) -> BusConfig {
    let text = format!(
        "kind = \"serial\"\nport = \"/dev/null\"\nframing = \"{framing}\"\nline_ending = {}\nack = \"^OK\"\nnack = \"^ERR\"\ntimeout = \"{timeout}\"",
        serde_json::Value::String(line_ending.to_owned())
    );
    toml::from_str(&text).expect("bus")
}

fn device() -> &'static DeviceConfig {
    static D: OnceLock<DeviceConfig> = OnceLock::new();
    D.get_or_init(|| toml::from_str("bus = \"panel\"").expect("device"))
}

const LINE_ENDINGS: &[&str] = &["\n", "\r\n", "\r", "\n\r", ";", "#", "\x04", "\x03", "END", "", "abab"];

fn framing_name(f: Framing) -> &'static str {
    match f {
        Framing::Line => "line",
        Framing::StxEtx => "stx-etx",
        Framing::Raw => "raw",
    }
}

fn one_frame(ctx: &Ctx) -> Result<(), String> {
    let body = prop_oneof![
        3 => alphabet_string(&["SET", " ", "1", ";", "#", "\n", "\r", "\x02", "\x03", "\x04", "E", "N", "D", "a", "b", "ab"], 10)
            .prop_map(String::into_bytes),
        1 => proptest::collection::vec(any::<u8>(), 0..16),
        1 => tricky_string(10).prop_map(String::into_bytes),
    ];
    let setup = (proptest::sample::select(&FRAMINGS[..]), proptest::sample::select(LINE_ENDINGS));
    check(ctx, (setup, body), |((framing, le), body)| {
        let bus = serial_bus(framing_name(framing), le, "1s");
        let route = Route { device: "panel", config: device(), bus_name: "panel", bus: &bus };
        let sent = match command(&route, &body) {
            Ok(Request::Serial(b)) => b,
            Ok(other) => return Err(TestCaseError::fail(format!("serial bus gave {other:?}"))),
            Err(_) => return Ok(()),
        };
        prop_assert_eq!(&sent, &body);
        prop_assert!(!body.is_empty(), "empty body accepted");
        let wire = frame(framing, le, &sent);
        match framing {
            Framing::Line => {
                // The device ends the command at the first line ending, and
                // no line break may come earlier either.
                if !le.is_empty() {
                    let first = wire.windows(le.len()).position(|w| w == le.as_bytes());
                    prop_assert_eq!(
                        first,
                        Some(sent.len()),
                        "body {:?} splits into several commands with line_ending {:?}",
                        String::from_utf8_lossy(&sent),
                        le
                    );
                }
                prop_assert!(!sent.contains(&b'\n') && !sent.contains(&b'\r'), "line break in {sent:?}");
            }
            Framing::StxEtx => {
                prop_assert_eq!(wire.iter().filter(|b| **b == STX).count(), 1);
                prop_assert_eq!(wire.iter().filter(|b| **b == ETX).count(), 1);
            }
            Framing::Raw => prop_assert_eq!(&wire, &sent),
        }
        Ok(())
    })
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max).collect::<String>() + "…"
    }
}

thread_local! {
    static RT: tokio::runtime::Runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
}

/// The device's side of one exchange: read the framed command, then send the
/// reply in these writes and hang up (or stay silent and connected).
#[derive(Debug, Clone)]
struct Exchange {
    framing: Framing,
    body: Vec<u8>,
    writes: Vec<Vec<u8>>,
    hang_up: bool,
}

fn exchange(ctx: &Ctx) -> Result<(), String> {
    let body = alphabet_string(&["SET", " ", "1", "X", "é"], 6).prop_map(|s| format!("C{s}").into_bytes());
    let writes = proptest::collection::vec(reply_bytes(40), 0..5);
    let e = (proptest::sample::select(&FRAMINGS[..]), body, writes, proptest::bool::weighted(0.99))
        .prop_map(|(framing, body, writes, hang_up)| Exchange { framing, body, writes, hang_up });
    check(ctx, e, |e| {
        let bus = serial_bus(framing_name(e.framing), "\r\n", "10ms");
        let (ours, mut dev) = tokio::io::duplex(1 << 16);
        let mut port = Some(Box::new(ours) as BoxStream);
        let opener: Opener = Box::new(move || port.take().ok_or_else(|| std::io::Error::other("used")));
        let mut link = SerialLink::new(opener, &bus).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let wire = frame(e.framing, "\r\n", &e.body);
        let (result, received) = RT.with(|rt| {
            rt.block_on(async {
                let n = wire.len();
                let (writes, hang_up) = (e.writes.clone(), e.hang_up);
                let device = tokio::spawn(async move {
                    let mut got = vec![0u8; n];
                    dev.read_exact(&mut got).await.expect("read the command");
                    for w in writes {
                        if dev.write_all(&w).await.is_err() {
                            break;
                        }
                    }
                    if !hang_up {
                        // Stay connected until the link gives up.
                        let mut sink = [0u8; 64];
                        let _ = dev.read(&mut sink).await;
                    }
                    got
                });
                let result = link.send(&e.body).await;
                drop(link);
                (result, device.await.expect("device task"))
            })
        });
        prop_assert_eq!(&received, &wire);
        let reply: Vec<u8> = e.writes.concat();
        if e.framing == Framing::Raw {
            // The verdict depends on how the reads fell; it must still be
            // one the patterns allow.
            if let Wire::Acked(d) | Wire::Refused(d) = &result {
                prop_assert!(d.starts_with("device "), "{d}");
            }
            return Ok(());
        }
        let patterns = Patterns::from_config(&bus).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let frames = take_frames(e.framing, &mut reply.clone());
        let want = match frames.iter().find_map(|f| patterns.classify(f).map(|ok| (ok, f))) {
            Some((true, f)) => Wire::Acked(format!("device replied {:?}", truncate(f, 120))),
            Some((false, f)) => Wire::Refused(format!("device refused: {:?}", truncate(f, 120))),
            None if e.hang_up => {
                Wire::Unconfirmed { reason: "serial port closed while waiting for the reply".into(), timeout: false }
            }
            None => {
                prop_assert!(matches!(result, Wire::Unconfirmed { timeout: true, .. }), "{result:?}");
                return Ok(());
            }
        };
        prop_assert_eq!(result, want, "reply {:?}", String::from_utf8_lossy(&reply));
        Ok(())
    })
}
