//! Modbus RTU and TCP on the wire, one request at a time, every request under
//! a timeout. The echo of each write is checked here (tokio-modbus only
//! `debug_assert`s it), an exception is a refusal (except the "not now"
//! ones and 0x05 acknowledge, see [`exception_wire`]), and a connection that
//! failed is rebuilt before the next request.

use super::port::{Counted, Opener};
use super::{ConnectError, Wire};
use crate::router::modbus::Write;
use std::borrow::Cow;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_modbus::client::{Client, Context};
use tokio_modbus::prelude::SlaveContext;
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

pub enum Target {
    Tcp { address: String },
    Rtu { opener: Opener, gap: Duration },
}

struct Conn {
    ctx: Context,
    written: Arc<AtomicU64>,
    /// RTU: bytes dropped before a request (late replies to earlier ones).
    stale: Option<Arc<AtomicU64>>,
    /// The device closed the connection (a read found the end of the stream).
    eof: Arc<AtomicBool>,
    /// A duplicate of the TCP socket, only peeked at to see whether the
    /// server closed the connection while it was idle.
    peek: Option<std::net::TcpStream>,
}

pub struct ModbusLink {
    target: Target,
    conn: Option<Conn>,
    timeout: Duration,
    last_frame_end: Option<Instant>,
}

pub fn exception_name(code: ExceptionCode) -> String {
    let name = match code {
        ExceptionCode::IllegalFunction => "illegal function",
        ExceptionCode::IllegalDataAddress => "illegal data address",
        ExceptionCode::IllegalDataValue => "illegal data value",
        ExceptionCode::ServerDeviceFailure => "server device failure",
        ExceptionCode::Acknowledge => "acknowledge",
        ExceptionCode::ServerDeviceBusy => "server device busy",
        ExceptionCode::MemoryParityError => "memory parity error",
        ExceptionCode::GatewayPathUnavailable => "gateway path unavailable",
        ExceptionCode::GatewayTargetDevice => "gateway target device failed to respond",
        ExceptionCode::Custom(_) => "non-standard exception",
    };
    format!("{name} (exception {:#04x})", u8::from(code))
}

/// What a Modbus exception answering write `w` means for the message.
/// Most are a refusal (final). 0x06 (busy) and 0x0A / 0x0B (a gateway's
/// path or target unavailable) say "not now": nothing was executed, so the
/// write is tried again like after a timeout, on any device (0x0B, a target
/// that did not answer, also counts toward its breaker). 0x05 (acknowledge)
/// means the device accepted the write and is still carrying it out: done,
/// with the exception named in the detail.
fn exception_wire(w: &Write, what: &str, exc: ExceptionCode) -> Wire {
    let name = exception_name(exc);
    match exc {
        ExceptionCode::Acknowledge => {
            Wire::Acked(format!("{} (device answered {name}: accepted, still working)", w.describe()))
        }
        ExceptionCode::ServerDeviceBusy
        | ExceptionCode::GatewayPathUnavailable
        | ExceptionCode::GatewayTargetDevice => Wire::NotRun {
            reason: format!("{what}: device answered {name} (not executed)"),
            timeout: exc == ExceptionCode::GatewayTargetDevice,
        },
        _ => Wire::Refused(format!("{what}: device answered {name}")),
    }
}

fn to_request(w: &Write) -> Request<'_> {
    match w {
        Write::SingleCoil { address, value } => Request::WriteSingleCoil(*address, *value),
        Write::SingleRegister { address, value } => Request::WriteSingleRegister(*address, *value),
        Write::MultipleCoils { address, values } => Request::WriteMultipleCoils(*address, Cow::Borrowed(values)),
        Write::MultipleRegisters { address, values } => {
            Request::WriteMultipleRegisters(*address, Cow::Borrowed(values))
        }
    }
}

/// Whether the response is the echo the Modbus spec requires for this write.
fn echo_matches(w: &Write, r: &Response) -> bool {
    match (w, r) {
        (Write::SingleCoil { address, value }, Response::WriteSingleCoil(a, v)) => a == address && v == value,
        (Write::SingleRegister { address, value }, Response::WriteSingleRegister(a, v)) => a == address && v == value,
        (Write::MultipleCoils { address, values }, Response::WriteMultipleCoils(a, n)) => {
            a == address && usize::from(*n) == values.len()
        }
        (Write::MultipleRegisters { address, values }, Response::WriteMultipleRegisters(a, n)) => {
            a == address && usize::from(*n) == values.len()
        }
        _ => false,
    }
}

impl ModbusLink {
    pub fn new(target: Target, timeout: Duration) -> Self {
        ModbusLink { target, conn: None, timeout, last_frame_end: None }
    }

