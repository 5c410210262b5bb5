//! The segment files under a [`Wal`](super::Wal): a directory on disk
//! ([`DirFiles`]) or memory that a test or the simulator can crash
//! ([`MemFiles`]).
//!
//! The contract ([`LogFiles`]) is what the log's recovery argument needs and
//! no more:
//! - `create` returns once the new file, at its full preallocated size, and
//!   its directory entry are durable;
//! - `write_at` is visible to `read_at` at once and durable only after `sync`
//!   of that file; a crash keeps some prefix, in write order, of the writes
//!   since the last `sync`, the last one possibly cut (a torn write);
//! - `remove` may be undone by a crash (the file comes back whole).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

/// What the log needs of a directory of numbered segment files.
pub trait LogFiles: Send + Sync {
    /// The ids of the segments present, in any order.
    fn list(&self) -> io::Result<Vec<u64>>;
    /// Create segment `id` with `size` bytes of zeros, durably.
    fn create(&self, id: u64, size: u64) -> io::Result<()>;
    /// The whole content of segment `id` (trailing zeros may be left off).
    fn read_all(&self, id: u64) -> io::Result<Vec<u8>>;
    /// Fill `buf` from segment `id` at `offset`.
    fn read_at(&self, id: u64, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Write `bytes` into segment `id` at `offset` (durable after `sync`).
    fn write_at(&self, id: u64, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Make every write to segment `id` durable.
    fn sync(&self, id: u64) -> io::Result<()>;
    /// Delete segment `id`.
    fn remove(&self, id: u64) -> io::Result<()>;
    /// Bytes per segment (a record larger than that gets a segment of its own size).
    fn segment_bytes(&self) -> u64 {
        super::SEGMENT_BYTES
    }
}

/// Segment files `<id as 16 hex digits>.log` in one directory.
pub struct DirFiles {
    dir: PathBuf,
    open: RwLock<HashMap<u64, Arc<File>>>,
}

const SUFFIX: &str = ".log";

impl DirFiles {
    /// The segments in `dir`, which is created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            open: RwLock::new(HashMap::new()),
        })
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}{SUFFIX}"))
    }

    fn file(&self, id: u64) -> io::Result<Arc<File>> {
        if let Some(file) = self.open.read().get(&id) {
            return Ok(file.clone());
        }
        let file = Arc::new(OpenOptions::new().read(true).write(true).open(self.path(id))?);
        self.open.write().insert(id, file.clone());
        Ok(file)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

impl LogFiles for DirFiles {
    fn list(&self) -> io::Result<Vec<u64>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(hex) = name.strip_suffix(SUFFIX) else { continue };
            if let (16, Ok(id)) = (hex.len(), u64::from_str_radix(hex, 16)) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    fn create(&self, id: u64, size: u64) -> io::Result<()> {
        let path = self.path(id);
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        // Allocated up front, so that an fdatasync after an append does not
        // also have to commit the file's new size and blocks (etcd's WAL
        // preallocates its segments for the same reason).
        let length = libc::off_t::try_from(size).map_err(|_| io::Error::other("segment size out of range"))?;
        // SAFETY: `file` is an open descriptor for the duration of the call.
        let code = unsafe { libc::posix_fallocate(std::os::fd::AsRawFd::as_raw_fd(&file), 0, length) };
        if code != 0 {
            // Filesystems without fallocate: fall back to a sparse file.
            file.set_len(size)?;
        }
        file.sync_all()?;
        self.sync_dir()?;
        self.open.write().insert(id, Arc::new(file));
        Ok(())
    }

    fn read_all(&self, id: u64) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(id))
    }

    fn read_at(&self, id: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file(id)?.read_exact_at(buf, offset)
    }

    fn write_at(&self, id: u64, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.file(id)?.write_all_at(bytes, offset)
    }

    fn sync(&self, id: u64) -> io::Result<()> {
        self.file(id)?.sync_data()
    }

    fn remove(&self, id: u64) -> io::Result<()> {
        self.open.write().remove(&id);
        std::fs::remove_file(self.path(id))
    }
}

