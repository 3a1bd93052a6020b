//! Twin setpoints the gateway applied: per device point, the desired value
//! it last wrote (or found unwritable), with the desired `$version` it came
//! with and the outcome. Reconciling the twin compares against these, so a
//! restart does not write an applied setpoint again. Kept in the `meta`
//! tree (`twin\0{device}\0{point}`), written like an entry and durable with
//! the next flush; lost in a crash before that, the setpoint's command is
//! found again by its id (`twin:{point}:v{version}`), a duplicate with its
//! stored outcome: recorded then, never written twice.

use super::{Journal, JournalError};
use serde::{Deserialize, Serialize};

/// What became of a desired value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub value: serde_json::Value,
    pub version: u64,
    /// The final state of its command (`delivered`, `rejected`, ...).
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub at_ms: u64,
}

fn key(device: &str, point: &str) -> Vec<u8> {
    [b"twin\0".as_slice(), device.as_bytes(), b"\0", point.as_bytes()].concat()
}

impl Journal {
    /// The setpoint last applied to `device`'s `point`, if any.
    pub fn applied(&self, device: &str, point: &str) -> Result<Option<Applied>, JournalError> {
        let v = self.inner.meta.get(key(device, point))?;
        Ok(v.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Records what became of a setpoint (durable with the next flush).
    pub fn set_applied(&self, device: &str, point: &str, a: &Applied) -> Result<(), JournalError> {
        let v = serde_json::to_vec(a).expect("a record serialises");
        let r = self.inner.meta.insert(key(device, point), v);
        self.wrote();
        self.check(r)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Bounds;

    #[tokio::test]
    async fn a_setpoint_record_survives_a_restart_and_is_per_device_point() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("j");
        let bounds = Bounds { max_messages: 10, max_bytes: 1 << 20 };
        let a = Applied {
            value: serde_json::json!(21.5),
            version: 7,
            status: "delivered".into(),
            detail: String::new(),
            at_ms: 1,
        };
        {
            let (j, _) = Journal::open(&dir, 1 << 20, bounds).unwrap();
            assert_eq!(j.applied("boiler", "setpoint").unwrap(), None);
            j.set_applied("boiler", "setpoint", &a).unwrap();
            j.flush().await.unwrap();
        }
        let (j, _) = Journal::open(&dir, 1 << 20, bounds).unwrap();
        assert_eq!(j.applied("boiler", "setpoint").unwrap(), Some(a));
        assert_eq!(j.applied("boiler", "pump").unwrap(), None);
        assert_eq!(j.applied("boile", "rsetpoint").unwrap(), None, "the separator keeps names apart");
        assert_eq!(j.stats().entries, 0, "not a message");
    }
}
