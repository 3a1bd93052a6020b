//! `c2d-gateway invoke`: a direct method call, as a back end makes it with
//! the service SDK, against the emulator's `POST /twins/{id}/methods`.
//! Prints the device's status and its answer (JSON); a call the hub could
//! not complete (device not online: 404, no answer in time: 504) is an
//! error, exit status 1.

use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub service: super::Service,
    /// How long the hub waits for the answer (5 s to 300 s, like IoT Hub).
    #[arg(long, default_value = "30s", value_parser = super::duration)]
    pub timeout: Duration,
    /// How long the hub waits for the device to come online.
    #[arg(long, default_value = "0s", value_parser = super::duration)]
    pub connect_timeout: Duration,
    /// The method: `write`, `read`, `status` for the gateway.
    pub method: String,
    /// The payload, JSON (a bare word is taken as a JSON string).
    #[arg(default_value = "null")]
    pub payload: String,
}

pub fn run(a: Args) -> Result<(), String> {
    let payload: serde_json::Value =
        serde_json::from_str(&a.payload).unwrap_or_else(|_| serde_json::Value::String(a.payload.clone()));
    let call = serde_json::json!({
        "methodName": a.method,
        "payload": payload,
        "responseTimeoutInSeconds": a.timeout.as_secs(),
        "connectTimeoutInSeconds": a.connect_timeout.as_secs(),
    });
    let agent = super::Service::agent(a.timeout + a.connect_timeout + Duration::from_secs(10));
    let url = format!("{}/twins/{}/methods", a.service.base(), a.service.device);
    let sent = agent.post(&url).header("content-type", "application/json").send(call.to_string().as_bytes());
    let (status, v) = a.service.reply(sent)?;
    if !status.is_success() {
        let why = v.get("message").and_then(|e| e.as_str()).unwrap_or("");
        return Err(format!("the hub could not complete the call ({status}): {why}"));
    }
    println!("status: {}", v["status"]);
    println!("{}", serde_json::to_string_pretty(&v["payload"]).unwrap_or_default());
    Ok(())
}
