//! The spanned TOML document and the problems found in it: where each key
//! was written, what deserialized part by part, and the report that turns
//! byte spans into lines and columns. Shared by loading (`load.rs`) and
//! the checks across parts (`validate.rs`), which both depend on it.

use super::{BusConfig, Config, DeviceConfig, GatewayConfig, HubConfig, MethodsConfig, RoutingConfig, TwinConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Keys whose values are secrets: never quoted in a message.
pub(super) const SECRET_KEYS: [&str; 2] = ["connection_string", "password"];

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

/// Problems with byte spans, turned into lines and columns at the end.
#[derive(Default)]
pub(super) struct Report {
    pub(super) problems: Vec<(Option<Range<usize>>, String)>,
}

impl Report {
    pub(super) fn at(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        self.problems.push((span, message.into()));
    }

    /// Replaces any secret's text in the messages (belt and braces).
    pub(super) fn scrub(&mut self, secrets: &[String]) {
        for (_, msg) in &mut self.problems {
            for s in secrets.iter().filter(|s| s.len() >= 4) {
                if msg.contains(s.as_str()) {
                    *msg = msg.replace(s.as_str(), "***");
                }
            }
        }
    }

    pub(super) fn finish(mut self, text: &str, file: &str) -> Diagnostics {
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
pub(super) struct Doc<'a>(pub(super) &'a DeTable<'a>);

type Entry<'a> = (&'a Spanned<std::borrow::Cow<'a, str>>, &'a Spanned<DeValue<'a>>);

impl<'a> Doc<'a> {
    /// Walks `path`; returns the entries found, outermost first.
    pub(super) fn walk(&self, path: &[&str]) -> Vec<Entry<'a>> {
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
    pub(super) fn secrets(&self) -> Vec<String> {
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
    pub methods: Option<MethodsConfig>,
    pub twin: Option<TwinConfig>,
    pub buses: BTreeMap<String, BusConfig>,
    pub devices: BTreeMap<String, DeviceConfig>,
    pub bus_names: BTreeSet<String>,
    pub device_names: BTreeSet<String>,
}

impl Parts {
    pub(super) fn into_config(self) -> Option<Config> {
        Some(Config {
            gateway: self.gateway?,
            hub: self.hub?,
            routing: self.routing?,
            buses: self.buses,
            devices: self.devices,
            methods: self.methods?,
            twin: self.twin?,
        })
    }
}
