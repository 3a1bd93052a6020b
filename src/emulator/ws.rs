//! The emulator's TLS listeners: MQTT over TLS (IoT Hub's 8883) and MQTT
//! over WebSockets over TLS (443, path `/$iothub/websocket`, subprotocol
//! `mqtt`), both asking for an optional client certificate (X.509 devices).

use super::tls::Certs;
use super::{mqtt, Shared};
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// The path IoT Hub serves MQTT over WebSockets on (a query may follow).
pub const PATH: &str = "/$iothub/websocket";

/// Accepts connections on `l` until the task is aborted.
pub async fn listen_tls(l: TcpListener, certs: Arc<Certs>, shared: Arc<Shared>, websocket: bool) {
    let acceptor = tokio_rustls::TlsAcceptor::from(certs.server.clone());
    while let Ok((s, peer)) = l.accept().await {
        let _ = s.set_nodelay(true);
        let (acceptor, certs, sh) = (acceptor.clone(), certs.clone(), shared.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), accept(s, &acceptor, &certs, websocket)).await {
                Ok(Ok(Accepted::Tls(tls, who))) => mqtt::serve(tls, sh, who).await,
                Ok(Ok(Accepted::Ws(ws, who))) => mqtt::serve(ws, sh, who).await,
                Ok(Err(e)) => tracing::info!(%peer, error = %e, "emulator: handshake failed"),
                Err(_) => tracing::info!(%peer, "emulator: handshake timed out"),
            }
        });
    }
}

type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;
type WsStream = ws_stream_tungstenite::WsStream<async_tungstenite::tokio::TokioAdapter<TlsStream>>;

enum Accepted {
    Tls(Box<TlsStream>, super::x509::Peer),
    Ws(Box<WsStream>, super::x509::Peer),
}

async fn accept(
    s: TcpStream,
    acceptor: &tokio_rustls::TlsAcceptor,
    certs: &Certs,
    websocket: bool,
) -> Result<Accepted, String> {
    let tls = acceptor.accept(s).await.map_err(|e| format!("TLS: {e}"))?;
    let who = certs.clients.peer(tls.get_ref().1.peer_certificates());
    if !websocket {
        return Ok(Accepted::Tls(Box::new(tls), who));
    }
    let ws = async_tungstenite::tokio::accept_hdr_async(tls, upgrade).await.map_err(|e| format!("WebSocket: {e}"))?;
    Ok(Accepted::Ws(Box::new(ws_stream_tungstenite::WsStream::new(ws)), who))
}

/// Answers the upgrade like IoT Hub: only at [`PATH`], only for the `mqtt`
/// subprotocol, which the answer names.
#[allow(clippy::result_large_err)] // tungstenite's callback type
fn upgrade(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let refuse = |status: StatusCode, why: &str| {
        let mut r = ErrorResponse::new(Some(why.to_string()));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != PATH {
        tracing::info!(path = %req.uri().path(), "emulator: WebSocket upgrade for an unknown path: refused");
        return Err(refuse(StatusCode::NOT_FOUND, "no such path"));
    }
    let mqtt = req
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("mqtt"));
    if !mqtt {
        return Err(refuse(StatusCode::BAD_REQUEST, "the mqtt subprotocol is required"));
    }
    resp.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    Ok(resp)
}
