//! [`Key`]: every key a node stores, as a Rust enum with an order-preserving byte
//! encoding (STYLE practice 8), so no code builds key bytes by hand.
//!
//! ## Encoding
//!
//! A one-byte tag per variant, then the fields in order: integers as 8 big-endian
//! bytes, and the one variable-length field (the state machine's key, the local
//! name) last and raw, without a length or terminator. Because of that:
//!
//! * bytewise order of the encodings equals the derived `Ord` of `Key`: by variant,
//!   then group, then index or key bytes;
//! * all log entries of one group are contiguous and in index order, so truncating a
//!   log suffix or purging a prefix is one range delete
//!   ([`Key::raft_log_range_from`], [`Key::raft_log_range_upto`]);
//! * all state-machine keys of one group are contiguous.
//!
//! Tags are part of the on-disk format: never change or reuse one. A new variant gets
//! a new tag, after the existing ones.

use std::cmp::Ordering;

use crate::error::StorageError;

const TAG_RAFT_VOTE: u8 = 0x01;
const TAG_RAFT_COMMITTED: u8 = 0x02;
const TAG_RAFT_PURGED: u8 = 0x03;
const TAG_RAFT_LOG: u8 = 0x04;
const TAG_SNAPSHOT_META: u8 = 0x05;
const TAG_SNAPSHOT_CHUNK: u8 = 0x06;
const TAG_STATE_MACHINE: u8 = 0x07;
const TAG_LOCAL: u8 = 0x08;

/// Bytes of one encoded integer field.
const U64_BYTES: usize = 8;

/// A key in a node's storage engine. `Ord` (derived) is the order of the encodings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// The Raft vote (term, candidate, committed flag) of a group.
    RaftVote {
        /// The Raft group (0 is `meta`).
        group: u64,
    },
    /// The last known committed log id of a group.
    RaftCommitted {
        /// The Raft group.
        group: u64,
    },
    /// The last purged log id of a group (entries up to it are gone).
    RaftPurged {
        /// The Raft group.
        group: u64,
    },
    /// One Raft log entry.
    RaftLog {
        /// The Raft group.
        group: u64,
        /// The entry's log index.
        index: u64,
    },
    /// Metadata of a group's current snapshot.
    SnapshotMeta {
        /// The Raft group.
        group: u64,
    },
    /// One chunk of the data of a group's current snapshot. Chunks keep each
    /// value under the engine's value limit however large the snapshot grows.
    SnapshotChunk {
        /// The Raft group.
        group: u64,
        /// The chunk's position, from 0.
        chunk: u32,
    },
    /// A key of a group's applied state machine.
    StateMachine {
        /// The Raft group.
        group: u64,
        /// The state machine's own key, ordered bytewise.
        key: Vec<u8>,
    },
    /// Node-local bookkeeping outside any group (node id, format version).
    Local {
        /// The record's name.
        name: String,
    },
}

