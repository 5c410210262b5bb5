//! The two small data structures the searches lean on: a fixed-size bit set
//! (which operations are linearized) and a fast, non-cryptographic hasher for
//! the memo tables (the keys are our own data, so hash flooding is no
//! concern, and SipHash would cost a third of the search's time).

use std::hash::{BuildHasherDefault, Hasher};

/// A set of small integers, as many bits as operations.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub(crate) struct Bitset {
    words: Box<[u64]>,
}

impl Bitset {
    pub(crate) fn new(bits: usize) -> Self {
        Self {
            words: vec![0; bits.div_ceil(64)].into_boxed_slice(),
        }
    }

    pub(crate) fn insert(&mut self, bit: usize) {
        self.words[bit / 64] |= 1 << (bit % 64);
    }

    pub(crate) fn remove(&mut self, bit: usize) {
        self.words[bit / 64] &= !(1 << (bit % 64));
    }

    pub(crate) fn contains(&self, bit: usize) -> bool {
        self.words[bit / 64] & (1 << (bit % 64)) != 0
    }
}

/// The Fx hash (as in rustc): one multiply and rotate per word.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        for &byte in chunks.remainder() {
            self.add(u64::from(byte));
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

pub(crate) type FxBuildHasher = BuildHasherDefault<FxHasher>;
pub(crate) type FxHashSet<T> = std::collections::HashSet<T, FxBuildHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_go_in_and_out() {
        let mut set = Bitset::new(130);
        for bit in [0, 63, 64, 129] {
            assert!(!set.contains(bit));
            set.insert(bit);
            assert!(set.contains(bit));
        }
        set.remove(64);
        assert!(!set.contains(64) && set.contains(63) && set.contains(129));
    }
}
