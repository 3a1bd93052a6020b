//! `c2d-gateway twin`: a device twin through the emulator's service API, as
//! a back end sees it (`GET /twins/{id}`), or a change of its desired
//! properties (`set JSON`: `PATCH /twins/{id}`; `null` deletes a property).
//! Prints the twin as JSON.

use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub service: super::Service,
    #[command(subcommand)]
    pub action: Option<Action>,
}

#[derive(clap::Subcommand)]
pub enum Action {
    /// Merge JSON into the desired properties, e.g. '{"devices": {"boiler": {"setpoint": 21.5}}}'.
    Set { desired: String },
}

pub fn run(a: Args) -> Result<(), String> {
    let url = format!("{}/twins/{}", a.service.base(), a.service.device);
    let agent = super::Service::agent(Duration::from_secs(10));
    let sent = match &a.action {
        None => agent.get(&url).call(),
        Some(Action::Set { desired }) => {
            let desired: serde_json::Value =
                serde_json::from_str(desired).map_err(|e| format!("the desired properties are not JSON: {e}"))?;
            let body = serde_json::json!({"properties": {"desired": desired}}).to_string();
            agent.patch(&url).header("content-type", "application/json").send(body.as_bytes())
        }
    };
    let (status, v) = a.service.reply(sent)?;
    if !status.is_success() {
        return Err(format!("the hub refused ({status}): {}", v.get("error").and_then(|e| e.as_str()).unwrap_or("")));
    }
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(())
}
