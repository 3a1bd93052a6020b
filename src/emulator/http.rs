//! The emulator's back-end HTTP API (what the service SDK does against IoT
//! Hub, reduced to what the seeds use):
//!
//! - `POST /devices/{id}/messages`: send a C2D message; headers
//!   `iothub-messageid`, `iothub-ack`, `iothub-expiry` (seconds),
//!   `iothub-correlationid`, `iothub-contenttype`, `iothub-contentencoding`,
//!   `iothub-app-NAME` (HTTP lower-cases NAME), `iothub-properties`
//!   (a percent-encoded bag `k=v&k=v` that keeps the case) → 201
//!   `{"message_id": ...}` (`null` without `iothub-messageid`: like IoT Hub,
//!   the emulator makes up no id, and the message goes without `$.mid`;
//!   without `iothub-expiry` it goes without `$.exp`)
//! - `GET /devices/{id}/messages`: the device's queue
//! - `POST /devices/{id}/move`: the hub forgets the device's credentials and
//!   drops its connection, as when DPS moved it to another hub → 204
//! - `GET /dps/registrations`: `{"registrations": N}` completed at the DPS
//! - `GET /feedback`: delivery feedback records
//! - `GET /devices/{id}/events`: D2C messages with their properties
//! - `DELETE /devices/{id}/messages`: purge
//! - `POST /twins/{id}/methods`: invoke a direct method (`{"methodName",
//!   "payload", "responseTimeoutInSeconds", "connectTimeoutInSeconds"}`)
//!   → 200 `{"status", "payload"}` (the device's answer); 404 (not
//!   registered, or not online within the connect timeout), 504 (no answer
//!   within the response timeout), 400, each `{"errorCode", "message"}`
//! - `GET /twins/{id}`: the twin (`{"deviceId", "version", "properties":
//!   {"desired", "reported"}}`, each section with its `$version`)
//! - `PATCH /twins/{id}`: `{"properties": {"desired": {...}}}` merged into
//!   the desired properties (`null` deletes), pushed to the device if it is
//!   connected and subscribed; → the twin
//!
//! Errors are JSON `{"error": ..., "status": ...}` with a status that says
//! why: unknown device 404, queue full 403, bad header 400, too large 413.

use super::state::SendError;
use super::{C2dRequest, Shared};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({"error": msg.into(), "status": status.as_u16()}))).into_response()
}

fn send_error(e: SendError) -> Response {
    let status = match e {
        SendError::UnknownDevice(_) => StatusCode::NOT_FOUND,
        SendError::QueueFull(_) => StatusCode::FORBIDDEN,
        SendError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
    };
    error(status, e.to_string())
}

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/devices/{id}/messages", post(send).get(queue).delete(purge))
        .route("/devices/{id}/events", get(events))
        .route("/devices/{id}/move", post(move_device))
        .route("/dps/registrations", get(dps_registrations))
        .route("/feedback", get(feedback))
        .route("/twins/{id}/methods", post(invoke))
        .route("/twins/{id}", get(twin).patch(patch_twin))
        .with_state(shared)
}

/// Why the headers of a send are refused (a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header {name} is not valid text")]
    NotText { name: String },
    #[error("iothub-ack must be none, positive, negative or full, not {value:?}")]
    BadAck { value: String },
    #[error("iothub-expiry must be a number of seconds between 1 and 172800, not {value:?}")]
    BadExpiry { value: String },
    #[error("iothub-properties: {0}")]
    BadProperties(#[from] crate::hub::azure::propbag::PropBagError),
}

