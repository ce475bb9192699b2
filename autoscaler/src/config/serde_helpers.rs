//! Deserializers for the configuration's quantities: durations as seconds or humantime strings, byte
//! quantities as numbers or Kubernetes quantities (through `primitives::memory_bytes`), the expander by
//! its name.

use std::fmt;
use std::time::Duration;

use handlers::policy::Expander;
use serde::{Deserialize, Deserializer};

/// Reads a duration from integer (or fractional) seconds or a humantime string (`90s`, `5m`).
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("seconds (e.g. 90) or a duration string (e.g. \"90s\", \"5m\")")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("{v} is negative")))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(|_| E::custom(format!("{v} is not a duration")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            let v = v.trim();
            if let Ok(n) = v.parse::<u64>() {
                return Ok(Duration::from_secs(n));
            }
            humantime::parse_duration(v).map_err(|e| E::custom(format!("`{v}`: {e}")))
        }
    }
    d.deserialize_any(V)
}

/// Reads a byte quantity: a number of bytes or a Kubernetes quantity (`512Mi`, `2Gi`, `1G`).
pub fn quantity<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("bytes or a quantity such as \"2Gi\"")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("{v} is negative")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
            primitives::memory_bytes(v).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// As [`quantity`], for an optional key (`#[serde(default, deserialize_with = "optional_quantity")]`).
pub fn optional_quantity<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    quantity(d).map(Some)
}

/// Reads `scaling.expander` by its configuration name (`least-waste`, `priority`).
pub fn expander<'de, D: Deserializer<'de>>(d: D) -> Result<Expander, D::Error> {
    let name = String::deserialize(d)?;
    [Expander::LeastWaste, Expander::Priority]
        .into_iter()
        .find(|e| e.name() == name)
        .ok_or_else(|| {
            serde::de::Error::custom(format!("`{name}` is not one of least-waste, priority"))
        })
}
