//! `c2d-gateway send`: the seeds' SendCloudToDevice back end, against the
//! emulator's HTTP API. Prints the message id; with `--wait`, prints the
//! feedback record(s) for it as they arrive, like the seed's feedback
//! receiver.

use std::io::Read;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub service: super::Service,
    /// none | positive | negative | full
    #[arg(long)]
    pub ack: Option<String>,
    /// Application property, repeatable.
    #[arg(long = "property", value_name = "K=V", value_parser = super::key_value)]
    pub properties: Vec<(String, String)>,
    /// The message id (`iothub-messageid`); a fresh UUID when not given.
    #[arg(long, conflicts_with = "no_message_id")]
    pub message_id: Option<String>,
    /// Send without a message id, like the .NET seed's back end: IoT Hub
    /// then sends no `$.mid`, and feedback cannot name the message.
    #[arg(long, conflicts_with = "wait")]
    pub no_message_id: bool,
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Time to live, e.g. 10m.
    #[arg(long, value_parser = super::duration)]
    pub expiry: Option<Duration>,
    /// Wait for the feedback record and print it.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "60s", value_parser = super::duration)]
    pub timeout: Duration,
    /// The body, or - for standard input.
    pub body: String,
}

pub fn run(a: Args) -> Result<(), String> {
    let body = if a.body == "-" {
        let mut b = Vec::new();
        std::io::stdin().read_to_end(&mut b).map_err(|e| format!("cannot read stdin: {e}"))?;
        b
    } else {
        a.body.into_bytes()
    };
    let base = a.service.base().to_string();
    let url = format!("{base}/devices/{}/messages", a.service.device);
    let agent = super::Service::agent(Duration::from_secs(10));
    let mut req = agent.post(&url);
    if let Some(v) = &a.ack {
        req = req.header("iothub-ack", v);
    }
    let message_id = (!a.no_message_id).then(|| a.message_id.clone().unwrap_or_else(crate::emulator::state::new_id));
    if let Some(v) = &message_id {
        req = req.header("iothub-messageid", v);
    }
    if let Some(v) = &a.correlation_id {
        req = req.header("iothub-correlationid", v);
    }
    if let Some(d) = a.expiry {
        req = req.header("iothub-expiry", &d.as_secs().max(1).to_string());
    }
    if !a.properties.is_empty() {
        // A bag rather than iothub-app-NAME headers: HTTP would lower-case NAME.
        let bag: Vec<(String, Option<String>)> =
            a.properties.iter().map(|(k, v)| (k.clone(), Some(v.clone()))).collect();
        req = req.header("iothub-properties", &crate::hub::azure::propbag::encode(&bag));
    }
    let mut resp = req.send(&body[..]).map_err(|e| format!("cannot reach the hub at {base}: {e}"))?;
    let status = resp.status();
    let text = resp.body_mut().read_to_string().map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text.clone()));
    if !status.is_success() {
        let why = v.get("error").and_then(|e| e.as_str()).unwrap_or(&text);
        return Err(format!("the hub refused the message ({status}): {why}"));
    }
    let id = v.get("message_id").and_then(|m| m.as_str()).unwrap_or_default().to_string();
    println!("{id}");
    if !a.wait {
        return Ok(());
    }
    let end = Instant::now() + a.timeout;
    let mut seen = 0usize;
    loop {
        let mut r = agent.get(format!("{base}/feedback")).call().map_err(|e| format!("feedback: {e}"))?;
        let all: Vec<serde_json::Value> =
            serde_json::from_str(&r.body_mut().read_to_string().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        let mine: Vec<_> = all.iter().filter(|f| f["original_message_id"] == id.as_str()).collect();
        for f in &mine[seen..] {
            println!(
                "feedback: {} {} ({}) at {}",
                f["original_message_id"].as_str().unwrap_or(""),
                f["status_code"].as_str().unwrap_or(""),
                f["description"].as_str().unwrap_or(""),
                f["enqueued_time_utc"].as_str().unwrap_or("")
            );
        }
        if mine.len() > seen {
            return Ok(());
        }
        seen = mine.len();
        if Instant::now() > end {
            return Err(format!("no feedback for {id} within {}", humantime::format_duration(a.timeout)));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
