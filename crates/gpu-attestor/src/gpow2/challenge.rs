//! The challenge, its checks, the master key and the per-GPU keys (GPOW.md, "Challenge, master
//! key, per-GPU keys").

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::hex_serde::hex32;
use crate::merkle::Hash;

pub const MIN_DIM: u32 = 16;
pub const MAX_DIM: u32 = 32768;
pub const MAX_COUNT: u32 = 1_000_000;
pub const MAX_GPUS: usize = 64;
/// Phase B needs at least two lanes of 16 items.
pub const MIN_ITEMS: u64 = 32;
/// Item indices are u32.
pub const MAX_ITEMS: u64 = (1 << 32) - 32;

/// One claimed GPU's work: phase A products and phase B dataset items.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuWork {
    /// Rows of each `A_p` and `C_p`.
    pub m: u32,
    /// Columns of each `B_p` and `C_p`.
    pub n: u32,
    /// Columns of `A_p`, rows of `B_p`: the depth of each dot product.
    pub k: u32,
    /// Products in phase A.
    pub count: u32,
    /// Dataset items in phase B; 0 = no phase B for this GPU.
    pub items: u64,
}

impl GpuWork {
    /// Tiles of one product, `(m/16)·(n/16)`.
    pub fn tiles_per_product(&self) -> u64 {
        u64::from(self.m / 16) * u64::from(self.n / 16)
    }

    /// Walk lanes, `items / 16`.
    pub fn lanes(&self) -> u64 {
        self.items / 16
    }

    /// Refuses work GPOW.md does not allow; `gpu` is its index in the challenge, for the error.
    pub fn validate(&self, gpu: usize) -> Result<(), ChallengeError> {
        for (field, value) in [("m", self.m), ("n", self.n), ("k", self.k)] {
            if !(MIN_DIM..=MAX_DIM).contains(&value) || !value.is_multiple_of(16) {
                return Err(ChallengeError::Dim { gpu, field, value });
            }
        }
        if !(1..=MAX_COUNT).contains(&self.count) {
            return Err(ChallengeError::Count { gpu, value: self.count });
        }
        if self.items != 0 && (!(MIN_ITEMS..=MAX_ITEMS).contains(&self.items) || !self.items.is_multiple_of(32)) {
            return Err(ChallengeError::Items { gpu, value: self.items });
        }
        Ok(())
    }

    /// Integer operations of phase A (a multiply and an add per term), exact.
    pub fn ops(&self) -> u128 {
        2 * u128::from(self.m) * u128::from(self.n) * u128::from(self.k) * u128::from(self.count)
    }
}

/// What a validator asks for: GPOW.md's challenge, one work entry per claimed GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    #[serde(with = "hex32")]
    pub seed: [u8; 32],
    /// The validator's fresh nonce.
    #[serde(with = "hex32")]
    pub nonce: [u8; 32],
    /// The executor's ed25519 public key.
    #[serde(with = "hex32")]
    pub executor_key: [u8; 32],
    /// The validator hotkey's sr25519 public key.
    #[serde(with = "hex32")]
    pub validator_key: [u8; 32],
    /// One entry per claimed GPU, in GPU order `g = 0..G`.
    pub gpus: Vec<GpuWork>,
}

/// Why a challenge is refused; each names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("gpus: {0} entries; a challenge names 1 to {MAX_GPUS} GPUs")]
    Gpus(usize),
    #[error("gpus[{gpu}].{field} = {value}: must be a multiple of 16 from {MIN_DIM} to {MAX_DIM}")]
    Dim { gpu: usize, field: &'static str, value: u32 },
    #[error("gpus[{gpu}].count = {value}: must be from 1 to {MAX_COUNT}")]
    Count { gpu: usize, value: u32 },
    #[error("gpus[{gpu}].items = {value}: must be 0 or a multiple of 32 from {MIN_ITEMS} to {MAX_ITEMS}")]
    Items { gpu: usize, value: u64 },
}

impl Challenge {
    /// The guide's plain mode: seed = N as u64 LE zero-padded, one GPU, m = n = k = `dim`,
    /// `count` products, `items` dataset items; nonce and both keys zeros.
    pub fn plain(seed: u64, dim: u32, count: u32, items: u64) -> Self {
        let mut s = [0u8; 32];
        s[..8].copy_from_slice(&seed.to_le_bytes());
        Self {
            seed: s,
            nonce: [0; 32],
            executor_key: [0; 32],
            validator_key: [0; 32],
            gpus: vec![GpuWork { m: dim, n: dim, k: dim, count, items }],
        }
    }

