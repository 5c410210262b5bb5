//! Which partition a key belongs to: the index, not the shelf.
//!
//! COURSE.md (H3, data distribution) separates two questions: which shard a
//! piece of data belongs to (the index) and which machine keeps that shard
//! (the shelf). zongheng answers the first with a fixed number of partitions P,
//! chosen when the cluster is created, and a hash:
//!
//! ```text
//! partition(key) = xxh3_64(key) mod P
//! ```
//!
//! `xxh3_64` is XXH3's 64-bit hash with its default secret and seed 0, as
//! specified by the xxHash project; any client in any language can compute a
//! key's partition. Because P never changes, plain `mod` is stable; the
//! instability that hash-mod-N is known for comes from changing N, which is
//! the shelf's problem and is solved by the consistent-hash [`ring`](crate::ring).
//!
//! Hash partitioning spreads sequential keys evenly but scatters ranges: a
//! scan over a prefix asks every partition and merges the answers in key order.

/// A partition number, `0..P`.
pub type PartitionId = u32;

/// Partitions a cluster gets when none are asked for.
pub const PARTITIONS_DEFAULT: u32 = 32;

/// Most partitions a cluster may have. Each partition is a Raft group with a
/// replica on R nodes; beyond a few thousand groups the heartbeats alone
/// would dominate a small cluster's network.
pub const PARTITIONS_MAX: u32 = 4096;

/// The partition of `key` among `partitions` (which must be 1..=[`PARTITIONS_MAX`]).
pub fn partition_of(key: &[u8], partitions: u32) -> PartitionId {
    assert!(
        (1..=PARTITIONS_MAX).contains(&partitions),
        "partition count {partitions} outside 1..={PARTITIONS_MAX}"
    );
    (xxhash_rust::xxh3::xxh3_64(key) % u64::from(partitions)) as PartitionId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_the_specified_xxh3() {
        // XXH3_64bits("") and XXH3_64bits("a") from the xxHash reference
        // implementation: if these move, every stored key moves with them.
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2D06_8005_38D3_94C2);
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b"a"), 0xE6C6_32B6_1E96_4E1F);
        assert_eq!(partition_of(b"", 32), (0x2D06_8005_38D3_94C2u64 % 32) as u32);
    }

    #[test]
    fn sequential_keys_spread_evenly() {
        let partitions = 32;
        let keys = 64_000;
        let mut counts = vec![0u32; partitions as usize];
        for i in 0..keys {
            counts[partition_of(format!("user{i:08}").as_bytes(), partitions) as usize] += 1;
        }
        let mean = keys as f64 / f64::from(partitions);
        for (partition, &count) in counts.iter().enumerate() {
            let deviation = (f64::from(count) - mean).abs() / mean;
            assert!(
                deviation < 0.05,
                "partition {partition} holds {count} keys, mean {mean}"
            );
        }
    }

    #[test]
    fn one_partition_takes_every_key() {
        assert_eq!(partition_of(b"anything", 1), 0);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn zero_partitions_is_a_bug() {
        partition_of(b"k", 0);
    }
}
