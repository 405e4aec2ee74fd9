//! RFC 6962 (Certificate Transparency) Merkle tree hashing over the audit records: leaf and
//! node hashes, the append-only frontier the writer keeps, roots of any prefix, inclusion
//! proofs and their verification (RFC 9162 section 2.1.3.2).
//!
//! leaf hash = SHA-256(0x00 || leaf), node hash = SHA-256(0x01 || left || right), the empty
//! tree's root = SHA-256(""). A tree of n leaves splits at the largest power of two below n,
//! which is the same as folding the perfect subtrees of the frontier from the right.
use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

pub fn empty_root() -> Hash {
    Sha256::digest(b"").into()
}

/// The right edge of an append-only tree: the roots of its perfect subtrees, largest first.
/// `size` leaves are summarised in at most 64 hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// (height, hash), heights strictly decreasing.
    nodes: Vec<(u8, Hash)>,
}

impl Frontier {
    pub fn new() -> Self {
        Frontier::default()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) {
        let mut cur = (0u8, leaf);
        while let Some(&(h, ref left)) = self.nodes.last() {
            if h != cur.0 {
                break;
            }
            cur = (h + 1, node_hash(left, &cur.1));
            self.nodes.pop();
        }
        self.nodes.push(cur);
        self.size += 1;
    }

    pub fn root(&self) -> Hash {
        let mut it = self.nodes.iter().rev();
        let Some(&(_, mut acc)) = it.next() else {
            return empty_root();
        };
        for (_, left) in it {
            acc = node_hash(left, &acc);
        }
        acc
    }

    /// Serialised form stored with the tree state: size (8 bytes BE), then per node its
    /// height (1 byte) and hash.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.nodes.len() * 33);
        out.extend_from_slice(&self.size.to_be_bytes());
        for (h, hash) in &self.nodes {
            out.push(*h);
            out.extend_from_slice(hash);
        }
        out
    }

    pub fn from_bytes(b: &[u8]) -> Option<Frontier> {
        if b.len() < 8 || !(b.len() - 8).is_multiple_of(33) {
            return None;
        }
        let size = u64::from_be_bytes(b[..8].try_into().ok()?);
        let mut nodes = Vec::new();
        for c in b[8..].chunks(33) {
            nodes.push((c[0], c[1..].try_into().ok()?));
        }
        // The heights must be exactly the set bits of size, largest first.
        let heights: Vec<u8> = (0..64u8).rev().filter(|i| size >> i & 1 == 1).collect();
        if nodes.iter().map(|n| n.0).collect::<Vec<_>>() != heights {
            return None;
        }
        Some(Frontier { size, nodes })
    }
}

/// Root of the whole list of leaf hashes.
pub fn root_of(leaves: &[Hash]) -> Hash {
    let mut f = Frontier::new();
    for l in leaves {
        f.push(*l);
    }
    f.root()
}

fn split(n: usize) -> usize {
    // Largest power of two strictly less than n (n >= 2).
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

fn subtree_root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&subtree_root(&leaves[..k]), &subtree_root(&leaves[k..]))
        }
    }
}

/// RFC 6962 `PATH(m, D[n])`: the audit path of leaf `index` in the tree of `leaves`.
pub fn inclusion_proof(index: usize, leaves: &[Hash]) -> Vec<Hash> {
    let mut out = Vec::new();
    path(index, leaves, &mut out);
    out
}

fn path(m: usize, d: &[Hash], out: &mut Vec<Hash>) {
    let n = d.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &d[..k], out);
        out.push(subtree_root(&d[k..]));
    } else {
        path(m - k, &d[k..], out);
        out.push(subtree_root(&d[..k]));
    }
}

/// Checks an inclusion proof (RFC 9162 2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// Every aligned perfect subtree of a list of leaves, level by level, for fast proofs
/// (O(log² n) per proof instead of O(n)).
pub struct ProofTree {
    levels: Vec<Vec<Hash>>,
}

