//! How the hub connection is made, apart from who we are to the hub: the
//! endpoint (MQTT over TCP or TLS, MQTT over WebSockets, plain or TLS), an
//! HTTP CONNECT proxy in front of it, the CA to trust and the client
//! certificate (X.509) to show. Both dialects build their options here.

use super::{tls, HubError};
use crate::config::Secret;
use rumqttc::{MqttOptions, Proxy, ProxyAuth, ProxyType, Transport};
use std::path::PathBuf;

/// How bytes reach the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// MQTT over plain TCP (`mqtt://`).
    Mqtt,
    /// MQTT over TLS (`mqtts://`).
    Mqtts,
    /// MQTT over a WebSocket, plain (`ws://`).
    Ws,
    /// MQTT over a WebSocket inside TLS (`wss://`).
    Wss,
}

impl Scheme {
    pub fn tls(self) -> bool {
        matches!(self, Scheme::Mqtts | Scheme::Wss)
    }

    pub fn websocket(self) -> bool {
        matches!(self, Scheme::Ws | Scheme::Wss)
    }

    pub fn prefix(self) -> &'static str {
        match self {
            Scheme::Mqtt => "mqtt://",
            Scheme::Mqtts => "mqtts://",
            Scheme::Ws => "ws://",
            Scheme::Wss => "wss://",
        }
    }

    /// How IoT Hub (and DPS) is reached with this `transport`.
    pub fn of(transport: crate::config::Transport) -> Scheme {
        match transport {
            crate::config::Transport::Tls => Scheme::Mqtts,
            crate::config::Transport::Mqtt => Scheme::Mqtt,
            crate::config::Transport::Websockets => Scheme::Wss,
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Mqtt => 1883,
            Scheme::Mqtts => 8883,
            Scheme::Ws => 80,
            Scheme::Wss => 443,
        }
    }
}

/// Where the broker is. `host` keeps the brackets of an IPv6 address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
    /// The WebSocket request's path and query (`/` at least); empty for MQTT.
    pub path: String,
}

impl Endpoint {
    /// The URL a WebSocket client asks for, or `scheme://host:port`.
    pub fn url(&self) -> String {
        format!("{}{}:{}{}", self.scheme.prefix(), self.host, self.port, self.path)
    }
}

/// Why a broker or proxy URL cannot be used. Never quotes a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("url {url:?} must start with mqtt://, mqtts://, ws:// or wss://")]
    Scheme { url: String },
    #[error("url {url:?}: no ']' after an IPv6 address")]
    UnclosedIpv6 { url: String },
    #[error("url {url:?}: bad port {port:?}")]
    BadPort { url: String, port: String },
    #[error("url {url:?}: write an IPv6 address in brackets, e.g. mqtt://[::1]:1883")]
    BareIpv6 { url: String },
    #[error("url {url:?} has no host")]
    NoHost { url: String },
    #[error("url {url:?}: a path is only meaningful for ws:// and wss://")]
    PathWithoutWebSocket { url: String },
    #[error("url {url:?}: put user names and passwords in hub.username and hub.password, not in the url")]
    UserInfo { url: String },
}

