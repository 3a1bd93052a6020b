//! Device twins on the emulator, as IoT Hub keeps them: desired properties
//! (set by the back end: HTTP `PATCH /twins/{id}`) and reported ones (set
//! by the device: `$iothub/twin/PATCH/properties/reported/?$rid=`), each
//! with a `$version` that grows by one per change; a `null` in a patch
//! deletes the property. The device GETs the whole twin
//! (`$iothub/twin/GET/?$rid=` → `$iothub/twin/res/200/?$rid=`), and gets
//! desired changes pushed (`$iothub/twin/PATCH/properties/desired/?$version=`)
//! only while connected and subscribed: a device that was away GETs the
//! twin to catch up.

use super::mqtt::ConnMsg;
use super::Shared;
use serde_json::{json, Map, Value};

/// Desired and reported properties, each at most this large (IoT Hub: 32 KB).
pub const MAX_SECTION: usize = 32 * 1024;
/// The filters a device subscribes to for twin answers and desired pushes.
pub const RES_FILTER: &str = "$iothub/twin/res/#";
pub const DESIRED_FILTER: &str = "$iothub/twin/PATCH/properties/desired/#";

#[derive(Debug, Clone)]
pub struct Twin {
    pub desired: Map<String, Value>,
    pub desired_version: u64,
    pub reported: Map<String, Value>,
    pub reported_version: u64,
}

impl Default for Twin {
    fn default() -> Self {
        Twin { desired: Map::new(), desired_version: 1, reported: Map::new(), reported_version: 1 }
    }
}

/// Merges `patch` into `target`: `null` deletes, objects merge, the rest replaces.
fn merge(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (k, v) in patch {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::Object(p) => match target.get_mut(k) {
                Some(Value::Object(t)) => merge(t, p),
                _ => {
                    let mut t = Map::new();
                    merge(&mut t, p);
                    target.insert(k.clone(), Value::Object(t));
                }
            },
            other => {
                target.insert(k.clone(), other.clone());
            }
        }
    }
}

/// Applies a patch (a JSON object without `$` keys) to a section, within
/// the size limit; the section is unchanged on an error.
fn apply(section: &mut Map<String, Value>, patch: &Value) -> Result<(), String> {
    let Value::Object(p) = patch else { return Err("a twin patch must be a JSON object".into()) };
    if let Some(k) = p.keys().find(|k| k.starts_with('$')) {
        return Err(format!("property {k:?}: names starting with $ are the hub's"));
    }
    let mut next = section.clone();
    merge(&mut next, p);
    let size = serde_json::to_vec(&next).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_SECTION {
        return Err(format!("the properties would take {size} bytes; at most {MAX_SECTION}"));
    }
    *section = next;
    Ok(())
}

fn with_version(m: &Map<String, Value>, version: u64) -> Value {
    let mut m = m.clone();
    m.insert("$version".into(), json!(version));
    Value::Object(m)
}

impl Twin {
    /// The twin as a device GETs it.
    pub fn device_view(&self) -> Value {
        json!({
            "desired": with_version(&self.desired, self.desired_version),
            "reported": with_version(&self.reported, self.reported_version),
        })
    }

    /// The twin as the service API shows it.
    pub fn service_view(&self, device: &str) -> Value {
        json!({
            "deviceId": device,
            "version": self.desired_version + self.reported_version,
            "properties": self.device_view(),
        })
    }

    /// A desired patch from the back end: the patch as pushed to the
    /// device (with the new `$version`).
    pub fn patch_desired(&mut self, patch: &Value) -> Result<Value, String> {
        apply(&mut self.desired, patch)?;
        self.desired_version += 1;
        let Value::Object(p) = patch else { unreachable!("checked by apply") };
        Ok(with_version(p, self.desired_version))
    }

    /// A reported patch from the device: the new reported `$version`.
    pub fn patch_reported(&mut self, patch: &Value) -> Result<u64, String> {
        apply(&mut self.reported, patch)?;
        self.reported_version += 1;
        Ok(self.reported_version)
    }
}

/// A device's twin request: the answer's topic and body, or why the
/// connection ends (a topic IoT Hub does not have).
pub fn answer(twin: &mut Twin, topic: &str, payload: &[u8]) -> Result<(String, Vec<u8>), String> {
    let (path, query) = topic.split_once("/?").unwrap_or((topic, ""));
    let rid = query.split('&').find_map(|kv| kv.strip_prefix("$rid=")).unwrap_or("");
    let res = |status: u16, extra: &str| format!("$iothub/twin/res/{status}/?$rid={rid}{extra}");
    match path {
        "$iothub/twin/GET" => Ok((res(200, ""), serde_json::to_vec(&twin.device_view()).expect("JSON"))),
        "$iothub/twin/PATCH/properties/reported" => {
            let patch: Result<Value, _> = serde_json::from_slice(payload);
            match patch.map_err(|e| e.to_string()).and_then(|p| twin.patch_reported(&p)) {
                Ok(version) => Ok((res(204, &format!("&$version={version}")), Vec::new())),
                Err(why) => Ok((res(400, ""), serde_json::to_vec(&json!({"message": why})).expect("JSON"))),
            }
        }
        _ => Err(format!("publish to a twin topic IoT Hub does not have: {topic}")),
    }
}