impl Key {
    /// The order-preserving byte encoding.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Key::RaftVote { group } => tagged_u64(TAG_RAFT_VOTE, *group),
            Key::RaftCommitted { group } => tagged_u64(TAG_RAFT_COMMITTED, *group),
            Key::RaftPurged { group } => tagged_u64(TAG_RAFT_PURGED, *group),
            Key::RaftLog { group, index } => {
                let mut bytes = tagged_u64(TAG_RAFT_LOG, *group);
                bytes.extend_from_slice(&index.to_be_bytes());
                bytes
            }
            Key::SnapshotMeta { group } => tagged_u64(TAG_SNAPSHOT_META, *group),
            Key::SnapshotChunk { group, chunk } => {
                let mut bytes = tagged_u64(TAG_SNAPSHOT_CHUNK, *group);
                bytes.extend_from_slice(&chunk.to_be_bytes());
                bytes
            }
            Key::StateMachine { group, key } => {
                let mut bytes = tagged_u64(TAG_STATE_MACHINE, *group);
                bytes.extend_from_slice(key);
                bytes
            }
            Key::Local { name } => {
                let mut bytes = Vec::with_capacity(1 + name.len());
                bytes.push(TAG_LOCAL);
                bytes.extend_from_slice(name.as_bytes());
                bytes
            }
        }
    }

    /// Decodes bytes produced by [`Key::encode`]; anything else is
    /// [`StorageError::BadKey`].
    pub fn decode(bytes: &[u8]) -> Result<Key, StorageError> {
        let Some((&tag, rest)) = bytes.split_first() else {
            return Err(bad_key("empty key".to_string()));
        };
        let key = match tag {
            TAG_RAFT_VOTE => Key::RaftVote {
                group: exact_u64(rest, "RaftVote")?,
            },
            TAG_RAFT_COMMITTED => Key::RaftCommitted {
                group: exact_u64(rest, "RaftCommitted")?,
            },
            TAG_RAFT_PURGED => Key::RaftPurged {
                group: exact_u64(rest, "RaftPurged")?,
            },
            TAG_RAFT_LOG => {
                if rest.len() != 2 * U64_BYTES {
                    return Err(bad_length("RaftLog", 2 * U64_BYTES, rest.len()));
                }
                let (group, index) = rest.split_at(U64_BYTES);
                Key::RaftLog {
                    group: be_u64(group),
                    index: be_u64(index),
                }
            }
            TAG_SNAPSHOT_META => Key::SnapshotMeta {
                group: exact_u64(rest, "SnapshotMeta")?,
            },
            TAG_SNAPSHOT_CHUNK => {
                const CHUNK_KEY_BYTES: usize = U64_BYTES + 4;
                if rest.len() != CHUNK_KEY_BYTES {
                    return Err(bad_length("SnapshotChunk", CHUNK_KEY_BYTES, rest.len()));
                }
                let (group, chunk) = rest.split_at(U64_BYTES);
                Key::SnapshotChunk {
                    group: be_u64(group),
                    chunk: u32::from_be_bytes(chunk.try_into().expect("length checked")),
                }
            }
            TAG_STATE_MACHINE => {
                if rest.len() < U64_BYTES {
                    return Err(bad_key(format!(
                        "StateMachine key needs at least {U64_BYTES} bytes after its tag, found {}",
                        rest.len()
                    )));
                }
                let (group, key) = rest.split_at(U64_BYTES);
                Key::StateMachine {
                    group: be_u64(group),
                    key: key.to_vec(),
                }
            }
            TAG_LOCAL => Key::Local {
                name: String::from_utf8(rest.to_vec())
                    .map_err(|error| bad_key(format!("Local key name is not UTF-8: {error}")))?,
            },
            unknown => return Err(bad_key(format!("unknown key tag {unknown:#04x}"))),
        };
        Ok(key)
    }

    /// `[start, end)` covering every log entry of `group`, in index order.
    pub fn raft_log_range(group: u64) -> (Vec<u8>, Vec<u8>) {
        Self::raft_log_range_from(group, 0)
    }

    /// `[start, end)` covering the log entries of `group` with index `>= index`: the
    /// range to delete when truncating a conflicting suffix.
    pub fn raft_log_range_from(group: u64, index: u64) -> (Vec<u8>, Vec<u8>) {
        (Key::RaftLog { group, index }.encode(), raft_log_group_end(group))
    }

    /// `[start, end)` covering every snapshot chunk of `group`.
    pub fn snapshot_chunk_range(group: u64) -> (Vec<u8>, Vec<u8>) {
        let start = Key::SnapshotChunk { group, chunk: 0 }.encode();
        let mut end = tagged_u64(TAG_SNAPSHOT_CHUNK, group);
        end.extend_from_slice(&[0xFF; 5]);
        (start, end)
    }

    /// `[start, end)` ranges that together cover every key of `group`: its
    /// vote, committed and purged log ids, log, snapshot and state machine.
    /// Deleting them all forgets the group, as if this node never held it.
    pub fn group_ranges(group: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        [
            TAG_RAFT_VOTE,
            TAG_RAFT_COMMITTED,
            TAG_RAFT_PURGED,
            TAG_RAFT_LOG,
            TAG_SNAPSHOT_META,
            TAG_SNAPSHOT_CHUNK,
            TAG_STATE_MACHINE,
        ]
        .into_iter()
        .map(|tag| {
            let start = tagged_u64(tag, group);
            let end = prefix_end(&start);
            (start, end)
        })
        .collect()
    }

    /// `[start, end)` covering the vote keys of groups `first_group..`: a
    /// scan of it lists the groups that ever voted or were voted for here.
    pub fn raft_vote_range_from(first_group: u64) -> (Vec<u8>, Vec<u8>) {
        (tagged_u64(TAG_RAFT_VOTE, first_group), vec![TAG_RAFT_VOTE + 1])
    }

    /// `[start, end)` covering the log entries of `group` with index `<=
    /// index_inclusive`: the range to delete when purging a prefix.
    pub fn raft_log_range_upto(group: u64, index_inclusive: u64) -> (Vec<u8>, Vec<u8>) {
        let start = Key::RaftLog { group, index: 0 }.encode();
        let end = match index_inclusive.checked_add(1) {
            Some(index) => Key::RaftLog { group, index }.encode(),
            None => raft_log_group_end(group),
        };
        (start, end)
    }
}

