//! How the operator's verbs print their answers for a person.

use serde_json::Value;
use std::fmt::Write;

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(t) => t.clone(),
        other => other.to_string(),
    }
}

fn age(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(x) if x < 60.0 => format!("{x:.1} s"),
        Some(x) if x < 3600.0 => format!("{} min {} s", (x / 60.0) as u64, (x % 60.0) as u64),
        Some(x) => format!("{} h {} min", (x / 3600.0) as u64, ((x % 3600.0) / 60.0) as u64),
    }
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<String>| {
        let n = cells.len();
        for (i, (c, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i + 1 == n {
                out.push_str(&c);
            } else {
                let _ = write!(out, "{c:<w$}  ");
            }
        }
        let end = out.trim_end_matches(' ').len();
        out.truncate(end);
        out.push('\n');
    };
    line(&mut out, header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(&mut out, r.clone());
    }
    out
}

pub fn status(v: &Value) -> String {
    let mut out = String::new();
    let _ =
        writeln!(out, "c2d-gateway {}, up {} (since {})", s(&v["version"]), age(&v["uptime_s"]), s(&v["started_at"]));
    let hub = &v["hub"];
    let link = if hub["connected"] == true { "connected" } else { "DISCONNECTED" };
    let _ = writeln!(
        out,
        "hub:     {} {link} since {} ({} reconnects)",
        s(&hub["kind"]),
        s(&hub["since"]),
        s(&hub["reconnects"])
    );
    if let Some(e) = hub["endpoint"].as_str() {
        let _ = writeln!(out, "         {e}");
    }
    let oldest =
        if v["oldest_queued_s"].is_null() { String::new() } else { format!(", oldest {}", age(&v["oldest_queued_s"])) };
    let _ = writeln!(
        out,
        "queue:   {} queued{oldest}; {} uncertain, {} expired; reports pending {}; journal entries {}",
        s(&v["queued"]),
        s(&v["unresolved"]["uncertain"]),
        s(&v["unresolved"]["expired"]),
        s(&v["reports_pending"]),
        s(&v["journal_entries"])
    );
    if let Some(buses) = v["buses"].as_object() {
        let rows: Vec<Vec<String>> = buses
            .iter()
            .map(|(name, b)| {
                let link = match b["connected"].as_bool() {
                    None => "not used yet".to_string(),
                    Some(true) => "up".into(),
                    Some(false) => "DOWN".into(),
                };
                vec![format!("  {name}"), s(&b["kind"]), link, b["error"].as_str().unwrap_or("").to_string()]
            })
            .collect();
        out += "buses:\n";
        out += &table(&["  BUS", "KIND", "LINK", "ERROR"], &rows);
    }
    if let Some(devices) = v["devices"].as_object() {
        let rows: Vec<Vec<String>> = devices
            .iter()
            .map(|(name, d)| {
                let state = if d["isolated"] == true { "ISOLATED" } else { "ok" };
                let last = match d["last"].as_object() {
                    Some(l) => format!("{} {} at {}", s(&l["status"]), s(&l["message_id"]), s(&l["at"])),
                    None => "-".into(),
                };
                vec![format!("  {name}"), s(&d["bus"]), s(&d["queued"]), age(&d["oldest_queued_s"]), state.into(), last]
            })
            .collect();
        out += "devices:\n";
        out += &table(&["  DEVICE", "BUS", "QUEUED", "OLDEST", "STATE", "LAST OUTCOME"], &rows);
    }
    if let Some(att) = v["attention"].as_array().filter(|a| !a.is_empty()) {
        out += "waiting for an operator (queue retry ID, or queue resolve ID --as delivered|rejected):\n";
        let rows: Vec<Vec<String>> = att
            .iter()
            .map(|m| vec![format!("  {}", s(&m["message_id"])), s(&m["device"]), s(&m["status"]), s(&m["detail"])])
            .collect();
        out += &table(&["  MESSAGE ID", "DEVICE", "STATE", "DETAIL"], &rows);
    }
    out
}

pub fn list(v: &Value) -> String {
    let msgs = v["messages"].as_array().cloned().unwrap_or_default();
    let rows: Vec<Vec<String>> = msgs
        .iter()
        .map(|m| {
            let state = match m["operator"].as_str() {
                Some(a) => format!("{} ({a} by operator)", s(&m["status"])),
                None => s(&m["status"]),
            };
            vec![
                s(&m["seq"]),
                s(&m["message_id"]),
                s(&m["device"]),
                state,
                age(&m["age_s"]),
                s(&m["attempts"]),
                s(&m["detail"]),
            ]
        })
        .collect();
    let mut out = table(&["SEQ", "MESSAGE ID", "DEVICE", "STATE", "AGE", "ATTEMPTS", "DETAIL"], &rows);
    let matched = v["matched"].as_u64().unwrap_or(0);
    let _ = writeln!(out, "{} of {matched} message{}", msgs.len(), if matched == 1 { "" } else { "s" });
    out
}

pub fn show(v: &Value) -> String {
    let mut out = String::new();
    for (n, m) in v["messages"].as_array().cloned().unwrap_or_default().iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        let Some(fields) = m.as_object() else { continue };
        for (k, val) in fields {
            let text = match val {
                Value::Null => continue,
                Value::Array(a) if a.is_empty() => continue,
                Value::Bool(false) => continue,
                Value::Object(_) | Value::Array(_) => val.to_string(),
                other => s(other),
            };
            let _ = writeln!(out, "{k:<19} {text}");
        }
    }
    out
}

pub fn acted(v: &Value, what: &str) -> String {
    let m = &v["message"];
    format!(
        "{} (device {}, seq {}): {what}; now {}\n",
        s(&m["message_id"]),
        s(&m["device"]),
        s(&m["seq"]),
        s(&m["status"])
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_list_is_a_table_with_a_count() {
        let v = json!({"matched": 3, "messages": [
            {"seq": 7, "message_id": "m-7", "device": "valve", "status": "uncertain", "age_s": 75, "attempts": 1,
             "detail": "no answer", "operator": null},
            {"seq": 9, "message_id": "m-9", "device": null, "status": "queued", "age_s": 2, "attempts": 0,
             "detail": "", "operator": "retried"},
        ]});
        let text = list(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("SEQ  MESSAGE ID  DEVICE  STATE"), "{text}");
        assert!(
            lines[1].contains("m-7") && lines[1].contains("1 min 15 s") && lines[1].ends_with("no answer"),
            "{text}"
        );
        assert!(lines[2].contains("queued (retried by operator)") && lines[2].contains(" - "), "{text}");
        assert_eq!(lines[3], "2 of 3 messages");
    }
}
