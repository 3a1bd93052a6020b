//! Telemetry: devices read on a schedule (the seeds' simulated device sends
//! a reading every second with a `temperatureAlert` property). A task per
//! device asks its bus worker for a poll each `interval`; the worker serves
//! polls only when no write is waiting, so commands keep priority. Readings
//! go to the hub as D2C JSON, alerts as application properties.

use crate::bus::{Poll, Work};
use crate::config::{Config, PointConfig, PointType, Table};
use crate::router::encode::join_words;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// A reading of one device's telemetry points.
#[derive(Debug, Clone)]
pub struct Reading {
    pub device: String,
    pub at_ms: u64,
    /// Point name → value, in the configured order.
    pub values: Vec<(String, Value)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

/// `temperatureAlert = "temperature > 30"`.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub name: String,
    pub point: String,
    pub op: Op,
    pub threshold: f64,
}

impl Alert {
    pub fn parse(name: &str, expr: &str) -> Result<Alert, String> {
        let bad = || format!("{expr:?} is not `POINT OP NUMBER` (OP one of > >= < <= == !=)");
        let ops = [(">=", Op::Ge), ("<=", Op::Le), ("==", Op::Eq), ("!=", Op::Ne), (">", Op::Gt), ("<", Op::Lt)];
        let (pos, sym, op) = ops
            .iter()
            .filter_map(|(sym, op)| expr.find(sym).map(|i| (i, *sym, *op)))
            .min_by_key(|(i, sym, _)| (*i, usize::MAX - sym.len()))
            .ok_or_else(bad)?;
        let point = expr[..pos].trim();
        let number = expr[pos + sym.len()..].trim();
        if point.is_empty() || point.contains(char::is_whitespace) {
            return Err(bad());
        }
        let threshold: f64 = number.parse().map_err(|_| bad())?;
        if !threshold.is_finite() {
            return Err(bad());
        }
        Ok(Alert { name: name.to_string(), point: point.to_string(), op, threshold })
    }

    /// None when the point is missing or not a number.
    pub fn eval(&self, values: &[(String, Value)]) -> Option<bool> {
        let v = values.iter().find(|(n, _)| *n == self.point)?.1.as_f64().or_else(|| {
            values.iter().find(|(n, _)| *n == self.point)?.1.as_bool().map(|b| if b { 1.0 } else { 0.0 })
        })?;
        let t = self.threshold;
        Some(match self.op {
            Op::Gt => v > t,
            Op::Ge => v >= t,
            Op::Lt => v < t,
            Op::Le => v <= t,
            Op::Eq => v == t,
            Op::Ne => v != t,
        })
    }
}

/// Registers (or bits) read from a point → its engineering value.
pub fn decode(point: &PointConfig, words: &[u16], bits: &[bool]) -> Option<Value> {
    let scale = point.scale.unwrap_or(1.0);
    let num = |x: f64| {
        let v = x * scale;
        // Through f32's shortest text so 0.1 stays 0.1 rather than 0.100000001.
        let v = if point.ty == PointType::F32 { format!("{}", v as f32).parse().unwrap_or(v) } else { v };
        serde_json::Number::from_f64(v).map(Value::Number)
    };
    match point.ty {
        PointType::Bool => bits.first().map(|b| Value::Bool(*b)),
        PointType::U16 => num(f64::from(*words.first()?)),
        PointType::I16 => num(f64::from(*words.first()? as i16)),
        PointType::U32 | PointType::I32 | PointType::F32 => {
            let raw = join_words([*words.first()?, *words.get(1)?], point.word_order);
            match point.ty {
                PointType::U32 => num(f64::from(raw)),
                PointType::I32 => num(f64::from(raw as i32)),
                _ => num(f64::from(f32::from_bits(raw))),
            }
        }
    }
}

/// True for tables read as bits.
pub fn is_bits(t: Table) -> bool {
    matches!(t, Table::Coil | Table::Discrete)
}

