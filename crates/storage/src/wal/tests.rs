use std::collections::BTreeMap;

use super::*;

const SMALL_SEGMENT: u64 = 4 * 1024;

fn entry(group: u64, index: u64, size: usize) -> Vec<u8> {
    let mut bytes = format!("g{group}i{index}:").into_bytes();
    bytes.resize(size.max(bytes.len()), b'x');
    bytes
}

/// Append entries `first..first + count` of `size` bytes, four per record.
fn append(wal: &Wal, group: u64, first: u64, count: u64, size: usize) {
    let entries: Vec<Vec<u8>> = (first..first + count).map(|index| entry(group, index, size)).collect();
    for (chunk, batch) in entries.chunks(4).enumerate() {
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        wal.append(group, first + 4 * chunk as u64, &refs).expect("append");
    }
}

fn open(files: &MemFiles) -> Wal {
    Wal::open(Arc::new(files.clone())).expect("open")
}

fn all(wal: &Wal, group: u64) -> Vec<Vec<u8>> {
    wal.entries(group, 0, u64::MAX).expect("read")
}

#[test]
fn synced_entries_and_state_survive_a_crash_and_unsynced_ones_may_not() {
    let files = MemFiles::new();
    let wal = open(&files);
    append(&wal, 1, 1, 3, 10);
    wal.set_state(1, 0, b"vote").unwrap();
    wal.sync().unwrap();
    append(&wal, 1, 4, 2, 10);
    drop(wal);
    files.crash(0);
    let wal = open(&files);
    assert_eq!(wal.bounds(1), Some((1, 4)));
    assert_eq!(
        all(&wal, 1),
        (1..4).map(|index| entry(1, index, 10)).collect::<Vec<_>>()
    );
    assert_eq!(wal.state(1, 0).as_deref(), Some(&b"vote"[..]));
    // The log goes on after the crash where it was cut.
    append(&wal, 1, 4, 1, 10);
    assert_eq!(wal.bounds(1), Some((1, 5)));
}

#[test]
fn a_torn_write_is_cut_off_and_never_read_back_later() {
    for keep in [1, 7, 8, 9, 20, 40, 60] {
        let files = MemFiles::new();
        let wal = open(&files);
        append(&wal, 1, 1, 2, 10);
        wal.sync().unwrap();
        append(&wal, 1, 3, 1, 10);
        append(&wal, 1, 4, 1, 10);
        drop(wal);
        files.crash(keep);
        let wal = open(&files);
        let (first, next) = wal.bounds(1).unwrap();
        assert_eq!(first, 1);
        assert!((3..=5).contains(&next), "keep {keep}: next {next}");
        assert_eq!(
            all(&wal, 1),
            (1..next).map(|index| entry(1, index, 10)).collect::<Vec<_>>()
        );
        // Later appends, synced, then another crash and open: still consistent.
        append(&wal, 1, next, 1, 3);
        wal.sync().unwrap();
        drop(wal);
        files.crash(0);
        let wal = open(&files);
        assert_eq!(wal.bounds(1), Some((1, next + 1)), "keep {keep}");
    }
}

#[test]
fn damage_before_the_last_segment_refuses_to_open() {
    let files = MemFiles::with_segment_bytes(SMALL_SEGMENT);
    let wal = open(&files);
    append(&wal, 1, 1, 200, 100);
    wal.sync().unwrap();
    drop(wal);
    let ids = files.list().unwrap();
    assert!(ids.len() > 2);
    // Flip a byte in the middle of the first segment's entries.
    let mut byte = [0u8];
    files.read_at(ids[0], 200, &mut byte).unwrap();
    files.write_at(ids[0], 200, &[byte[0] ^ 0xff]).unwrap();
    files.sync(ids[0]).unwrap();
    let error = Wal::open(Arc::new(files.clone())).err().expect("refused");
    assert_eq!(error.code(), StorageError::Corrupt { detail: String::new() }.code());
}

