//! Direct methods on the emulator, as IoT Hub runs them. The service side
//! calls ([`Shared::invoke`], HTTP `POST /twins/{id}/methods`); the device
//! gets the request at QoS 0 on `$iothub/methods/POST/{name}/?$rid={rid}`
//! and answers on `$iothub/methods/res/{status}/?$rid={rid}`. A device that
//! is not connected and subscribed to methods within the call's connect
//! timeout is a 404 (IoT Hub's 404103); no answer within its response
//! timeout is a 504 (504101). Nothing is queued or redelivered: a caller
//! that timed out may call again.

use super::mqtt::ConnMsg;
use super::Shared;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::oneshot;

/// The filter a device subscribes to for method requests.
pub const FILTER: &str = "$iothub/methods/POST/#";
/// Where a device's answers go (then `{status}/?$rid={rid}`).
pub const RESPONSE_PREFIX: &str = "$iothub/methods/res/";
/// Request and response payloads, serialised, at most (IoT Hub: 128 KB).
pub const MAX_PAYLOAD: usize = 128 * 1024;

/// A call as the service SDK makes it (`CloudToDeviceMethod`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invocation {
    pub method_name: String,
    #[serde(default)]
    pub payload: serde_json::Value,
    #[serde(default = "default_response_timeout")]
    pub response_timeout_in_seconds: u64,
    #[serde(default)]
    pub connect_timeout_in_seconds: u64,
}

fn default_response_timeout() -> u64 {
    30
}

/// The device's answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Answer {
    pub status: u16,
    pub payload: serde_json::Value,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvokeError {
    #[error("device {0} is not registered")]
    UnknownDevice(String),
    #[error("device {0} is not online (not connected, or not subscribed to methods)")]
    NotOnline(String),
    #[error("timed out waiting for the response from device {0}")]
    Timeout(String),
    #[error("{0}")]
    BadRequest(String),
}

impl InvokeError {
    /// HTTP status and IoT Hub's error code.
    pub fn status_and_code(&self) -> (u16, u32) {
        match self {
            InvokeError::UnknownDevice(_) => (404, 404001),
            InvokeError::NotOnline(_) => (404, 404103),
            InvokeError::Timeout(_) => (504, 504101),
            InvokeError::BadRequest(_) => (400, 400027),
        }
    }
}

/// Calls waiting for their answer, by request id.
#[derive(Default)]
pub struct Pending {
    next_rid: u64,
    waiting: HashMap<String, (String, oneshot::Sender<Answer>)>,
}

impl Invocation {
    fn check(&self) -> Result<(Duration, Duration, Vec<u8>), InvokeError> {
        let bad = |m: String| Err(InvokeError::BadRequest(m));
        let name = &self.method_name;
        if name.is_empty() || name.len() > 128 || name.contains(['/', '?', '#', '+']) {
            return bad(format!("methodName {name:?} is not a valid method name"));
        }
        if !(5..=300).contains(&self.response_timeout_in_seconds) {
            return bad("responseTimeoutInSeconds must be between 5 and 300".into());
        }
        if self.connect_timeout_in_seconds > 300 {
            return bad("connectTimeoutInSeconds must be between 0 and 300".into());
        }
        let body = serde_json::to_vec(&self.payload).expect("a JSON value serialises");
        if body.len() > MAX_PAYLOAD {
            return bad(format!("the payload has {} bytes; at most {MAX_PAYLOAD}", body.len()));
        }
        Ok((
            Duration::from_secs(self.response_timeout_in_seconds),
            Duration::from_secs(self.connect_timeout_in_seconds),
            body,
        ))
    }
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.methods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The device's connection, if it is connected and subscribed to methods.
    fn method_conn(&self, device: &str) -> Result<Option<u64>, InvokeError> {
        let st = self.state();
        let d = st.devices.get(device).ok_or_else(|| InvokeError::UnknownDevice(device.into()))?;
        Ok(d.conn.filter(|c| d.methods_conn == Some(*c)))
    }

