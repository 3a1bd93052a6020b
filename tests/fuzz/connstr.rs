//! Device connection strings: src/hub/azure/connstr.rs. Arbitrary and
//! damaged strings never panic and never put the key (or an 8-character
//! piece of it) into an error's text or `Debug`; valid strings in any order,
//! case and spacing parse to their parts.

use crate::gens::{alphabet_string, edits, lossy_string, mutate, pieces, tricky_string};
use crate::{check, Ctx, Property};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use c2d_gateway::hub::azure::connstr::parse;
use proptest::prelude::*;

pub fn properties() -> Vec<Property> {
    vec![
        Property { target: "connstr", name: "any string: no panic, key never leaks", weight: 10, run: no_leak },
        Property { target: "connstr", name: "valid string round trip", weight: 6, run: round_trip },
    ]
}

/// A device key: base64 of 16 to 64 random bytes (the portal's are 32).
fn key() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<u8>(), 16..=64).prop_map(|b| STANDARD.encode(b))
}

fn host() -> impl Strategy<Value = String> {
    let label =
        (alphabet_string(&["a", "z", "0", "9", "m"], 6), any::<bool>(), 0usize..3).prop_map(|(core, hyphen, len)| {
            let core = if core.is_empty() { "h".to_owned() } else { core };
            if hyphen && len > 0 {
                format!("{}-{}", &core[..1], core)
            } else {
                core
            }
        });
    proptest::collection::vec(label, 1..=4).prop_map(|l| l.join("."))
}

/// Device/module ids as IoT Hub allows them, without `;` (which would end
/// the part in a connection string).
fn id() -> impl Strategy<Value = String> {
    alphabet_string(
        &[
            "a", "Z", "0", "9", "-", ":", ".", "+", "%", "_", "#", "*", "?", "!", "(", ")", ",", "=", "@", "$", "'",
            "dev", "gw1",
        ],
        20,
    )
    .prop_map(|s| if s.is_empty() { "d".to_owned() } else { s })
}

/// `name` with the case of each letter flipped where `flips` says.
fn recase(name: &str, flips: u64) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| if flips >> (i % 64) & 1 == 1 { c.to_ascii_lowercase() } else { c.to_ascii_uppercase() })
        .collect()
}

/// One part of a connection string; `{KEY}` stands for the secret.
fn part() -> impl Strategy<Value = String> {
    let ws = || proptest::sample::select(&["", "", "", " ", "\t", "  "][..]);
    let value = prop_oneof![
        3 => host(),
        3 => id(),
        2 => Just("{KEY}".to_owned()),
        1 => Just("x{KEY}y".to_owned()),
        1 => Just("{KEY};{KEY}".to_owned()),
        1 => Just("SharedAccessSignature sr=h%2Fdevices%2Fd&sig={KEY}&se=1".to_owned()),
        1 => proptest::sample::select(&["", "true", "false", "TRUE", "=", "==", "not base64!"][..]).prop_map(str::to_owned),
        2 => tricky_string(16),
    ];
    let name = proptest::sample::select(
        &[
            "HostName",
            "DeviceId",
            "ModuleId",
            "SharedAccessKey",
            "SharedAccessKey",
            "SharedAccessKeyName",
            "SharedAccessSignature",
            "x509",
            "GatewayHostName",
            "Unknown",
            "",
            "{KEY}",
        ][..],
    );
    prop_oneof![
        8 => (ws(), name, any::<u64>(), ws(), ws(), value, ws())
            .prop_map(|(a, n, flips, b, c, v, d)| format!("{a}{}{b}={c}{v}{d}", recase(n, flips))),
        1 => Just("{KEY}".to_owned()),
        1 => Just(String::new()),
        1 => tricky_string(12),
    ]
}

