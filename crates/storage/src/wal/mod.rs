//! [`Wal`]: the Raft logs of every group on a node, in one append-only file
//! sequence with one fsync per round, as etcd's WAL and TiKV's raft-engine
//! keep them apart from the state machine's B-tree.
//!
//! ## Why not the engine
//! A log append in the redb engine is a B-tree commit: the fsync that makes
//! it durable also writes every page the write touched and every page the
//! buffered writes before it touched (the state machine's values, the
//! committed index), several 4 KiB pages scattered over the file. Measured on
//! the 2-core benchmark machine: 411 µs p50 for the leader's fsync of one
//! sequential put in the engine, against 85 µs for a 400-byte append and
//! `fdatasync` into a preallocated file (`bench/results/2026-12-07-wal.md`).
//! Here an append is one `pwrite` of a checksummed record and the round's
//! fsync one `fdatasync` of the file appended to.
//!
//! ## Layout
//! Segments are numbered files of [`SEGMENT_BYTES`] each, preallocated so
//! an `fdatasync` need not also commit a new file size. Records
//! (`record.rs`) are appended in order: entries of one group, a state slot
//! of a group (the vote, the committed index, the purged log id: opaque
//! bytes to this module), a truncation of a group's suffix, a purge of its
//! prefix, the removal of a whole group. A new segment starts with a
//! checkpoint record: every group's first and next index and state slots.
//! In memory the log keeps, per group, the position of every entry, never
//! the entries themselves: reads are `pread`s from the page cache.
//!
//! ## What survives a crash
//! Writes are visible to reads at once and durable after [`Wal::sync`]. A
//! crash keeps a prefix of the writes since the last sync, in order, the last
//! one possibly torn, so a record is never durable without the records
//! written before it: the committed index never outlives the entries it
//! covers, a truncation never survives without what preceded it.
//!
//! Recovery ([`Wal::open`]) reads the segments in order and replays their
//! records into the in-memory index. A record that fails its checksum at the
//! end of the last segment is a torn write: its header is zeroed (and
//! synced), so later writes never line up behind it, and writing continues
//! in a new segment. The same in any other segment is damage: the log refuses
//! to open ([`StorageError::Corrupt`]) rather than silently lose entries.
//!
//! A segment is removed once it holds no live entry of any group (the log
//! counts live entries per segment), oldest first, and only after the sync
//! that made the purges, truncations or rewrites that emptied it durable;
//! recovery then starts from the first segment's checkpoint. A group that
//! stays idle never purges, so once more than [`SEGMENTS_BEFORE_REWRITE`]
//! segments exist, every group with entries in the older ones is copied
//! whole to the end of the log at the next segment change (an append over its
//! whole log, which replaces it), as raft-engine rewrites cold regions. A
//! removal that a crash undoes leaves a segment before a gap in the
//! numbering, which recovery deletes again. An entry the checkpoint says
//! exists but that no remaining segment holds means a segment was lost:
//! [`StorageError::Corrupt`].
//!
//! ## Limits
//! [`ENTRY_BYTES_MAX`] per entry, [`STATE_BYTES_MAX`] per state slot,
//! [`RECORD_BYTES_MAX`] per record (an append larger than that is written as
//! several records); a record larger than a segment gets a segment of its own
//! size. A group's log is rewritten forward only up to
//! [`REWRITE_GROUP_BYTES_MAX`] (one record, so a crash keeps all of the copy
//! or none); a larger one is a busy group's, and keeps its old segments until
//! its snapshots purge it.

mod files;
mod record;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

pub use files::{DirFiles, LogFiles, MemFiles};
use record::{Frame, GroupCheckpoint, Record, HEADER_BYTES};

use crate::StorageError;

