//! Twin setpoints (IoT Hub, `[twin] enabled = true`): desired properties
//! `{"devices": {"boiler": {"setpoint": 21.5}}}` are written to the devices
//! through the journal like C2D messages, and what became of each is
//! reported back (`{"devices": {"boiler": {"setpoint": {"value", "status",
//! "desired_version", "at"}}}}`).
//!
//! After every connect the gateway GETs the twin and reconciles: each point
//! whose desired value differs from the one it last applied (kept per
//! device point in the journal, see `journal/twin.rs`) becomes a command
//! with the id `twin:{point}:v{version}`, so a reconcile repeated after a
//! crash finds it again instead of writing twice. A desired patch while
//! connected triggers the same GET and reconcile. A restart with nothing
//! changed writes nothing. The gateway's own status goes into reported
//! `gateway`.

use super::Pipeline;
use crate::hub::HubCommand;
use crate::journal::Applied;
use crate::message::{now_ms, rfc3339_ms, Entry, Inbound, Origin};
use serde_json::{json, Map, Value};

/// One desired value of a device's point.
#[derive(Debug, Clone, PartialEq)]
pub struct Setpoint {
    pub device: String,
    pub point: String,
    pub value: Value,
}

/// The setpoints in a desired document (`devices.{name}.{point}`), in
/// order; anything else in it is not the gateway's and is left alone.
pub fn setpoints(desired: &Value) -> Vec<Setpoint> {
    let Some(Value::Object(devices)) = desired.get("devices") else { return Vec::new() };
    let mut out = Vec::new();
    for (device, points) in devices {
        let Value::Object(points) = points else { continue };
        for (point, value) in points {
            if point.starts_with('$') || value.is_null() {
                continue;
            }
            out.push(Setpoint { device: device.clone(), point: point.clone(), value: value.clone() });
        }
    }
    out
}

/// The setpoints to write: those whose value differs from the one last
/// applied (`applied` says what that was).
pub fn to_write(wanted: Vec<Setpoint>, applied: impl Fn(&Setpoint) -> Option<Value>) -> Vec<Setpoint> {
    wanted.into_iter().filter(|s| applied(s).as_ref() != Some(&s.value)).collect()
}

/// The reported patch for one setpoint.
fn reported(device: &str, point: &str, a: &Applied) -> Value {
    let mut p = json!({"value": a.value, "status": a.status, "desired_version": a.version, "at": rfc3339_ms(a.at_ms)});
    if !a.detail.is_empty() {
        p["detail"] = json!(a.detail);
    }
    json!({"devices": {device: {point: p}}})
}

const GET_RID: &str = "twin-get";

impl Pipeline {
    fn twin_on(&self) -> bool {
        self.cfg.twin.enabled && matches!(*self.dialect, crate::hub::Dialect::Azure(_))
    }

    fn twin_send(&self, topic: String, payload: Vec<u8>) {
        let _ = self.hub.send(HubCommand::Twin { topic, payload });
    }

    fn report_twin(&mut self, patch: Value) {
        self.twin_rid += 1;
        let topic = format!("$iothub/twin/PATCH/properties/reported/?$rid=twin-r{}", self.twin_rid);
        self.twin_send(topic, serde_json::to_vec(&patch).expect("JSON"));
    }

    /// Connected: the gateway's status into reported, then the whole twin.
    pub(super) fn twin_connected(&mut self) {
        if !self.twin_on() {
            return;
        }
        let s = self.journal.stats();
        let status = json!({"gateway": {
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": rfc3339_ms(self.started_ms),
            "hub": "connected",
            "queued": s.unfinished,
            // `null` until the bus was first used.
            "buses": self.live.snapshot().buses.into_iter().map(|(name, b)| (name, json!({"connected": b.connected})))
                .collect::<Map<_, _>>(),
        }});
        self.report_twin(status);
        self.twin_send(format!("$iothub/twin/GET/?$rid={GET_RID}"), Vec::new());
    }

    /// A desired patch pushed while connected: GET the whole twin again.
    pub(super) fn on_desired_patch(&mut self) {
        if self.twin_on() {
            self.twin_send(format!("$iothub/twin/GET/?$rid={GET_RID}"), Vec::new());
        }
    }

    /// The hub's answer to a twin request.
    pub(super) async fn on_twin_answer(&mut self, status: u16, rid: String, payload: Vec<u8>) {
        if rid != GET_RID {
            if status >= 300 {
                tracing::warn!(status, %rid, "the hub refused a reported-properties patch");
            }
            return;
        }
        let desired = match (status, serde_json::from_slice::<Value>(&payload)) {
            (200, Ok(twin)) => twin.get("desired").cloned().unwrap_or(Value::Null),
            _ => {
                tracing::warn!(status, "cannot read the twin from the hub");
                return;
            }
        };
        self.reconcile(&desired).await;
    }

