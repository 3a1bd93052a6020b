//! IoT Hub's direct method and twin topics (device side): method requests
//! arrive at QoS 0 on `$iothub/methods/POST/{name}/?$rid={rid}`; the
//! answer goes to `$iothub/methods/res/{status}/?$rid={rid}`. Twin answers
//! come on `$iothub/twin/res/{status}/?$rid=`, desired changes on
//! `$iothub/twin/PATCH/properties/desired/?$version=`.

/// What the device subscribes to for method requests.
pub const FILTER: &str = "$iothub/methods/POST/#";
const REQUEST_PREFIX: &str = "$iothub/methods/POST/";
/// Twin answers and desired pushes.
pub const TWIN_RES_FILTER: &str = "$iothub/twin/res/#";
pub const DESIRED_FILTER: &str = "$iothub/twin/PATCH/properties/desired/#";

/// A twin topic: Some(Some((status, rid))) for an answer, Some(None) for a
/// desired patch, None for other topics.
pub fn parse_twin_topic(topic: &str) -> Option<Option<(u16, String)>> {
    if topic.starts_with("$iothub/twin/PATCH/properties/desired/") {
        return Some(None);
    }
    let rest = topic.strip_prefix("$iothub/twin/res/")?;
    let (status, query) = rest.split_once("/?")?;
    let rid = query.split('&').find_map(|kv| kv.strip_prefix("$rid="))?;
    Some(Some((status.parse().ok()?, rid.to_string())))
}

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
        assert_eq!(parse_twin_topic("$iothub/twin/res/204/?$rid=r1&$version=3"), Some(Some((204, "r1".into()))));
        assert_eq!(parse_twin_topic("$iothub/twin/PATCH/properties/desired/?$version=4"), Some(None));
        assert_eq!(parse_twin_topic("$iothub/twin/res/x/?$rid=1"), None);
        assert_eq!(parse_twin_topic("devices/gw/messages/devicebound/"), None);
    }
}