    /// Makes sure a connection is up. An error means nothing was sent.
    pub async fn connect(&mut self) -> Result<(), ConnectError> {
        if let Some(c) = &self.conn {
            if let Some(peek) = &c.peek {
                let mut b = [0u8; 1];
                let alive = matches!(peek.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
                if !alive {
                    // Closed by the server, or stale bytes of an earlier
                    // exchange: start afresh so replies line up again.
                    self.conn = None;
                }
            }
        }
        if self.conn.is_some() {
            return Ok(());
        }
        let t = self.timeout;
        let conn = match &mut self.target {
            Target::Tcp { address } => {
                let s = timeout(t, TcpStream::connect(address.as_str()))
                    .await
                    .map_err(|_| ConnectError::TimedOut { address: address.clone(), after: t })?
                    .map_err(|source| ConnectError::Tcp { address: address.clone(), source })?;
                let _ = s.set_nodelay(true);
                let std = s.into_std().map_err(ConnectError::Socket)?;
                let peek = std.try_clone().ok();
                let s = TcpStream::from_std(std).map_err(ConnectError::Socket)?;
                let (counted, written) = Counted::new(s);
                let eof = counted.eof_flag();
                Conn { ctx: tokio_modbus::client::tcp::attach(counted), written, stale: None, eof, peek }
            }
            Target::Rtu { opener, .. } => {
                let port = opener().map_err(ConnectError::Open)?;
                // A reply that comes after its request timed out stays in the
                // port; read as the answer to the next request it would
                // confirm the wrong command. Dropped before each request.
                let (counted, written, stale) = Counted::dropping_stale_input(port);
                let eof = counted.eof_flag();
                Conn { ctx: tokio_modbus::client::rtu::attach(counted), written, stale: Some(stale), eof, peek: None }
            }
        };
        self.conn = Some(conn);
        Ok(())
    }

    /// Reads `count` registers or bits of `table` (telemetry). Errors say why.
    pub async fn read(
        &mut self,
        unit: u8,
        table: crate::config::Table,
        address: u16,
        count: u16,
    ) -> Result<(Vec<u16>, Vec<bool>), String> {
        use crate::config::Table;
        self.connect().await.map_err(|e| e.to_string())?;
        if let (Target::Rtu { gap, .. }, Some(end)) = (&self.target, self.last_frame_end) {
            wait_until_precisely(end + *gap).await;
        }
        let is_tcp = matches!(self.target, Target::Tcp { .. });
        let conn = self.conn.as_mut().expect("connected above");
        conn.ctx.set_slave(Slave(unit));
        let req = match table {
            Table::Holding => Request::ReadHoldingRegisters(address, count),
            Table::Input => Request::ReadInputRegisters(address, count),
            Table::Coil => Request::ReadCoils(address, count),
            Table::Discrete => Request::ReadDiscreteInputs(address, count),
        };
        let result = timeout(self.timeout, conn.ctx.call(req)).await;
        self.last_frame_end = Some(Instant::now());
        let what = format!("unit {unit}: read {table:?} {address} x{count}");
        match result {
            Err(_) => {
                if is_tcp {
                    self.conn = None;
                }
                Err(format!("no reply from {what} within {:?}", self.timeout))
            }
            Ok(Err(e)) => {
                self.conn = None;
                Err(format!("{what}: {e}"))
            }
            Ok(Ok(Err(exc))) => Err(format!("{what}: device answered {}", exception_name(exc))),
            Ok(Ok(Ok(resp))) => match resp {
                Response::ReadHoldingRegisters(w) | Response::ReadInputRegisters(w) if w.len() >= count as usize => {
                    Ok((w, Vec::new()))
                }
                Response::ReadCoils(b) | Response::ReadDiscreteInputs(b) if b.len() >= count as usize => {
                    Ok((Vec::new(), b))
                }
                other => Err(format!("{what}: unexpected reply {other:?}")),
            },
        }
    }

    /// Performs one write on unit `unit`. Call [`ModbusLink::connect`] first.
    pub async fn write(&mut self, unit: u8, w: &Write) -> Wire {
        if let Err(e) = self.connect().await {
            return Wire::NotSent(e.to_string());
        }
        if let (Target::Rtu { gap, .. }, Some(end)) = (&self.target, self.last_frame_end) {
            wait_until_precisely(end + *gap).await;
        }
        let is_tcp = matches!(self.target, Target::Tcp { .. });
        let conn = self.conn.as_mut().expect("connected above");
        let before = conn.written.load(Ordering::Relaxed);
        let stale_before = conn.stale.as_ref().map_or(0, |s| s.load(Ordering::Relaxed));
        conn.ctx.set_slave(Slave(unit));
        let what = format!("unit {unit}: {}", w.describe());
        let result = timeout(self.timeout, conn.ctx.call(to_request(w))).await;
        let wrote = conn.written.load(Ordering::Relaxed) > before;
        let stale = conn.stale.as_ref().map_or(0, |s| s.load(Ordering::Relaxed)) - stale_before;
        if stale > 0 {
            tracing::debug!(unit, bytes = stale, "dropped bytes received since the last exchange (a late reply?)");
        }
        self.last_frame_end = Some(Instant::now());
        let t = self.timeout;
        match result {
            Err(_) => {
                // TCP: a late reply would arrive on the next exchange, so
                // start a new connection. RTU: tokio-modbus clears its buffer
                // before each request, and reopening a port costs more than it helps.
                if is_tcp {
                    self.conn = None;
                }
                if wrote {
                    Wire::Unconfirmed { reason: format!("no reply from {what} within {t:?}"), timeout: true }
                } else {
                    Wire::NotSent(format!("could not send to {what} within {t:?}"))
                }
            }
            Ok(Err(tokio_modbus::Error::Transport(e))) => {
                let closed = conn.eof.load(Ordering::Relaxed);
                self.conn = None;
                let e = if closed {
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the device closed the connection")
                } else {
                    e
                };
                if wrote {
                    let timeout = e.kind() != io::ErrorKind::InvalidData;
                    let reason = if timeout {
                        format!("connection failed after sending to {what}: {e}")
                    } else {
                        format!("unreadable reply from {what}: {e}")
                    };
                    Wire::Unconfirmed { reason, timeout: false }
                } else {
                    Wire::NotSent(format!("could not send to {what}: {e}"))
                }
            }
            // A reply that does not answer this request (another unit, another
            // function, a wrong echo) is no refusal: the device may well have
            // run the write. Unconfirmed, like a garbled reply.
            Ok(Err(tokio_modbus::Error::Protocol(e))) => {
                self.conn = None;
                Wire::Unconfirmed {
                    reason: format!("{what}: the reply does not match the request ({e})"),
                    timeout: false,
                }
            }
            Ok(Ok(Err(exc))) => exception_wire(w, &what, exc),
            Ok(Ok(Ok(resp))) => {
                if echo_matches(w, &resp) {
                    Wire::Acked(w.describe())
                } else {
                    Wire::Unconfirmed {
                        reason: format!("{what}: the device's echo {resp:?} does not match the write"),
                        timeout: false,
                    }
                }
            }
        }
    }
}

/// Sleeps until `at` with sub-millisecond precision: tokio's timer rounds up
/// to whole milliseconds, which at 115200 baud would stretch the 1.75 ms
/// inter-frame gap to about 3 ms and cost a fifth of the bus. The last
/// stretch (under 2 ms) is slept on a blocking thread.
async fn wait_until_precisely(at: Instant) {
    const COARSE: Duration = Duration::from_millis(2);
    let now = Instant::now();
    if at <= now {
        return;
    }
    if at - now > COARSE {
        sleep_until(at - COARSE).await;
    }
    let rest = at.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_checks_address_value_and_count() {
        let w = Write::SingleRegister { address: 100, value: 7 };
        assert!(echo_matches(&w, &Response::WriteSingleRegister(100, 7)));
        assert!(!echo_matches(&w, &Response::WriteSingleRegister(100, 8)));
        assert!(!echo_matches(&w, &Response::WriteSingleRegister(101, 7)));
        let w = Write::MultipleRegisters { address: 10, values: vec![1, 2] };
        assert!(echo_matches(&w, &Response::WriteMultipleRegisters(10, 2)));
        assert!(!echo_matches(&w, &Response::WriteMultipleRegisters(10, 1)));
        assert!(!echo_matches(&w, &Response::WriteSingleRegister(10, 1)));
        let w = Write::SingleCoil { address: 7, value: true };
        assert!(echo_matches(&w, &Response::WriteSingleCoil(7, true)));
        assert!(!echo_matches(&w, &Response::WriteSingleCoil(7, false)));
    }

    #[test]
    fn busy_and_gateway_exceptions_are_retried_acknowledge_is_done() {
        let w = Write::SingleRegister { address: 100, value: 7 };
        let what = "unit 3: holding 100 = 7";
        for (exc, timeout) in [
            (ExceptionCode::ServerDeviceBusy, false),
            (ExceptionCode::GatewayPathUnavailable, false),
            (ExceptionCode::GatewayTargetDevice, true),
        ] {
            match exception_wire(&w, what, exc) {
                Wire::NotRun { reason, timeout: t } => {
                    assert_eq!(t, timeout, "{exc:?}");
                    assert!(reason.starts_with(what) && reason.contains(&exception_name(exc)), "{reason}");
                }
                other => panic!("{exc:?}: {other:?}"),
            }
        }
        assert_eq!(
            exception_wire(&w, what, ExceptionCode::Acknowledge),
            Wire::Acked(
                "holding 100 = 7 (device answered acknowledge (exception 0x05): accepted, still working)".into()
            )
        );
        for exc in [
            ExceptionCode::IllegalFunction,
            ExceptionCode::IllegalDataAddress,
            ExceptionCode::IllegalDataValue,
            ExceptionCode::ServerDeviceFailure,
            ExceptionCode::MemoryParityError,
            ExceptionCode::Custom(0x42),
        ] {
            assert!(matches!(exception_wire(&w, what, exc), Wire::Refused(_)), "{exc:?}");
        }
    }

    #[test]
    fn exceptions_are_named() {
        assert_eq!(exception_name(ExceptionCode::IllegalDataAddress), "illegal data address (exception 0x02)");
        assert_eq!(exception_name(ExceptionCode::Custom(0x42)), "non-standard exception (exception 0x42)");
    }
}
