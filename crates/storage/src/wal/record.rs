//! The framing and encoding of log records.
//!
//! A frame is `[crc32 of the rest: u32][body length: u32][body]`, integers
//! little-endian, the checksum (CRC-32, as `crc32fast` computes it) over the
//! length and the body. A frame whose 8 header bytes are all zero ends a
//! segment (preallocated space reads as zeros).
//!
//! A body is `[kind: u8]` then, by kind:
//! - entries: `[group u64][first index u64][count u32]` then per entry `[length u32][bytes]`;
//! - state: `[group u64][slot u8][length u32][bytes]`;
//! - truncate: `[group u64][from index u64]`;
//! - purge: `[group u64][up to index u64]`;
//! - remove group: `[group u64]`;
//! - checkpoint: `[groups u32]` then per group `[group u64][first u64][next u64][slots u8]`
//!   and per slot `[slot u8][length u32][bytes]`.
//!
//! Kinds are part of the on-disk format: never change or reuse one.

pub(super) const HEADER_BYTES: usize = 8;
/// Bytes of an entries record before its entries: kind, group, first index, count.
pub(super) const ENTRIES_HEADER_BYTES: usize = 1 + 8 + 8 + 4;
/// Bytes of the length in front of each entry of an entries record.
pub(super) const ENTRY_LENGTH_BYTES: usize = 4;
/// The fewest bytes one group takes in a checkpoint: group, first, next, slot count.
const CHECKPOINT_GROUP_MIN_BYTES: usize = 8 + 8 + 8 + 1;

const KIND_ENTRIES: u8 = 1;
const KIND_STATE: u8 = 2;
const KIND_TRUNCATE: u8 = 3;
const KIND_PURGE: u8 = 4;
const KIND_REMOVE_GROUP: u8 = 5;
const KIND_CHECKPOINT: u8 = 6;

/// One group's state in a checkpoint.
pub(super) struct GroupCheckpoint<'a> {
    pub group: u64,
    pub first: u64,
    pub next: u64,
    pub slots: Vec<(u8, &'a [u8])>,
}

/// A decoded record; entry positions are offsets into the body.
pub(super) enum Record<'a> {
    Entries {
        group: u64,
        first: u64,
        /// (offset in the body, length) of each entry.
        entries: Vec<(usize, u32)>,
    },
    State {
        group: u64,
        slot: u8,
        bytes: &'a [u8],
    },
    Truncate {
        group: u64,
        from: u64,
    },
    Purge {
        group: u64,
        upto: u64,
    },
    RemoveGroup {
        group: u64,
    },
    Checkpoint {
        groups: Vec<GroupCheckpoint<'a>>,
    },
}

/// A frame read at some position of a segment.
pub(super) enum Frame<'a> {
    /// The segment's records end here.
    End,
    /// A frame that fails its checks (a torn write, or damage).
    Bad(String),
    /// A good frame: its body and the frame's whole length.
    Good(&'a [u8], usize),
}

pub(super) fn read_frame(data: &[u8], position: usize, body_max: usize) -> Frame<'_> {
    let rest = &data[position.min(data.len())..];
    if rest.len() < HEADER_BYTES {
        return if rest.iter().all(|&byte| byte == 0) {
            Frame::End
        } else {
            Frame::Bad(format!("{} stray bytes at the end", rest.len()))
        };
    }
    let crc = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
    let length = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes")) as usize;
    if crc == 0 && length == 0 {
        return Frame::End;
    }
    if length > body_max || rest.len() - HEADER_BYTES < length {
        return Frame::Bad(format!("a record of {length} bytes runs past the segment"));
    }
    let body = &rest[HEADER_BYTES..HEADER_BYTES + length];
    if checksum(&rest[4..8], body) != crc {
        return Frame::Bad("a record fails its checksum".to_string());
    }
    Frame::Good(body, HEADER_BYTES + length)
}

fn checksum(length: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(length);
    hasher.update(body);
    hasher.finalize()
}

/// Frame `body`: the bytes to write.
pub(super) fn frame(body: &[u8]) -> Vec<u8> {
    let length = u32::try_from(body.len()).expect("record bodies are bounded below 4 GiB");
    let mut framed = Vec::with_capacity(HEADER_BYTES + body.len());
    framed.extend_from_slice(&[0; 4]);
    framed.extend_from_slice(&length.to_le_bytes());
    framed.extend_from_slice(body);
    let crc = checksum(&framed[4..8], &framed[HEADER_BYTES..]);
    framed[0..4].copy_from_slice(&crc.to_le_bytes());
    framed
}

