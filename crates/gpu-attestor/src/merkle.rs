//! Merkle trees (GPOW.md, "Primitives"): `node(l, r) = SHA-256(0x01 ‖ l ‖ r)`; a level with an odd
//! count carries its last node up unchanged, so a path has no sibling at such a level.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// `SHA-256(0x01 ‖ l ‖ r)`.
pub fn node(l: &Hash, r: &Hash) -> Hash {
    Sha256::new().chain_update([0x01]).chain_update(l).chain_update(r).finalize().into()
}

/// The Merkle root of `leaves` (at least one).
pub fn root(leaves: &[Hash]) -> Hash {
    assert!(!leaves.is_empty(), "a Merkle tree needs a leaf");
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        level = next_level(&level);
    }
    level[0]
}

fn next_level(level: &[Hash]) -> Vec<Hash> {
    level.chunks(2).map(|pair| if pair.len() == 2 { node(&pair[0], &pair[1]) } else { pair[0] }).collect()
}

/// A whole tree kept in memory, for provers that open many paths of one tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// The leaves first, the root last.
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// The tree of `leaves` (at least one).
    pub fn new(leaves: Vec<Hash>) -> Self {
        assert!(!leaves.is_empty(), "a Merkle tree needs a leaf");
        let mut levels = vec![leaves];
        while let Some(last) = levels.last().filter(|l| l.len() > 1) {
            levels.push(next_level(last));
        }
        Self { levels }
    }

    pub fn root(&self) -> Hash {
        self.levels[self.levels.len() - 1][0]
    }

    pub fn leaves(&self) -> usize {
        self.levels[0].len()
    }

    /// Siblings from leaf `index` up, as [`path`] gives them.
    pub fn path(&self, index: usize) -> Vec<Hash> {
        let mut i = index;
        let mut out = Vec::with_capacity(self.levels.len());
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(s) = level.get(i ^ 1) {
                out.push(*s);
            }
            i /= 2;
        }
        out
    }
}

/// Siblings from leaf `index` up to the root, skipping levels where the node is carried.
pub fn path(leaves: &[Hash], index: usize) -> Vec<Hash> {
    let mut path = Vec::new();
    let mut level = leaves.to_vec();
    let mut i = index;
    while level.len() > 1 {
        let sibling = i ^ 1;
        if sibling < level.len() {
            path.push(level[sibling]);
        }
        level = next_level(&level);
        i /= 2;
    }
    path
}

/// The root that `leaf` at `index` of `count` leaves reaches through `path`; None when the
/// path has the wrong length.
pub fn root_from_path(leaf: Hash, index: usize, count: usize, path: &[Hash]) -> Option<Hash> {
    if index >= count {
        return None;
    }
    let mut hash = leaf;
    let (mut i, mut width, mut used) = (index, count, 0);
    while width > 1 {
        let sibling = i ^ 1;
        if sibling < width {
            let s = path.get(used)?;
            used += 1;
            hash = if i % 2 == 0 { node(&hash, s) } else { node(s, &hash) };
        }
        i /= 2;
        width = width.div_ceil(2);
    }
    (used == path.len()).then_some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| Sha256::digest((i as u32).to_le_bytes()).into()).collect()
    }

    #[test]
    fn every_path_of_every_shape_reaches_the_root() {
        for count in 1..=17 {
            let l = leaves(count);
            let r = root(&l);
            for index in 0..count {
                let p = path(&l, index);
                let tree = Tree::new(l.clone());
                assert_eq!((tree.path(index), tree.root(), tree.leaves()), (p.clone(), r, count));
                assert_eq!(root_from_path(l[index], index, count, &p), Some(r), "count {count} index {index}");
                // A wrong leaf, index or path length does not reach the root.
                let mut other = l[index];
                other[0] ^= 1;
                assert_ne!(root_from_path(other, index, count, &p), Some(r));
                if count > 1 {
                    assert_ne!(root_from_path(l[index], (index + 1) % count, count, &p), Some(r));
                    let mut longer = p.clone();
                    longer.push([0; 32]);
                    assert_eq!(root_from_path(l[index], index, count, &longer), None);
                }
            }
        }
    }

    #[test]
    fn odd_levels_carry_the_last_node() {
        let l = leaves(3);
        assert_eq!(root(&l), node(&node(&l[0], &l[1]), &l[2]));
        assert_eq!(root(&l[..1]), l[0]);
    }
}
