//! A simulated Modbus device (TCP or RTU) for the demo and the tests: an
//! in-memory register map per unit that answers reads and writes, logs every
//! write, and can play a dead unit, a slow one or one that refuses an address.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_modbus::server::Service;
use tokio_modbus::{ExceptionCode, Request, Response, SlaveRequest};

/// One write the device received and applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteLog {
    pub unit: u8,
    pub fc: u8,
    pub address: u16,
    pub registers: Vec<u16>,
    pub coils: Vec<bool>,
}

#[derive(Debug, Default)]
pub struct Memory {
    pub holding: HashMap<(u8, u16), u16>,
    pub input: HashMap<(u8, u16), u16>,
    pub coils: HashMap<(u8, u16), bool>,
    pub discrete: HashMap<(u8, u16), bool>,
    pub writes: Vec<WriteLog>,
}

#[derive(Debug, Default)]
pub struct SimDevice {
    mem: Mutex<Memory>,
    /// Units that answer; empty = every unit.
    pub units: HashSet<u8>,
    /// Units that never answer (a dead device on the bus).
    dead: Mutex<HashSet<u8>>,
    /// Answer after this long.
    delay: Mutex<Duration>,
    /// Addresses at or above this answer "illegal data address".
    pub limit: Option<u16>,
    /// When each request arrived (for `bench`), while recording.
    arrivals: Mutex<Option<Vec<Arrival>>>,
    /// Reply as late as a real RTU wire would (a pty has no baud timing).
    pace: Mutex<Option<Pace>>,
    /// Reply no earlier than this after the request arrived (a device's own
    /// processing time; precise to ~0.1 ms, unlike `delay`).
    service: Mutex<Duration>,
}

/// A request as it arrived, for latency measurements.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub at: Instant,
    pub unit: u8,
    pub fc: u8,
    pub address: u16,
    /// Registers written (FC6, FC16); empty otherwise.
    pub registers: Vec<u16>,
}

/// Wire timing of a Modbus RTU line: a reply is sent when it would have been
/// fully received on a real line at `baud` (8N1: 10 bits a character).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub baud: u32,
    /// The device's own processing time between request and reply.
    pub reply_time: Duration,
}

impl Pace {
    /// Time on the wire for `bytes` characters.
    pub fn wire(&self, bytes: usize) -> Duration {
        Duration::from_secs_f64(bytes as f64 * 10.0 / self.baud as f64)
    }

    /// The silent interval that ends a frame: 3.5 characters of 11 bits,
    /// fixed at 1.75 ms above 19200 baud (Modbus over serial line §2.5.1.1).
    pub fn t35(&self) -> Duration {
        if self.baud > 19_200 {
            Duration::from_micros(1750)
        } else {
            Duration::from_secs_f64(3.5 * 11.0 / self.baud as f64)
        }
    }

    /// From the first byte of a request to the last byte of its reply:
    /// request on the wire, end-of-frame silence, reply time, reply on the wire.
    pub fn exchange(&self, request_len: usize, reply_len: usize) -> Duration {
        self.wire(request_len) + self.t35() + self.reply_time + self.wire(reply_len)
    }
}

/// Bytes of a request's RTU frame (unit + PDU + CRC).
pub fn rtu_request_len(req: &Request<'_>) -> usize {
    3 + match req {
        Request::WriteMultipleRegisters(_, v) => 6 + 2 * v.len(),
        Request::WriteMultipleCoils(_, v) => 6 + v.len().div_ceil(8),
        _ => 5,
    }
}

/// Bytes of a reply's RTU frame (unit + PDU + CRC).
pub fn rtu_reply_len(reply: &Result<Response, ExceptionCode>) -> usize {
    3 + match reply {
        Ok(Response::ReadHoldingRegisters(v)) | Ok(Response::ReadInputRegisters(v)) => 2 + 2 * v.len(),
        Ok(Response::ReadCoils(v)) | Ok(Response::ReadDiscreteInputs(v)) => 2 + v.len().div_ceil(8),
        Ok(_) => 5,
        Err(_) => 2,
    }
}

impl SimDevice {
    pub fn new(units: &[u8]) -> Arc<Self> {
        Arc::new(SimDevice { units: units.iter().copied().collect(), limit: Some(1000), ..SimDevice::default() })
    }

    pub fn mem(&self) -> MutexGuard<'_, Memory> {
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn writes(&self) -> Vec<WriteLog> {
        self.mem().writes.clone()
    }

    pub fn holding(&self, unit: u8, address: u16) -> u16 {
        self.mem().holding.get(&(unit, address)).copied().unwrap_or(0)
    }

