//! Subcommands beyond `run` and `check-config`: the hub emulator, the
//! `send` and `invoke` back end calls, and the demo.

pub mod demo;
pub mod emulator;
pub mod invoke;
pub mod operator;
pub mod send;
pub mod twin;

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

/// Where a back-end verb (`send`, `invoke`, `twin`) goes: the emulator's
/// HTTP API, and the device identity (the gateway's).
#[derive(clap::Args)]
pub struct Service {
    /// The emulator's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub hub: String,
    /// The device identity at the hub (the gateway's).
    #[arg(long)]
    pub device: String,
}

impl Service {
    pub fn base(&self) -> &str {
        self.hub.trim_end_matches('/')
    }

    /// An HTTP agent that returns error statuses as responses.
    pub fn agent(timeout: std::time::Duration) -> ureq::Agent {
        ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into()
    }

    /// A response's status and JSON body (a body that is not JSON as a string).
    pub fn reply(
        &self,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(ureq::http::StatusCode, serde_json::Value), String> {
        let mut resp = sent.map_err(|e| format!("cannot reach the hub at {}: {e}", self.base()))?;
        let text = resp.body_mut().read_to_string().map_err(|e| e.to_string())?;
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        Ok((resp.status(), v))
    }
}