/// Builds the request from the headers; an invalid header is a 400.
pub fn request_from_headers(headers: &HeaderMap, body: Vec<u8>) -> Result<C2dRequest, HeaderError> {
    let text = |name: &str| -> Result<Option<String>, HeaderError> {
        headers
            .get(name)
            .map(|v| v.to_str().map(str::to_string).map_err(|_| HeaderError::NotText { name: name.into() }))
            .transpose()
    };
    let ack = text("iothub-ack")?;
    if let Some(a) = &ack {
        if !["none", "positive", "negative", "full"].contains(&a.as_str()) {
            return Err(HeaderError::BadAck { value: a.clone() });
        }
    }
    let ttl = match text("iothub-expiry")? {
        None => None,
        Some(s) => match s.trim().parse::<u64>() {
            Ok(n) if n > 0 && n <= 2 * 86400 => Some(Duration::from_secs(n)),
            _ => return Err(HeaderError::BadExpiry { value: s }),
        },
    };
    let mut properties = Vec::new();
    // HTTP lower-cases header names, so `iothub-app-NAME` loses NAME's case;
    // `iothub-properties` carries a property bag (`k=v&k=v`, percent-encoded)
    // that keeps it.
    if let Some(bag) = text("iothub-properties")? {
        let parsed = crate::hub::azure::propbag::parse(&bag)?;
        properties.extend(parsed.into_iter().map(|(k, v)| (k, v.unwrap_or_default())));
    }
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("iothub-app-") {
            let v = value.to_str().map_err(|_| HeaderError::NotText { name: name.to_string() })?;
            properties.push((key.to_string(), v.to_string()));
        }
    }
    Ok(C2dRequest {
        body,
        message_id: text("iothub-messageid")?,
        correlation_id: text("iothub-correlationid")?,
        ack,
        ttl,
        content_type: text("iothub-contenttype")?,
        content_encoding: text("iothub-contentencoding")?,
        properties,
    })
}

async fn send(State(sh): State<Arc<Shared>>, Path(id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    let req = match request_from_headers(&headers, body.to_vec()) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match sh.send(&id, req) {
        Ok(mid) => (StatusCode::CREATED, Json(json!({"message_id": mid}))).into_response(),
        Err(e) => send_error(e),
    }
}

async fn queue(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match sh.state().queue_view(&id) {
        Ok(q) => Json(q).into_response(),
        Err(e) => send_error(e),
    }
}

async fn purge(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match sh.state().purge(&id) {
        Ok(n) => Json(json!({"purged": n})).into_response(),
        Err(e) => send_error(e),
    }
}

async fn events(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let st = sh.state();
    if !st.devices.contains_key(&id) {
        return send_error(SendError::UnknownDevice(id));
    }
    let ev: Vec<_> = st.events.iter().filter(|e| e.device_id == id).cloned().collect();
    Json(ev).into_response()
}

/// The hub forgets the device's credentials (as if DPS moved it away): 204.
async fn move_device(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    if sh.move_device(&id) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("device {id} is not registered"))
    }
}

/// How many DPS registrations completed.
async fn dps_registrations(State(sh): State<Arc<Shared>>) -> Response {
    Json(json!({"registrations": sh.dps().registrations})).into_response()
}

async fn feedback(State(sh): State<Arc<Shared>>) -> Response {
    Json(sh.state().feedback.clone()).into_response()
}

async fn invoke(State(sh): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Response {
    use super::methods::{Invocation, InvokeError};
    let fail = |e: InvokeError| {
        let (status, code) = e.status_and_code();
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let msg = e.to_string();
        (status, Json(json!({"errorCode": code, "message": msg, "error": msg, "status": status.as_u16()})))
            .into_response()
    };
    let call: Invocation = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return fail(InvokeError::BadRequest(format!("the call is not a method invocation: {e}"))),
    };
    match sh.invoke(&id, &call).await {
        Ok(answer) => Json(answer).into_response(),
        Err(e) => fail(e),
    }
}

fn twin_error(e: super::twin::TwinError) -> Response {
    match e {
        super::twin::TwinError::UnknownDevice(_) => error(StatusCode::NOT_FOUND, e.to_string()),
        super::twin::TwinError::BadPatch(_) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn twin(State(sh): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match sh.twin(&id) {
        Ok(t) => Json(t).into_response(),
        Err(e) => twin_error(e),
    }
}

async fn patch_twin(State(sh): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Response {
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}")),
    };
    let Some(desired) = v.pointer("/properties/desired") else {
        return error(StatusCode::BAD_REQUEST, "a twin patch is {\"properties\": {\"desired\": {...}}}");
    };
    match sh.patch_desired(&id, desired) {
        Ok(t) => Json(t).into_response(),
        Err(e) => twin_error(e),
    }
}