impl Shared {
    /// The back end's `PATCH /twins/{id}` (desired properties): the new
    /// twin; the patch goes to the device if it is connected and
    /// subscribed to desired changes.
    pub fn patch_desired(&self, device: &str, patch: &Value) -> Result<Value, TwinError> {
        let (pushed, conn, view) = {
            let mut st = self.state();
            let d = st.devices.get_mut(device).ok_or_else(|| TwinError::UnknownDevice(device.into()))?;
            let pushed = d.twin.patch_desired(patch).map_err(TwinError::BadPatch)?;
            let conn = d.conn.filter(|c| d.desired_conn == Some(*c));
            (pushed, conn, d.twin.service_view(device))
        };
        if let Some(conn) = conn {
            let version = pushed["$version"].as_u64().unwrap_or_default();
            let topic = format!("$iothub/twin/PATCH/properties/desired/?$version={version}");
            let body = serde_json::to_vec(&pushed).expect("JSON");
            if let Some(tx) = self.conns().get(&conn) {
                let _ = tx.send(ConnMsg::Publish0 { topic, body });
            }
        }
        Ok(view)
    }

    /// The service API's view of a twin.
    pub fn twin(&self, device: &str) -> Result<Value, TwinError> {
        let st = self.state();
        let d = st.devices.get(device).ok_or_else(|| TwinError::UnknownDevice(device.into()))?;
        Ok(d.twin.service_view(device))
    }

    /// A device's PUBLISH on a twin topic: the answer to send it (only when
    /// it subscribed to twin answers on this connection).
    pub(crate) fn twin_request(
        &self,
        device: &str,
        conn: u64,
        topic: &str,
        payload: &[u8],
    ) -> Result<Option<(String, Vec<u8>)>, String> {
        let mut st = self.state();
        let Some(d) = st.devices.get_mut(device) else { return Ok(None) };
        let out = answer(&mut d.twin, topic, payload)?;
        Ok((d.twin_res_conn == Some(conn)).then_some(out))
    }

    /// A device subscribed to twin answers (`res`) or desired pushes.
    pub(crate) fn twin_subscribed(&self, device: &str, conn: u64, filter: &str) {
        if let Some(d) = self.state().devices.get_mut(device) {
            if d.conn == Some(conn) {
                match filter {
                    RES_FILTER => d.twin_res_conn = Some(conn),
                    _ => d.desired_conn = Some(conn),
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TwinError {
    #[error("device {0} is not registered")]
    UnknownDevice(String),
    #[error("{0}")]
    BadPatch(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_merge_delete_with_null_and_bump_the_version() {
        let mut t = Twin::default();
        let pushed = t.patch_desired(&json!({"devices": {"boiler": {"setpoint": 21.5, "pump": true}}})).unwrap();
        assert_eq!(pushed["$version"], 2);
        t.patch_desired(&json!({"devices": {"boiler": {"pump": null, "mode": 2}}})).unwrap();
        assert_eq!(t.desired, *json!({"devices": {"boiler": {"setpoint": 21.5, "mode": 2}}}).as_object().unwrap());
        assert_eq!(t.device_view()["desired"]["$version"], 3);
        assert_eq!(t.patch_reported(&json!({"a": 1})).unwrap(), 2);
        assert_eq!(t.device_view()["reported"], json!({"a": 1, "$version": 2}));
    }

    #[test]
    fn bad_patches_change_nothing() {
        let mut t = Twin::default();
        assert!(t.patch_desired(&json!([1])).is_err());
        assert!(t.patch_reported(&json!({"$version": 4})).is_err());
        assert!(t.patch_reported(&json!({"big": "x".repeat(MAX_SECTION)})).is_err());
        assert_eq!((t.desired_version, t.reported_version), (1, 1));
        assert!(t.reported.is_empty());
    }

    #[test]
    fn device_requests_are_answered_as_iot_hub_answers_them() {
        let mut t = Twin::default();
        let (topic, body) = answer(&mut t, "$iothub/twin/GET/?$rid=7", b"").unwrap();
        assert_eq!(topic, "$iothub/twin/res/200/?$rid=7");
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["desired"]["$version"], 1);
        let (topic, body) = answer(&mut t, "$iothub/twin/PATCH/properties/reported/?$rid=8", b"{\"x\": 1}").unwrap();
        assert_eq!((topic.as_str(), body.len()), ("$iothub/twin/res/204/?$rid=8&$version=2", 0));
        let (topic, _) = answer(&mut t, "$iothub/twin/PATCH/properties/reported/?$rid=9", b"nope").unwrap();
        assert_eq!(topic, "$iothub/twin/res/400/?$rid=9");
        assert!(answer(&mut t, "$iothub/twin/DELETE/?$rid=1", b"").is_err());
    }
}