fn damaged() -> impl Strategy<Value = String> {
    let sep = proptest::sample::select(&[";", ";", ";", ";", "", " ", ";;", "\n", ";\r\n"][..]);
    prop_oneof![
        6 => proptest::collection::vec((part(), sep), 0..=7).prop_map(|parts| {
            parts.into_iter().map(|(p, s)| p + s).collect::<String>()
        }),
        2 => (Just("HostName=h.azure-devices.net;DeviceId=dev;SharedAccessKey={KEY}".to_owned()), edits(3))
            .prop_map(|(s, e)| mutate(&s, &e)),
        1 => lossy_string(64),
    ]
}

fn no_leak(ctx: &Ctx) -> Result<(), String> {
    check(ctx, (damaged(), key()), |(template, key)| {
        let s = template.replace("{KEY}", &key);
        match parse(&s) {
            Ok(cs) => {
                // The key is never shown; the other fields are, even when an
                // operator pasted key material into them.
                let dbg = format!("{cs:?}");
                let fields = format!("{:?} {:?} {:?}", cs.host_name, cs.device_id, cs.module_id);
                if let Some(secret) = cs.key.as_ref().map(|k| k.expose()) {
                    prop_assert!(!dbg.contains(secret) || fields.contains(secret), "{dbg} shows the key");
                }
            }
            Err(e) => {
                for text in [e.to_string(), format!("{e:?}")] {
                    for piece in pieces(&key, 8) {
                        prop_assert!(!text.contains(&piece), "{text:?} leaks {piece:?} of the key (input {s:?})");
                    }
                }
            }
        }
        Ok(())
    })
}

fn round_trip(ctx: &Ctx) -> Result<(), String> {
    let raw_key = proptest::collection::vec(any::<u8>(), 1..=64).prop_map(|b| STANDARD.encode(b));
    let ws = || proptest::sample::select(&["", "", " ", "\t", " \n"][..]);
    let s = (host(), id(), proptest::option::of(id()), raw_key, any::<bool>(), any::<bool>()).prop_flat_map(
        move |(h, d, m, k, x509, trailing)| {
            let mut parts = vec![("HostName", h.clone()), ("DeviceId", d.clone()), ("SharedAccessKey", k.clone())];
            if let Some(m) = &m {
                parts.push(("ModuleId", m.clone()));
            }
            if x509 {
                parts.push(("x509", "false".to_owned()));
            }
            let n = parts.len();
            let decorated = proptest::collection::vec((any::<u64>(), ws(), ws(), ws(), ws()), n).prop_map(
                move |deco| -> Vec<String> {
                    parts
                        .iter()
                        .zip(deco)
                        .map(|((name, v), (flips, a, b, c, d))| format!("{a}{}{b}={c}{v}{d}", recase(name, flips)))
                        .collect()
                },
            );
            (Just((h, d, m, k)), decorated.prop_shuffle(), Just(trailing))
        },
    );
    check(ctx, s, |((h, d, m, k), parts, trailing)| {
        let mut s = parts.join(";");
        if trailing {
            s.push(';');
        }
        let cs = parse(&s).map_err(|e| TestCaseError::fail(format!("{s:?}: {e}")))?;
        prop_assert_eq!(&cs.host_name, &h);
        prop_assert_eq!(&cs.device_id, &d);
        prop_assert_eq!(&cs.module_id, &m);
        prop_assert_eq!(cs.key.as_ref().map(|k| k.expose()), Some(k.as_str()));
        prop_assert!(!format!("{cs:?}").contains(&k), "Debug shows the key");
        let (client, resource) = match &m {
            None => (d.clone(), format!("{h}/devices/{d}")),
            Some(m) => (format!("{d}/{m}"), format!("{h}/devices/{d}/modules/{m}")),
        };
        prop_assert_eq!(cs.client_id(), client.clone());
        prop_assert_eq!(cs.resource(), resource);
        prop_assert_eq!(cs.username("2021-04-12"), format!("{h}/{client}/?api-version=2021-04-12"));
        Ok(())
    })
}