/// The first key after every log entry of `group`: the log prefix of `group` with its
/// last non-0xFF byte incremented. The tag is never 0xFF, so this always exists.
fn raft_log_group_end(group: u64) -> Vec<u8> {
    let mut end = tagged_u64(TAG_RAFT_LOG, group);
    while end.last() == Some(&0xFF) {
        end.pop();
    }
    let last = end.last_mut().expect("the tag byte is never 0xFF");
    *last += 1;
    debug_assert_eq!(
        end.as_slice()
            .cmp(Key::RaftLog { group, index: u64::MAX }.encode().as_slice()),
        Ordering::Greater
    );
    end
}

/// The first byte string after every string that starts with `prefix`
/// (`prefix` with its last non-0xFF byte incremented and the rest dropped).
/// Every caller's prefix starts with a tag below 0xFF, so it exists.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last != 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    unreachable!("key prefixes start with a tag below 0xFF")
}

fn tagged_u64(tag: u8, value: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(1 + 2 * U64_BYTES);
    bytes.push(tag);
    bytes.extend_from_slice(&value.to_be_bytes());
    bytes
}

fn exact_u64(rest: &[u8], variant: &str) -> Result<u64, StorageError> {
    if rest.len() != U64_BYTES {
        return Err(bad_length(variant, U64_BYTES, rest.len()));
    }
    Ok(be_u64(rest))
}

/// `bytes` must be exactly [`U64_BYTES`] long (checked by the callers).
fn be_u64(bytes: &[u8]) -> u64 {
    let array: [u8; U64_BYTES] = bytes.try_into().expect("callers pass exactly 8 bytes");
    u64::from_be_bytes(array)
}

fn bad_length(variant: &str, expected: usize, found: usize) -> StorageError {
    bad_key(format!(
        "{variant} key needs {expected} bytes after its tag, found {found}"
    ))
}

