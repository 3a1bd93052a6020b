//! Loading the config file and reporting *every* problem in it, each with its
//! line and column.
//!
//! `toml::from_str::<Config>` stops at the first error, which makes fixing a
//! config file a slow loop of `check-config` runs. Instead:
//!
//! 1. The text is parsed into a spanned TOML tree ([`DeTable`]). A syntax
//!    error is reported alone: nothing after it can be trusted.
//! 2. Each part is deserialized on its own (`[gateway]`, `[hub]`, `[routing]`,
//!    each bus, each device, each point), so three bad devices give three
//!    errors, each at the line serde's error span points to.
//! 3. The parts that deserialized are checked together (`validate.rs`), and
//!    the spanned tree gives each semantic problem its line.
//!
//! Secrets (`hub.connection_string`, `hub.password`) never appear in a
//! message: a mistyped secret is reported without its value, and as a last
//! line of defence every message is scrubbed of the secrets' text.

use super::doc::{dotted, Doc, Parts, Report, SECRET_KEYS};
pub use super::doc::{Diagnostic, Diagnostics};
use super::validate;
use super::{
    BusConfig, Config, DeviceConfig, GatewayConfig, HubConfig, HubKind, MethodsConfig, PointConfig, RoutingConfig,
    TwinConfig,
};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

impl Config {
    /// Reads and checks `path`; see [`Config::parse`].
    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Diagnostics {
            file: file.clone(),
            problems: vec![Diagnostic {
                line: None,
                column: None,
                message: format!("cannot read the config file: {e}"),
            }],
        })?;
        Config::parse(&text, &file)
    }

    /// Parses and checks a config; `file` only names it in the diagnostics.
    pub fn parse(text: &str, file: &str) -> Result<Config, Diagnostics> {
        let mut report = Report::default();
        let config = match DeTable::parse(text) {
            Err(e) => {
                let msg = e.message().trim().replace('\n', "; ");
                report.at(e.span(), format!("TOML syntax error: {msg}"));
                None
            }
            Ok(root) => {
                let doc = Doc(root.get_ref());
                let parts = deserialize(&doc, &mut report);
                validate::check(&parts, &doc, &mut report);
                report.scrub(&doc.secrets());
                parts.into_config()
            }
        };
        match config {
            Some(config) if report.problems.is_empty() => Ok(config),
            _ => Err(report.finish(text, file)),
        }
    }

    /// One line for logs and `check-config`: hub kind and sizes, no secrets.
    /// What is valid but worth a second look (check-config prints these,
    /// the daemon logs them).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(addr) = self.gateway.http.as_deref().and_then(|a| a.parse::<std::net::SocketAddr>().ok()) {
            if !addr.ip().is_loopback() {
                out.push(format!(
                    "gateway.http = \"{addr}\" is not a loopback address: the status page, /status and /metrics \
                     (message ids, device names, queue contents) are open to the network, without authentication"
                ));
            }
        }
        out
    }

    pub fn summary(&self) -> String {
        let kind = match self.hub.kind {
            HubKind::Azure => "azure",
            HubKind::Mqtt => "mqtt",
        };
        let points: usize = self.devices.values().map(|d| d.points.len()).sum();
        format!(
            "hub {kind}, {}, {}, {}",
            count(self.buses.len(), "bus", "buses"),
            count(self.devices.len(), "device", "devices"),
            count(points, "point", "points")
        )
    }
}

fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

const SECTIONS: [&str; 7] = ["gateway", "hub", "routing", "buses", "devices", "methods", "twin"];

