//! IoT Hub's direct method topics (device side): requests arrive at QoS 0
//! on `$iothub/methods/POST/{name}/?$rid={rid}`; the answer goes to
//! `$iothub/methods/res/{status}/?$rid={rid}`.

/// What the device subscribes to for method requests.
pub const FILTER: &str = "$iothub/methods/POST/#";
const REQUEST_PREFIX: &str = "$iothub/methods/POST/";

/// (method name, request id) of a request topic; None for other topics.
pub fn parse_request_topic(topic: &str) -> Option<(String, String)> {
    let rest = topic.strip_prefix(REQUEST_PREFIX)?;
    let (name, query) = rest.split_once("/?")?;
    let rid = query.split('&').find_map(|kv| kv.strip_prefix("$rid="))?;
    (!name.is_empty() && !rid.is_empty()).then(|| (name.to_string(), rid.to_string()))
}

/// The topic of the answer to request `rid`.
pub fn response_topic(status: u16, rid: &str) -> String {
    format!("$iothub/methods/res/{status}/?$rid={rid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_response_topics() {
        assert_eq!(parse_request_topic("$iothub/methods/POST/write/?$rid=1"), Some(("write".into(), "1".into())));
        assert_eq!(parse_request_topic("$iothub/methods/POST/read/?x=y&$rid=a1"), Some(("read".into(), "a1".into())));
        for t in [
            "$iothub/methods/POST//?$rid=1",
            "$iothub/methods/POST/read/?$rid=",
            "$iothub/methods/POST/read",
            "devices/x/messages/devicebound/",
        ] {
            assert_eq!(parse_request_topic(t), None, "{t}");
        }
        assert_eq!(response_topic(504, "7"), "$iothub/methods/res/504/?$rid=7");
    }
}
