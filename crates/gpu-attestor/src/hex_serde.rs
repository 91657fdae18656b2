//! 32-byte keys and hashes as 64 lowercase hex digits in JSON: one, a list, or an optional one.

use serde::{Deserialize, Deserializer, Serializer};

fn decode<E: serde::de::Error>(text: &str) -> Result<[u8; 32], E> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).map_err(|e| E::custom(format!("expected 64 hex digits: {e}")))?;
    Ok(out)
}

pub mod hex32 {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
        decode(&String::deserialize(deserializer)?)
    }
}

pub mod hex32_list {
    use super::*;

    pub fn serialize<S: Serializer>(list: &[[u8; 32]], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(list.iter().map(hex::encode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<[u8; 32]>, D::Error> {
        Vec::<String>::deserialize(deserializer)?.iter().map(|t| decode(t)).collect()
    }
}

/// Lists of Merkle paths: lists of lists of hashes.
pub mod hex32_paths {
    use super::*;

    pub fn serialize<S: Serializer>(paths: &[Vec<[u8; 32]>], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(paths.iter().map(|p| p.iter().map(hex::encode).collect::<Vec<_>>()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Vec<[u8; 32]>>, D::Error> {
        Vec::<Vec<String>>::deserialize(deserializer)?
            .into_iter()
            .map(|p| p.iter().map(|t| decode(t)).collect())
            .collect()
    }
}

/// A hash or `null`.
pub mod hex32_option {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<[u8; 32]>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(h) => serializer.serialize_str(&hex::encode(h)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<[u8; 32]>, D::Error> {
        Option::<String>::deserialize(deserializer)?.map(|t| decode(&t)).transpose()
    }
}

/// Lists of optional hashes (`roots_b`).
pub mod hex32_option_list {
    use super::*;

    pub fn serialize<S: Serializer>(list: &[Option<[u8; 32]>], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(list.iter().map(|h| h.map(hex::encode)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Option<[u8; 32]>>, D::Error> {
        Vec::<Option<String>>::deserialize(deserializer)?.iter().map(|h| h.as_deref().map(decode).transpose()).collect()
    }
}
