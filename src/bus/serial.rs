//! Line-oriented serial devices: the body goes out framed (`line`,
//! `stx-etx`, `raw`), and the device's reply is matched against the bus's
//! `ack` / `nack` patterns within `timeout`. A nack is a refusal; silence is
//! an unconfirmed send. A `raw` reply has no end marker: it is matched once
//! the line has gone quiet after it (see [`raw_idle`]).

use super::port::{Counted, Opener};
use super::{ConnectError, Wire};
use crate::config::{BusConfig, Framing};
use regex_lite::Regex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

const STX: u8 = 0x02;
const ETX: u8 = 0x03;
/// A reply longer than this without a frame end is garbage.
const MAX_REPLY: usize = 4096;

pub use crate::config::raw_idle;

/// Why a serial bus's `ack` / `nack` pattern cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PatternError {
    #[error("bad {which} pattern: {source}")]
    Invalid { which: &'static str, source: regex_lite::Error },
}

pub struct Patterns {
    pub ack: Option<Regex>,
    pub nack: Option<Regex>,
}

impl Patterns {
    pub fn from_config(cfg: &BusConfig) -> Result<Self, PatternError> {
        let compile = |p: &Option<String>, which: &'static str| {
            p.as_deref().map(Regex::new).transpose().map_err(|source| PatternError::Invalid { which, source })
        };
        Ok(Patterns { ack: compile(&cfg.ack, "ack")?, nack: compile(&cfg.nack, "nack")? })
    }

    /// Some(true) = ack, Some(false) = nack, None = neither (keep listening).
    /// Without an `ack` pattern any reply that is not a nack is an ack.
    pub fn classify(&self, reply: &str) -> Option<bool> {
        if self.nack.as_ref().is_some_and(|r| r.is_match(reply)) {
            return Some(false);
        }
        match &self.ack {
            Some(r) => r.is_match(reply).then_some(true),
            None => Some(true),
        }
    }
}

/// Frames a body for the wire.
pub fn frame(framing: Framing, line_ending: &str, body: &[u8]) -> Vec<u8> {
    match framing {
        Framing::Line => [body, line_ending.as_bytes()].concat(),
        Framing::StxEtx => [&[STX][..], body, &[ETX][..]].concat(),
        Framing::Raw => body.to_vec(),
    }
}

/// Takes complete reply frames out of `buf` (what remains is a partial frame).
pub fn take_frames(framing: Framing, buf: &mut Vec<u8>) -> Vec<String> {
    let mut out = Vec::new();
    match framing {
        Framing::Line => {
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line).trim_end_matches(['\r', '\n']).to_string();
                if !text.is_empty() {
                    out.push(text);
                }
            }
        }
        Framing::StxEtx => loop {
            let Some(start) = buf.iter().position(|&b| b == STX) else {
                buf.clear();
                break;
            };
            let Some(end) = buf[start..].iter().position(|&b| b == ETX) else {
                buf.drain(..start);
                break;
            };
            let frame: Vec<u8> = buf.drain(..start + end + 1).collect();
            out.push(String::from_utf8_lossy(&frame[start + 1..frame.len() - 1]).into_owned());
        },
        Framing::Raw => {
            if !buf.is_empty() {
                out.push(String::from_utf8_lossy(buf).into_owned());
            }
        }
    }
    out
}

pub struct SerialLink {
    opener: Opener,
    port: Option<(Counted<super::port::BoxStream>, Arc<AtomicU64>)>,
    framing: Framing,
    line_ending: String,
    patterns: Patterns,
    timeout: Duration,
    /// `raw`: the silence that ends a reply (see [`raw_idle`]).
    idle: Duration,
}

impl SerialLink {
    pub fn new(opener: Opener, cfg: &BusConfig) -> Result<Self, PatternError> {
        Ok(SerialLink {
            opener,
            port: None,
            framing: cfg.framing,
            line_ending: cfg.line_ending.clone(),
            patterns: Patterns::from_config(cfg)?,
            timeout: *cfg.timeout,
            idle: raw_idle(cfg.baud),
        })
    }

    pub async fn connect(&mut self) -> Result<(), ConnectError> {
        if self.port.is_none() {
            let p = (self.opener)().map_err(ConnectError::Open)?;
            self.port = Some(Counted::new(p));
        }
        Ok(())
    }