#[test]
fn truncate_then_append_replaces_the_suffix_across_a_restart() {
    let files = MemFiles::new();
    let wal = open(&files);
    append(&wal, 7, 1, 10, 20);
    wal.truncate(7, 6).unwrap();
    append(&wal, 7, 6, 2, 30);
    wal.sync().unwrap();
    let expected: Vec<Vec<u8>> = (1..6)
        .map(|index| entry(7, index, 20))
        .chain((6..8).map(|index| entry(7, index, 30)))
        .collect();
    assert_eq!(all(&wal, 7), expected);
    drop(wal);
    files.crash(0);
    let wal = open(&files);
    assert_eq!(all(&wal, 7), expected);
}

#[test]
fn an_append_with_a_gap_is_refused_and_one_over_the_tail_replaces_it() {
    let files = MemFiles::new();
    let wal = open(&files);
    append(&wal, 1, 1, 3, 10);
    let late = entry(1, 9, 10);
    assert!(wal.append(1, 9, &[&late]).is_err(), "a gap");
    wal.sync().unwrap();
    drop(wal);
    let wal = open(&files);
    assert_eq!(wal.bounds(1), Some((1, 4)));
    // An append over the tail replaces it from there on.
    append(&wal, 1, 2, 1, 50);
    assert_eq!(all(&wal, 1), vec![entry(1, 1, 10), entry(1, 2, 50)]);
    wal.sync().unwrap();
    drop(wal);
    let wal = open(&files);
    assert_eq!(all(&wal, 1), vec![entry(1, 1, 10), entry(1, 2, 50)]);
}

#[test]
fn purged_segments_are_removed_and_recovery_starts_from_a_checkpoint() {
    let files = MemFiles::with_segment_bytes(SMALL_SEGMENT);
    let wal = open(&files);
    wal.set_state(1, 0, b"vote-1").unwrap();
    wal.set_state(2, 2, b"purged-2").unwrap();
    // Group 2 stays small and its entries stay, early in the log.
    append(&wal, 2, 1, 3, 10);
    for round in 0..20 {
        append(&wal, 1, 1 + round * 20, 20, 200);
        wal.sync().unwrap();
    }
    let before = files.list().unwrap().len();
    // Purging group 1 alone frees nothing: group 2's entries pin the oldest segment.
    wal.purge(1, 380).unwrap();
    wal.sync().unwrap();
    assert!(files.list().unwrap().len() >= before - 1);
    // Purging group 2 as well frees everything but the newest segments.
    wal.purge(2, 3).unwrap();
    wal.sync().unwrap();
    let after = files.list().unwrap().len();
    assert!(after <= 3, "{before} segments, {after} after the purge");
    wal.set_state(1, 0, b"vote-2").unwrap();
    wal.sync().unwrap();
    drop(wal);
    files.crash(0);
    let wal = open(&files);
    assert_eq!(wal.bounds(1), Some((381, 401)));
    assert_eq!(
        all(&wal, 1),
        (381..401).map(|index| entry(1, index, 200)).collect::<Vec<_>>()
    );
    assert_eq!(wal.bounds(2), Some((4, 4)));
    assert_eq!(wal.state(1, 0).as_deref(), Some(&b"vote-2"[..]));
    assert_eq!(wal.state(2, 2).as_deref(), Some(&b"purged-2"[..]));
    append(&wal, 2, 4, 1, 10);
}

#[test]
fn a_removed_group_frees_its_segments_and_does_not_come_back() {
    let files = MemFiles::with_segment_bytes(SMALL_SEGMENT);
    let wal = open(&files);
    append(&wal, 5, 1, 100, 200);
    append(&wal, 6, 1, 1, 10);
    wal.remove_group(5).unwrap();
    wal.purge(6, 1).unwrap();
    wal.sync().unwrap();
    wal.sync().unwrap();
    assert!(files.list().unwrap().len() <= 2);
    drop(wal);
    files.crash(0);
    let wal = open(&files);
    assert_eq!(wal.groups(), vec![6]);
    assert_eq!(wal.bounds(5), None);
}