    /// Refuses a challenge GPOW.md does not allow, before any work.
    pub fn validate(&self) -> Result<(), ChallengeError> {
        if !(1..=MAX_GPUS).contains(&self.gpus.len()) {
            return Err(ChallengeError::Gpus(self.gpus.len()));
        }
        for (gpu, w) in self.gpus.iter().enumerate() {
            w.validate(gpu)?;
        }
        Ok(())
    }

    /// `seed ‖ nonce ‖ executor_key ‖ validator_key ‖ u32 G ‖ for each g: (u32 m ‖ u32 n ‖
    /// u32 k ‖ u32 count ‖ u64 items)`.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 * 32 + 4 + 24 * self.gpus.len());
        out.extend_from_slice(&self.seed);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&self.executor_key);
        out.extend_from_slice(&self.validator_key);
        // At most MAX_GPUS entries once validated; a larger list cannot be encoded and is
        // refused by `validate` before anyone hashes it.
        out.extend_from_slice(&(self.gpus.len() as u32).to_le_bytes());
        for w in &self.gpus {
            for v in [w.m, w.n, w.k, w.count] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&w.items.to_le_bytes());
        }
        out
    }

    /// `master = SHA-256("gpow/v2" ‖ canonical)`.
    pub fn master(&self) -> Hash {
        Sha256::new().chain_update(b"gpow/v2").chain_update(self.canonical()).finalize().into()
    }

    /// The keys of every GPU, in order.
    pub fn gpu_keys(&self) -> Vec<GpuKeys> {
        let master = self.master();
        (0..self.gpus.len() as u32).map(|g| GpuKeys::new(&master, g)).collect()
    }
}

/// The keys of GPU `g`: `master_g` and the Philox keys of A, B and the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuKeys {
    pub g: u32,
    /// `SHA-256("gpow/v2/gpu" ‖ master ‖ u32 g)`.
    pub master_g: Hash,
    pub a: [u32; 2],
    pub b: [u32; 2],
    pub d: [u32; 2],
}

/// The first 8 bytes of a hash as two u32 little-endian words.
fn key_words(h: &[u8]) -> [u32; 2] {
    [u32::from_le_bytes([h[0], h[1], h[2], h[3]]), u32::from_le_bytes([h[4], h[5], h[6], h[7]])]
}

impl GpuKeys {
    pub fn new(master: &Hash, g: u32) -> Self {
        let master_g: Hash = Sha256::new()
            .chain_update(b"gpow/v2/gpu")
            .chain_update(master)
            .chain_update(g.to_le_bytes())
            .finalize()
            .into();
        let key = |x: u8| key_words(&Sha256::new().chain_update(master_g).chain_update([x]).finalize());
        Self { g, master_g, a: key(b'A'), b: key(b'B'), d: key(b'D') }
    }