/// `mqtt://host[:port]`, `mqtts://...`, `ws://host[:port][/path]` or
/// `wss://...`.
pub fn parse_url(url: &str) -> Result<Endpoint, UrlError> {
    let scheme = [Scheme::Mqtts, Scheme::Mqtt, Scheme::Wss, Scheme::Ws]
        .into_iter()
        .find(|s| url.starts_with(s.prefix()))
        .ok_or_else(|| UrlError::Scheme { url: url.into() })?;
    let rest = &url[scheme.prefix().len()..];
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(UrlError::UserInfo { url: "(not shown: it holds a user name)".into() });
    }
    // A WebSocket path is kept as written (a server may tell `/mqtt` from `/mqtt/`).
    let path = match (scheme.websocket(), path.trim_end_matches('/')) {
        (true, _) if path.is_empty() => "/".to_string(),
        (true, _) if path.starts_with('?') => format!("/{path}"),
        (true, _) => path.to_string(),
        (false, "") => String::new(),
        (false, _) => return Err(UrlError::PathWithoutWebSocket { url: url.into() }),
    };
    let (host, port) = host_port(authority, scheme.default_port(), url)?;
    Ok(Endpoint { scheme, host, port, path })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` → (host, port).
fn host_port(authority: &str, default_port: u16, url: &str) -> Result<(String, u16), UrlError> {
    let bad_port = |p: &str| UrlError::BadPort { url: url.into(), port: p.into() };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| UrlError::UnclosedIpv6 { url: url.into() })?;
        let host = format!("[{h}]");
        match after {
            "" => (host, default_port),
            _ => {
                let p = after.strip_prefix(':').ok_or_else(|| bad_port(after))?;
                (host, p.parse::<u16>().map_err(|_| bad_port(p))?)
            }
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h.to_string(), p.parse::<u16>().map_err(|_| bad_port(p))?),
            Some(_) => return Err(UrlError::BareIpv6 { url: url.into() }),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(UrlError::NoHost { url: url.into() });
    }
    if port == 0 {
        return Err(bad_port("0"));
    }
    Ok((host, port))
}

/// An HTTP CONNECT proxy: `http://[user:password@]host[:port]` (port 3128
/// by default, as Squid's) or `https://...` (TLS to the proxy too).
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub login: Option<(String, Secret)>,
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl ProxyUrl {
    /// For logs: scheme, host and port, never the login.
    pub fn describe(&self) -> String {
        format!("{}://{}:{}", if self.tls { "https" } else { "http" }, self.host, self.port)
    }
}

/// Parses `hub.proxy`. Errors never quote the value (it may hold a password).
pub fn parse_proxy(url: &str) -> Result<ProxyUrl, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err("must start with http:// or https:// (an HTTP CONNECT proxy); value not shown".into());
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        return Err("must be http://[user:password@]host[:port], without a path; value not shown".into());
    }
    let (login, authority) = match rest.rsplit_once('@') {
        Some((userinfo, authority)) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let decode = |s: &str| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned();
            if user.is_empty() {
                return Err("has a login without a user name; value not shown".into());
            }
            (Some((decode(user), Secret(decode(password)))), authority)
        }
        None => (None, rest),
    };
    // The value is never quoted: "http://user:password" (no host) would
    // take the password for a port.
    let (host, port) = host_port(authority, if tls { 443 } else { 3128 }, "").map_err(|e| {
        let why = match e {
            UrlError::BadPort { .. } => "has an invalid port (1..=65535)",
            UrlError::UnclosedIpv6 { .. } => "has an unclosed `[` in the host",
            UrlError::BareIpv6 { .. } => "needs brackets around an IPv6 address",
            _ => "has no host",
        };
        format!("{why} (http://[user:password@]host[:port]); value not shown")
    })?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok(ProxyUrl { tls, host, port, login })
}

/// The client certificate and key (PEM files) shown to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub certificate_file: PathBuf,
    pub private_key_file: PathBuf,
}

/// Everything about the way to the broker besides the login.
#[derive(Debug, Clone, Default)]
pub struct Net {
    pub ca_file: Option<PathBuf>,
    pub proxy: Option<ProxyUrl>,
    pub client_cert: Option<ClientCert>,
}