    /// Invokes a direct method on `device` and waits for its answer.
    pub async fn invoke(&self, device: &str, call: &Invocation) -> Result<Answer, InvokeError> {
        let (response_timeout, connect_timeout, body) = call.check()?;
        let connect_by = tokio::time::Instant::now() + connect_timeout;
        let conn = loop {
            if let Some(c) = self.method_conn(device)? {
                break c;
            }
            if tokio::time::Instant::now() >= connect_by {
                return Err(InvokeError::NotOnline(device.into()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (tx, rx) = oneshot::channel();
        let rid = {
            let mut p = self.pending();
            p.next_rid += 1;
            let rid = format!("{:x}", p.next_rid);
            p.waiting.insert(rid.clone(), (device.to_string(), tx));
            rid
        };
        let topic = format!("$iothub/methods/POST/{}/?$rid={rid}", call.method_name);
        let sent = self.conns().get(&conn).is_some_and(|tx| tx.send(ConnMsg::Publish0 { topic, body }).is_ok());
        if !sent {
            self.pending().waiting.remove(&rid);
            return Err(InvokeError::NotOnline(device.into()));
        }
        tracing::info!(%device, method = %call.method_name, %rid, "emulator: method request sent");
        match tokio::time::timeout(response_timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => {
                self.pending().waiting.remove(&rid);
                Err(InvokeError::Timeout(device.into()))
            }
        }
    }

    /// A device subscribed to method requests on connection `conn`.
    pub(crate) fn methods_subscribed(&self, device: &str, conn: u64) {
        if let Some(d) = self.state().devices.get_mut(device) {
            if d.conn == Some(conn) {
                d.methods_conn = Some(conn);
            }
        }
    }

    /// A device's PUBLISH on `$iothub/methods/res/...`: hands the answer to
    /// its call. An answer nobody waits for (late, or a made-up request
    /// id) is dropped, as IoT Hub drops it; a malformed topic is an error
    /// (the connection ends).
    pub(crate) fn method_answer(&self, device: &str, topic: &str, payload: &[u8]) -> Result<(), String> {
        let (status, rid) = parse_response_topic(topic)?;
        if payload.len() > MAX_PAYLOAD {
            return Err(format!("a method response of {} bytes (at most {MAX_PAYLOAD})", payload.len()));
        }
        let payload = if payload.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(payload).unwrap_or_else(|_| String::from_utf8_lossy(payload).into_owned().into())
        };
        let mut p = self.pending();
        match p.waiting.get(&rid) {
            Some((d, _)) if d == device => {
                let (_, tx) = p.waiting.remove(&rid).expect("present");
                let _ = tx.send(Answer { status, payload });
            }
            _ => tracing::info!(%device, %rid, "emulator: a method response nobody waits for: dropped"),
        }
        Ok(())
    }
}

/// `$iothub/methods/res/{status}/?$rid={rid}` → (status, rid).
pub fn parse_response_topic(topic: &str) -> Result<(u16, String), String> {
    let rest = topic.strip_prefix(RESPONSE_PREFIX).ok_or_else(|| format!("not a method response topic: {topic}"))?;
    let (status, query) = rest.split_once("/?").ok_or_else(|| format!("no query in method response topic: {topic}"))?;
    let status: u16 = status.parse().map_err(|_| format!("method response status {status:?} is not a number"))?;
    let rid = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("$rid="))
        .filter(|r| !r.is_empty())
        .ok_or_else(|| format!("no $rid in method response topic: {topic}"))?;
    Ok((status, rid.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_topics() {
        assert_eq!(parse_response_topic("$iothub/methods/res/200/?$rid=1f").unwrap(), (200, "1f".into()));
        assert_eq!(parse_response_topic("$iothub/methods/res/404/?a=b&$rid=7").unwrap(), (404, "7".into()));
        for bad in ["$iothub/methods/res/200", "$iothub/methods/res/x/?$rid=1", "$iothub/methods/res/200/?$rid="] {
            assert!(parse_response_topic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn calls_are_checked_like_iot_hub_checks_them() {
        let call = |v: serde_json::Value| serde_json::from_value::<Invocation>(v).unwrap().check();
        assert!(call(serde_json::json!({"methodName": "read"})).is_ok());
        for bad in [
            serde_json::json!({"methodName": ""}),
            serde_json::json!({"methodName": "a/b"}),
            serde_json::json!({"methodName": "read", "responseTimeoutInSeconds": 4}),
            serde_json::json!({"methodName": "read", "responseTimeoutInSeconds": 301}),
            serde_json::json!({"methodName": "read", "connectTimeoutInSeconds": 301}),
            serde_json::json!({"methodName": "read", "payload": "x".repeat(MAX_PAYLOAD)}),
        ] {
            assert!(matches!(call(bad.clone()), Err(InvokeError::BadRequest(_))), "{bad}");
        }
    }
}
