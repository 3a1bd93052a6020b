//! A simulated Modbus device (TCP or RTU) for the demo and the tests: an
//! in-memory register map per unit that answers reads and writes, logs every
//! write, and can play a dead unit, a slow one or one that refuses an address.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
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
            let delay = *dev.delay.lock().unwrap_or_else(|p| p.into_inner());
            let out = dev.handle(req.slave, req.request);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
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
