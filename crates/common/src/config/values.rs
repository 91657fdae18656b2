//! The typed values of the configuration: each knows its own rules, so a key of one of these
//! types needs no check of its own. A value's format is checked when it is deserialised (a
//! hotkey that is not SS58, a duration that is not `"30s"`); its bounds through [`Validate`],
//! after the whole file is read, so that every bad value is reported together.

use std::fmt;
use std::net::IpAddr;
use std::ops::Deref;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub use crate::hotkey::Hotkey;

/// Why a value is not acceptable; the text is what the operator reads after the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub(crate) String);

impl InvalidValue {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl From<String> for InvalidValue {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<&str> for InvalidValue {
    fn from(message: &str) -> Self {
        Self(message.to_owned())
    }
}

/// A value that checks its own bounds once the configuration is read.
pub trait Validate {
    /// What is wrong with the value, if anything.
    fn validate(&self) -> Result<(), InvalidValue>;
}

impl<T: Validate> Validate for Option<T> {
    fn validate(&self) -> Result<(), InvalidValue> {
        self.as_ref().map_or(Ok(()), Validate::validate)
    }
}

/// A plain value type over `$inner`: serialised as it, readable through `get`, `Deref` and
/// `From`, shown as it.
macro_rules! value_type {
    ($(#[$meta:meta])* $name:ident($inner:ty) $(, $derive:ident)*) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, PartialOrd, Serialize, Deserialize $(, $derive)*)]
        #[serde(transparent)]
        pub struct $name($inner);

        impl $name {
            pub const fn new(value: $inner) -> Self {
                Self(value)
            }
        }

        impl Deref for $name {
            type Target = $inner;
            fn deref(&self) -> &$inner {
                &self.0
            }
        }

        impl From<$inner> for $name {
            fn from(value: $inner) -> Self {
                Self(value)
            }
        }

        impl From<$name> for $inner {
            fn from(value: $name) -> $inner {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

/// `get()` for the `Copy` value types.
macro_rules! copy_get {
    ($($name:ident($inner:ty)),*) => {$(
        impl $name {
            pub const fn get(self) -> $inner {
                self.0
            }
        }
    )*};
}

value_type!(
    /// A TCP port to listen on or to reach: 1 to 65535 (the type takes 0, the check refuses it).
    Port(u16), Copy, Eq, Ord, Hash
);
value_type!(
    /// A percentage, 0 to 100.
    Percent(f64), Copy
);
value_type!(
    /// A share of a whole, in (0, 1].
    Fraction(f64), Copy
);
value_type!(
    /// A number of bytes.
    ByteSize(u64), Copy, Eq, Ord, Hash
);
value_type!(
    /// A host name (RFC 1123) or an IP address.
    HostName(String), Eq, Ord, Hash
);
value_type!(
    /// A registry as Docker names it: a host name or IP address with an optional `:port`, no
    /// scheme or path.
    RegistryHost(String), Eq, Ord, Hash
);
copy_get!(Port(u16), Percent(f64), Fraction(f64), ByteSize(u64));

impl From<Port> for u32 {
    fn from(port: Port) -> u32 {
        u32::from(port.0)
    }
}

impl Validate for Port {
    fn validate(&self) -> Result<(), InvalidValue> {
        match self.0 {
            0 => Err(InvalidValue::new("must be between 1 and 65535, not 0")),
            _ => Ok(()),
        }
    }
}

impl Validate for Percent {
    fn validate(&self) -> Result<(), InvalidValue> {
        in_range(self.0, 0.0, 100.0)
    }
}

impl Validate for Fraction {
    fn validate(&self) -> Result<(), InvalidValue> {
        let f = self.0;
        if f > 0.0 && f <= 1.0 { Ok(()) } else { Err(InvalidValue(format!("{f} is not in (0, 1]"))) }
    }
}

impl Validate for HostName {
    fn validate(&self) -> Result<(), InvalidValue> {
        let host = &self.0;
        if is_host_or_ip(host) {
            Ok(())
        } else {
            Err(InvalidValue(format!("`{host}` is not a host name or IP address")))
        }
    }
}

impl Validate for RegistryHost {
    fn validate(&self) -> Result<(), InvalidValue> {
        let value = &self.0;
        let (host, port) = match value.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (value.as_str(), None),
        };
        let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
        if port_ok && is_host_or_ip(host) {
            Ok(())
        } else {
            Err(InvalidValue(format!(
                "`{value}` is not a registry host (a host name with an optional :port, no scheme or path)"
            )))
        }
    }
}

/// The one form of a registry host that settings are keyed by and images are looked up by:
/// host names compare case-insensitively (DNS), so they are lower-cased, and
/// `index.docker.io` is Docker Hub, `docker.io`. Docker's reference grammar keeps the case of
/// the host; two spellings of one host must not be two registries here (issue 18 item 3).
pub fn normalise_registry_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    if host == "index.docker.io" { "docker.io".to_owned() } else { host }
}

/// `value` within `[min, max]`, in the words every numeric bound uses.
pub(crate) fn in_range(value: f64, min: f64, max: f64) -> Result<(), InvalidValue> {
    if value >= min && value <= max {
        Ok(())
    } else {
        Err(InvalidValue(format!("{value} is out of range ({min} to {max})")))
    }
}

/// A duration within `[min, max]`, in the words of the duration bounds (`"between 1s and 1h"`).
pub(crate) fn duration_between(value: Duration, min: Duration, max: Duration) -> Result<(), InvalidValue> {
    if value >= min && value <= max {
        Ok(())
    } else {
        let (min, max) = (humantime::format_duration(min), humantime::format_duration(max));
        Err(InvalidValue(format!("must be between {min} and {max}")))
    }
}

/// An RFC 1123 host name or an IP address.
pub(crate) fn is_host_or_ip(host: &str) -> bool {
    is_host_name(host) || host.parse::<IpAddr>().is_ok()
}

/// RFC 1123 host name.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Durations as human strings (`"30s"`, `"1m 30s"`, `"500ms"`): `#[serde(with = "human_duration")]`.
pub(crate) mod human_duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("`{text}` is not a duration like \"30s\" or \"500ms\": {e}")))
    }
}

/// The longest [`is_plain_name`].
pub const MAX_PLAIN_NAME: usize = 64;

/// A name the node keeps things under (volumes, templates): letters, digits, `_`, `.`, `-`,
/// starting with a letter or digit, at most [`MAX_PLAIN_NAME`] bytes.
pub fn is_plain_name(name: &str) -> bool {
    name.len() <= MAX_PLAIN_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A path inside a container a volume may be mounted at: absolute, below `/`, without `..`,
/// and without `,`, `:` or NUL (the separators of the volumes label), at most 4096 bytes.
pub fn is_mount_path(path: &str) -> bool {
    path.starts_with('/')
        && path != "/"
        && path.len() <= 4096
        && !path.split('/').any(|c| c == "..")
        && !path.contains([',', ':', '\0'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(value: &impl Validate) -> String {
        value.validate().map_or_else(|e| e.to_string(), |()| String::new())
    }

    #[test]
    fn values_check_themselves() {
        assert_eq!(problem(&Port::new(0)), "must be between 1 and 65535, not 0");
        assert_eq!(problem(&Port::new(22)), "");
        assert_eq!(problem(&Percent::new(100.5)), "100.5 is out of range (0 to 100)");
        assert_eq!(problem(&Percent::new(f64::NAN)), "NaN is out of range (0 to 100)");
        assert_eq!(problem(&Fraction::new(0.0)), "0 is not in (0, 1]");
        assert_eq!(problem(&Fraction::new(1.0)), "");
        assert_eq!(problem(&HostName::new("bad_host".into())), "`bad_host` is not a host name or IP address");
        assert_eq!(problem(&HostName::new("::1".into())), "");
        assert_eq!(problem(&RegistryHost::new("127.0.0.1:5000".into())), "");
        assert!(problem(&RegistryHost::new("ghcr.io:0".into())).contains("is not a registry host"));
        assert!(problem(&RegistryHost::new("docker.io/library".into())).contains("no scheme or path"));
        assert_eq!(problem(&None::<Port>), "");
    }

    #[test]
    fn values_serialise_as_their_inner_value() {
        let json = serde_json::json!({"port": 50051, "size": 4096, "host": "h"});
        #[derive(Deserialize, Serialize)]
        struct Keys {
            port: Port,
            size: ByteSize,
            host: HostName,
        }
        let keys: Keys = serde_json::from_value(json.clone()).unwrap();
        assert_eq!((keys.port.get(), *keys.size, keys.host.as_str()), (50051, 4096, "h"));
        assert_eq!(serde_json::to_value(&keys).unwrap(), json);
    }
}
