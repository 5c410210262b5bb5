//! The event history of a run and what is derived from it: the events of a
//! range, and the owner of a lock or election prefix at each revision.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zongheng_proto::mvccpb::event::EventType;
use zongheng_proto::mvccpb::Event;

/// One watch event, as compared between watchers and the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// The revision it happened at (the key's mod revision).
    pub revision: i64,
    pub key: Vec<u8>,
    pub deleted: bool,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub lease: i64,
}

impl EventRecord {
    pub fn of(event: &Event) -> Self {
        let kv = event.kv.clone().unwrap_or_default();
        Self {
            revision: kv.mod_revision,
            key: kv.key,
            deleted: event.r#type == EventType::Delete as i32,
            value: kv.value,
            create_revision: kv.create_revision,
            lease: kv.lease,
        }
    }
}

impl std::fmt::Display for EventRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.deleted {
            write!(f, "@{} delete {}", self.revision, String::from_utf8_lossy(&self.key))
        } else {
            write!(
                f,
                "@{} put {}={} (created {}, lease {:x})",
                self.revision,
                String::from_utf8_lossy(&self.key),
                String::from_utf8_lossy(&self.value),
                self.create_revision,
                self.lease
            )
        }
    }
}

/// Whether `key` is in the watch range `key_start..range_end` (etcd's
/// conventions: an empty end is the single key, `[0]` is unbounded).
pub fn in_range(key: &[u8], start: &[u8], range_end: &[u8]) -> bool {
    if range_end.is_empty() {
        key == start
    } else if range_end == [0] {
        key >= start
    } else {
        key >= start && key < range_end
    }
}

/// The owner of a queue prefix: the key with the lowest create revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub value: Vec<u8>,
}

/// The owner of a prefix after each revision that changed it.
pub struct OwnerTimeline {
    changes: BTreeMap<i64, Option<Owner>>,
}

impl OwnerTimeline {
    /// Replay `events` (in revision order) for keys starting with `prefix`.
    pub fn build(events: &[EventRecord], prefix: &[u8]) -> Self {
        let mut live: BTreeMap<Vec<u8>, (i64, Vec<u8>)> = BTreeMap::new();
        let mut changes = BTreeMap::new();
        let mut index = 0;
        while index < events.len() {
            let revision = events[index].revision;
            let mut touched = false;
            while index < events.len() && events[index].revision == revision {
                let event = &events[index];
                if event.key.starts_with(prefix) {
                    touched = true;
                    if event.deleted {
                        live.remove(&event.key);
                    } else {
                        live.insert(event.key.clone(), (event.create_revision, event.value.clone()));
                    }
                }
                index += 1;
            }
            if touched {
                let owner = live
                    .iter()
                    .min_by_key(|(_, (create_revision, _))| *create_revision)
                    .map(|(key, (create_revision, value))| Owner {
                        key: key.clone(),
                        create_revision: *create_revision,
                        value: value.clone(),
                    });
                changes.insert(revision, owner);
            }
        }
        Self { changes }
    }

    /// The owner as of `revision` (after every event at or below it).
    pub fn owner_at(&self, revision: i64) -> Option<&Owner> {
        self.changes
            .range(..=revision)
            .next_back()
            .and_then(|(_, owner)| owner.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(revision: i64, key: &str, create_revision: i64) -> EventRecord {
        EventRecord {
            revision,
            key: key.as_bytes().to_vec(),
            deleted: false,
            value: vec![],
            create_revision,
            lease: 0,
        }
    }

    fn delete(revision: i64, key: &str) -> EventRecord {
        EventRecord {
            deleted: true,
            ..put(revision, key, 0)
        }
    }

    #[test]
    fn owner_is_the_oldest_key() {
        let events = vec![
            put(2, "l/b", 2),
            put(3, "l/a", 3),
            put(4, "x", 4),
            delete(5, "l/b"),
            put(6, "l/a", 3),
            delete(7, "l/a"),
        ];
        let timeline = OwnerTimeline::build(&events, b"l/");
        assert_eq!(timeline.owner_at(1), None);
        assert_eq!(timeline.owner_at(2).unwrap().key, b"l/b");
        assert_eq!(timeline.owner_at(4).unwrap().key, b"l/b");
        assert_eq!(timeline.owner_at(5).unwrap().key, b"l/a");
        assert_eq!(timeline.owner_at(6).unwrap().create_revision, 3);
        assert_eq!(timeline.owner_at(7), None);
    }

    #[test]
    fn ranges() {
        assert!(in_range(b"a", &[0], &[0]));
        assert!(in_range(b"elect/x", b"elect/", b"elect0"));
        assert!(!in_range(b"electx", b"elect/", b"elect0"));
        assert!(in_range(b"k", b"k", b""));
        assert!(!in_range(b"k2", b"k", b""));
    }
}
