//! Telemetry alert rules (`temperatureAlert = "temperature > 30"`): parsed
//! once, when the config is loaded (a bad rule is a config error at its
//! line), and evaluated against every reading.

use serde::Deserialize;
use serde_json::Value;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

/// An alert as written in the config, parsed as it is loaded. A rule that
/// does not parse does not fail the device's table: `check-config` reports
/// it at its line beside every other problem, and a loaded config has none.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "String")]
pub struct Alert {
    pub rule: Result<AlertRule, BadRule>,
}

impl From<String> for Alert {
    fn from(text: String) -> Self {
        Alert { rule: text.parse() }
    }
}

impl Alert {
    /// None when the rule did not parse (never in a validated config), the
    /// point is missing or is not a number.
    pub fn eval(&self, values: &[(String, Value)]) -> Option<bool> {
        self.rule.as_ref().ok()?.eval(values)
    }
}

/// `POINT OP NUMBER`, e.g. `temperature > 30`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRule {
    pub point: String,
    pub op: Op,
    pub threshold: f64,
}

/// Why an alert rule does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRule(String);

impl fmt::Display for BadRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not `POINT OP NUMBER` (OP one of > >= < <= == !=)", self.0)
    }
}

impl std::error::Error for BadRule {}

impl std::str::FromStr for AlertRule {
    type Err = BadRule;

    fn from_str(expr: &str) -> Result<Self, BadRule> {
        let bad = || BadRule(expr.to_string());
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
        Ok(AlertRule { point: point.to_string(), op, threshold })
    }
}

impl AlertRule {
    /// None when the point is missing or not a number (a bool counts as 0 or 1).
    pub fn eval(&self, values: &[(String, Value)]) -> Option<bool> {
        let v = &values.iter().find(|(n, _)| *n == self.point)?.1;
        let v = v.as_f64().or_else(|| v.as_bool().map(|b| if b { 1.0 } else { 0.0 }))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn alerts_parse_and_evaluate() {
        let a: AlertRule = "temperature > 30".parse().unwrap();
        assert_eq!((a.point.as_str(), a.op, a.threshold), ("temperature", Op::Gt, 30.0));
        let v = |x: f64| vec![("temperature".to_string(), json!(x))];
        assert_eq!(a.eval(&v(30.5)), Some(true));
        assert_eq!(a.eval(&v(30.0)), Some(false));
        assert_eq!("t>=1".parse::<AlertRule>().unwrap().op, Op::Ge);
        assert_eq!("t <= -2.5".parse::<AlertRule>().unwrap().threshold, -2.5);
        assert_eq!("t != 0".parse::<AlertRule>().unwrap().op, Op::Ne);
        for bad in ["temperature", "> 3", "t > hot", "t x > 3", "t > ", "t > inf"] {
            assert!(bad.parse::<AlertRule>().is_err(), "{bad}");
        }
        assert_eq!(a.eval(&[]), None);
        assert_eq!(a.eval(&[("temperature".into(), json!(true))]), Some(false));
    }
}