    /// Sends one framed body and waits for the verdict.
    pub async fn send(&mut self, body: &[u8]) -> Wire {
        if let Err(e) = self.connect().await {
            return Wire::NotSent(e.to_string());
        }
        let (port, written) = self.port.as_mut().expect("connected above");
        // Drop whatever the device said since the last exchange.
        let mut junk = [0u8; 256];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::ZERO, port.read(&mut junk)).await {
            if n == 0 {
                break;
            }
        }
        let before = written.load(Ordering::Relaxed);
        let deadline = Instant::now() + self.timeout;
        let out = frame(self.framing, &self.line_ending, body);
        let sent = timeout_at(deadline, async {
            port.write_all(&out).await?;
            port.flush().await
        })
        .await;
        let wrote = written.load(Ordering::Relaxed) > before;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                self.port = None;
                let reason = format!("serial write failed: {e}");
                return if wrote { Wire::Unconfirmed { reason, timeout: false } } else { Wire::NotSent(reason) };
            }
            Err(_) => {
                self.port = None;
                let reason = "serial write did not complete in time".to_string();
                return if wrote { Wire::Unconfirmed { reason, timeout: true } } else { Wire::NotSent(reason) };
            }
        }
        let mut buf = Vec::new();
        let mut seen: Vec<String> = Vec::new();
        // `raw`: when the last byte not yet judged arrived (the reply is
        // judged once the line has been idle for `self.idle` after it).
        let mut last_byte: Option<Instant> = None;
        loop {
            let mut chunk = [0u8; 512];
            let idle_at = last_byte.map(|t| t + self.idle).filter(|at| *at <= deadline);
            match timeout_at(idle_at.unwrap_or(deadline), port.read(&mut chunk)).await {
                Err(_) if idle_at.is_some() => {
                    // The raw reply ended: judge all of it (a reply that
                    // matches neither pattern may still grow).
                    last_byte = None;
                    let reply = String::from_utf8_lossy(&buf).into_owned();
                    match self.patterns.classify(&reply) {
                        Some(true) => return Wire::Acked(format!("device replied {:?}", truncate(&reply, 120))),
                        Some(false) => return Wire::Refused(format!("device refused: {:?}", truncate(&reply, 120))),
                        None => continue,
                    }
                }
                Err(_) => {
                    // `raw`: a reply whose last byte came too close to the
                    // deadline for a whole idle gap is judged as it stands
                    // (a complete "OK" must not become `uncertain`).
                    if last_byte.is_some() {
                        let reply = String::from_utf8_lossy(&buf).into_owned();
                        match self.patterns.classify(&reply) {
                            Some(true) => return Wire::Acked(format!("device replied {:?}", truncate(&reply, 120))),
                            Some(false) => {
                                return Wire::Refused(format!("device refused: {:?}", truncate(&reply, 120)))
                            }
                            None => {}
                        }
                    }
                    let heard = if seen.is_empty() && buf.is_empty() {
                        "no reply".to_string()
                    } else {
                        let mut all = seen.join(" | ");
                        if !buf.is_empty() {
                            all.push_str(&String::from_utf8_lossy(&buf));
                        }
                        format!("no ack or nack in the reply {:?}", truncate(&all, 120))
                    };
                    return Wire::Unconfirmed { reason: format!("{heard} within {:?}", self.timeout), timeout: true };
                }
                Ok(Ok(0)) | Ok(Err(_)) => {
                    self.port = None;
                    return Wire::Unconfirmed {
                        reason: "serial port closed while waiting for the reply".into(),
                        timeout: false,
                    };
                }
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
            if self.framing == Framing::Raw {
                last_byte = Some(Instant::now());
            } else {
                for reply in take_frames(self.framing, &mut buf) {
                    match self.patterns.classify(&reply) {
                        Some(true) => return Wire::Acked(format!("device replied {:?}", truncate(&reply, 120))),
                        Some(false) => return Wire::Refused(format!("device refused: {:?}", truncate(&reply, 120))),
                        None => seen.push(reply),
                    }
                }
            }
            if buf.len() > MAX_REPLY || seen.len() > 64 {
                self.port = None;
                return Wire::Unconfirmed {
                    reason: "the device sent a flood of unmatched data".into(),
                    timeout: false,
                };
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        s.chars().take(max).collect::<String>() + "…"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(ack: Option<&str>, nack: Option<&str>) -> Patterns {
        Patterns { ack: ack.map(|p| Regex::new(p).unwrap()), nack: nack.map(|p| Regex::new(p).unwrap()) }
    }

    #[test]
    fn framing() {
        assert_eq!(frame(Framing::Line, "\r\n", b"HI"), b"HI\r\n");
        assert_eq!(frame(Framing::StxEtx, "\n", b"HI"), b"\x02HI\x03");
        assert_eq!(frame(Framing::Raw, "\n", b"HI"), b"HI");
    }

    #[test]
    fn line_frames_are_split_and_trimmed() {
        let mut b = b"OK\r\nERR 3\npart".to_vec();
        assert_eq!(take_frames(Framing::Line, &mut b), vec!["OK", "ERR 3"]);
        assert_eq!(b, b"part");
    }

    #[test]
    fn stx_etx_frames_skip_noise() {
        let mut b = b"zz\x02OK\x03\x02ER".to_vec();
        assert_eq!(take_frames(Framing::StxEtx, &mut b), vec!["OK"]);
        assert_eq!(b, b"\x02ER");
        let mut b = b"noise only".to_vec();
        assert!(take_frames(Framing::StxEtx, &mut b).is_empty());
        assert!(b.is_empty());
    }

    #[test]
    fn classify_ack_nack() {
        let p = pats(Some("^OK"), Some("^ERR"));
        assert_eq!(p.classify("OK 1"), Some(true));
        assert_eq!(p.classify("ERR busy"), Some(false));
        assert_eq!(p.classify("hello"), None);
        let p = pats(None, Some("^ERR"));
        assert_eq!(p.classify("anything"), Some(true));
        assert_eq!(p.classify("ERR"), Some(false));
    }

    fn bus(framing: &str) -> BusConfig {
        let t = format!(
            "kind = \"serial\"\nport = \"/x\"\nframing = \"{framing}\"\nack = \"^OK\"\nnack = \"^ERR\"\ntimeout = \"300ms\""
        );
        toml::from_str(&t).unwrap()
    }

    fn pair_opener(stream: tokio_serial::SerialStream) -> Opener {
        let mut s = Some(stream);
        Box::new(move || {
            s.take().map(|s| Box::new(s) as super::super::port::BoxStream).ok_or_else(|| std::io::Error::other("gone"))
        })
    }

    /// `raw` framing, no `ack` pattern (any reply that is not a nack is an
    /// ack): a reply dribbled byte by byte is judged once it has ended, so
    /// the "E" of "ERR" is never taken for an ack.
    #[tokio::test]
    async fn a_raw_reply_dribbled_byte_by_byte_is_judged_whole() {
        let (ours, mut dev) = tokio_serial::SerialStream::pair().unwrap();
        let cfg: BusConfig =
            toml::from_str("kind = \"serial\"\nport = \"/x\"\nframing = \"raw\"\nnack = \"^ERR\"\ntimeout = \"1s\"")
                .unwrap();
        let mut link = SerialLink::new(pair_opener(ours), &cfg).unwrap();
        let device = tokio::spawn(async move {
            for reply in [&b"ERR"[..], b"OK", b"ERR 2"] {
                let mut cmd = [0u8; 64];
                let _ = dev.read(&mut cmd).await.unwrap();
                for b in reply {
                    dev.write_all(&[*b]).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(8)).await;
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(dev);
        });
        assert_eq!(link.send(b"SET 1").await, Wire::Refused("device refused: \"ERR\"".into()));
        let started = Instant::now();
        assert_eq!(link.send(b"SET 2").await, Wire::Acked("device replied \"OK\"".into()));
        let took = started.elapsed();
        assert!(took >= raw_idle(9600) && took < Duration::from_millis(500), "{took:?}");
        assert_eq!(link.send(b"SET 3").await, Wire::Refused("device refused: \"ERR 2\"".into()));
        device.abort();
        let _ = device.await;
    }

    /// A raw reply that ends less than an idle gap before the timeout is
    /// judged at the deadline as it stands, not taken for no answer.
    #[tokio::test]
    async fn a_raw_reply_ending_just_before_the_timeout_is_still_judged() {
        let (ours, mut dev) = tokio_serial::SerialStream::pair().unwrap();
        let cfg: BusConfig =
            toml::from_str("kind = \"serial\"\nport = \"/x\"\nframing = \"raw\"\nack = \"^OK\"\ntimeout = \"200ms\"")
                .unwrap();
        let mut link = SerialLink::new(pair_opener(ours), &cfg).unwrap();
        let device = tokio::spawn(async move {
            let mut cmd = [0u8; 64];
            let _ = dev.read(&mut cmd).await.unwrap();
            tokio::time::sleep(Duration::from_millis(185)).await;
            dev.write_all(b"OK").await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(dev);
        });
        assert_eq!(link.send(b"SET 1").await, Wire::Acked("device replied \"OK\"".into()));
        device.abort();
        let _ = device.await;
    }

    #[test]
    fn raw_idle_follows_the_baud_with_a_floor() {
        assert_eq!(raw_idle(115_200), Duration::from_millis(30));
        assert_eq!(raw_idle(9600), Duration::from_millis(30));
        let slow = raw_idle(1200);
        assert!(slow > Duration::from_millis(91) && slow < Duration::from_millis(92), "{slow:?}");
    }

    #[tokio::test]
    async fn ack_nack_and_silence_over_a_pty_pair() {
        let (ours, mut dev) = tokio_serial::SerialStream::pair().unwrap();
        let mut link = SerialLink::new(pair_opener(ours), &bus("line")).unwrap();
        let device = tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut got = Vec::new();
            let mut chunk = [0u8; 64];
            while got.len() < 3 {
                let n = dev.read(&mut chunk).await.unwrap();
                buf.extend_from_slice(&chunk[..n]);
                for line in take_frames(Framing::Line, &mut buf) {
                    match line.as_str() {
                        "SET 1" => dev.write_all(b"hello\r\nOK done\r\n").await.unwrap(),
                        "SET 2" => dev.write_all(b"ERR range\n").await.unwrap(),
                        _ => {}
                    }
                    got.push(line);
                }
            }
            // Stay connected: a closed pty reads as an unplugged device.
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(dev);
            got
        });
        assert_eq!(link.send(b"SET 1").await, Wire::Acked("device replied \"OK done\"".into()));
        assert_eq!(link.send(b"SET 2").await, Wire::Refused("device refused: \"ERR range\"".into()));
        match link.send(b"SILENT").await {
            Wire::Unconfirmed { timeout: true, reason } => assert!(reason.contains("no reply"), "{reason}"),
            other => panic!("{other:?}"),
        }
        device.abort();
        let _ = device.await;
    }
}