#[test]
fn a_segment_removal_undone_by_a_crash_is_removed_again() {
    let files = MemFiles::with_segment_bytes(SMALL_SEGMENT);
    let wal = open(&files);
    append(&wal, 1, 1, 60, 200);
    wal.sync().unwrap();
    let ids = files.list().unwrap();
    let oldest = ids[0];
    let mut saved = files.read_all(oldest).unwrap();
    saved.resize(saved.len().max(1), 0);
    wal.purge(1, 55).unwrap();
    wal.sync().unwrap();
    assert!(!files.list().unwrap().contains(&oldest));
    drop(wal);
    // Bring the oldest segment back, as if its unlink had not reached the disk.
    files.create(oldest, SMALL_SEGMENT).unwrap();
    files.write_at(oldest, 0, &saved).unwrap();
    files.sync(oldest).unwrap();
    let wal = open(&files);
    assert!(!files.list().unwrap().contains(&oldest));
    assert_eq!(wal.bounds(1), Some((56, 61)));
}

#[test]
fn a_lost_segment_is_reported_not_papered_over() {
    let files = MemFiles::with_segment_bytes(SMALL_SEGMENT);
    let wal = open(&files);
    append(&wal, 1, 1, 60, 200);
    wal.sync().unwrap();
    drop(wal);
    let ids = files.list().unwrap();
    // Remove a middle segment: its numbering gap makes recovery start after it,
    // whose checkpoint lists entries no remaining segment holds.
    files.remove(ids[ids.len() / 2]).unwrap();
    let error = Wal::open(Arc::new(files.clone())).err().expect("refused");
    assert!(error.to_string().contains("in no log segment"), "{error}");
}

#[test]
fn limits_are_refused_with_their_names() {
    let files = MemFiles::new();
    let wal = open(&files);
    let big = vec![0u8; STATE_BYTES_MAX + 1];
    match wal.set_state(1, 0, &big) {
        Err(StorageError::Limit { limit_name, .. }) => assert_eq!(limit_name, "STATE_BYTES_MAX"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let files = MemFiles::with_segment_bytes(SMALL_SEGMENT);
    let wal = open(&files);
    append(&wal, 1, 1, 1, 3 * SMALL_SEGMENT as usize);
    append(&wal, 1, 2, 1, 10);
    wal.sync().unwrap();
    drop(wal);
    let wal = open(&files);
    assert_eq!(
        all(&wal, 1),
        vec![entry(1, 1, 3 * SMALL_SEGMENT as usize), entry(1, 2, 10)]
    );
}

type Model = BTreeMap<u64, (u64, Vec<Vec<u8>>)>;

#[derive(Clone)]
enum Op {
    Append(u64, u64, Vec<Vec<u8>>),
    Truncate(u64, u64),
    Purge(u64, u64),
}

fn apply(model: &mut Model, op: &Op) {
    match op {
        Op::Append(group, first, entries) => {
            let log = model.entry(*group).or_insert((*first, Vec::new()));
            if log.1.is_empty() {
                log.0 = *first;
            }
            log.1.extend(entries.iter().cloned());
        }
        Op::Truncate(group, from) => {
            let log = model.get_mut(group).expect("truncate of a known group");
            log.1.truncate((from - log.0) as usize);
        }
        Op::Purge(group, upto) => {
            let log = model.get_mut(group).expect("purge of a known group");
            let drop = ((upto + 1 - log.0) as usize).min(log.1.len());
            log.1.drain(..drop);
            log.0 = upto + 1;
        }
    }
}

fn read_model(wal: &Wal) -> Model {
    wal.groups()
        .into_iter()
        .map(|group| (group, (wal.bounds(group).unwrap().0, all(wal, group))))
        .collect()
}

/// A random sequence of operations and crashes (with torn writes), checked
/// against a model: after a crash the log holds what was synced plus some
/// prefix of the operations after, never anything else.
#[test]
fn random_operations_and_crashes_agree_with_a_model() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random = move |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    };
    let files = MemFiles::with_segment_bytes(SMALL_SEGMENT);
    let mut wal = open(&files);
    let mut synced = Model::new();
    let mut current = Model::new();
    let mut since_sync: Vec<Op> = Vec::new();
    let mut crashes = 0;
    for step in 0..4_000 {
        let group = random(3);
        let (first, len) = current.get(&group).map_or((1, 0), |log| (log.0, log.1.len() as u64));
        let op = match random(12) {
            0..=5 => {
                let count = 1 + random(4);
                let entries = (0..count)
                    .map(|offset| entry(group, first + len + offset, 1 + random(300) as usize))
                    .collect();
                Some(Op::Append(group, first + len, entries))
            }
            6 if len > 0 => Some(Op::Truncate(group, first + random(len))),
            7 if len > 0 => Some(Op::Purge(group, first + random(len))),
            8 | 9 => {
                wal.sync().unwrap();
                synced = current.clone();
                since_sync.clear();
                None
            }
            10 => {
                drop(wal);
                files.crash(random(600) as usize);
                crashes += 1;
                wal = open(&files);
                let recovered = read_model(&wal);
                let mut candidate = synced.clone();
                let mut matched = candidate == recovered;
                for op in &since_sync {
                    apply(&mut candidate, op);
                    matched |= candidate == recovered;
                }
                assert!(
                    matched,
                    "step {step}: the log after a crash is no prefix of what was written"
                );
                synced = recovered.clone();
                current = recovered;
                since_sync.clear();
                None
            }
            _ => None,
        };
        if let Some(op) = op {
            match &op {
                Op::Append(group, first, entries) => {
                    let refs: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
                    wal.append(*group, *first, &refs).unwrap();
                }
                Op::Truncate(group, from) => wal.truncate(*group, *from).unwrap(),
                Op::Purge(group, upto) => wal.purge(*group, *upto).unwrap(),
            }
            apply(&mut current, &op);
            since_sync.push(op);
            assert_eq!(read_model(&wal), current, "step {step}");
        }
    }
    assert!(crashes > 100);
}