    pub fn coil(&self, unit: u8, address: u16) -> bool {
        self.mem().coils.get(&(unit, address)).copied().unwrap_or(false)
    }

    pub fn set_dead(&self, unit: u8, dead: bool) {
        let mut d = self.dead.lock().unwrap_or_else(|p| p.into_inner());
        if dead {
            d.insert(unit);
        } else {
            d.remove(&unit);
        }
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap_or_else(|p| p.into_inner()) = delay;
    }

    /// Starts (or stops) recording request arrivals; starting clears them.
    pub fn record_arrivals(&self, on: bool) {
        *self.arrivals.lock().unwrap_or_else(|p| p.into_inner()) = on.then(Vec::new);
    }

    /// The arrivals recorded so far (recording goes on).
    pub fn take_arrivals(&self) -> Vec<Arrival> {
        self.arrivals.lock().unwrap_or_else(|p| p.into_inner()).as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Replies as late as an RTU line at this pace would allow (None: at once).
    pub fn set_pace(&self, pace: Option<Pace>) {
        *self.pace.lock().unwrap_or_else(|p| p.into_inner()) = pace;
    }

    /// Each reply goes out this long after its request arrived, at the
    /// earliest (zero: at once).
    pub fn set_service_time(&self, t: Duration) {
        *self.service.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    fn note_arrival(&self, unit: u8, req: &Request<'_>, at: Instant) {
        let mut a = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        let Some(log) = a.as_mut() else { return };
        let (fc, address, registers) = match req {
            Request::WriteSingleRegister(a, v) => (6, *a, vec![*v]),
            Request::WriteMultipleRegisters(a, v) => (16, *a, v.to_vec()),
            Request::WriteSingleCoil(a, _) => (5, *a, vec![]),
            Request::WriteMultipleCoils(a, _) => (15, *a, vec![]),
            Request::ReadHoldingRegisters(a, _) => (3, *a, vec![]),
            Request::ReadInputRegisters(a, _) => (4, *a, vec![]),
            Request::ReadCoils(a, _) => (1, *a, vec![]),
            Request::ReadDiscreteInputs(a, _) => (2, *a, vec![]),
            _ => (0, 0, vec![]),
        };
        log.push(Arrival { at, unit, fc, address, registers });
    }

    fn answers(&self, unit: u8) -> bool {
        (self.units.is_empty() || self.units.contains(&unit))
            && !self.dead.lock().unwrap_or_else(|p| p.into_inner()).contains(&unit)
    }

    fn check(&self, address: u16, count: usize) -> Result<(), ExceptionCode> {
        match self.limit {
            Some(l) if address as usize + count > l as usize => Err(ExceptionCode::IllegalDataAddress),
            _ => Ok(()),
        }
    }

    /// Applies one request; None = stay silent.
    pub fn handle(&self, unit: u8, req: Request<'_>) -> Option<Result<Response, ExceptionCode>> {
        if !self.answers(unit) {
            return None;
        }
        let mut m = self.mem();
        let log = |m: &mut Memory, fc, address, registers: Vec<u16>, coils: Vec<bool>| {
            m.writes.push(WriteLog { unit, fc, address, registers, coils })
        };
        let r = match req {
            Request::WriteSingleRegister(a, v) => self.check(a, 1).map(|()| {
                m.holding.insert((unit, a), v);
                log(&mut m, 6, a, vec![v], vec![]);
                Response::WriteSingleRegister(a, v)
            }),
            Request::WriteMultipleRegisters(a, vs) => self.check(a, vs.len()).map(|()| {
                for (i, v) in vs.iter().enumerate() {
                    m.holding.insert((unit, a + i as u16), *v);
                }
                log(&mut m, 16, a, vs.to_vec(), vec![]);
                Response::WriteMultipleRegisters(a, vs.len() as u16)
            }),
            Request::WriteSingleCoil(a, v) => self.check(a, 1).map(|()| {
                m.coils.insert((unit, a), v);
                log(&mut m, 5, a, vec![], vec![v]);
                Response::WriteSingleCoil(a, v)
            }),
            Request::WriteMultipleCoils(a, vs) => self.check(a, vs.len()).map(|()| {
                for (i, v) in vs.iter().enumerate() {
                    m.coils.insert((unit, a + i as u16), *v);
                }
                log(&mut m, 15, a, vec![], vs.to_vec());
                Response::WriteMultipleCoils(a, vs.len() as u16)
            }),
            Request::ReadHoldingRegisters(a, n) => self.check(a, n as usize).map(|()| {
                Response::ReadHoldingRegisters(
                    (0..n).map(|i| m.holding.get(&(unit, a + i)).copied().unwrap_or(0)).collect(),
                )
            }),
            Request::ReadInputRegisters(a, n) => self.check(a, n as usize).map(|()| {
                Response::ReadInputRegisters(
                    (0..n).map(|i| m.input.get(&(unit, a + i)).copied().unwrap_or(0)).collect(),
                )
            }),
            Request::ReadCoils(a, n) => self.check(a, n as usize).map(|()| {
                Response::ReadCoils((0..n).map(|i| m.coils.get(&(unit, a + i)).copied().unwrap_or(false)).collect())
            }),
            Request::ReadDiscreteInputs(a, n) => self.check(a, n as usize).map(|()| {
                Response::ReadDiscreteInputs(
                    (0..n).map(|i| m.discrete.get(&(unit, a + i)).copied().unwrap_or(false)).collect(),
                )
            }),
            _ => Err(ExceptionCode::IllegalFunction),
        };
        Some(r)
    }
}

#[derive(Clone)]
struct Svc(Arc<SimDevice>);

type Fut = Pin<Box<dyn Future<Output = Result<Option<Response>, ExceptionCode>> + Send>>;

impl Service for Svc {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Fut;

    fn call(&self, req: Self::Request) -> Self::Future {
        let dev = self.0.clone();
        Box::pin(async move {
            let arrived = Instant::now();
            dev.note_arrival(req.slave, &req.request, arrived);
            let request_len = rtu_request_len(&req.request);
            let delay = *dev.delay.lock().unwrap_or_else(|p| p.into_inner());
            let pace = *dev.pace.lock().unwrap_or_else(|p| p.into_inner());
            let out = dev.handle(req.slave, req.request);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let service = *dev.service.lock().unwrap_or_else(|p| p.into_inner());
            let paced = match (pace, &out) {
                (Some(pace), Some(reply)) => pace.exchange(request_len, rtu_reply_len(reply)),
                _ => Duration::ZERO,
            };
            // tokio's timer has 1 ms steps; a blocking sleep is precise to ~0.1 ms.
            let left = (arrived + paced.max(service)).saturating_duration_since(Instant::now());
            if !left.is_zero() {
                let _ = tokio::task::spawn_blocking(move || std::thread::sleep(left)).await;
            }
            // None: no reply at all (tokio-modbus sends nothing), as a
            // unit that is not there.
            out.transpose()
        })
    }
}

/// Serves Modbus TCP on `listener` until the task is aborted.
pub async fn serve_tcp(listener: TcpListener, dev: Arc<SimDevice>) -> std::io::Result<()> {
    let server = tokio_modbus::server::tcp::Server::new(listener);
    let on_connected = move |stream, _addr| {
        let svc = Svc(dev.clone());
        async move { Ok(Some((svc, stream))) }
    };
    server.serve(&on_connected, |e| tracing::debug!(error = %e, "sim device: connection error")).await
}

/// Serves Modbus RTU on a serial stream (e.g. one end of a pty pair).
pub async fn serve_rtu(serial: tokio_serial::SerialStream, dev: Arc<SimDevice>) -> std::io::Result<()> {
    tokio_modbus::server::rtu::Server::new(serial).serve_forever(Svc(dev)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtu_frame_sizes_and_pace() {
        // FC16 with two registers: unit, fc, addr(2), qty(2), count, 4 data, crc(2).
        assert_eq!(rtu_request_len(&Request::WriteMultipleRegisters(100, vec![1, 2].into())), 13);
        assert_eq!(rtu_request_len(&Request::WriteSingleRegister(1, 2)), 8);
        assert_eq!(rtu_reply_len(&Ok(Response::WriteMultipleRegisters(100, 2))), 8);
        assert_eq!(rtu_reply_len(&Ok(Response::ReadHoldingRegisters(vec![1, 2, 3]))), 11);
        assert_eq!(rtu_reply_len(&Err(ExceptionCode::IllegalDataAddress)), 5);
        let p = Pace { baud: 9600, reply_time: Duration::from_millis(1) };
        // 21 characters at 9600 = 21.875 ms, 3.5 chars of 11 bits = 4.01 ms, 1 ms reply.
        let d = p.exchange(13, 8).as_secs_f64() * 1000.0;
        assert!((d - 26.886).abs() < 0.01, "{d}");
        assert_eq!(Pace { baud: 115_200, ..p }.t35(), Duration::from_micros(1750));
    }
}