fn bad_key(detail: String) -> StorageError {
    StorageError::BadKey { detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64: a tiny deterministic generator, so the property test needs no crate
    /// and replays exactly.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound
        }

        /// Mostly small numbers and edge values, so that equal groups and neighbouring
        /// indexes (the interesting comparisons) come up often.
        fn number(&mut self) -> u64 {
            match self.below(6) {
                0 => [0, 1, 255, 256, u64::MAX - 1, u64::MAX][self.below(6) as usize],
                1 => self.next(),
                2 => self.below(1 << 16),
                _ => self.below(4),
            }
        }

        fn bytes(&mut self) -> Vec<u8> {
            let alphabet = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF, b'a', b'b'];
            (0..self.below(5))
                .map(|_| alphabet[self.below(alphabet.len() as u64) as usize])
                .collect()
        }

        fn key(&mut self) -> Key {
            let group = self.number();
            match self.below(8) {
                0 => Key::RaftVote { group },
                1 => Key::RaftCommitted { group },
                2 => Key::RaftPurged { group },
                3 => Key::RaftLog {
                    group,
                    index: self.number(),
                },
                4 => Key::SnapshotMeta { group },
                5 => Key::SnapshotChunk {
                    group,
                    chunk: self.number() as u32,
                },
                6 => Key::StateMachine {
                    group,
                    key: self.bytes(),
                },
                _ => Key::Local {
                    name: ["", "a", "ab", "b", "node_id", "é", "\u{0}"][self.below(7) as usize].to_string(),
                },
            }
        }
    }

    #[test]
    fn encoding_order_is_key_order_and_decode_inverts_encode() {
        let mut rng = Rng(0x5EED);
        for _ in 0..20_000 {
            let a = rng.key();
            let b = rng.key();
            let (ea, eb) = (a.encode(), b.encode());
            assert_eq!(ea.cmp(&eb), a.cmp(&b), "{a:?} vs {b:?}");
            assert_eq!(Key::decode(&ea).unwrap(), a);
            assert_eq!(Key::decode(&eb).unwrap(), b);
        }
    }

    #[test]
    fn derived_order_is_variant_then_group_then_index() {
        let ordered = [
            Key::RaftVote { group: u64::MAX },
            Key::RaftCommitted { group: 0 },
            Key::RaftPurged { group: 0 },
            Key::RaftLog {
                group: 0,
                index: u64::MAX,
            },
            Key::RaftLog { group: 1, index: 0 },
            Key::RaftLog { group: 1, index: 1 },
            Key::RaftLog { group: 1, index: 256 },
            Key::SnapshotMeta { group: 0 },
            Key::SnapshotChunk { group: 0, chunk: 0 },
            Key::StateMachine {
                group: 0,
                key: vec![0xFF; 3],
            },
            Key::StateMachine { group: 1, key: vec![] },
            Key::StateMachine { group: 1, key: vec![0] },
            Key::Local { name: String::new() },
            Key::Local { name: "a".into() },
        ];
        for pair in ordered.windows(2) {
            assert!(pair[0] < pair[1], "{:?} < {:?}", pair[0], pair[1]);
            assert!(pair[0].encode() < pair[1].encode(), "{:?} < {:?}", pair[0], pair[1]);
        }
    }

    #[test]
    fn log_ranges_cover_exactly_their_entries() {
        let mut rng = Rng(7);
        for _ in 0..20_000 {
            let key = rng.key();
            let encoded = key.encode();
            let group = rng.number();
            let index = rng.number();
            let inside = |(start, end): (Vec<u8>, Vec<u8>)| {
                start.as_slice() <= encoded.as_slice() && encoded.as_slice() < end.as_slice()
            };
            let (is_log_of_group, log_index) = match key {
                Key::RaftLog { group: g, index: i } if g == group => (true, i),
                _ => (false, 0),
            };
            assert_eq!(inside(Key::raft_log_range(group)), is_log_of_group, "{key:?}");
            assert_eq!(
                inside(Key::raft_log_range_from(group, index)),
                is_log_of_group && log_index >= index,
                "{key:?} from {index}"
            );
            assert_eq!(
                inside(Key::raft_log_range_upto(group, index)),
                is_log_of_group && log_index <= index,
                "{key:?} upto {index}"
            );
        }
    }

    #[test]
    fn log_ranges_at_the_edges() {
        for group in [0, 1, 0xFF, u64::MAX - 1, u64::MAX] {
            let (start, end) = Key::raft_log_range(group);
            for index in [0, 1, u64::MAX] {
                let key = Key::RaftLog { group, index }.encode();
                assert!(start <= key && key < end, "group {group} index {index}");
            }
            for other in [
                Key::RaftPurged { group },
                Key::SnapshotMeta { group: 0 },
                Key::RaftLog {
                    group: group.wrapping_add(1),
                    index: 0,
                },
                Key::RaftLog {
                    group: group.wrapping_sub(1),
                    index: u64::MAX,
                },
            ] {
                let key = other.encode();
                assert!(!(start <= key && key < end), "{other:?} in log of {group}");
            }
            let (start, end) = Key::raft_log_range_upto(group, u64::MAX);
            assert_eq!((start, end), Key::raft_log_range(group));
        }
    }

    #[test]
    fn decode_rejects_malformed_keys() {
        let malformed: [&[u8]; 7] = [
            &[],
            &[0x00],
            &[0xFF, 1, 2],
            &[TAG_RAFT_VOTE, 0, 0, 0, 0, 0, 0, 0],
            &[TAG_RAFT_LOG, 0, 0, 0, 0, 0, 0, 0, 1],
            &[TAG_STATE_MACHINE, 1, 2, 3],
            &[TAG_LOCAL, 0xC3],
        ];
        for bytes in malformed {
            let error = Key::decode(bytes).unwrap_err();
            assert_eq!(error.code(), "STORAGE_BAD_KEY", "{bytes:?}");
        }
    }

    #[test]
    fn group_ranges_cover_every_key_of_the_group_and_nothing_else() {
        for group in [0, 1, 1_000, u64::MAX - 1, u64::MAX] {
            let mine = [
                Key::RaftVote { group },
                Key::RaftCommitted { group },
                Key::RaftPurged { group },
                Key::RaftLog { group, index: 0 },
                Key::RaftLog { group, index: u64::MAX },
                Key::SnapshotMeta { group },
                Key::SnapshotChunk { group, chunk: u32::MAX },
                Key::StateMachine {
                    group,
                    key: vec![0xFF; 9],
                },
            ];
            let neighbour = group.wrapping_add(1);
            let others = [
                Key::RaftVote { group: neighbour },
                Key::RaftLog {
                    group: neighbour,
                    index: 0,
                },
                Key::StateMachine {
                    group: neighbour,
                    key: vec![],
                },
                Key::Local {
                    name: "identity".into(),
                },
            ];
            let ranges = Key::group_ranges(group);
            let covered = |key: &Key| {
                let bytes = key.encode();
                ranges.iter().any(|(start, end)| *start <= bytes && bytes < *end)
            };
            for key in &mine {
                assert!(covered(key), "{key:?} is not covered for group {group}");
            }
            for key in &others {
                assert!(!covered(key), "{key:?} is covered for group {group}");
            }
        }
        let (start, end) = Key::raft_vote_range_from(1_000);
        let vote = Key::RaftVote { group: 1_001 }.encode();
        assert!(start <= vote && vote < end);
        assert!(Key::RaftVote { group: 999 }.encode() < start);
        assert!(Key::RaftCommitted { group: 0 }.encode() >= end);
    }
}