/// Bytes per segment file.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Most bytes in one log entry.
pub const ENTRY_BYTES_MAX: usize = 128 * 1024 * 1024;
/// Most bytes in one state slot.
pub const STATE_BYTES_MAX: usize = 64 * 1024;
/// Most bytes in one record's body.
pub const RECORD_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Most entries one group's log may hold in recovery's view of a checkpoint
/// (a larger count is damage).
const CHECKPOINT_ENTRIES_MAX: u64 = 1 << 32;
/// Segments kept, newest first, before the groups that still have entries in
/// older ones are rewritten to the end of the log (see `Wal::rewrite_old_groups`).
pub const SEGMENTS_BEFORE_REWRITE: usize = 4;
/// The largest log of one group that is rewritten (in one record, read into
/// memory at once, under the log's lock; see `Wal::rewrite_old_groups`). The
/// groups that keep old segments for good are idle ones with a few entries;
/// a busy group's log is purged by its snapshots.
pub const REWRITE_GROUP_BYTES_MAX: usize = 1024 * 1024;
/// Entries closer than this in one segment are read with one `pread`.
const READ_MERGE_GAP_BYTES: u64 = 256;

/// Where an entry's bytes are.
#[derive(Clone, Copy, Debug)]
struct Location {
    segment: u64,
    offset: u64,
    length: u32,
}

#[derive(Default)]
struct GroupLog {
    /// Index of the first entry.
    first: u64,
    /// Entries `first..`; `None` only while recovering, for entries a
    /// checkpoint says exist before the segments replayed so far.
    entries: VecDeque<Option<Location>>,
    slots: BTreeMap<u8, Vec<u8>>,
}

impl GroupLog {
    fn next(&self) -> u64 {
        self.first + self.entries.len() as u64
    }
}

struct State {
    groups: BTreeMap<u64, GroupLog>,
    /// Per segment, how many live entries (of any group) it holds: one with
    /// none, older than the active one, can go.
    segments: BTreeMap<u64, usize>,
    active: u64,
    active_size: u64,
    /// Where the next record goes in the active segment.
    offset: u64,
}

/// A record that does not apply to the state: damage in recovery, a caller's
/// bug when writing.
struct Inconsistent(String);

impl State {
    fn empty() -> Self {
        Self {
            groups: BTreeMap::new(),
            segments: BTreeMap::new(),
            active: 0,
            active_size: 0,
            offset: 0,
        }
    }