/// Segments in memory, with a crash that keeps only what was synced plus a
/// chosen number of bytes of the writes after it (see the module doc).
/// Clones share the files, as a disk outlives the process using it.
#[derive(Clone, Default)]
pub struct MemFiles {
    inner: Arc<Mutex<MemDir>>,
}

#[derive(Default)]
struct MemDir {
    files: BTreeMap<u64, MemFile>,
    segment_bytes: Option<u64>,
}

struct MemFile {
    size: u64,
    /// What a crash keeps (without trailing zeros).
    durable: Vec<u8>,
    /// What reads see (without trailing zeros).
    current: Vec<u8>,
    /// Writes since the last sync, in order: (offset, bytes).
    pending: Vec<(u64, Vec<u8>)>,
}

fn write_into(data: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
    let start = usize::try_from(offset).expect("in-memory segment offset fits in memory");
    let end = start + bytes.len();
    if data.len() < end {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(bytes);
}

impl MemFiles {
    pub fn new() -> Self {
        Self::default()
    }

    /// Files whose segments hold `segment_bytes` each (small ones make tests
    /// and simulations rotate and remove segments often).
    pub fn with_segment_bytes(segment_bytes: u64) -> Self {
        let files = Self::default();
        files.inner.lock().segment_bytes = Some(segment_bytes);
        files
    }

    /// A crash: every file keeps what was synced, plus the first `keep_bytes`
    /// bytes of the writes since (in write order, the last one cut).
    pub fn crash(&self, keep_bytes: usize) {
        let mut dir = self.inner.lock();
        for file in dir.files.values_mut() {
            let mut budget = keep_bytes;
            for (offset, bytes) in std::mem::take(&mut file.pending) {
                if budget == 0 {
                    break;
                }
                let kept = bytes.len().min(budget);
                budget -= kept;
                write_into(&mut file.durable, offset, &bytes[..kept]);
            }
            file.current = file.durable.clone();
        }
    }

    fn with_file<T>(&self, id: u64, f: impl FnOnce(&mut MemFile) -> io::Result<T>) -> io::Result<T> {
        let mut dir = self.inner.lock();
        let file = dir
            .files
            .get_mut(&id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no segment {id:016x}")))?;
        f(file)
    }
}

impl LogFiles for MemFiles {
    fn list(&self) -> io::Result<Vec<u64>> {
        Ok(self.inner.lock().files.keys().copied().collect())
    }

    fn create(&self, id: u64, size: u64) -> io::Result<()> {
        let mut dir = self.inner.lock();
        if dir.files.contains_key(&id) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("segment {id:016x}"),
            ));
        }
        dir.files.insert(
            id,
            MemFile {
                size,
                durable: Vec::new(),
                current: Vec::new(),
                pending: Vec::new(),
            },
        );
        Ok(())
    }

    fn read_all(&self, id: u64) -> io::Result<Vec<u8>> {
        self.with_file(id, |file| Ok(file.current.clone()))
    }

    fn read_at(&self, id: u64, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.with_file(id, |file| {
            let end = offset + buf.len() as u64;
            if end > file.size.max(file.current.len() as u64) {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the segment"));
            }
            buf.fill(0);
            let start = usize::try_from(offset).expect("in-memory offset");
            if start < file.current.len() {
                let available = (file.current.len() - start).min(buf.len());
                buf[..available].copy_from_slice(&file.current[start..start + available]);
            }
            Ok(())
        })
    }

    fn write_at(&self, id: u64, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.with_file(id, |file| {
            write_into(&mut file.current, offset, bytes);
            file.pending.push((offset, bytes.to_vec()));
            Ok(())
        })
    }

    fn sync(&self, id: u64) -> io::Result<()> {
        self.with_file(id, |file| {
            for (offset, bytes) in std::mem::take(&mut file.pending) {
                write_into(&mut file.durable, offset, &bytes);
            }
            Ok(())
        })
    }

    fn remove(&self, id: u64) -> io::Result<()> {
        self.inner.lock().files.remove(&id);
        Ok(())
    }

    fn segment_bytes(&self) -> u64 {
        self.inner.lock().segment_bytes.unwrap_or(super::SEGMENT_BYTES)
    }
}