fn deserialize(doc: &Doc<'_>, r: &mut Report) -> Parts {
    let root = doc.0;
    for (key, span) in doc.keys(&[]) {
        if !SECTIONS.contains(&key.as_str()) {
            r.at(
                Some(span),
                format!("unknown section `{}`, expected one of: {}", dotted(&[&key]), SECTIONS.join(", ")),
            );
        }
    }
    let gateway = match root.get("gateway") {
        Some(v) => de::<GatewayConfig>(v, &["gateway"], r),
        None => Some(GatewayConfig::default()),
    };
    let routing = match root.get("routing") {
        Some(v) => de::<RoutingConfig>(v, &["routing"], r),
        None => Some(RoutingConfig::default()),
    };
    let twin = match root.get("twin") {
        Some(v) => de::<TwinConfig>(v, &["twin"], r),
        None => Some(TwinConfig::default()),
    };
    let methods = match root.get("methods") {
        Some(v) => de::<MethodsConfig>(v, &["methods"], r),
        None => Some(MethodsConfig::default()),
    };
    let hub = match root.get("hub") {
        Some(v) => hub(v, r),
        None => {
            r.at(None, "missing [hub] section (kind = \"azure\" or \"mqtt\")");
            None
        }
    };
    let mut parts = Parts {
        gateway,
        hub,
        routing,
        methods,
        twin,
        buses: BTreeMap::new(),
        devices: BTreeMap::new(),
        bus_names: BTreeSet::new(),
        device_names: BTreeSet::new(),
    };
    for (name, v) in named_tables(root, "buses", "[buses.NAME]", r) {
        parts.bus_names.insert(name.clone());
        if let Some(bus) = de::<BusConfig>(v, &["buses", &name], r) {
            parts.buses.insert(name, bus);
        }
    }
    for (name, v) in named_tables(root, "devices", "[devices.NAME]", r) {
        parts.device_names.insert(name.clone());
        if let Some(dev) = device(&name, v, r) {
            parts.devices.insert(name, dev);
        }
    }
    parts
}

/// The entries of a `[section.NAME]` table of tables.
fn named_tables<'a>(
    root: &'a DeTable<'a>,
    section: &str,
    example: &str,
    r: &mut Report,
) -> Vec<(String, &'a Spanned<DeValue<'a>>)> {
    match root.get_key_value(section) {
        None => Vec::new(),
        Some((_, v)) => match v.get_ref() {
            DeValue::Table(t) => t.iter().map(|(k, v)| (k.get_ref().to_string(), v)).collect(),
            _ => {
                r.at(Some(v.span()), format!("{section}: expected tables like {example}"));
                Vec::new()
            }
        },
    }
}

/// Deserializes one part; on error, reports it at serde's span, naming the
/// key the span falls on when it is a direct child of the part.
fn de<T: DeserializeOwned>(v: &Spanned<DeValue<'_>>, path: &[&str], r: &mut Report) -> Option<T> {
    match T::deserialize(ValueDeserializer::from(v.clone())) {
        Ok(t) => Some(t),
        Err(e) => {
            let span = e.span().unwrap_or_else(|| v.span());
            let mut path = path.to_vec();
            if let DeValue::Table(t) = v.get_ref() {
                let hit = |s: Range<usize>| s.contains(&span.start);
                if let Some((k, _)) = t.iter().find(|(k, v)| hit(k.span()) || hit(v.span())) {
                    path.push(k.get_ref());
                }
            }
            r.at(Some(span), format!("{}: {}", dotted(&path), e.message()));
            None
        }
    }
}

/// `[hub]`, after taking out a secret of the wrong type: serde would quote
/// its value ("invalid type: integer `12345`").
fn hub(v: &Spanned<DeValue<'_>>, r: &mut Report) -> Option<HubConfig> {
    let DeValue::Table(t) = v.get_ref() else {
        return de(v, &["hub"], r);
    };
    let mut t = t.clone();
    for key in SECRET_KEYS {
        if let Some((k, val)) = t.get_key_value(key) {
            if !val.get_ref().is_str() {
                let msg = format!("hub.{key}: must be a string (value not shown: it is a secret)");
                r.at(Some(k.span()), msg);
                t.remove(key);
            }
        }
    }
    de(&Spanned::new(v.span(), DeValue::Table(t)), &["hub"], r)
}

/// One device, with each of its points deserialized on its own. A point that
/// fails is reported and left out; the rest of the device is still checked.
fn device(name: &str, v: &Spanned<DeValue<'_>>, r: &mut Report) -> Option<DeviceConfig> {
    let DeValue::Table(t) = v.get_ref() else {
        return de(v, &["devices", name], r);
    };
    let mut rest = t.clone();
    let points = rest.remove("points");
    let rest = Spanned::new(v.span(), DeValue::Table(rest));
    let mut dev = de::<DeviceConfig>(&rest, &["devices", name], r);
    match points.as_ref().map(|p| (p.get_ref(), p.span())) {
        None => {}
        Some((DeValue::Table(pts), _)) => {
            for (k, p) in pts.iter() {
                let path = ["devices", name, "points", k.get_ref()];
                if let (Some(point), Some(dev)) = (de::<PointConfig>(p, &path, r), dev.as_mut()) {
                    dev.points.insert(k.get_ref().to_string(), point);
                }
            }
        }
        Some((_, span)) => {
            let path = dotted(&["devices", name, "points"]);
            r.at(Some(span), format!("{path}: expected a table of points"));
        }
    }
    dev
}
