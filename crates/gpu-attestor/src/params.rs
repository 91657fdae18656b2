//! Challenge parameters and the keys derived from them (GPOW.md, "Parameters and keys").

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MIN_DIM: u32 = 16;
pub const MAX_DIM: u32 = 32768;
/// Products in one challenge; the commitment lists one root per product.
pub const MAX_COUNT: u32 = 1_000_000;

/// What a challenge asks for. Keys absent in plain `--seed` mode are zeros.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(with = "hex32")]
    pub seed: [u8; 32],
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub count: u32,
    #[serde(with = "hex32")]
    pub nonce: [u8; 32],
    /// The executor's ed25519 public key.
    #[serde(with = "hex32")]
    pub executor_key: [u8; 32],
    /// The validator hotkey's sr25519 public key.
    #[serde(with = "hex32")]
    pub validator_key: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("{name} = {value}: matrix dimensions must be multiples of 16 between {MIN_DIM} and {MAX_DIM}")]
    Dim { name: &'static str, value: u32 },
    #[error("num-matrices = {0}: must be between 1 and {MAX_COUNT}")]
    Count(u32),
    #[error(
        "the challenge needs {needed} MiB of memory for {threads} thread(s); this machine has {available} MiB available"
    )]
    Memory { needed: u64, available: u64, threads: usize },
}

impl Params {
    /// The CLI's plain mode: `--seed N` (u64 little-endian, zero-padded), `--matrix-dim D`
    /// (m = n = k = D), `--num-matrices C`; no nonce and no keys.
    pub fn plain(seed: u64, dim: u32, count: u32) -> Self {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        Self { seed: s, m: dim, n: dim, k: dim, count, nonce: [0; 32], executor_key: [0; 32], validator_key: [0; 32] }
    }

    /// Refuses parameters the specification does not allow, before any work.
    pub fn validate(&self) -> Result<(), ParamsError> {
        for (name, value) in [("m", self.m), ("n", self.n), ("k", self.k)] {
            if !(MIN_DIM..=MAX_DIM).contains(&value) || value % 16 != 0 {
                return Err(ParamsError::Dim { name, value });
            }
        }
        if !(1..=MAX_COUNT).contains(&self.count) {
            return Err(ParamsError::Count(self.count));
        }
        Ok(())
    }

    /// `seed ‖ m ‖ n ‖ k ‖ count ‖ nonce ‖ executor_key ‖ validator_key`, integers little-endian.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 * 4 + 16);
        out.extend_from_slice(&self.seed);
        for v in [self.m, self.n, self.k, self.count] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.executor_key);
        out.extend_from_slice(&self.validator_key);
        out
    }

    /// `SHA-256("gpow/v1" ‖ canonical)`.
    pub fn master(&self) -> [u8; 32] {
        Sha256::new().chain_update(b"gpow/v1").chain_update(self.canonical()).finalize().into()
    }

    /// `(key_A, key_B)`: the first 8 bytes of `SHA-256(master ‖ "A")` (and `"B"`) as two u32 LE.
    pub fn keys(&self) -> ([u32; 2], [u32; 2]) {
        let master = self.master();
        let key = |tag: &[u8]| {
            let h = Sha256::new().chain_update(master).chain_update(tag).finalize();
            [u32::from_le_bytes([h[0], h[1], h[2], h[3]]), u32::from_le_bytes([h[4], h[5], h[6], h[7]])]
        };
        (key(b"A"), key(b"B"))
    }

    /// Integer operations of the whole challenge (a multiply and an add per term).
    pub fn ops(&self) -> f64 {
        2.0 * f64::from(self.m) * f64::from(self.n) * f64::from(self.k) * f64::from(self.count)
    }

    /// Bytes one product needs while it is computed: A, B, Bᵀ and C.
    pub fn bytes_per_product(&self) -> u64 {
        let (m, n, k) = (u64::from(self.m), u64::from(self.n), u64::from(self.k));
        m * k + 2 * k * n + 4 * m * n
    }

    /// Refuses a challenge whose working set (`threads` products at once, plus 32 bytes per
    /// product of commitment) exceeds the memory the machine has available.
    pub fn check_memory(&self, threads: usize, available_bytes: u64) -> Result<(), ParamsError> {
        let needed = self.bytes_per_product() * threads as u64 + 32 * u64::from(self.count);
        if needed > available_bytes {
            return Err(ParamsError::Memory { needed: needed >> 20, available: available_bytes >> 20, threads });
        }
        Ok(())
    }
}

/// 32-byte arrays as 64 lowercase hex digits in JSON.
pub mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
        let text = <&str>::deserialize(deserializer)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out)
            .map_err(|e| serde::de::Error::custom(format!("expected 64 hex digits: {e}")))?;
        Ok(out)
    }
}

/// Lists of 32-byte hashes as hex strings in JSON.
pub mod hex32_list {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(list: &[[u8; 32]], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(list.iter().map(hex::encode))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let texts = Vec::<&str>::deserialize(deserializer)?;
        texts
            .into_iter()
            .map(|t| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(t, &mut out)
                    .map_err(|e| serde::de::Error::custom(format!("expected 64 hex digits: {e}")))?;
                Ok(out)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_parameters_before_work() {
        assert_eq!(Params::plain(1, 17, 1).validate(), Err(ParamsError::Dim { name: "m", value: 17 }));
        assert_eq!(Params::plain(1, 0, 1).validate(), Err(ParamsError::Dim { name: "m", value: 0 }));
        assert_eq!(Params::plain(1, 32784, 1).validate(), Err(ParamsError::Dim { name: "m", value: 32784 }));
        assert_eq!(Params::plain(1, 16, 0).validate(), Err(ParamsError::Count(0)));
        Params::plain(1, 32768, 1).validate().unwrap();
        let huge = Params::plain(1, 32768, 1);
        assert!(matches!(huge.check_memory(2, 1 << 30), Err(ParamsError::Memory { .. })));
    }

    #[test]
    fn plain_seed_is_little_endian_and_keys_are_stable() {
        let p = Params::plain(0x0102, 16, 1);
        assert_eq!(&p.seed[..3], &[2, 1, 0]);
        assert_eq!(p.canonical().len(), 32 * 4 + 16);
        assert_eq!(p.keys(), Params::plain(0x0102, 16, 1).keys());
        assert_ne!(p.keys(), Params::plain(0x0103, 16, 1).keys());
    }
}
