//! Subcommands beyond `run` and `check-config`: the hub emulator, the
//! `send` and `invoke` back end calls, and the demo.

pub mod demo;
pub mod emulator;
pub mod invoke;
pub mod send;

/// Parses a CLI duration such as `500ms`, `30s`, `1h`.
pub fn duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses `K=V`.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}
