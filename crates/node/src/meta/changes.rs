//! The keys each revision changed, packed: the index watchers replay events
//! from.
//!
//! A write transaction lists the keys it changed in the order it applied them
//! (etcd's sub-revision order). Kept as a `BTreeMap<i64, Vec<Vec<u8>>>`, that
//! costs about 130 bytes of heap per revision (a share of a map node and two
//! allocations with their headers) for what is usually one short key, which
//! made it the largest part of the meta store's memory per historical
//! revision. [`ChangeLog`] keeps the keys of every retained revision in one
//! byte buffer, each behind a LEB128 length, and one end offset per revision:
//! 8 bytes per revision plus the keys and their 1-to-3-byte lengths.
//!
//! Revisions are dense (from the compaction point on, every revision changed
//! at least one key), so a revision's slot is found by subtraction; a revision
//! that changed nothing, should one ever be pushed past, gets an empty slot
//! and is skipped when reading. Compaction drops a prefix of revisions; the
//! bytes they used are given back once they are more than half the buffer, so
//! the work per dropped revision stays constant on average.
//!
//! Two logs are equal, and serialize the same, when they list the same keys
//! at the same revisions, however their buffers are laid out. The serialized
//! form is a map from revision to its list of keys, as the `BTreeMap` was.

use std::collections::VecDeque;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Revision -> keys changed in it (see the module doc).
#[derive(Clone, Default)]
pub struct ChangeLog {
    /// The revision of `ends[0]`.
    first: i64,
    /// For each retained revision, from `first` on: where its keys end, as an
    /// offset counted over every byte ever appended.
    ends: VecDeque<u64>,
    /// Where the keys of revision `first` start (same counting).
    start: u64,
    /// The count of bytes dropped from the front of `bytes`.
    base: u64,
    /// Length-prefixed keys; the part before `start - base` is dead.
    bytes: Vec<u8>,
}

impl ChangeLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last revision with a slot, if any.
    fn last(&self) -> Option<i64> {
        (!self.ends.is_empty()).then(|| self.first + self.ends.len() as i64 - 1)
    }

    fn end(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }

    /// Record that `revision` changed `key`, after the keys it already
    /// changed. Revisions come in order: `revision` is at least the last one
    /// pushed.
    pub fn push(&mut self, revision: i64, key: &[u8]) {
        match self.last() {
            None => {
                self.first = revision;
                self.start = self.end();
                self.ends.push_back(self.start);
            }
            Some(last) => {
                assert!(revision >= last, "revision {revision} recorded after revision {last}");
                let end = self.end();
                for _ in last..revision {
                    self.ends.push_back(end);
                }
            }
        }
        write_length(&mut self.bytes, key.len());
        self.bytes.extend_from_slice(key);
        let end = self.end();
        *self.ends.back_mut().expect("a slot for the revision") = end;
    }

    /// Record that `revision` changed each of `keys`, in order.
    pub fn extend<'a>(&mut self, revision: i64, keys: impl IntoIterator<Item = &'a [u8]>) {
        for key in keys {
            self.push(revision, key);
        }
    }

    /// The revisions in `from..=to` that changed something, in order, each
    /// with its keys in the order the write applied them.
    pub fn range(&self, from: i64, to: i64) -> impl Iterator<Item = (i64, Keys<'_>)> + '_ {
        let last = self.last().unwrap_or(self.first - 1);
        let from = from.max(self.first);
        let to = to.min(last);
        (from..=to).filter_map(move |revision| {
            let slot = (revision - self.first) as usize;
            let start = if slot == 0 { self.start } else { self.ends[slot - 1] };
            let end = self.ends[slot];
            (end > start).then(|| {
                let from = (start - self.base) as usize;
                let to = (end - self.base) as usize;
                (
                    revision,
                    Keys {
                        bytes: &self.bytes[from..to],
                    },
                )
            })
        })
    }

    /// Forget every revision below `revision` (compaction).
    pub fn retain_from(&mut self, revision: i64) {
        if self.ends.is_empty() || revision <= self.first {
            return;
        }
        let drop = ((revision - self.first) as usize).min(self.ends.len());
        self.start = self.ends[drop - 1];
        self.ends.drain(..drop);
        self.first += drop as i64;
        let dead = (self.start - self.base) as usize;
        if dead > self.bytes.len() / 2 {
            self.bytes.drain(..dead);
            self.base = self.start;
            if self.bytes.capacity() > 2 * self.bytes.len().max(4096) {
                self.bytes.shrink_to(self.bytes.len().max(4096));
            }
        }
        if self.ends.is_empty() {
            // Nothing retained: the next push starts afresh.
            self.first = revision;
        }
    }

    /// Revisions with a slot (a measure of size).
    pub fn revisions(&self) -> usize {
        self.ends.len()
    }
}