impl Net {
    /// Fresh MQTT options for `endpoint` with this way to it (certificate
    /// files are read each time this is called: at the link's start and
    /// after a new DPS assignment; reconnects reuse the options).
    pub fn options(&self, client_id: String, endpoint: &Endpoint) -> Result<MqttOptions, HubError> {
        let mut o = if endpoint.scheme.websocket() {
            // rumqttc takes the whole URL as the broker address for WebSockets.
            MqttOptions::new(client_id, endpoint.url(), endpoint.port)
        } else {
            MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port)
        };
        let tls_config = || tls::client_config(self.ca_file.as_deref(), self.client_cert.as_ref());
        let transport = match endpoint.scheme {
            Scheme::Mqtt => Transport::Tcp,
            Scheme::Mqtts => Transport::tls_with_config(tls_config()?),
            Scheme::Ws => Transport::Ws,
            Scheme::Wss => Transport::Wss(tls_config()?),
        };
        o.set_transport(transport);
        if let Some(p) = &self.proxy {
            let ty = match p.tls {
                false => ProxyType::Http,
                true => ProxyType::Https(tls::client_config(self.ca_file.as_deref(), None)?),
            };
            let auth = match &p.login {
                Some((u, pw)) => ProxyAuth::Basic { username: u.clone(), password: pw.expose().to_string() },
                None => ProxyAuth::None,
            };
            o.set_proxy(Proxy { ty, auth, addr: p.host.clone(), port: p.port });
        }
        Ok(o)
    }

    /// For logs: " through proxy http://host:port", or nothing.
    pub fn describe_proxy(&self) -> String {
        self.proxy.as_ref().map(|p| format!(" through proxy {}", p.describe())).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(url: &str) -> Endpoint {
        parse_url(url).unwrap()
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            ep("mqtt://localhost"),
            Endpoint { scheme: Scheme::Mqtt, host: "localhost".into(), port: 1883, path: "".into() }
        );
        assert_eq!(ep("mqtts://b.example:8884/").port, 8884);
        assert_eq!(ep("mqtts://[::1]").host, "[::1]");
        let w = ep("wss://b.example/mqtt");
        assert_eq!((w.scheme, w.port, w.path.as_str()), (Scheme::Wss, 443, "/mqtt"));
        assert_eq!(w.url(), "wss://b.example:443/mqtt");
        assert_eq!(ep("ws://127.0.0.1:9001").path, "/");
        assert_eq!(ep("ws://127.0.0.1:9001?x=1").path, "/?x=1");
        assert_eq!(ep("mqtt://[fe80::1:2]").host, "[fe80::1:2]");
        assert!(parse_url("mqtt://fe80::1:2").is_err());
        assert!(parse_url("mqtt://[::1]x").is_err());
        assert!(parse_url("mqtt://:1883").is_err());
        for bad in ["http://x", "mqtt://", "mqtt://h:0", "mqtt://h:99999", "mqtt://::1", "mqtt://[::1", "mqtt://h/path"]
        {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
        let e = parse_url("mqtts://user:pw@h").unwrap_err().to_string();
        assert!(!e.contains("pw"), "{e}");
    }

    #[test]
    fn proxy_urls() {
        let p = parse_proxy("http://127.0.0.1:8888").unwrap();
        assert_eq!((p.tls, p.host.as_str(), p.port, p.login.is_none()), (false, "127.0.0.1", 8888, true));
        assert_eq!(parse_proxy("http://proxy.plant").unwrap().port, 3128);
        assert_eq!(parse_proxy("https://[::1]").unwrap().host, "::1");
        let p = parse_proxy("http://op%40plant:s3cr%3At@proxy:3128/").unwrap();
        let (u, pw) = p.login.clone().unwrap();
        assert_eq!((u.as_str(), pw.expose()), ("op@plant", "s3cr:t"));
        assert!(!format!("{p:?}").contains("s3cr"));
        for bad in ["socks5://h:1080", "http://", "http://h:x", "http://h/path", "http://:pw@h", "proxy:3128"] {
            let e = parse_proxy(bad).unwrap_err();
            assert!(!e.contains("pw"), "{e}");
        }
        assert!(!parse_proxy("ftp://u:hunter2@h").unwrap_err().contains("hunter2"));
        // A forgotten "@host": the password where a port would be.
        let e = parse_proxy("http://operator:hunter2").unwrap_err();
        assert!(e.contains("invalid port") && !e.contains("hunter2"), "{e}");
    }
}
