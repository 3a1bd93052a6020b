//! HTTP on a local address (`[gateway] http`): `/metrics` (Prometheus
//! text format), `/status` (the status document, JSON) and `/` (the status
//! page: one self-contained file that fetches `status` and redraws every
//! few seconds; no external assets). Read-only: nothing here changes a
//! message.

use super::Ctx;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// The status page.
pub const PAGE: &str = include_str!("page.html");

struct Http {
    ctx: Arc<Ctx>,
    registry: Registry,
}

pub fn router(ctx: Arc<Ctx>) -> Router {
    let registry = super::metrics::registry(ctx.journal.clone(), ctx.live.clone());
    let state = Arc::new(Http { ctx, registry });
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Serves `router` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, ctx: Arc<Ctx>) {
    if let Ok(a) = listener.local_addr() {
        tracing::info!(address = %a, "status page, /status and /metrics ready");
    }
    if let Err(e) = axum::serve(listener, router(ctx)).await {
        tracing::error!(error = %e, "the HTTP server stopped");
    }
}

async fn status(State(h): State<Arc<Http>>) -> impl IntoResponse {
    let mut resp = Json(h.ctx.status()).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    resp
}

async fn metrics(State(h): State<Arc<Http>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, super::metrics::CONTENT_TYPE)], super::metrics::encode(&h.registry))
}