impl ProofTree {
    pub fn new(leaves: Vec<Hash>) -> ProofTree {
        let mut levels = vec![leaves];
        while levels.last().is_some_and(|l| l.len() > 1) {
            let prev = levels.last().map(|l| l.as_slice()).unwrap_or(&[]);
            let next: Vec<Hash> = prev
                .chunks_exact(2)
                .map(|p| node_hash(&p[0], &p[1]))
                .collect();
            levels.push(next);
        }
        ProofTree { levels }
    }

    pub fn len(&self) -> usize {
        self.levels[0].len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels[0].is_empty()
    }

    /// Root of the leaves `lo..hi`, where `lo` is aligned to the largest power of two not
    /// above `hi - lo` (always true for the ranges RFC 6962 splits into).
    fn range_root(&self, lo: usize, hi: usize) -> Hash {
        let n = hi - lo;
        if n == 0 {
            return empty_root();
        }
        if n.is_power_of_two() {
            let h = n.trailing_zeros() as usize;
            return self.levels[h][lo >> h];
        }
        let k = split(n);
        node_hash(&self.range_root(lo, lo + k), &self.range_root(lo + k, hi))
    }

    /// Root of the first `size` leaves.
    pub fn root(&self, size: usize) -> Hash {
        self.range_root(0, size)
    }

    /// Inclusion proof of leaf `m` in the tree of the first `size` leaves.
    pub fn proof(&self, m: usize, size: usize) -> Vec<Hash> {
        let mut out = Vec::new();
        self.path(m, 0, size, &mut out);
        out
    }

    fn path(&self, m: usize, lo: usize, hi: usize, out: &mut Vec<Hash>) {
        if hi - lo <= 1 {
            return;
        }
        let k = split(hi - lo);
        if m < lo + k {
            self.path(m, lo, lo + k, out);
            out.push(self.range_root(lo + k, hi));
        } else {
            self.path(m, lo + k, hi, out);
            out.push(self.range_root(lo, lo + k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(format!("leaf {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn frontier_matches_the_recursive_definition() {
        for n in 0..70 {
            let l = leaves(n);
            let mut f = Frontier::new();
            for x in &l {
                f.push(*x);
            }
            assert_eq!(f.root(), subtree_root(&l), "n={n}");
            let g = Frontier::from_bytes(&f.to_bytes()).unwrap();
            assert_eq!(g, f);
        }
    }

    #[test]
    fn known_answer_rfc6962() {
        // Empty tree and one-leaf tree over the empty string (RFC 6962 test vectors as used by
        // Certificate Transparency implementations).
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex::encode(leaf_hash(b"")),
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
        );
        let l: Vec<Hash> = [
            &b""[..],
            &[0x00],
            &[0x10],
            &[0x20, 0x21],
            &[0x30, 0x31],
            &[0x40, 0x41, 0x42, 0x43],
            &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            &[
                0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
                0x6e, 0x6f,
            ],
        ]
        .iter()
        .map(|d| leaf_hash(d))
        .collect();
        assert_eq!(
            hex::encode(root_of(&l)),
            "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
        );
    }

    #[test]
    fn proof_tree_matches_the_recursive_proofs() {
        let l = leaves(45);
        let t = ProofTree::new(l.clone());
        for size in 1..=45 {
            assert_eq!(t.root(size), root_of(&l[..size]));
            for m in 0..size {
                assert_eq!(
                    t.proof(m, size),
                    inclusion_proof(m, &l[..size]),
                    "m={m} n={size}"
                );
            }
        }
    }

    #[test]
    fn inclusion_proofs_verify_and_reject() {
        for n in 1..40usize {
            let l = leaves(n);
            let root = root_of(&l);
            for i in 0..n {
                let p = inclusion_proof(i, &l);
                assert!(
                    verify_inclusion(i as u64, n as u64, &l[i], &p, &root),
                    "n={n} i={i}"
                );
                if n > 1 {
                    assert!(!verify_inclusion(
                        ((i + 1) % n) as u64,
                        n as u64,
                        &l[i],
                        &p,
                        &root
                    ));
                    let mut bad = p.clone();
                    bad[0][0] ^= 1;
                    assert!(!verify_inclusion(i as u64, n as u64, &l[i], &bad, &root));
                }
            }
        }
    }
}