/// The keys one revision changed.
#[derive(Clone, Copy)]
pub struct Keys<'a> {
    bytes: &'a [u8],
}

impl<'a> Iterator for Keys<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.bytes.is_empty() {
            return None;
        }
        let (length, used) = read_length(self.bytes);
        let key = &self.bytes[used..used + length];
        self.bytes = &self.bytes[used + length..];
        Some(key)
    }
}

fn write_length(bytes: &mut Vec<u8>, mut length: usize) {
    loop {
        let low = (length & 0x7f) as u8;
        length >>= 7;
        if length == 0 {
            bytes.push(low);
            return;
        }
        bytes.push(low | 0x80);
    }
}

/// A length written by [`write_length`] and the bytes it took. The buffer
/// only ever holds what `push` wrote, so it is well formed.
fn read_length(bytes: &[u8]) -> (usize, usize) {
    let mut length = 0usize;
    for (index, byte) in bytes.iter().enumerate() {
        length |= usize::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            return (length, index + 1);
        }
    }
    unreachable!("a length prefix ends within the buffer")
}

impl PartialEq for ChangeLog {
    fn eq(&self, other: &Self) -> bool {
        let mine = self.range(i64::MIN, i64::MAX);
        let theirs = other.range(i64::MIN, i64::MAX);
        mine.map(|(revision, keys)| (revision, keys.bytes))
            .eq(theirs.map(|(revision, keys)| (revision, keys.bytes)))
    }
}

impl Eq for ChangeLog {}

impl fmt::Debug for ChangeLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.range(i64::MIN, i64::MAX)
                    .map(|(revision, keys)| (revision, keys.map(String::from_utf8_lossy).collect::<Vec<_>>())),
            )
            .finish()
    }
}

/// One revision's keys, serialized as a list of byte strings: the encoding a
/// `Vec<Vec<u8>>` has, so the format is the one the `BTreeMap` had.
struct KeyList<'a>(Keys<'a>);

impl Serialize for KeyList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Formats such as bincode need the length first.
        let keys: Vec<&[u8]> = self.0.collect();
        keys.serialize(serializer)
    }
}

impl Serialize for ChangeLog {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let count = self.range(i64::MIN, i64::MAX).count();
        let mut map = serializer.serialize_map(Some(count))?;
        for (revision, keys) in self.range(i64::MIN, i64::MAX) {
            map.serialize_entry(&revision, &KeyList(keys))?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ChangeLog {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LogVisitor;

        impl<'de> Visitor<'de> for LogVisitor {
            type Value = ChangeLog;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map from revision to the keys it changed, in revision order")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChangeLog, A::Error> {
                let mut log = ChangeLog::new();
                while let Some((revision, keys)) = map.next_entry::<i64, Vec<Vec<u8>>>()? {
                    if log.last().is_some_and(|last| revision <= last) {
                        return Err(serde::de::Error::custom(format!(
                            "revision {revision} listed out of order"
                        )));
                    }
                    for key in &keys {
                        log.push(revision, key);
                    }
                }
                Ok(log)
            }
        }

        deserializer.deserialize_map(LogVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::raft::codec;

    type Model = BTreeMap<i64, Vec<Vec<u8>>>;

    fn listed(log: &ChangeLog, from: i64, to: i64) -> Vec<(i64, Vec<Vec<u8>>)> {
        log.range(from, to)
            .map(|(revision, keys)| (revision, keys.map(<[u8]>::to_vec).collect()))
            .collect()
    }

    fn modelled(model: &Model, from: i64, to: i64) -> Vec<(i64, Vec<Vec<u8>>)> {
        if from > to {
            return Vec::new();
        }
        model.range(from..=to).map(|(r, keys)| (*r, keys.clone())).collect()
    }

    /// A small deterministic generator (no dependency for one test).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % bound
        }
    }