/// The D2C body of a reading.
pub fn body(r: &Reading, alerts: &[(String, bool)]) -> Vec<u8> {
    let values: Map<String, Value> = r.values.iter().cloned().collect();
    let mut b = json!({"device": r.device, "time": crate::message::rfc3339_ms(r.at_ms), "values": values});
    if !alerts.is_empty() {
        b["alerts"] = Value::Object(alerts.iter().map(|(k, v)| (k.clone(), Value::Bool(*v))).collect());
    }
    serde_json::to_vec(&b).expect("telemetry serialises")
}

/// Starts one polling task per device with telemetry.
pub fn spawn(
    cfg: &Config,
    buses: &HashMap<String, mpsc::UnboundedSender<Work>>,
    readings: mpsc::UnboundedSender<Reading>,
    shutdown: watch::Receiver<bool>,
) {
    for (name, dev) in &cfg.devices {
        let Some(t) = &dev.telemetry else { continue };
        let Some(bus) = buses.get(&dev.bus).cloned() else { continue };
        let reads: Vec<(String, PointConfig)> =
            t.points.iter().filter_map(|p| dev.points.get(p).map(|pc| (p.clone(), pc.clone()))).collect();
        let poll = Arc::new((name.clone(), dev.unit.unwrap_or(0), reads));
        let interval = *t.interval;
        let (readings, mut shutdown) = (readings.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.changed() => return,
                }
                let (device, unit, reads) = (poll.0.clone(), poll.1, poll.2.clone());
                if bus.send(Work::Poll(Poll { device, unit, reads, reply: readings.clone() })).is_err() {
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(ty: &str, extra: &str) -> PointConfig {
        toml::from_str(&format!("table = \"holding\"\naddress = 0\ntype = \"{ty}\"\n{extra}")).unwrap()
    }

    #[test]
    fn alerts_parse_and_evaluate() {
        let a = Alert::parse("temperatureAlert", "temperature > 30").unwrap();
        assert_eq!((a.point.as_str(), a.op, a.threshold), ("temperature", Op::Gt, 30.0));
        let v = |x: f64| vec![("temperature".to_string(), json!(x))];
        assert_eq!(a.eval(&v(30.5)), Some(true));
        assert_eq!(a.eval(&v(30.0)), Some(false));
        assert_eq!(Alert::parse("a", "t>=1").unwrap().op, Op::Ge);
        assert_eq!(Alert::parse("a", "t <= -2.5").unwrap().threshold, -2.5);
        assert_eq!(Alert::parse("a", "t != 0").unwrap().op, Op::Ne);
        for bad in ["temperature", "> 3", "t > hot", "t x > 3", "t > ", "t > inf"] {
            assert!(Alert::parse("a", bad).is_err(), "{bad}");
        }
        assert_eq!(a.eval(&[]), None);
    }

    #[test]
    fn decoding_follows_type_scale_and_word_order() {
        assert_eq!(decode(&pt("f32", ""), &[0x41AC, 0], &[]), Some(json!(21.5)));
        assert_eq!(decode(&pt("f32", "word_order = \"little\""), &[0, 0x41AC], &[]), Some(json!(21.5)));
        assert_eq!(decode(&pt("i16", ""), &[0xFFFE], &[]), Some(json!(-2.0)));
        assert_eq!(decode(&pt("u16", "scale = 0.1"), &[215], &[]), Some(json!(21.5)));
        assert_eq!(decode(&pt("i32", ""), &[0xFFFF, 0xFFFE], &[]), Some(json!(-2.0)));
        assert_eq!(decode(&pt("u32", ""), &[1, 0], &[]), Some(json!(65536.0)));
        let coil: PointConfig = toml::from_str("table = \"coil\"\naddress = 0\ntype = \"bool\"").unwrap();
        assert_eq!(decode(&coil, &[], &[true]), Some(json!(true)));
        assert_eq!(decode(&pt("u32", ""), &[1], &[]), None, "short read");
    }
}
