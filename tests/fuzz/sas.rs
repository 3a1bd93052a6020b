//! SAS tokens: src/hub/azure/sas.rs. Generated tokens verify (and only
//! before their expiry, only with their key); no edit of a token's text makes
//! it verify for another resource or a later expiry; arbitrary text never
//! panics and errors never show the key or the signature.

use crate::gens::{alphabet_string, edits, edits_between, lossy_string, mutate, pieces, tricky_string};
use crate::{check, Ctx, Property};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use c2d_gateway::hub::azure::propbag::encode_component;
use c2d_gateway::hub::azure::sas::{parse_token, sign, token, verify, SasError};
use proptest::prelude::*;

pub fn properties() -> Vec<Property> {
    vec![
        Property { target: "sas", name: "token -> verify round trip", weight: 4, run: round_trip },
        Property { target: "sas", name: "edited token never gains scope", weight: 4, run: tampering },
        Property { target: "sas", name: "any text: no panic, no secret in errors", weight: 6, run: any_text },
    ]
}

const KEY: &str = "Zm9vYmFyS2V5TGVha0NhbmFyeTEyMzQ1Njc4OTBhYmM=";

fn expiry() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 1_600_000_000u64..4_000_000_000, 1 => 1u64..=u64::MAX, 1 => Just(u64::MAX)]
}

fn resource() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (alphabet_string(&["h", "ub", ".", "azure-devices", "net"], 6), alphabet_string(&["d", "-", "1", "%", "é", "+", " "], 8))
            .prop_map(|(h, d)| format!("{h}x/devices/{d}x")),
        1 => crate::gens::tricky_string_between(1, 40),
    ]
}

fn raw_key() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 1..=64)
}

fn round_trip(ctx: &Ctx) -> Result<(), String> {
    let key_name = proptest::option::of(tricky_string(10));
    check(ctx, (resource(), raw_key(), expiry(), key_name), |(resource, key, expiry, key_name)| {
        let key_b64 = STANDARD.encode(&key);
        let t = token(&resource, &key_b64, expiry, key_name.as_deref()).expect("token");
        prop_assert_eq!(format!("{t:?}"), "Secret(***)");
        let p = parse_token(t.expose()).expect("parse own token");
        prop_assert_eq!(&p.resource, &resource);
        prop_assert_eq!(p.expiry, expiry);
        prop_assert_eq!(&p.key_name, &key_name.filter(|n| !n.is_empty()));
        prop_assert!(!format!("{p:?}").contains(&p.signature), "ParsedToken Debug shows the signature");
        prop_assert_eq!(verify(t.expose(), &key_b64, &resource, expiry - 1), Ok(expiry));
        prop_assert_eq!(verify(t.expose(), &key_b64, &resource.to_ascii_uppercase(), 0), Ok(expiry));
        prop_assert_eq!(
            verify(t.expose(), &key_b64, &resource, expiry),
            Err(SasError::Expired { expiry, now: expiry })
        );
        let other = STANDARD.encode([&key[..], b"x"].concat());
        prop_assert_eq!(verify(t.expose(), &other, &resource, 0), Err(SasError::SignatureMismatch));
        let elsewhere = format!("{resource}/x");
        let wrong = matches!(verify(t.expose(), &key_b64, &elsewhere, 0), Err(SasError::ResourceMismatch { .. }));
        prop_assert!(wrong, "token for {resource:?} accepted for {elsewhere:?}");
        Ok(())
    })
}

fn tampering(ctx: &Ctx) -> Result<(), String> {
    check(ctx, (resource(), expiry(), edits_between(1, 3)), |(resource, expiry, e)| {
        let t = token(&resource, KEY, expiry, None).expect("token");
        let edited = mutate(t.expose(), &e);
        if let Ok(p) = parse_token(&edited) {
            // Ask with the resource the edited token claims.
            if let Ok(exp) = verify(&edited, KEY, &p.resource, 0) {
                prop_assert!(
                    p.resource.eq_ignore_ascii_case(&resource) && exp == expiry,
                    "edited token {edited:?} verifies for {:?} until {exp}, signed for {resource:?} until {expiry}",
                    p.resource
                );
            }
        }
        Ok(())
    })
}

const FIELDS: &[&str] = &[
    "sr=",
    "sig=",
    "se=",
    "skn=",
    "SR=",
    "Sig=",
    "&",
    "&&",
    "=",
    "%",
    "%2F",
    "%3D",
    "%zz",
    "%FF",
    "1",
    "0",
    "-",
    "99999999999999999999",
    "hub.azure-devices.net%2Fdevices%2Fd",
    "{SIG}",
    "x-extra=",
    " ",
    "+",
    "/",
    "é",
];

fn any_text(ctx: &Ctx) -> Result<(), String> {
    let text = prop_oneof![
        4 => alphabet_string(FIELDS, 16).prop_map(|f| format!("SharedAccessSignature {f}")),
        2 => (expiry(), edits(4)).prop_map(|(se, e)| {
            mutate(&format!("SharedAccessSignature sr=hub%2Fdevices%2Fd&sig={{SIG}}&se={se}&skn=k"), &e)
        }),
        1 => lossy_string(80),
        1 => tricky_string(40).prop_map(|f| format!("SharedAccessSignature {f}")),
    ];
    let sig_bytes = proptest::collection::vec(any::<u8>(), 32);
    check(ctx, (text, sig_bytes, any::<u64>()), |(template, sig, now)| {
        let sig = STANDARD.encode(sig);
        let t = template.replace("{SIG}", &encode_component(&sig));
        let _ = parse_token(&t);
        let err = match verify(&t, KEY, "hub/devices/d", now) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let echoed = match &err {
            SasError::ResourceMismatch { actual, .. } => actual.clone(),
            _ => String::new(),
        };
        for text in [err.to_string(), format!("{err:?}")] {
            for piece in pieces(KEY, 8) {
                prop_assert!(!text.contains(&piece), "{text:?} shows the key");
            }
            for piece in pieces(&sig, 8) {
                // Only a resource the token itself claimed is echoed.
                prop_assert!(
                    !text.contains(&piece) || echoed.contains(&piece),
                    "{text:?} shows the signature (token {t:?})"
                );
            }
        }
        Ok(())
    })?;
    // And a well-formed token signed with this key checks out.
    let sig = sign(KEY, "hub%2Fdevices%2Fd\n5").map_err(|e| e.to_string())?;
    let t = format!("SharedAccessSignature sr=hub%2Fdevices%2Fd&sig={}&se=5", encode_component(&sig));
    verify(&t, KEY, "hub/devices/d", 4).map(|_| ()).map_err(|e| e.to_string())
}