    /// Writes each setpoint whose desired value differs from the one applied.
    async fn reconcile(&mut self, desired: &Value) {
        let version = desired.get("$version").and_then(Value::as_u64).unwrap_or(0);
        let wanted = setpoints(desired);
        let journal = self.journal.clone();
        let pending: Vec<(String, String)> =
            self.setpoints.values().map(|(d, p, _, _)| (d.clone(), p.clone())).collect();
        let todo = to_write(wanted, |s| {
            if pending.contains(&(s.device.clone(), s.point.clone())) {
                return Some(s.value.clone()); // on its way: not again
            }
            journal.applied(&s.device, &s.point).ok().flatten().map(|a| a.value)
        });
        if todo.is_empty() {
            return;
        }
        tracing::info!(setpoints = todo.len(), desired_version = version, "applying twin setpoints");
        let mut arrivals = Vec::new();
        for s in todo {
            let body = serde_json::to_vec(&json!({"point": s.point, "value": s.value})).expect("JSON");
            if let Err(why) = super::methods::check_command(&self.cfg, &s.device, &body).map_err(|r| r.reason) {
                // Never written: recorded (not tried again until the value
                // changes) and reported with the reason.
                let a = Applied { value: s.value, version, status: "rejected".into(), detail: why, at_ms: now_ms() };
                self.record_setpoint(&s.device, &s.point, &a);
                continue;
            }
            let inbound = Inbound {
                id: Some(format!("twin:{}:v{version}", s.point)),
                device: Some(s.device),
                body,
                origin: Some(Origin::Twin { point: s.point, value: s.value, version }),
                ..Inbound::default()
            };
            arrivals.push(super::core::Arrival { generation: self.generation, pkid: 0, inbound });
        }
        if arrivals.is_empty() {
            return;
        }
        let room = self.space.check_recent();
        let actions = self.core.on_received(arrivals, room);
        self.act(actions).await;
        self.publish_status();
    }

    /// A setpoint's command was admitted: it waits for its outcome (a
    /// repeated one already final is recorded now).
    pub(super) fn setpoint_admitted(&mut self, e: &Entry, point: String, value: Value, version: u64) {
        let device = e.device.clone().unwrap_or_default();
        self.setpoints.insert(e.seq, (device, point, value, version));
        if e.state.is_final() {
            // A repeat of a command that ended already (a reconcile after a
            // crash that lost the record): recorded now, never written again.
            self.setpoint_final(e);
        }
    }

    /// The outcome of entry `e` is durable: if it is a setpoint, record it
    /// and report it.
    pub(super) fn setpoint_final(&mut self, e: &Entry) {
        let Some((device, point, value, version)) = self.setpoints.remove(&e.seq) else { return };
        let detail = if e.state == crate::message::State::Delivered { String::new() } else { e.detail.clone() };
        let a = Applied {
            value,
            version,
            status: e.state.as_str().into(),
            detail,
            at_ms: e.completed_at.unwrap_or_else(now_ms),
        };
        self.record_setpoint(&device, &point, &a);
    }

    fn record_setpoint(&mut self, device: &str, point: &str, a: &Applied) {
        if let Err(err) = self.journal.set_applied(device, point, a) {
            tracing::error!(%device, %point, error = %err, "cannot record a twin setpoint");
        }
        tracing::info!(%device, %point, status = %a.status, desired_version = a.version, "twin setpoint");
        self.report_twin(reported(device, point, a));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setpoints_are_the_devices_points_and_nothing_else() {
        let desired = json!({
            "devices": {"boiler": {"setpoint": 21.5, "pump": true, "gone": null}, "odd": 3, "valve": {"position": 10}},
            "other": {"x": 1},
            "$version": 9
        });
        let s = setpoints(&desired);
        let names: Vec<(&str, &str)> = s.iter().map(|s| (s.device.as_str(), s.point.as_str())).collect();
        assert_eq!(names, [("boiler", "pump"), ("boiler", "setpoint"), ("valve", "position")]);
        assert!(setpoints(&json!({"$version": 1})).is_empty());
        assert!(setpoints(&json!(null)).is_empty());
    }

    #[test]
    fn only_changed_values_are_written() {
        let desired = json!({"devices": {"boiler": {"setpoint": 21.5, "pump": true, "mode": 2}}});
        let applied = |s: &Setpoint| match s.point.as_str() {
            "setpoint" => Some(json!(21.5)), // applied: not again
            "pump" => Some(json!(false)),    // changed
            _ => None,                       // never applied
        };
        let todo: Vec<String> = to_write(setpoints(&desired), applied).into_iter().map(|s| s.point).collect();
        assert_eq!(todo, ["mode", "pump"]);
    }

    #[test]
    fn a_report_says_what_became_of_the_value() {
        let a = Applied { value: json!(21.5), version: 7, status: "rejected".into(), detail: "no".into(), at_ms: 0 };
        let r = reported("boiler", "setpoint", &a);
        assert_eq!(r["devices"]["boiler"]["setpoint"]["status"], "rejected");
        assert_eq!(r["devices"]["boiler"]["setpoint"]["desired_version"], 7);
        assert_eq!(r["devices"]["boiler"]["setpoint"]["detail"], "no");
        assert_eq!(r["devices"]["boiler"]["setpoint"]["at"], "1970-01-01T00:00:00.000Z");
    }
}