/// The body of an entries record.
pub(super) fn entries(group: u64, first: u64, entries: &[&[u8]]) -> Vec<u8> {
    let size = ENTRIES_HEADER_BYTES
        + entries
            .iter()
            .map(|entry| ENTRY_LENGTH_BYTES + entry.len())
            .sum::<usize>();
    let mut body = Vec::with_capacity(size);
    body.push(KIND_ENTRIES);
    body.extend_from_slice(&group.to_le_bytes());
    body.extend_from_slice(&first.to_le_bytes());
    body.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for entry in entries {
        let length = u32::try_from(entry.len()).expect("entries are bounded below 4 GiB");
        body.extend_from_slice(&length.to_le_bytes());
        body.extend_from_slice(entry);
    }
    body
}

pub(super) fn state(group: u64, slot: u8, bytes: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(14 + bytes.len());
    body.push(KIND_STATE);
    body.extend_from_slice(&group.to_le_bytes());
    body.push(slot);
    body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    body.extend_from_slice(bytes);
    body
}

fn group_and_index(kind: u8, group: u64, index: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(17);
    body.push(kind);
    body.extend_from_slice(&group.to_le_bytes());
    body.extend_from_slice(&index.to_le_bytes());
    body
}

pub(super) fn truncate(group: u64, from: u64) -> Vec<u8> {
    group_and_index(KIND_TRUNCATE, group, from)
}

pub(super) fn purge(group: u64, upto: u64) -> Vec<u8> {
    group_and_index(KIND_PURGE, group, upto)
}

pub(super) fn remove_group(group: u64) -> Vec<u8> {
    let mut body = vec![KIND_REMOVE_GROUP];
    body.extend_from_slice(&group.to_le_bytes());
    body
}

pub(super) fn checkpoint(groups: &[GroupCheckpoint<'_>]) -> Vec<u8> {
    let mut body = vec![KIND_CHECKPOINT];
    body.extend_from_slice(&(groups.len() as u32).to_le_bytes());
    for group in groups {
        body.extend_from_slice(&group.group.to_le_bytes());
        body.extend_from_slice(&group.first.to_le_bytes());
        body.extend_from_slice(&group.next.to_le_bytes());
        body.push(u8::try_from(group.slots.len()).expect("at most 256 state slots"));
        for (slot, bytes) in &group.slots {
            body.push(*slot);
            body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            body.extend_from_slice(bytes);
        }
    }
    body
}

/// Reads a body front to back; every read checks the length left.
struct Reader<'a> {
    body: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], String> {
        let end = self
            .position
            .checked_add(count)
            .filter(|&end| end <= self.body.len())
            .ok_or_else(|| format!("a record body ends early at byte {}", self.position))?;
        let bytes = &self.body[self.position..end];
        self.position = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let length = self.u32()? as usize;
        self.take(length)
    }
}

pub(super) fn decode(body: &[u8]) -> Result<Record<'_>, String> {
    let mut reader = Reader { body, position: 0 };
    let record = match reader.u8()? {
        KIND_ENTRIES => {
            let group = reader.u64()?;
            let first = reader.u64()?;
            let count = reader.u32()? as usize;
            // Each entry takes at least its length: a count beyond that is
            // damage, not a reason to allocate.
            if count > body.len() / ENTRY_LENGTH_BYTES {
                return Err(format!("an entries record claims {count} entries"));
            }
            let mut entries = Vec::with_capacity(count);
            for _ in 0..count {
                let length = reader.u32()?;
                entries.push((reader.position, length));
                reader.take(length as usize)?;
            }
            Record::Entries { group, first, entries }
        }
        KIND_STATE => Record::State {
            group: reader.u64()?,
            slot: reader.u8()?,
            bytes: reader.bytes()?,
        },
        KIND_TRUNCATE => Record::Truncate {
            group: reader.u64()?,
            from: reader.u64()?,
        },
        KIND_PURGE => Record::Purge {
            group: reader.u64()?,
            upto: reader.u64()?,
        },
        KIND_REMOVE_GROUP => Record::RemoveGroup { group: reader.u64()? },
        KIND_CHECKPOINT => {
            let count = reader.u32()? as usize;
            if count > body.len() / CHECKPOINT_GROUP_MIN_BYTES {
                return Err(format!("a checkpoint claims {count} groups"));
            }
            let mut groups = Vec::with_capacity(count);
            for _ in 0..count {
                let group = reader.u64()?;
                let first = reader.u64()?;
                let next = reader.u64()?;
                let slot_count = reader.u8()?;
                let mut slots = Vec::with_capacity(usize::from(slot_count));
                for _ in 0..slot_count {
                    let slot = reader.u8()?;
                    slots.push((slot, reader.bytes()?));
                }
                groups.push(GroupCheckpoint {
                    group,
                    first,
                    next,
                    slots,
                });
            }
            Record::Checkpoint { groups }
        }
        kind => return Err(format!("unknown record kind {kind}")),
    };
    if reader.position != body.len() {
        return Err(format!(
            "{} bytes left over after a record",
            body.len() - reader.position
        ));
    }
    Ok(record)
}
