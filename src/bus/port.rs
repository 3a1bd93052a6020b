//! Byte streams under the buses: serial ports (real or pseudo-terminal) and
//! TCP, wrapped so the worker knows whether a request left the gateway.
//!
//! `Counted` counts bytes the OS accepted for writing: a failed exchange that
//! wrote nothing can be retried on any device; one that wrote something may
//! have reached the device, which only an idempotent device can afford to see
//! twice.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

pub type BoxStream = Box<dyn Stream>;

/// Opens the byte stream of a bus (called again after every error).
pub type Opener = Box<dyn FnMut() -> io::Result<BoxStream> + Send>;

/// Opener for a serial device path.
pub fn serial_opener(cfg: &crate::config::BusConfig) -> Opener {
    use crate::config::Parity;
    let path = cfg.port.clone().unwrap_or_default().to_string_lossy().into_owned();
    let baud = cfg.baud;
    let parity = match cfg.parity {
        Parity::None => tokio_serial::Parity::None,
        Parity::Even => tokio_serial::Parity::Even,
        Parity::Odd => tokio_serial::Parity::Odd,
    };
    let data_bits = match cfg.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    let stop_bits = if cfg.stop_bits == 2 { tokio_serial::StopBits::Two } else { tokio_serial::StopBits::One };
    Box::new(move || {
        use tokio_serial::SerialPortBuilderExt;
        let port = tokio_serial::new(&path, baud)
            .parity(parity)
            .data_bits(data_bits)
            .stop_bits(stop_bits)
            .open_native_async()
            .map_err(|e| io::Error::other(format!("cannot open {path}: {e}")))?;
        Ok(Box::new(port) as BoxStream)
    })
}

/// A stream that counts the bytes written through it.
pub struct Counted<S> {
    inner: S,
    written: Arc<AtomicU64>,
    /// Counts bytes dropped before a write; `None`: nothing is dropped.
    stale: Option<Arc<AtomicU64>>,
    /// Set once a read found the end of the stream (the peer closed it).
    eof: Arc<AtomicBool>,
}

/// At most this many stale bytes are dropped before one write (a device
/// that never stops talking must not hold the request back forever).
const MAX_STALE: usize = 64 * 1024;

impl<S> Counted<S> {
    pub fn new(inner: S) -> (Self, Arc<AtomicU64>) {
        let written = Arc::new(AtomicU64::new(0));
        (Counted { inner, written: written.clone(), stale: None, eof: Arc::new(AtomicBool::new(false)) }, written)
    }

    /// Becomes true once a read finds the end of the stream: tells "the
    /// peer closed the connection" apart from other errors (tokio-modbus
    /// reports a closed TCP connection with a stale `errno`).
    pub fn eof_flag(&self) -> Arc<AtomicBool> {
        self.eof.clone()
    }

    /// Like [`Counted::new`], and before each write it reads and drops what
    /// the peer sent since the last exchange (returned: the count of those
    /// bytes). For request/response lines such as Modbus RTU: a reply that
    /// came after its request timed out must not be read as the answer to
    /// the next request.
    pub fn dropping_stale_input(inner: S) -> (Self, Arc<AtomicU64>, Arc<AtomicU64>) {
        let (mut c, written) = Counted::new(inner);
        let stale = Arc::new(AtomicU64::new(0));
        c.stale = Some(stale.clone());
        (c, written, stale)
    }
}

impl<S: AsyncRead + Unpin> Counted<S> {
    /// Reads whatever is already waiting and drops it (never waits).
    fn drop_stale(&mut self, cx: &mut Context<'_>) {
        let Some(stale) = self.stale.clone() else { return };
        let mut junk = [0u8; 512];
        let mut dropped = 0;
        while dropped < MAX_STALE {
            let mut buf = ReadBuf::new(&mut junk);
            match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => dropped += buf.filled().len(),
                // nothing waiting, end of stream or an error: the write will tell
                _ => break,
            }
        }
        if dropped > 0 {
            stale.fetch_add(dropped as u64, Ordering::Relaxed);
        }
    }
}

impl<S> std::fmt::Debug for Counted<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counted").field("written", &self.written).finish()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let (before, room) = (buf.filled().len(), buf.remaining());
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && room > 0 && buf.filled().len() == before {
            self.eof.store(true, Ordering::Relaxed);
        }
        r
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.drop_stale(cx);
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Silent interval a Modbus RTU master keeps between frames: 3.5 character
/// times of 11 bits, fixed at 1.75 ms above 19200 baud (Modbus over serial
/// line, §2.5.1.1).
pub fn rtu_gap(baud: u32) -> std::time::Duration {
    if baud == 0 || baud > 19_200 {
        return std::time::Duration::from_micros(1750);
    }
    std::time::Duration::from_secs_f64(3.5 * 11.0 / baud as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rtu_gap_follows_the_spec() {
        // 9600 baud: 11 bits = 1.1458 ms per character, 3.5 chars = 4.01 ms.
        let g = rtu_gap(9600);
        assert!(g > Duration::from_micros(4000) && g < Duration::from_micros(4020), "{g:?}");
        assert_eq!(rtu_gap(19_200), Duration::from_secs_f64(3.5 * 11.0 / 19_200.0));
        assert_eq!(rtu_gap(115_200), Duration::from_micros(1750));
        assert!(rtu_gap(1200) > Duration::from_millis(32));
    }

    #[tokio::test]
    async fn stale_input_is_dropped_before_a_write() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut b) = tokio::io::duplex(64);
        let (mut c, written, stale) = Counted::dropping_stale_input(a);
        b.write_all(b"late reply").await.unwrap();
        c.write_all(b"request").await.unwrap();
        assert_eq!((written.load(Ordering::Relaxed), stale.load(Ordering::Relaxed)), (7, 10));
        b.write_all(b"answer").await.unwrap();
        let mut got = [0u8; 6];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"answer", "what comes after the write is kept");
        let eof = c.eof_flag();
        assert!(!eof.load(Ordering::Relaxed));
        drop(b);
        assert_eq!(c.read(&mut got).await.unwrap(), 0);
        assert!(eof.load(Ordering::Relaxed), "end of stream seen");
    }

    #[tokio::test]
    async fn counted_counts_written_bytes() {
        use tokio::io::AsyncWriteExt;
        let (a, _b) = tokio::io::duplex(64);
        let (mut c, n) = Counted::new(a);
        c.write_all(b"hello").await.unwrap();
        assert_eq!(n.load(Ordering::Relaxed), 5);
    }
}
