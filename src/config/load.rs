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

use super::{validate, RoutingConfig};
use super::{BusConfig, Config, DeviceConfig, GatewayConfig, HubConfig, HubKind, PointConfig};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::Path;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

/// One problem in a config file. `line` and `column` are 1-based.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// Every problem found in one config file, in file order.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    pub file: String,
    pub problems: Vec<Diagnostic>,
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            match (p.line, p.column) {
                (Some(l), Some(c)) => writeln!(f, "{}:{}:{}: {}", self.file, l, c, p.message)?,
                (Some(l), None) => writeln!(f, "{}:{}: {}", self.file, l, p.message)?,
                _ => writeln!(f, "{}: {}", self.file, p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Keys whose values are secrets: never quoted in a message.
const SECRET_KEYS: [&str; 2] = ["connection_string", "password"];

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

/// Problems with byte spans, turned into lines and columns at the end.
#[derive(Default)]
pub(super) struct Report {
    problems: Vec<(Option<Range<usize>>, String)>,
}

impl Report {
    pub(super) fn at(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.problems.push((span, message.into()));
    }

    /// Replaces any secret's text in the messages (belt and braces).
    fn scrub(&mut self, secrets: &[String]) {
        for (_, msg) in &mut self.problems {
            for s in secrets.iter().filter(|s| s.len() >= 4) {
                if msg.contains(s.as_str()) {
                    *msg = msg.replace(s.as_str(), "***");
                }
            }
        }
    }

    fn finish(mut self, text: &str, file: &str) -> Diagnostics {
        // File order; problems without a place first (stable sort keeps the
        // order they were found in).
        self.problems.sort_by_key(|(span, _)| span.as_ref().map(|s| s.start));
        let problems = self
            .problems
            .into_iter()
            .map(|(span, message)| {
                let (line, column) = match span {
                    Some(s) => {
                        let (l, c) = line_col(text, s.start);
                        (Some(l), Some(c))
                    }
                    None => (None, None),
                };
                Diagnostic { line, column, message }
            })
            .collect();
        Diagnostics { file: file.into(), problems }
    }
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

/// `a.b."c d"`: a TOML key path for messages.
pub(super) fn dotted(path: &[&str]) -> String {
    let bare = |k: &str| !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let parts: Vec<String> = path.iter().map(|k| if bare(k) { k.to_string() } else { format!("{k:?}") }).collect();
    parts.join(".")
}

/// The spanned document: where each key was written.
pub(super) struct Doc<'a>(&'a DeTable<'a>);

type Entry<'a> = (&'a Spanned<std::borrow::Cow<'a, str>>, &'a Spanned<DeValue<'a>>);

impl<'a> Doc<'a> {
    /// Walks `path`; returns the entries found, outermost first.
    fn walk(&self, path: &[&str]) -> Vec<Entry<'a>> {
        let mut found = Vec::new();
        let mut table = Some(self.0);
        for key in path {
            let Some(entry) = table.and_then(|t| t.get_key_value(*key)) else {
                break;
            };
            found.push(entry);
            table = match entry.1.get_ref() {
                DeValue::Table(t) => Some(t),
                _ => None,
            };
        }
        found
    }

    /// Whether `path` was written in the file.
    pub(super) fn has(&self, path: &[&str]) -> bool {
        self.walk(path).len() == path.len()
    }

    /// The span of the key at `path`, or of the deepest key of it written
    /// (a missing key is reported at its table).
    pub(super) fn key(&self, path: &[&str]) -> Option<Range<usize>> {
        self.walk(path).last().map(|(k, _)| k.span())
    }

    /// The span of the value at `path`, else as [`Doc::key`].
    pub(super) fn value(&self, path: &[&str]) -> Option<Range<usize>> {
        let found = self.walk(path);
        match found.last() {
            Some((_, v)) if found.len() == path.len() => Some(v.span()),
            _ => self.key(path),
        }
    }

    /// The keys written in the table at `path` with their spans.
    pub(super) fn keys(&self, path: &[&str]) -> Vec<(String, Range<usize>)> {
        match self.walk(path).last().map(|(_, v)| v.get_ref()) {
            Some(DeValue::Table(t)) if !path.is_empty() => table_keys(t),
            None if path.is_empty() => table_keys(self.0),
            _ => Vec::new(),
        }
    }

    /// The text of every secret written, to scrub from messages: the whole
    /// values and the key parts of a connection string.
    fn secrets(&self) -> Vec<String> {
        let whole: Vec<&str> = SECRET_KEYS
            .iter()
            .filter_map(|k| self.walk(&["hub", k]).get(1).map(|(_, v)| v.get_ref()))
            .filter_map(DeValue::as_str)
            .collect();
        let keys = whole.iter().flat_map(|s| s.split(';')).filter_map(|part| {
            let (k, v) = part.split_once('=')?;
            k.trim().starts_with("SharedAccess").then_some(v)
        });
        whole.iter().copied().chain(keys).map(str::to_owned).collect()
    }
}

fn table_keys(t: &DeTable<'_>) -> Vec<(String, Range<usize>)> {
    t.iter().map(|(k, _)| (k.get_ref().to_string(), k.span())).collect()
}

/// What deserialized, part by part; the names of every bus and device
/// written (even the ones that failed), so a device on a bus whose table has
/// an error is not also reported as naming an unknown bus.
pub(super) struct Parts {
    pub gateway: Option<GatewayConfig>,
    pub hub: Option<HubConfig>,
    pub routing: Option<RoutingConfig>,
    pub buses: BTreeMap<String, BusConfig>,
    pub devices: BTreeMap<String, DeviceConfig>,
    pub bus_names: BTreeSet<String>,
    pub device_names: BTreeSet<String>,
}

impl Parts {
    fn into_config(self) -> Option<Config> {
        Some(Config {
            gateway: self.gateway?,
            hub: self.hub?,
            routing: self.routing?,
            buses: self.buses,
            devices: self.devices,
        })
    }
}

const SECTIONS: [&str; 5] = ["gateway", "hub", "routing", "buses", "devices"];

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
