//! What the prover and the validator exchange about the work: the commitment sent before the
//! sample is known, the sample, and the openings that answer it. Shared by `prove` and
//! `verify`, below both.

use serde::{Deserialize, Serialize};

use crate::merkle::{self, Hash};
use crate::params::{hex32, hex32_list};

/// What the prover commits to before it learns the sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commitment {
    #[serde(with = "hex32")]
    pub root: Hash,
    /// `R_p` for every product, in order.
    #[serde(with = "hex32_list")]
    pub product_roots: Vec<Hash>,
}

impl Commitment {
    /// The checksum the CLI prints: `hex(root)`.
    pub fn checksum(&self) -> String {
        hex::encode(self.root)
    }

    /// The root the product roots hash to.
    pub fn root_of(product_roots: &[Hash]) -> Hash {
        let leaves: Vec<Hash> =
            product_roots.iter().enumerate().map(|(p, r)| merkle::product_leaf(p as u32, r)).collect();
        merkle::root(&leaves)
    }
}

/// One sampled product: which, the random vector, which rows to open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductSample {
    pub index: u32,
    pub r: Vec<u32>,
    pub rows: Vec<u32>,
}

/// An opened row of `C_p` and its path to `R_p`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RowOpening {
    pub index: u32,
    pub values: Vec<i32>,
    #[serde(with = "hex32_list")]
    pub path: Vec<Hash>,
}

/// The prover's answer for one sampled product.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductOpening {
    pub index: u32,
    /// `C_p · r`.
    pub y: Vec<i64>,
    pub rows: Vec<RowOpening>,
}