    #[test]
    fn answers_as_the_map_it_replaces_through_pushes_and_compactions() {
        let mut random = Lcg(7);
        let mut log = ChangeLog::new();
        let mut model = Model::new();
        let mut revision = 2;
        let mut compacted = 0;
        for step in 0..20_000 {
            match random.below(10) {
                0 if revision > compacted + 1 => {
                    compacted += random.below((revision - compacted) as u64) as i64;
                    log.retain_from(compacted);
                    model = model.split_off(&compacted);
                }
                _ => {
                    // Mostly one key per revision, sometimes a transaction's
                    // several, of lengths up to past one length byte.
                    let keys = if random.below(8) == 0 { 1 + random.below(4) } else { 1 };
                    for index in 0..keys {
                        let length = if random.below(50) == 0 {
                            130 + random.below(300)
                        } else {
                            random.below(24)
                        };
                        let key: Vec<u8> = (0..length).map(|byte| (byte + step + index) as u8).collect();
                        log.push(revision, &key);
                        model.entry(revision).or_default().push(key);
                    }
                    revision += 1;
                }
            }
            if step % 97 == 0 {
                let from = random.below(revision as u64 + 2) as i64 - 1;
                let to = from + random.below(50) as i64;
                assert_eq!(listed(&log, from, to), modelled(&model, from, to), "step {step}");
            }
        }
        assert_eq!(listed(&log, i64::MIN, i64::MAX), modelled(&model, i64::MIN, i64::MAX));
        assert_eq!(log.revisions(), model.len());
        // Dead bytes are given back: the buffer holds at most about twice what
        // is retained.
        let live: usize = model.values().flatten().map(|key| key.len() + 2).sum();
        assert!(
            log.bytes.len() <= 2 * live + 4096,
            "{} bytes for {live} live",
            log.bytes.len()
        );
    }

    #[test]
    fn serializes_as_the_map_did_and_reads_back_equal() {
        let mut log = ChangeLog::new();
        let mut model = Model::new();
        for (revision, key) in [(2, "a"), (3, "b"), (3, "c"), (4, "a"), (9, "z")] {
            log.push(revision, key.as_bytes());
            model.entry(revision).or_default().push(key.as_bytes().to_vec());
        }
        log.retain_from(3);
        model = model.split_off(&3);
        let bytes = codec::encode(&log).unwrap();
        assert_eq!(bytes, codec::encode(&model).unwrap(), "the same encoding");
        let back: ChangeLog = codec::decode(&bytes).unwrap();
        assert_eq!(back, log);
        assert_eq!(listed(&back, 0, 100), modelled(&model, 0, 100));
        // A revision with nothing (5 to 8 above) is skipped, not listed empty.
        assert_eq!(listed(&log, 5, 8), vec![]);
        // Out of order input is refused, not mis-read (a sequence of pairs
        // encodes as a map does).
        let unordered = vec![(4i64, vec![b"x".to_vec()]), (3i64, vec![b"y".to_vec()])];
        let bytes = codec::encode(&unordered).unwrap();
        assert!(codec::decode::<ChangeLog>(&bytes).is_err());
    }

    #[test]
    fn compacting_everything_then_pushing_starts_afresh() {
        let mut log = ChangeLog::new();
        log.push(5, b"k");
        log.retain_from(10);
        assert_eq!(log.revisions(), 0);
        log.push(12, b"m");
        assert_eq!(listed(&log, 0, 100), vec![(12, vec![b"m".to_vec()])]);
    }
}