    /// Apply `record`, read from (or written to) `segment` with its body at `body_offset`.
    fn apply(&mut self, record: &Record<'_>, segment: u64, body_offset: u64) -> Result<(), Inconsistent> {
        if let Record::Entries { group, first, .. } = record {
            if let Some(why) = self.append_error(*group, *first) {
                return Err(Inconsistent(why));
            }
        }
        let State { groups, segments, .. } = self;
        // An entry leaves the log: its segment holds one live entry fewer.
        let mut release = |location: Option<Location>| {
            if let Some(location) = location {
                if let Some(live) = segments.get_mut(&location.segment) {
                    *live = live.saturating_sub(1);
                }
            }
        };
        match record {
            Record::Entries { group, first, entries } => {
                let log = groups.entry(*group).or_default();
                while log.next() > *first {
                    match log.entries.pop_back() {
                        Some(location) => release(location),
                        None => break,
                    }
                }
                if log.entries.is_empty() {
                    log.first = *first;
                }
                for &(offset, length) in entries {
                    log.entries.push_back(Some(Location {
                        segment,
                        offset: body_offset + offset as u64,
                        length,
                    }));
                }
                *segments.entry(segment).or_default() += entries.len();
            }
            Record::State { group, slot, bytes } => {
                groups.entry(*group).or_default().slots.insert(*slot, bytes.to_vec());
            }
            Record::Truncate { group, from } => {
                if let Some(log) = groups.get_mut(group) {
                    while log.next() > *from {
                        match log.entries.pop_back() {
                            Some(location) => release(location),
                            None => break,
                        }
                    }
                }
            }
            Record::Purge { group, upto } => {
                let log = groups.entry(*group).or_default();
                while log.first <= *upto {
                    match log.entries.pop_front() {
                        Some(location) => release(location),
                        None => break,
                    }
                    log.first += 1;
                }
                log.first = log.first.max(upto.saturating_add(1));
            }
            Record::RemoveGroup { group } => {
                if let Some(log) = groups.remove(group) {
                    log.entries.into_iter().for_each(&mut release);
                }
            }
            Record::Checkpoint { groups: checkpoints } => {
                for (_, log) in std::mem::take(groups) {
                    log.entries.into_iter().for_each(&mut release);
                }
                for checkpoint in checkpoints {
                    let count = checkpoint
                        .next
                        .checked_sub(checkpoint.first)
                        .filter(|&count| count <= CHECKPOINT_ENTRIES_MAX);
                    let Some(count) = count else {
                        return Err(Inconsistent(format!(
                            "group {}: a checkpoint with entries {}..{}",
                            checkpoint.group, checkpoint.first, checkpoint.next
                        )));
                    };
                    groups.insert(
                        checkpoint.group,
                        GroupLog {
                            first: checkpoint.first,
                            entries: std::iter::repeat_n(None, count as usize).collect(),
                            slots: checkpoint
                                .slots
                                .iter()
                                .map(|(slot, bytes)| (*slot, bytes.to_vec()))
                                .collect(),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// Why entries from `first` cannot be appended to `group`'s log, if they cannot.
    fn append_error(&self, group: u64, first: u64) -> Option<String> {
        let log = self.groups.get(&group)?;
        // An append over the log's tail replaces it from `first` on (the
        // contract of a Raft log store: openraft truncates a conflicting
        // suffix first, but a store must not keep entries after a rewritten
        // one either way).
        // An empty log may start anywhere: after a purge past its end (a
        // snapshot installed), the next append starts after the snapshot.
        let fits = log.entries.is_empty() || (first >= log.first && first <= log.next());
        (!fits).then(|| {
            format!(
                "group {group}: an append at {first}, the log's next index is {}",
                log.next()
            )
        })
    }

    fn checkpoint_body(&self) -> Vec<u8> {
        let groups: Vec<GroupCheckpoint<'_>> = self
            .groups
            .iter()
            .map(|(&group, log)| GroupCheckpoint {
                group,
                first: log.first,
                next: log.next(),
                slots: log
                    .slots
                    .iter()
                    .map(|(&slot, bytes)| (slot, bytes.as_slice()))
                    .collect(),
            })
            .collect();
        record::checkpoint(&groups)
    }

    /// The oldest segments, before the active one, no group needs entries of.
    fn removable(&self) -> Vec<u64> {
        self.segments
            .iter()
            .take_while(|(&id, &live)| id < self.active && live == 0)
            .map(|(&id, _)| id)
            .collect()
    }
}

/// The end of the run of `entries` from `start` that fits in one record
/// (at least one entry).
fn record_end(entries: &[&[u8]], start: usize) -> usize {
    let mut end = start;
    let mut bytes = record::ENTRIES_HEADER_BYTES;
    while end < entries.len() {
        let more = record::ENTRY_LENGTH_BYTES + entries[end].len();
        if end > start && bytes + more > RECORD_BYTES_MAX {
            break;
        }
        bytes += more;
        end += 1;
    }
    end
}

/// How big the log is, for a node's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    pub segments: usize,
    pub groups: usize,
    pub syncs: u64,
}

/// The node's Raft logs (see the module doc). Shared by every group's log
/// store; writes from many threads are serialized by one lock around the
/// in-memory index and the `pwrite`, never around an fsync.
pub struct Wal {
    files: Arc<dyn LogFiles>,
    state: Mutex<State>,
    syncs: std::sync::atomic::AtomicU64,
}

fn io_error(context: &'static str) -> impl FnOnce(std::io::Error) -> StorageError {
    move |source| StorageError::Io { context, source }
}

fn invalid(why: String) -> StorageError {
    StorageError::Io {
        context: "appending to the log",
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
    }
}

fn corrupt(detail: String) -> StorageError {
    StorageError::Corrupt { detail }
}

impl Wal {
    /// Open the log in `files`, recovering what a crash left (see the module
    /// doc), and start a new segment to write to.
    pub fn open(files: Arc<dyn LogFiles>) -> Result<Self, StorageError> {
        let mut ids = files.list().map_err(io_error("listing the log's segments"))?;
        ids.sort_unstable();
        // Segments before a gap in the numbering were removed once; a crash
        // brought them back.
        let start = ids
            .windows(2)
            .rposition(|pair| pair[1] != pair[0] + 1)
            .map_or(0, |gap| gap + 1);
        for &id in &ids[..start] {
            files.remove(id).map_err(io_error("removing a stale log segment"))?;
        }
        let ids = &ids[start..];
        let mut state = State::empty();
        for (position, &id) in ids.iter().enumerate() {
            let last = position + 1 == ids.len();
            let data = files.read_all(id).map_err(io_error("reading a log segment"))?;
            state.segments.entry(id).or_default();
            let mut offset = 0;
            loop {
                match record::read_frame(&data, offset, RECORD_BYTES_MAX) {
                    Frame::End => break,
                    Frame::Bad(why) if last => {
                        // A torn write at the end: cut the log here for good.
                        tracing::warn!(segment = id, offset, why, "the log ends in a torn write; dropping it");
                        files
                            .write_at(id, offset as u64, &[0; HEADER_BYTES])
                            .and_then(|()| files.sync(id))
                            .map_err(io_error("cutting a torn write off the log"))?;
                        break;
                    }
                    Frame::Bad(why) => {
                        return Err(corrupt(format!("log segment {id:016x} at byte {offset}: {why}")));
                    }
                    Frame::Good(body, length) => {
                        let decoded = record::decode(body)
                            .map_err(|why| corrupt(format!("log segment {id:016x} at byte {offset}: {why}")))?;
                        // Only the first segment's checkpoint matters: later ones
                        // repeat what replaying the records before them gives.
                        let skip = matches!(decoded, Record::Checkpoint { .. }) && position > 0;
                        if !skip {
                            state.apply(&decoded, id, (offset + HEADER_BYTES) as u64).map_err(
                                |Inconsistent(why)| corrupt(format!("log segment {id:016x} at byte {offset}: {why}")),
                            )?;
                        }
                        offset += length;
                    }
                }
            }
        }
        for (group, log) in &state.groups {
            if let Some(missing) = log.entries.iter().position(Option::is_none) {
                return Err(corrupt(format!(
                    "group {group}: entry {} is in no log segment (a segment was lost)",
                    log.first + missing as u64
                )));
            }
        }
        // What was replayed must stay: after a process crash the last
        // segment's tail may be in the page cache only, and the records
        // written from now on (durable) must never outlive it.
        if let Some(&last) = ids.last() {
            files.sync(last).map_err(io_error("syncing the log's last segment"))?;
        }
        state.active = ids.last().copied().unwrap_or(0);
        let wal = Self {
            files,
            state: Mutex::new(state),
            syncs: Default::default(),
        };
        {
            let mut state = wal.state.lock();
            wal.rotate(&mut state, 0)?;
        }
        wal.sync()?;
        Ok(wal)
    }

    /// Close the active segment (synced) and continue in a new one that
    /// starts with a checkpoint and has room for `need` more bytes.
    fn rotate(&self, state: &mut State, need: usize) -> Result<(), StorageError> {
        if state.active_size > 0 {
            self.files
                .sync(state.active)
                .map_err(io_error("syncing a full log segment"))?;
        }
        let checkpoint = record::frame(&state.checkpoint_body());
        let id = state.active + 1;
        let size = self.files.segment_bytes().max((checkpoint.len() + need) as u64);
        self.files
            .create(id, size)
            .map_err(io_error("creating a log segment"))?;
        self.files
            .write_at(id, 0, &checkpoint)
            .map_err(io_error("writing a log checkpoint"))?;
        state.segments.entry(id).or_default();
        state.active = id;
        state.active_size = size;
        state.offset = checkpoint.len() as u64;
        Ok(())
    }

    /// Append `body` as one record, then apply it to the index; after a
    /// rotation, rewrite the groups that keep old segments (see
    /// [`SEGMENTS_BEFORE_REWRITE`]).
    fn write(&self, body: Vec<u8>) -> Result<(), StorageError> {
        let mut state = self.state.lock();
        if self.write_locked(&mut state, &body)? {
            self.rewrite_old_groups(&mut state)?;
        }
        Ok(())
    }

    /// [`Wal::write`] under the lock; returns whether it started a segment.
    fn write_locked(&self, state: &mut State, body: &[u8]) -> Result<bool, StorageError> {
        let framed = record::frame(body);
        let rotated = state.offset + framed.len() as u64 > state.active_size;
        if rotated {
            self.rotate(state, framed.len())?;
        }
        // The record applied is the one decoded from the bytes written, so
        // the live index is exactly what recovery will rebuild from them.
        let decoded = record::decode(body).expect("a record just encoded decodes");
        // Check before writing: a record that does not apply is the caller's
        // bug, and must not reach the disk to fail recovery later.
        if let Record::Entries { group, first, .. } = &decoded {
            if let Some(why) = state.append_error(*group, *first) {
                return Err(invalid(why));
            }
        }
        let (segment, offset) = (state.active, state.offset);
        self.files
            .write_at(segment, offset, &framed)
            .map_err(io_error("appending to the log"))?;
        state.offset += framed.len() as u64;
        state
            .apply(&decoded, segment, offset + HEADER_BYTES as u64)
            .map_err(|Inconsistent(why)| invalid(why))?;
        Ok(rotated)
    }

    /// Copy the whole log of every group that still has entries in a
    /// segment older than the newest [`SEGMENTS_BEFORE_REWRITE`] to the end
    /// of the log, so that those segments can go. Without this, a group that
    /// stays idle (a partition nobody writes to never snapshots, so never
    /// purges) would keep its oldest segment, and so every later one, for
    /// good; raft-engine rewrites such groups the same way. The copy is an
    /// append over the group's whole log (which replaces it), written under
    /// the lock so that no append of the group comes in between.
    fn rewrite_old_groups(&self, state: &mut State) -> Result<(), StorageError> {
        let old = state.segments.len().saturating_sub(SEGMENTS_BEFORE_REWRITE);
        let Some(&newest_old) = state.segments.keys().nth(old.saturating_sub(1)).filter(|_| old > 0) else {
            return Ok(());
        };
        let pinning: Vec<u64> = state
            .groups
            .iter()
            .filter(|(_, log)| {
                log.entries
                    .iter()
                    .any(|location| location.is_some_and(|location| location.segment <= newest_old))
            })
            .map(|(&group, _)| group)
            .collect();
        for group in pinning {
            let (first, locations) = {
                let log = &state.groups[&group];
                let locations: Vec<Location> = log
                    .entries
                    .iter()
                    .map(|location| location.expect("no holes outside recovery"))
                    .collect();
                (log.first, locations)
            };
            // One record, so that a crash keeps either the whole copy or none
            // of it (the old segments stay until a sync covers the copy); a
            // larger log is a busy group's, left to its snapshots' purges.
            let bytes: usize = locations.iter().map(|location| location.length as usize + 4).sum();
            if bytes > REWRITE_GROUP_BYTES_MAX {
                tracing::warn!(
                    group,
                    bytes,
                    "a group's log is too large to rewrite; its old segments stay until it purges"
                );
                continue;
            }
            let entries = self.read_locations(&locations)?;
            let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
            let body = record::entries(group, first, &refs);
            self.write_locked(state, &body)?;
            tracing::debug!(group, entries = entries.len(), bytes, "rewrote a group's log forward");
        }
        Ok(())
    }

    /// Append `entries` to `group`'s log, the first at index `first`, which
    /// must follow the log's last entry or replace entries from `first` on
    /// (or be any index, if the log holds none). Durable after [`Wal::sync`].
    pub fn append(&self, group: u64, first: u64, entries: &[&[u8]]) -> Result<(), StorageError> {
        if let Some(entry) = entries.iter().find(|entry| entry.len() > ENTRY_BYTES_MAX) {
            return Err(StorageError::Limit {
                what: "log entry size in bytes",
                size: entry.len(),
                limit_name: "ENTRY_BYTES_MAX",
                max: ENTRY_BYTES_MAX,
            });
        }
        let mut start = 0;
        while start < entries.len() {
            let end = record_end(entries, start);
            let body = record::entries(group, first + start as u64, &entries[start..end]);
            self.write(body)?;
            start = end;
        }
        Ok(())
    }

    /// Set state slot `slot` of `group` to `bytes`. Durable after [`Wal::sync`].
    pub fn set_state(&self, group: u64, slot: u8, bytes: &[u8]) -> Result<(), StorageError> {
        if bytes.len() > STATE_BYTES_MAX {
            return Err(StorageError::Limit {
                what: "log state size in bytes",
                size: bytes.len(),
                limit_name: "STATE_BYTES_MAX",
                max: STATE_BYTES_MAX,
            });
        }
        self.write(record::state(group, slot, bytes))
    }

    /// Drop `group`'s entries from index `from` on.
    pub fn truncate(&self, group: u64, from: u64) -> Result<(), StorageError> {
        self.write(record::truncate(group, from))
    }

    /// Drop `group`'s entries up to index `upto`; the next append may start
    /// at `upto + 1` at the earliest.
    pub fn purge(&self, group: u64, upto: u64) -> Result<(), StorageError> {
        self.write(record::purge(group, upto))
    }

    /// Forget `group`: its entries and its state.
    pub fn remove_group(&self, group: u64) -> Result<(), StorageError> {
        self.write(record::remove_group(group))
    }

    /// Make every write made before this call durable, then remove the
    /// segments no group needs any more.
    pub fn sync(&self) -> Result<(), StorageError> {
        // What is removable now depends only on records written before the
        // fsync below, so it is durable once the fsync returns.
        let (active, removable) = {
            let state = self.state.lock();
            (state.active, state.removable())
        };
        self.files.sync(active).map_err(io_error("syncing the log"))?;
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for id in removable {
            // The log is durable whether or not this works: a segment that
            // stays only takes space, and the next sync tries again.
            if let Err(error) = self.files.remove(id) {
                tracing::warn!(segment = id, %error, "cannot remove a log segment no group needs");
                break;
            }
            self.state.lock().segments.remove(&id);
        }
        Ok(())
    }

    /// The entries of `group` with indexes in `start..end` that the log
    /// holds, in order (it holds a contiguous run, see [`Wal::bounds`]).
    pub fn entries(&self, group: u64, start: u64, end: u64) -> Result<Vec<Vec<u8>>, StorageError> {
        let locations: Vec<Location> = {
            let state = self.state.lock();
            let Some(log) = state.groups.get(&group) else {
                return Ok(Vec::new());
            };
            let from = start.max(log.first);
            let to = end.min(log.next());
            if from >= to {
                return Ok(Vec::new());
            }
            log.entries
                .range((from - log.first) as usize..(to - log.first) as usize)
                .map(|location| location.expect("no holes outside recovery"))
                .collect()
        };
        self.read_locations(&locations)
    }

    /// The bytes at `locations`, with one read per run of neighbours.
    fn read_locations(&self, locations: &[Location]) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut entries = Vec::with_capacity(locations.len());
        let mut run_start = 0;
        while run_start < locations.len() {
            // A run of entries close together in one segment: one read.
            let mut run_end = run_start + 1;
            while run_end < locations.len() {
                let (previous, next) = (locations[run_end - 1], locations[run_end]);
                let previous_end = previous.offset + u64::from(previous.length);
                let close = next.segment == previous.segment
                    && next.offset >= previous_end
                    && next.offset - previous_end <= READ_MERGE_GAP_BYTES
                    && next.offset + u64::from(next.length) - locations[run_start].offset <= RECORD_BYTES_MAX as u64;
                if !close {
                    break;
                }
                run_end += 1;
            }
            let first = locations[run_start];
            let last = locations[run_end - 1];
            let mut buffer = vec![0; (last.offset + u64::from(last.length) - first.offset) as usize];
            self.files
                .read_at(first.segment, first.offset, &mut buffer)
                .map_err(io_error("reading log entries"))?;
            for location in &locations[run_start..run_end] {
                let at = (location.offset - first.offset) as usize;
                entries.push(buffer[at..at + location.length as usize].to_vec());
            }
            run_start = run_end;
        }
        Ok(entries)
    }

    /// `group`'s first entry index and the index after its last (equal when
    /// it holds none); `None` for a group never written.
    pub fn bounds(&self, group: u64) -> Option<(u64, u64)> {
        let state = self.state.lock();
        state.groups.get(&group).map(|log| (log.first, log.next()))
    }

    /// State slot `slot` of `group`.
    pub fn state(&self, group: u64, slot: u8) -> Option<Vec<u8>> {
        let state = self.state.lock();
        state.groups.get(&group)?.slots.get(&slot).cloned()
    }

    /// The groups the log holds anything of.
    pub fn groups(&self) -> Vec<u64> {
        self.state.lock().groups.keys().copied().collect()
    }

    pub fn stats(&self) -> WalStats {
        let state = self.state.lock();
        WalStats {
            segments: state.segments.len(),
            groups: state.groups.len(),
            syncs: self.syncs.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests;