    /// `key_W,g`: the first 8 bytes of `SHA-256(master_g ‖ walk_nonce ‖ "W")` as two u32 LE.
    pub fn walk_key(&self, walk_nonce: &[u8; 32]) -> [u32; 2] {
        key_words(&Sha256::new().chain_update(self.master_g).chain_update(walk_nonce).chain_update(b"W").finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn work(m: u32, n: u32, k: u32, count: u32, items: u64) -> GpuWork {
        GpuWork { m, n, k, count, items }
    }

    fn with_gpus(gpus: Vec<GpuWork>) -> Challenge {
        Challenge { gpus, ..Challenge::plain(1, 16, 1, 0) }
    }

    #[test]
    fn refuses_what_the_spec_does_not_allow_and_names_the_field() {
        let ok = work(16, 32, 48, 1, 0);
        let check = |gpus: Vec<GpuWork>, expected: Result<(), ChallengeError>| {
            assert_eq!(with_gpus(gpus.clone()).validate(), expected, "{gpus:?}");
        };
        check(vec![], Err(ChallengeError::Gpus(0)));
        check(vec![ok; 65], Err(ChallengeError::Gpus(65)));
        check(vec![ok; 64], Ok(()));
        check(vec![ok, work(17, 16, 16, 1, 0)], Err(ChallengeError::Dim { gpu: 1, field: "m", value: 17 }));
        check(vec![work(16, 0, 16, 1, 0)], Err(ChallengeError::Dim { gpu: 0, field: "n", value: 0 }));
        check(vec![work(16, 16, 32784, 1, 0)], Err(ChallengeError::Dim { gpu: 0, field: "k", value: 32784 }));
        check(vec![work(32768, 32768, 32768, 1, 0)], Ok(()));
        check(vec![work(16, 16, 16, 0, 0)], Err(ChallengeError::Count { gpu: 0, value: 0 }));
        check(vec![work(16, 16, 16, 1_000_001, 0)], Err(ChallengeError::Count { gpu: 0, value: 1_000_001 }));
        check(vec![work(16, 16, 16, 1_000_000, 0)], Ok(()));
        check(vec![work(16, 16, 16, 1, 16)], Err(ChallengeError::Items { gpu: 0, value: 16 }));
        check(vec![work(16, 16, 16, 1, 48)], Err(ChallengeError::Items { gpu: 0, value: 48 }));
        check(vec![work(16, 16, 16, 1, 1 << 32)], Err(ChallengeError::Items { gpu: 0, value: 1 << 32 }));
        check(vec![work(16, 16, 16, 1, (1 << 32) - 32)], Ok(()));
        check(vec![work(16, 16, 16, 1, 32)], Ok(()));
        let e = with_gpus(vec![ok, ok, work(16, 16, 20, 1, 0)]).validate().unwrap_err();
        assert_eq!(e.to_string(), "gpus[2].k = 20: must be a multiple of 16 from 16 to 32768");
    }

    #[test]
    fn canonical_layout_follows_the_spec() {
        let mut c = with_gpus(vec![work(16, 32, 48, 5, 64), work(64, 80, 96, 7, 0)]);
        c.nonce = [2; 32];
        c.executor_key = [3; 32];
        c.validator_key = [4; 32];
        let bytes = c.canonical();
        assert_eq!(bytes.len(), 128 + 4 + 2 * 24);
        assert_eq!(&bytes[32..64], &[2; 32]);
        assert_eq!(&bytes[64..96], &[3; 32]);
        assert_eq!(&bytes[96..128], &[4; 32]);
        assert_eq!(&bytes[128..132], &2u32.to_le_bytes());
        assert_eq!(&bytes[132..148], &[16, 0, 0, 0, 32, 0, 0, 0, 48, 0, 0, 0, 5, 0, 0, 0]);
        assert_eq!(&bytes[148..156], &64u64.to_le_bytes());
        assert_eq!(&bytes[156..160], &64u32.to_le_bytes());
    }

    #[test]
    fn plain_mode_is_one_gpu_with_zero_keys() {
        let c = Challenge::plain(0x0102, 256, 1000, 64);
        assert_eq!(&c.seed[..3], &[2, 1, 0]);
        assert_eq!(c.seed[8..], [0; 24]);
        assert_eq!((c.nonce, c.executor_key, c.validator_key), ([0; 32], [0; 32], [0; 32]));
        assert_eq!(c.gpus, vec![work(256, 256, 256, 1000, 64)]);
        c.validate().unwrap();
    }

    /// Every byte of the challenge reaches the master key, and every GPU gets its own keys.
    #[test]
    fn every_field_changes_the_master_and_gpus_get_distinct_keys() {
        let base = with_gpus(vec![work(16, 16, 16, 1, 32), work(16, 16, 16, 1, 32)]);
        let master = base.master();
        let mut variants = Vec::new();
        for i in 0..32 {
            for field in 0..4 {
                let mut c = base.clone();
                [&mut c.seed, &mut c.nonce, &mut c.executor_key, &mut c.validator_key][field][i] ^= 1;
                variants.push(c);
            }
        }
        for field in 0..5 {
            let mut c = base.clone();
            let w = &mut c.gpus[1];
            match field {
                0 => w.m = 32,
                1 => w.n = 32,
                2 => w.k = 32,
                3 => w.count = 2,
                _ => w.items = 64,
            }
            variants.push(c);
        }
        let mut fewer = base.clone();
        fewer.gpus.pop();
        variants.push(fewer);
        let mut masters: Vec<Hash> = variants.iter().map(Challenge::master).collect();
        masters.push(master);
        masters.sort_unstable();
        masters.dedup();
        assert_eq!(masters.len(), variants.len() + 1, "every change gives a new master");

        // Same work on both GPUs, different keys.
        let keys = base.gpu_keys();
        assert_eq!(keys.len(), 2);
        assert_ne!(keys[0].master_g, keys[1].master_g);
        for k in &keys {
            assert!(k.a != k.b && k.b != k.d && k.a != k.d, "{k:?}");
        }
        assert_ne!((keys[0].a, keys[0].b, keys[0].d), (keys[1].a, keys[1].b, keys[1].d));
        assert_ne!(keys[0].walk_key(&[0; 32]), keys[0].walk_key(&[1; 32]));
        assert_ne!(keys[0].walk_key(&[0; 32]), keys[1].walk_key(&[0; 32]));
    }

    #[test]
    fn challenges_read_from_json_refuse_unknown_fields() {
        let c = Challenge::plain(7, 16, 2, 32);
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Challenge>(&text).unwrap(), c);
        let extra = text.replacen("\"m\":16", "\"m\":16,\"extra\":1", 1);
        assert!(serde_json::from_str::<Challenge>(&extra).unwrap_err().to_string().contains("unknown field"));
    }
}