#[test]
fn the_directory_files_keep_the_log_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Wal::open(Arc::new(DirFiles::open(dir.path().join("wal")).unwrap())).unwrap();
    append(&wal, 3, 0, 9, 100);
    wal.set_state(3, 1, b"committed").unwrap();
    wal.sync().unwrap();
    drop(wal);
    let files = DirFiles::open(dir.path().join("wal")).unwrap();
    assert_eq!(files.list().unwrap().len(), 1);
    let wal = Wal::open(Arc::new(files)).unwrap();
    assert_eq!(wal.stats().segments, 2, "the old segment and the one opened after it");
    assert_eq!(
        all(&wal, 3),
        (0..9).map(|index| entry(3, index, 100)).collect::<Vec<_>>()
    );
    assert_eq!(wal.state(3, 1).as_deref(), Some(&b"committed"[..]));
    // The first segment holds nothing needed once everything is purged.
    wal.purge(3, 8).unwrap();
    wal.sync().unwrap();
    wal.sync().unwrap();
    let names = std::fs::read_dir(dir.path().join("wal")).unwrap().count();
    assert_eq!(names, 1);
}

#[test]
fn an_idle_group_is_rewritten_forward_instead_of_keeping_every_segment() {
    let files = MemFiles::with_segment_bytes(SMALL_SEGMENT);
    let wal = open(&files);
    // Group 9 writes three entries and then nothing: it never purges.
    append(&wal, 9, 1, 3, 50);
    wal.set_state(9, 0, b"vote-9").unwrap();
    // Group 1 writes and purges for a long time.
    for round in 0..200u64 {
        append(&wal, 1, 1 + round * 4, 4, 300);
        if round % 5 == 4 {
            wal.purge(1, round * 4).unwrap();
        }
        wal.sync().unwrap();
    }
    let segments = files.list().unwrap().len();
    // Without the rewrite, group 9's three entries would keep all 67.
    assert!(
        segments <= 8,
        "{segments} segments kept for about {} bytes of live log",
        20 * 300
    );
    drop(wal);
    files.crash(0);
    let wal = open(&files);
    assert_eq!(
        all(&wal, 9),
        (1..4).map(|index| entry(9, index, 50)).collect::<Vec<_>>()
    );
    assert_eq!(wal.state(9, 0).as_deref(), Some(&b"vote-9"[..]));
    let (first, next) = wal.bounds(1).unwrap();
    assert_eq!(next, 801);
    assert_eq!(
        all(&wal, 1),
        (first..next).map(|index| entry(1, index, 300)).collect::<Vec<_>>()
    );
}
