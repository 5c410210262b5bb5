//! Repairing the malformed `:authority` that etcd's Go clients send, before h2
//! sees it.
//!
//! # The problem
//!
//! etcd's Go client puts its dial target in the HTTP/2 `:authority`
//! pseudo-header. etcdctl 3.4 sends the endpoint exactly as the user typed it,
//! scheme included (`etcdctl --endpoints http://127.0.0.1:2379 ...` sends
//! `:authority: http://127.0.0.1:2379`, and so does `endpoint status --cluster`,
//! which dials the members' advertised client URLs). Some etcd 3.5 clients send
//! `#initially=[http://127.0.0.1:2379;http://10.0.0.2:2379]` (etcd issue
//! #13192, fixed for one endpoint by etcd PR #13359). Neither is an authority
//! (RFC 3986 §3.2). Go's HTTP/2 server, which real etcd runs, does not look at
//! it; h2 0.4, under tonic and hyper, parses it as `http::uri::Authority` and
//! answers `RST_STREAM(PROTOCOL_ERROR)` ("malformed headers: malformed
//! authority"). h2 has no switch to relax this, and forking it is not worth one
//! header.
//!
//! # Why a byte-stream adapter
//!
//! The only place left between the client and h2's parser is the byte stream
//! itself. [`AuthorityFixer`] wraps an accepted connection and reads the client's
//! HTTP/2 frames on their way in. Writes (server to client) are not touched.
//! Every frame other than HEADERS/CONTINUATION is forwarded as it arrives, byte
//! for byte, without being buffered.
//!
//! # Keeping HPACK consistent
//!
//! A header block cannot be edited in place: HPACK (RFC 7541) compresses it
//! against a dynamic table that the client's encoder and h2's decoder each keep,
//! and which must stay identical. So the adapter keeps a third copy, a decoder
//! that mirrors the client's encoder, and decides once per connection, at the
//! first complete header block:
//!
//! - If that block's `:authority` is valid (or absent), the original bytes go to
//!   h2 and the connection becomes pure pass-through for good. h2 has then seen
//!   every byte the client sent, so its table is the client's table; the mirror
//!   is dropped. Cost: one HPACK decode of the first block per connection
//!   (measured here: about 1 µs for a gRPC request block without Huffman coding,
//!   about 140 µs for the same block Huffman-coded as Go sends it, because
//!   loona-hpack rebuilds its Huffman table for every coded string), and one
//!   extra copy of the bytes read until that block is complete.
//! - Otherwise the connection switches to rewriting, this block included: each
//!   header block is decoded with the mirror (which keeps following the client's
//!   table, size updates included) and re-encoded as literal fields "without
//!   indexing" (RFC 7541 §6.2.2), with `:authority` repaired or dropped, and
//!   with dynamic table size updates left out. h2's decoder therefore never
//!   inserts anything: its dynamic table stays empty, and nothing it decodes
//!   depends on it. Blocks grow (no compression toward h2), which only costs
//!   bytes on a local buffer.
//!
//! Repair: strip a leading `#initially=[` (and then its `]`), keep the first of
//! the `;`/`,`-separated endpoints, strip `scheme://` and any path. If that
//! still is not an authority (`unix:///tmp/etcd.sock`), the field is dropped:
//! HTTP/2 allows a request without `:authority` and h2 accepts it. The block is
//! sent as one HEADERS frame (END_STREAM kept, END_HEADERS set, PADDED and
//! PRIORITY dropped along with their bytes), split into CONTINUATION frames past
//! [`FRAME_PAYLOAD_BYTES_MAX`].
//!
//! The decision is per connection because a Go client uses one authority for
//! every request on a connection. A connection whose first request is fine and a
//! later one is not stays pass-through, and h2 rejects that later request.
//!
//! # When the input is not what it should be
//!
//! Nothing here panics on client bytes. While still deciding, anything
//! unparseable (no preface, a truncated or oversized header block, a missing
//! CONTINUATION, a PUSH_PROMISE, an HPACK error, a header list over the limit)
//! sends everything buffered to h2 unchanged and switches to pass-through: h2
//! has seen exactly the client's bytes and produces its own error. Once rewriting, raw bytes can no longer be
//! forwarded (h2's table is empty, the client's is not: h2 could decode wrong
//! headers without noticing), so the adapter instead sends a HEADERS frame on
//! stream 0 (a connection error, RFC 9113 §6.2), which makes h2 close the
//! connection with GOAWAY(PROTOCOL_ERROR), and delivers end-of-stream after it.
//!
//! # Limits
//!
//! - [`HEADER_BLOCK_BYTES_MAX`]: one header block, as received (frame headers
//!   and padding included), is buffered up to this size; a larger one is given
//!   up on as above.
//! - [`HEADER_LIST_BYTES_MAX`]: decoded header list size (RFC 9113 §6.5.2
//!   accounting) that is re-encoded; bounds decompression bombs.
//! - [`HEADER_TABLE_BYTES`]: the dynamic table size h2 allows the client; the
//!   mirror enforces the same.
//! - [`PENDING_BYTES_SOFT_MAX`]: output waiting for h2 before the adapter stops
//!   parsing input, so small blocks that expand cannot pile up memory.
//!
//! # What it does not do
//!
//! - With TLS it must wrap the decrypted stream (the one h2 reads), not the
//!   socket.
//! - It does not fix `:authority` values that are valid but wrong.
//! - On rewritten connections two checks of h2 no longer see the client's
//!   bytes: a HEADERS priority that depends on its own stream (dropped with the
//!   priority), and a dynamic table size update in the middle of a block
//!   (loona-hpack accepts it; the mirror stays consistent either way).
//!
//! # The HPACK crate
//!
//! Decoding uses `loona-hpack` (bearcove's maintained fork of `hpack-rs`, made
//! to pass h2spec, last released November 2024 with a fix that removed a panic
//! on malformed integers): it decodes Huffman strings and the dynamic table,
//! returns errors rather than panicking on malformed input, checks size updates
//! against a maximum, and borrows indexed entries instead of copying them.
//! `hpack` (2015) and `fluke-hpack` are its unmaintained predecessors;
//! `httlib-hpack` 0.1 indexes past the end of a truncated integer (a panic on
//! client bytes). loona-hpack's encoder always indexes, so the
//! literal-without-indexing encoder below is ours (a dozen lines of RFC 7541 §5.1, §5.2 and §6.2.2).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One header block as received, all its frames included (9-byte frame headers
/// and padding too), is buffered up to this many bytes. 4 times the 16 KiB
/// header list hyper accepts by default (tonic's `http2_max_header_list_size`);
/// past it the block is not rewritten and h2 gets the bytes to reject.
pub const HEADER_BLOCK_BYTES_MAX: usize = 64 * 1024;

/// A decoded header list is re-encoded up to this size, counted as RFC 9113
/// §6.5.2 does (name + value + 32 per field). A 4 KiB table entry can be
/// referenced by one byte, so without this a 64 KiB block could expand to
/// 256 MiB.
pub const HEADER_LIST_BYTES_MAX: usize = 64 * 1024;

/// Payload size of the HEADERS/CONTINUATION frames the adapter writes: the
/// initial SETTINGS_MAX_FRAME_SIZE (RFC 9113 §6.5.2), which every HTTP/2
/// endpoint must accept whatever it advertises.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 16_384;

/// The HPACK dynamic table size h2 allows the client: the SETTINGS_HEADER_TABLE_SIZE
/// default (RFC 9113 §6.5.2), which neither hyper nor tonic changes. The mirror
/// decoder rejects size updates above it, as h2 does.
pub const HEADER_TABLE_BYTES: usize = 4096;

/// Once this much output waits for the reader, the adapter stops parsing input
/// until the reader has taken it. Pending output stays below this plus one
/// rewritten block.
pub const PENDING_BYTES_SOFT_MAX: usize = 64 * 1024;

/// Bytes read from the connection at a time while the adapter still parses.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// The client connection preface (RFC 9113 §3.4).
const CLIENT_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_BYTES: usize = 9;

const FRAME_TYPE_HEADERS: u8 = 0x1;
const FRAME_TYPE_PUSH_PROMISE: u8 = 0x5;
const FRAME_TYPE_CONTINUATION: u8 = 0x9;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Bytes a PRIORITY flag adds to a HEADERS payload (RFC 9113 §6.2).
const PRIORITY_BYTES: usize = 5;

const AUTHORITY: &[u8] = b":authority";

/// What an [`AuthorityFixer`] is doing with its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No complete header block yet: frames are parsed, the mirror decoder runs.
    Deciding,
    /// Bytes go to the reader unchanged, for good.
    PassThrough,
    /// Every header block is re-encoded with a repaired `:authority`.
    Rewriting,
    /// Rewriting failed on bad input; h2 has been handed a connection error
    /// and the reader sees end-of-stream after it.
    Poisoned,
}

/// A client connection whose HTTP/2 `:authority` is repaired before the reader
/// (h2) parses it; see the module documentation.
///
/// Wrap each accepted connection (inside TLS, if any) and hand it to tonic.
pub struct AuthorityFixer<T> {
    inner: T,
    filter: AuthorityFilter,
    /// Output of the filter not yet handed to the reader: `pending[pending_start..]`.
    pending: Vec<u8>,
    pending_start: usize,
    /// Input read from `inner` and not yet parsed: `scratch[scratch_start..scratch_end]`.
    /// Allocated while the filter parses, freed once it passes through.
    scratch: Option<Box<[u8]>>,
    scratch_start: usize,
    scratch_end: usize,
    inner_eof: bool,
}

impl<T> AuthorityFixer<T> {
    pub fn new(inner: T) -> Self {
        AuthorityFixer {
            inner,
            filter: AuthorityFilter::new(),
            pending: Vec::new(),
            pending_start: 0,
            scratch: None,
            scratch_start: 0,
            scratch_end: 0,
            inner_eof: false,
        }
    }

    pub fn mode(&self) -> Mode {
        self.filter.mode
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFixer<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.pending_start < this.pending.len() {
                let available = &this.pending[this.pending_start..];
                let n = available.len().min(buf.remaining());
                buf.put_slice(&available[..n]);
                this.pending_start += n;
                if this.pending_start == this.pending.len() {
                    this.pending.clear();
                    this.pending_start = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.scratch_start < this.scratch_end {
                let scratch = this.scratch.as_deref().expect("unparsed input lives in scratch");
                let input = &scratch[this.scratch_start..this.scratch_end];
                this.scratch_start += this.filter.feed(input, &mut this.pending);
                continue;
            }
            match this.filter.mode {
                Mode::PassThrough => {
                    // Nothing buffered remains: read straight into the caller's buffer.
                    this.scratch = None;
                    this.pending = Vec::new();
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                Mode::Poisoned => return Poll::Ready(Ok(())),
                Mode::Deciding | Mode::Rewriting => {}
            }
            if this.inner_eof {
                return Poll::Ready(Ok(()));
            }
            let scratch = this
                .scratch
                .get_or_insert_with(|| vec![0; READ_CHUNK_BYTES].into_boxed_slice());
            let mut chunk = ReadBuf::new(scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            let n = chunk.filled().len();
            if n == 0 {
                this.inner_eof = true;
                this.filter.finish(&mut this.pending);
            } else {
                this.scratch_start = 0;
                this.scratch_end = n;
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFixer<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The frame parser and rewriter, without I/O: bytes in, bytes out.
struct AuthorityFilter {
    mode: Mode,
    parse: Parse,
    /// Mirrors the client's HPACK encoder; `Some` while deciding or rewriting.
    mirror: Option<loona_hpack::Decoder<'static>>,
    /// The header block being received, once its HEADERS frame has begun.
    block: Option<PendingBlock>,
}

/// Where the parser is in the client's byte stream.
enum Parse {
    Preface {
        matched: usize,
    },
    FrameHeader {
        head: [u8; FRAME_HEADER_BYTES],
        filled: usize,
    },
    /// The payload of a frame that is not part of a header block: forwarded.
    Forward {
        remaining: usize,
    },
    /// The payload of a HEADERS or CONTINUATION frame: buffered in the block.
    HeaderPayload {
        head: FrameHead,
        frame_start: usize,
        remaining: usize,
    },
}

impl Parse {
    fn frame_header() -> Self {
        Parse::FrameHeader {
            head: [0; FRAME_HEADER_BYTES],
            filled: 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct FrameHead {
    length: usize,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHead {
    fn parse(head: &[u8; FRAME_HEADER_BYTES]) -> Self {
        FrameHead {
            length: usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]),
            kind: head[3],
            flags: head[4],
            // The high bit is reserved and ignored (RFC 9113 §4.1).
            stream_id: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
        }
    }
}

/// A header block in progress: its frames as received, and its fragments joined.
struct PendingBlock {
    stream_id: u32,
    end_stream: bool,
    raw: Vec<u8>,
    fragment: Vec<u8>,
}

/// Why a header block could not be decoded.
#[derive(Debug, thiserror::Error)]
enum BlockError {
    #[error("invalid HPACK: {0}")]
    Hpack(loona_hpack::decoder::DecoderError),
    #[error("decoded header list of {list_bytes} bytes exceeds {HEADER_LIST_BYTES_MAX}")]
    ListTooLarge { list_bytes: usize },
}

type HeaderList = Vec<(Vec<u8>, Vec<u8>)>;

impl AuthorityFilter {
    fn new() -> Self {
        let mut mirror = loona_hpack::Decoder::new();
        mirror.set_max_allowed_table_size(HEADER_TABLE_BYTES);
        AuthorityFilter {
            mode: Mode::Deciding,
            parse: Parse::Preface { matched: 0 },
            mirror: Some(mirror),
            block: None,
        }
    }

    /// Parses a prefix of `input`, appending what the reader must see to `out`;
    /// returns how many bytes were consumed. Stops early once `out` holds
    /// [`PENDING_BYTES_SOFT_MAX`].
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let mut consumed = 0;
        while consumed < input.len() {
            let rest = &input[consumed..];
            match self.mode {
                Mode::PassThrough => {
                    out.extend_from_slice(rest);
                    return input.len();
                }
                Mode::Poisoned => return input.len(),
                Mode::Deciding | Mode::Rewriting => {}
            }
            if out.len() >= PENDING_BYTES_SOFT_MAX {
                break;
            }
            consumed += match &mut self.parse {
                Parse::Preface { matched } => {
                    let n = rest.len().min(CLIENT_PREFACE.len() - *matched);
                    out.extend_from_slice(&rest[..n]);
                    if rest[..n] != CLIENT_PREFACE[*matched..*matched + n] {
                        // Not HTTP/2 with prior knowledge: h2 will say so.
                        self.enter_pass_through();
                    } else {
                        *matched += n;
                        if *matched == CLIENT_PREFACE.len() {
                            self.parse = Parse::frame_header();
                        }
                    }
                    n
                }
                Parse::FrameHeader { head, filled } => {
                    let n = rest.len().min(FRAME_HEADER_BYTES - *filled);
                    head[*filled..*filled + n].copy_from_slice(&rest[..n]);
                    *filled += n;
                    if *filled == FRAME_HEADER_BYTES {
                        let head = *head;
                        self.on_frame_header(head, out);
                    }
                    n
                }
                Parse::Forward { remaining } => {
                    let n = rest.len().min(*remaining);
                    out.extend_from_slice(&rest[..n]);
                    *remaining -= n;
                    if *remaining == 0 {
                        self.parse = Parse::frame_header();
                    }
                    n
                }
                Parse::HeaderPayload {
                    head,
                    frame_start,
                    remaining,
                } => {
                    let n = rest.len().min(*remaining);
                    let block = self.block.as_mut().expect("a header payload belongs to a block");
                    block.raw.extend_from_slice(&rest[..n]);
                    *remaining -= n;
                    if *remaining == 0 {
                        let (head, frame_start) = (*head, *frame_start);
                        self.on_header_frame(head, frame_start, out);
                    }
                    n
                }
            };
        }
        consumed
    }

    /// The client closed its side: while deciding, whatever was buffered goes
    /// to h2 as it came (h2 then reports the truncation); while rewriting it
    /// cannot, and is dropped.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.mode == Mode::Deciding {
            if let Some(block) = self.block.take() {
                out.extend_from_slice(&block.raw);
            }
            if let Parse::FrameHeader { head, filled } = &self.parse {
                out.extend_from_slice(&head[..*filled]);
            }
        }
        self.block = None;
        self.mirror = None;
    }

    fn on_frame_header(&mut self, head_bytes: [u8; FRAME_HEADER_BYTES], out: &mut Vec<u8>) {
        let head = FrameHead::parse(&head_bytes);
        match &self.block {
            Some(block) => {
                if head.kind != FRAME_TYPE_CONTINUATION || head.stream_id != block.stream_id {
                    return self.give_up(&head_bytes, out);
                }
            }
            None => match head.kind {
                FRAME_TYPE_HEADERS if head.stream_id != 0 => {
                    self.block = Some(PendingBlock {
                        stream_id: head.stream_id,
                        end_stream: head.flags & FLAG_END_STREAM != 0,
                        raw: Vec::new(),
                        fragment: Vec::new(),
                    });
                }
                FRAME_TYPE_HEADERS | FRAME_TYPE_CONTINUATION | FRAME_TYPE_PUSH_PROMISE => {
                    return self.give_up(&head_bytes, out);
                }
                _ => {
                    out.extend_from_slice(&head_bytes);
                    self.parse = if head.length == 0 {
                        Parse::frame_header()
                    } else {
                        Parse::Forward { remaining: head.length }
                    };
                    return;
                }
            },
        }
        let block = self.block.as_mut().expect("a header frame belongs to a block");
        if block.raw.len() + FRAME_HEADER_BYTES + head.length > HEADER_BLOCK_BYTES_MAX {
            return self.give_up(&head_bytes, out);
        }
        let frame_start = block.raw.len();
        block.raw.extend_from_slice(&head_bytes);
        if head.length == 0 {
            self.on_header_frame(head, frame_start, out);
        } else {
            self.parse = Parse::HeaderPayload {
                head,
                frame_start,
                remaining: head.length,
            };
        }
    }

    /// A HEADERS or CONTINUATION frame of the current block is complete.
    fn on_header_frame(&mut self, head: FrameHead, frame_start: usize, out: &mut Vec<u8>) {
        let block = self.block.as_mut().expect("a header frame belongs to a block");
        let payload = &block.raw[frame_start + FRAME_HEADER_BYTES..];
        assert_eq!(payload.len(), head.length, "a header frame is buffered whole");
        let fragment = if head.kind == FRAME_TYPE_HEADERS {
            header_block_fragment(head.flags, payload)
        } else {
            Some(payload)
        };
        let Some(fragment) = fragment else {
            return self.give_up(&[], out);
        };
        block.fragment.extend_from_slice(fragment);
        if head.flags & FLAG_END_HEADERS == 0 {
            self.parse = Parse::frame_header();
        } else {
            self.on_block(out);
        }
    }

    /// A whole header block has arrived: decide, rewrite or forward it.
    fn on_block(&mut self, out: &mut Vec<u8>) {
        let block = self.block.take().expect("a completed block exists");
        let mirror = self.mirror.as_mut().expect("the mirror runs while parsing");
        let decoded = decode_block(mirror, &block.fragment);
        self.parse = Parse::frame_header();
        let fields = match (self.mode, decoded) {
            (Mode::Deciding, Ok(fields)) => {
                let bad = fields
                    .iter()
                    .find(|(name, value)| name == AUTHORITY && !authority_is_valid(value));
                let Some((_, bad)) = bad else {
                    out.extend_from_slice(&block.raw);
                    return self.enter_pass_through();
                };
                tracing::debug!(
                    authority = %String::from_utf8_lossy(bad),
                    repaired = ?repair_authority(bad).map(|a| String::from_utf8_lossy(&a).into_owned()),
                    "HTTP/2 client sent a malformed :authority; rewriting its header blocks"
                );
                self.mode = Mode::Rewriting;
                fields
            }
            (Mode::Deciding, Err(error)) => {
                tracing::debug!(%error, "HTTP/2 header block not decodable; passing through");
                out.extend_from_slice(&block.raw);
                return self.enter_pass_through();
            }
            (Mode::Rewriting, Ok(fields)) => fields,
            (Mode::Rewriting, Err(error)) => {
                tracing::debug!(%error, "HTTP/2 header block not decodable while rewriting");
                return self.poison(out);
            }
            (mode, _) => unreachable!("blocks are parsed only while deciding or rewriting, not {mode:?}"),
        };
        let mut encoded = Vec::new();
        for (name, value) in &fields {
            if name == AUTHORITY {
                if let Some(authority) = repair_authority(value) {
                    encode_literal_without_indexing(name, &authority, &mut encoded);
                }
            } else {
                encode_literal_without_indexing(name, value, &mut encoded);
            }
        }
        write_header_frames(block.stream_id, block.end_stream, &encoded, out);
    }

    /// The input cannot be followed. `unparsed` are bytes consumed but in no
    /// buffer yet (a frame header).
    fn give_up(&mut self, unparsed: &[u8], out: &mut Vec<u8>) {
        match self.mode {
            Mode::Deciding => {
                // h2 has seen nothing the client did not send: forwarding all of
                // it keeps h2's HPACK state the client's.
                if let Some(block) = self.block.take() {
                    out.extend_from_slice(&block.raw);
                }
                out.extend_from_slice(unparsed);
                self.enter_pass_through();
            }
            Mode::Rewriting => self.poison(out),
            mode => unreachable!("input is parsed only while deciding or rewriting, not {mode:?}"),
        }
    }

    fn enter_pass_through(&mut self) {
        self.mode = Mode::PassThrough;
        self.mirror = None;
        self.block = None;
    }

    /// Makes h2 close the connection: a HEADERS frame on stream 0 is a
    /// connection error (RFC 9113 §6.2), and its block (index 0) is invalid
    /// HPACK besides (RFC 7541 §6.1).
    fn poison(&mut self, out: &mut Vec<u8>) {
        const POISON: [u8; FRAME_HEADER_BYTES + 1] = [0, 0, 1, FRAME_TYPE_HEADERS, FLAG_END_HEADERS, 0, 0, 0, 0, 0x80];
        out.extend_from_slice(&POISON);
        self.mode = Mode::Poisoned;
        self.mirror = None;
        self.block = None;
    }
}

/// The header block fragment of a HEADERS payload, without padding and
/// priority; `None` if the padding does not fit (RFC 9113 §6.2).
fn header_block_fragment(flags: u8, payload: &[u8]) -> Option<&[u8]> {
    let mut start = 0;
    let mut padding = 0;
    if flags & FLAG_PADDED != 0 {
        padding = usize::from(*payload.first()?);
        start += 1;
    }
    if flags & FLAG_PRIORITY != 0 {
        start += PRIORITY_BYTES;
    }
    let end = payload.len().checked_sub(padding)?;
    payload.get(start..end)
}

/// Decodes one header block with the mirror, which follows every table change
/// in it even when the list is too large to keep.
fn decode_block(mirror: &mut loona_hpack::Decoder<'static>, fragment: &[u8]) -> Result<HeaderList, BlockError> {
    let mut fields = Vec::new();
    let mut list_bytes = 0usize;
    mirror
        .decode_with_cb(fragment, |name, value| {
            list_bytes = list_bytes.saturating_add(name.len() + value.len() + 32);
            if list_bytes <= HEADER_LIST_BYTES_MAX {
                fields.push((name.into_owned(), value.into_owned()));
            }
        })
        .map_err(BlockError::Hpack)?;
    if list_bytes > HEADER_LIST_BYTES_MAX {
        return Err(BlockError::ListTooLarge { list_bytes });
    }
    Ok(fields)
}

/// Whether h2 accepts this `:authority` (it parses it the same way).
fn authority_is_valid(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// The authority a lenient server would have understood, or `None` to drop the
/// field: `http://a:1/x` → `a:1`; `#initially=[http://a:1;http://b:2]` → `a:1`.
fn repair_authority(value: &[u8]) -> Option<Vec<u8>> {
    if authority_is_valid(value) {
        return Some(value.to_vec());
    }
    let mut rest = value;
    if let Some(endpoints) = rest.strip_prefix(b"#initially=[") {
        rest = endpoints.strip_suffix(b"]").unwrap_or(endpoints);
    }
    let first = rest
        .split(|&b| b == b';' || b == b',')
        .next()
        .unwrap_or(rest)
        .trim_ascii();
    let after_scheme = match first.windows(3).position(|w| w == b"://") {
        Some(at) => &first[at + 3..],
        None => first,
    };
    let host_end = after_scheme
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(after_scheme.len());
    let host = &after_scheme[..host_end];
    authority_is_valid(host).then(|| host.to_vec())
}

/// A literal header field without indexing, new name, no Huffman (RFC 7541
/// §6.2.2): h2 decodes it without touching its dynamic table.
fn encode_literal_without_indexing(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    encode_string(name, out);
    encode_string(value, out);
}

/// A string literal, not Huffman-coded (RFC 7541 §5.2).
fn encode_string(bytes: &[u8], out: &mut Vec<u8>) {
    encode_integer(bytes.len(), 7, 0x00, out);
    out.extend_from_slice(bytes);
}

/// An integer with an N-bit prefix (RFC 7541 §5.1); `flags` fill the bits
/// above the prefix.
fn encode_integer(mut value: usize, prefix_bits: u8, flags: u8, out: &mut Vec<u8>) {
    assert!((1..=8).contains(&prefix_bits), "HPACK prefixes are 1 to 8 bits");
    let prefix_max = (1usize << prefix_bits) - 1;
    if value < prefix_max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | prefix_max as u8);
    value -= prefix_max;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// One HEADERS frame, then CONTINUATION frames, carrying `block`.
fn write_header_frames(stream_id: u32, end_stream: bool, block: &[u8], out: &mut Vec<u8>) {
    assert!(
        stream_id != 0 && stream_id <= 0x7fff_ffff,
        "header blocks belong to a stream"
    );
    let mut chunks: Vec<&[u8]> = block.chunks(FRAME_PAYLOAD_BYTES_MAX).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let (kind, mut flags) = if i == 0 {
            (FRAME_TYPE_HEADERS, if end_stream { FLAG_END_STREAM } else { 0 })
        } else {
            (FRAME_TYPE_CONTINUATION, 0)
        };
        if i == last {
            flags |= FLAG_END_HEADERS;
        }
        let length = chunk.len();
        assert!(length <= FRAME_PAYLOAD_BYTES_MAX);
        out.extend_from_slice(&[(length >> 16) as u8, (length >> 8) as u8, length as u8, kind, flags]);
        out.extend_from_slice(&stream_id.to_be_bytes());
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use httlib_hpack::{Decoder as TestDecoder, Encoder as TestEncoder};

    const GOOD: &str = "127.0.0.1:2379";
    const BAD: &str = "http://127.0.0.1:2379";

    /// Huffman-coded names and values, indexed into the dynamic table, and
    /// referencing what earlier blocks indexed: what Go's encoder does.
    const COMPRESSED: u8 =
        TestEncoder::HUFFMAN_NAME | TestEncoder::HUFFMAN_VALUE | TestEncoder::WITH_INDEXING | TestEncoder::BEST_FORMAT;

    type Fields = Vec<(String, String)>;

    fn request(path: &str, authority: &str) -> Fields {
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("user-agent", "grpc-go/1.26.0"),
            ("te", "trailers"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
    }

    fn with_authority(fields: &Fields, authority: Option<&str>) -> Fields {
        fields
            .iter()
            .filter_map(|(n, v)| match (n.as_str(), authority) {
                (":authority", None) => None,
                (":authority", Some(a)) => Some((n.clone(), a.to_string())),
                _ => Some((n.clone(), v.clone())),
            })
            .collect()
    }

    fn encode(encoder: &mut TestEncoder, fields: &Fields) -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in fields {
            let field = (name.as_bytes().to_vec(), value.as_bytes().to_vec(), COMPRESSED);
            encoder.encode(field, &mut block).unwrap();
        }
        block
    }

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let length = payload.len();
        let mut out = vec![(length >> 16) as u8, (length >> 8) as u8, length as u8, kind, flags];
        out.extend_from_slice(&stream_id.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn headers(stream_id: u32, end_stream: bool, block: &[u8]) -> Vec<u8> {
        let flags = FLAG_END_HEADERS | if end_stream { FLAG_END_STREAM } else { 0 };
        frame(FRAME_TYPE_HEADERS, flags, stream_id, block)
    }

    /// An empty gRPC message, as the DATA frame that ends a unary request.
    fn data(stream_id: u32) -> Vec<u8> {
        frame(0x0, FLAG_END_STREAM, stream_id, &[0, 0, 0, 0, 0])
    }

    /// Preface and an empty SETTINGS frame, as every client starts.
    fn connection_start() -> Vec<u8> {
        let mut bytes = CLIENT_PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[]));
        bytes
    }

    /// Runs `input` through a filter, `chunk` bytes at a time, then ends it.
    fn run(input: &[u8], chunk: usize) -> (Vec<u8>, Mode) {
        let mut filter = AuthorityFilter::new();
        let (mut total, mut out) = (Vec::new(), Vec::new());
        for piece in input.chunks(chunk) {
            let mut consumed = 0;
            while consumed < piece.len() {
                consumed += filter.feed(&piece[consumed..], &mut out);
                // The reader takes everything between feeds.
                total.append(&mut out);
            }
        }
        filter.finish(&mut total);
        (total, filter.mode)
    }

    #[derive(Debug, PartialEq)]
    struct Frame {
        kind: u8,
        flags: u8,
        stream_id: u32,
        payload: Vec<u8>,
    }

    fn parse_frames(bytes: &[u8]) -> Vec<Frame> {
        assert_eq!(&bytes[..24], CLIENT_PREFACE, "the preface passes through");
        let mut rest = &bytes[24..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            let head = FrameHead::parse(rest[..9].try_into().unwrap());
            frames.push(Frame {
                kind: head.kind,
                flags: head.flags,
                stream_id: head.stream_id,
                payload: rest[9..9 + head.length].to_vec(),
            });
            rest = &rest[9 + head.length..];
        }
        frames
    }

    #[derive(Debug, PartialEq)]
    struct Block {
        stream_id: u32,
        end_stream: bool,
        fields: Fields,
    }

    /// Decodes every header block of the output with a fresh decoder of another
    /// implementation, checking that none of them touches its dynamic table.
    fn decode_output(frames: &[Frame]) -> Vec<Block> {
        let mut decoder = TestDecoder::default();
        let mut blocks = Vec::new();
        let mut open: Option<(u32, bool, Vec<u8>)> = None;
        for frame in frames {
            match frame.kind {
                FRAME_TYPE_HEADERS => {
                    assert!(open.is_none(), "no HEADERS inside a block");
                    assert_eq!(
                        frame.flags & (FLAG_PADDED | FLAG_PRIORITY),
                        0,
                        "padding and priority dropped"
                    );
                    assert!(frame.payload.len() <= FRAME_PAYLOAD_BYTES_MAX);
                    open = Some((
                        frame.stream_id,
                        frame.flags & FLAG_END_STREAM != 0,
                        frame.payload.clone(),
                    ));
                }
                FRAME_TYPE_CONTINUATION => {
                    let (stream_id, _, fragment) = open.as_mut().expect("CONTINUATION follows HEADERS");
                    assert_eq!(*stream_id, frame.stream_id);
                    assert!(frame.payload.len() <= FRAME_PAYLOAD_BYTES_MAX);
                    fragment.extend_from_slice(&frame.payload);
                }
                _ => {
                    assert!(open.is_none(), "no other frame inside a block");
                    continue;
                }
            }
            if frame.flags & FLAG_END_HEADERS != 0 {
                let (stream_id, end_stream, mut fragment) = open.take().unwrap();
                let mut decoded = Vec::new();
                decoder.decode(&mut fragment, &mut decoded).unwrap();
                let mut fields = Vec::new();
                for (name, value, flags) in decoded {
                    assert_eq!(flags & TestDecoder::WITH_INDEXING, 0, "nothing indexed toward h2");
                    fields.push((String::from_utf8(name).unwrap(), String::from_utf8(value).unwrap()));
                }
                blocks.push(Block {
                    stream_id,
                    end_stream,
                    fields,
                });
            }
        }
        assert!(open.is_none(), "every block ends");
        blocks
    }

    /// Three requests on one connection with a malformed authority; later blocks
    /// reference dynamic table entries that earlier blocks added, and the last
    /// one shrinks the table first.
    fn bad_connection(authority: &str) -> (Vec<u8>, Vec<Fields>) {
        let mut encoder = TestEncoder::default();
        let first = request("/etcdserverpb.Maintenance/Status", authority);
        let second = request("/etcdserverpb.KV/Range", authority);
        let mut third = request("/etcdserverpb.KV/Put", authority);
        third.push(("x-trace".to_string(), "t".repeat(300)));

        let mut input = connection_start();
        input.extend(headers(1, false, &encode(&mut encoder, &first)));
        input.extend(data(1));
        let second_block = encode(&mut encoder, &second);
        assert!(
            second_block.iter().any(|&b| b >= 0x80 | 62),
            "the second block references the dynamic table"
        );
        input.extend(headers(3, false, &second_block));
        input.extend(frame(0x8, 0, 0, &[0, 0, 0x10, 0])); // WINDOW_UPDATE
        input.extend(data(3));
        let mut third_block = Vec::new();
        encoder.update_max_dynamic_size(256, &mut third_block).unwrap();
        third_block.extend(encode(&mut encoder, &third));
        input.extend(headers(5, true, &third_block));
        (input, vec![first, second, third])
    }

    #[test]
    fn bad_authority_is_repaired_in_every_block_and_nothing_else_changes() {
        let (input, requests) = bad_connection(BAD);
        for chunk in [1, 7, 100, input.len()] {
            let (output, mode) = run(&input, chunk);
            assert_eq!(mode, Mode::Rewriting);
            let frames = parse_frames(&output);
            let blocks = decode_output(&frames);
            let expected: Vec<Block> = [(1, false), (3, false), (5, true)]
                .into_iter()
                .zip(&requests)
                .map(|((stream_id, end_stream), fields)| Block {
                    stream_id,
                    end_stream,
                    fields: with_authority(fields, Some(GOOD)),
                })
                .collect();
            assert_eq!(blocks, expected, "chunk {chunk}");
            // The frames that are not headers come out as they went in.
            let others: Vec<&Frame> = frames.iter().filter(|f| f.kind != FRAME_TYPE_HEADERS).collect();
            let input_others: Vec<Frame> = parse_frames(&input)
                .into_iter()
                .filter(|f| f.kind != FRAME_TYPE_HEADERS)
                .collect();
            assert_eq!(others, input_others.iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn valid_authority_connection_passes_through_byte_identical() {
        let (input, _) = bad_connection(GOOD);
        for chunk in [1, 13, input.len()] {
            assert_eq!(run(&input, chunk), (input.clone(), Mode::PassThrough));
        }
        // Decided at the first block: a later bad authority is h2's to reject.
        let mut encoder = TestEncoder::default();
        let mut input = connection_start();
        input.extend(headers(1, true, &encode(&mut encoder, &request("/a", GOOD))));
        input.extend(headers(3, true, &encode(&mut encoder, &request("/b", BAD))));
        assert_eq!(run(&input, 5), (input.clone(), Mode::PassThrough));
        // No authority at all is valid HTTP/2.
        let mut input = connection_start();
        let fields = with_authority(&request("/a", GOOD), None);
        input.extend(headers(1, true, &encode(&mut TestEncoder::default(), &fields)));
        assert_eq!(run(&input, 3), (input.clone(), Mode::PassThrough));
    }

    #[test]
    fn etcd_35_initially_list_is_repaired() {
        let authority = "#initially=[http://127.0.0.1:2379;http://10.0.0.2:2379]";
        let (input, requests) = bad_connection(authority);
        let (output, mode) = run(&input, 9);
        assert_eq!(mode, Mode::Rewriting);
        let blocks = decode_output(&parse_frames(&output));
        assert_eq!(blocks[0].fields, with_authority(&requests[0], Some(GOOD)));
    }

    #[test]
    fn unrepairable_authority_is_dropped() {
        let (input, requests) = bad_connection("unix:///var/run/etcd.sock");
        let (output, mode) = run(&input, 64);
        assert_eq!(mode, Mode::Rewriting);
        let blocks = decode_output(&parse_frames(&output));
        for (block, fields) in blocks.iter().zip(&requests) {
            assert_eq!(block.fields, with_authority(fields, None));
        }
    }

    #[test]
    fn repair_authority_cases() {
        let cases: &[(&str, Option<&str>)] = &[
            ("127.0.0.1:2379", Some("127.0.0.1:2379")),
            ("etcd-0.etcd:2379", Some("etcd-0.etcd:2379")),
            ("http://127.0.0.1:2379", Some("127.0.0.1:2379")),
            ("https://etcd.example.com:2379/", Some("etcd.example.com:2379")),
            ("http://[::1]:2379/v3?x=1", Some("[::1]:2379")),
            ("#initially=[127.0.0.1:2379]", Some("127.0.0.1:2379")),
            ("#initially=[http://a:1;http://b:2]", Some("a:1")),
            ("#initially=[http://a:1,http://b:2]", Some("a:1")),
            (" http://a:1 ", Some("a:1")),
            ("unix:///tmp/etcd.sock", None),
            ("unix:etcd.sock:0", None),
            ("", None),
            ("#initially=[]", None),
        ];
        for (input, expected) in cases {
            let repaired = repair_authority(input.as_bytes());
            assert_eq!(repaired.as_deref(), expected.map(str::as_bytes), "{input:?}");
        }
    }

    #[test]
    fn header_block_split_over_continuations_is_rewritten() {
        let fields = request("/etcdserverpb.Maintenance/Status", BAD);
        let block = encode(&mut TestEncoder::default(), &fields);
        let (a, rest) = block.split_at(5);
        let (b, c) = rest.split_at(rest.len() / 2);
        let mut input = connection_start();
        input.extend(frame(FRAME_TYPE_HEADERS, FLAG_END_STREAM, 1, a));
        input.extend(frame(FRAME_TYPE_CONTINUATION, 0, 1, b));
        input.extend(frame(FRAME_TYPE_CONTINUATION, FLAG_END_HEADERS, 1, c));
        input.extend(frame(0x6, 0, 0, &[1; 8])); // PING, after the block
        let (output, mode) = run(&input, 4);
        assert_eq!(mode, Mode::Rewriting);
        let frames = parse_frames(&output);
        assert_eq!(frames.len(), 3, "SETTINGS, one HEADERS, PING: {frames:?}");
        assert_eq!(frames[1].flags, FLAG_END_STREAM | FLAG_END_HEADERS);
        let blocks = decode_output(&frames);
        assert_eq!(
            blocks,
            vec![Block {
                stream_id: 1,
                end_stream: true,
                fields: with_authority(&fields, Some(GOOD))
            }]
        );
    }

    #[test]
    fn padded_headers_with_priority_are_rewritten() {
        let fields = request("/etcdserverpb.KV/Range", BAD);
        let block = encode(&mut TestEncoder::default(), &fields);
        let mut payload = vec![10]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 15]); // stream dependency and weight
        payload.extend_from_slice(&block);
        payload.extend_from_slice(&[0; 10]);
        let mut input = connection_start();
        let flags = FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY;
        input.extend(frame(FRAME_TYPE_HEADERS, flags, 7, &payload));
        input.extend(data(7));
        let (output, mode) = run(&input, 3);
        assert_eq!(mode, Mode::Rewriting);
        let blocks = decode_output(&parse_frames(&output));
        assert_eq!(
            blocks,
            vec![Block {
                stream_id: 7,
                end_stream: false,
                fields: with_authority(&fields, Some(GOOD))
            }]
        );
        // Padding longer than the payload is not parseable: h2 gets it as sent.
        let mut input = connection_start();
        input.extend(frame(FRAME_TYPE_HEADERS, flags, 7, &[200, 0, 0, 0, 0, 15, 0x82]));
        assert_eq!(run(&input, 2), (input.clone(), Mode::PassThrough));
    }

    #[test]
    fn large_rewritten_block_is_split_into_continuations() {
        let mut fields = request("/etcdserverpb.KV/Put", BAD);
        fields.push(("x-large".to_string(), "v".repeat(40_000)));
        let block = encode(&mut TestEncoder::default(), &fields);
        let (a, b) = block.split_at(block.len() / 2);
        let mut input = connection_start();
        input.extend(frame(FRAME_TYPE_HEADERS, 0, 1, a));
        input.extend(frame(FRAME_TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b));
        let (output, mode) = run(&input, 1000);
        assert_eq!(mode, Mode::Rewriting);
        let frames = parse_frames(&output);
        let kinds: Vec<(u8, u8)> = frames.iter().skip(1).map(|f| (f.kind, f.flags)).collect();
        assert_eq!(
            kinds,
            vec![
                (FRAME_TYPE_HEADERS, 0),
                (FRAME_TYPE_CONTINUATION, 0),
                (FRAME_TYPE_CONTINUATION, FLAG_END_HEADERS)
            ]
        );
        let blocks = decode_output(&frames);
        assert_eq!(blocks[0].fields, with_authority(&fields, Some(GOOD)));
    }

    #[test]
    fn unparseable_input_passes_through_unchanged() {
        let mut rng = XorShift(0x5eed);
        let random: Vec<u8> = (0..4096).map(|_| rng.next() as u8).collect();
        let block = encode(&mut TestEncoder::default(), &request("/x", BAD));
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("no preface", random.clone()),
            ("HTTP/1.1", b"GET / HTTP/1.1\r\nHost: http://x\r\n\r\n".to_vec()),
            (
                "garbage after the preface",
                [CLIENT_PREFACE.as_slice(), &random].concat(),
            ),
        ];
        let mut push = |name, frames: Vec<Vec<u8>>| {
            let mut input = connection_start();
            frames.into_iter().for_each(|f| input.extend(f));
            cases.push((name, input));
        };
        push(
            "invalid HPACK",
            vec![headers(1, true, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff])],
        );
        push("index 0", vec![headers(1, true, &[0x80])]);
        push("unknown dynamic index", vec![headers(1, true, &[0x80 | 70])]);
        push("truncated string", vec![headers(1, true, &[0x00, 0x05, b'a'])]);
        push(
            "size update over the limit",
            vec![headers(1, true, &[0x3f, 0xe1, 0x7f, 0x82])],
        );
        push(
            "CONTINUATION alone",
            vec![frame(FRAME_TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block)],
        );
        push(
            "PUSH_PROMISE",
            vec![frame(FRAME_TYPE_PUSH_PROMISE, FLAG_END_HEADERS, 1, &block)],
        );
        push("HEADERS on stream 0", vec![headers(0, true, &block)]);
        push(
            "CONTINUATION missing",
            vec![
                frame(FRAME_TYPE_HEADERS, 0, 1, &block[..3]),
                data(1),
                frame(FRAME_TYPE_CONTINUATION, 4, 1, &block[3..]),
            ],
        );
        push(
            "CONTINUATION on another stream",
            vec![
                frame(FRAME_TYPE_HEADERS, 0, 1, &block[..3]),
                frame(FRAME_TYPE_CONTINUATION, 4, 3, &block[3..]),
            ],
        );
        push("truncated HEADERS", vec![headers(1, true, &block)[..20].to_vec()]);
        push("truncated frame header", vec![vec![0, 0, 4, 1]]);
        push(
            "oversized block",
            vec![headers(1, true, &vec![0x82; HEADER_BLOCK_BYTES_MAX])],
        );
        for (name, input) in cases {
            for chunk in [1, 10, input.len()] {
                let (output, mode) = run(&input, chunk);
                assert_eq!(output, input, "{name}, chunk {chunk}");
                assert_ne!(mode, Mode::Rewriting, "{name}");
            }
        }
    }

    const POISON_LEN: usize = FRAME_HEADER_BYTES + 1;

    #[test]
    fn bad_input_while_rewriting_poisons_the_connection() {
        let (start, _) = bad_connection(BAD);
        let (clean, _) = run(&start, start.len());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("invalid HPACK", headers(9, true, &[0x80 | 120])),
            (
                "CONTINUATION alone",
                frame(FRAME_TYPE_CONTINUATION, FLAG_END_HEADERS, 9, &[0x82]),
            ),
            ("oversized block", headers(9, true, &vec![0x82; HEADER_BLOCK_BYTES_MAX])),
            (
                "PUSH_PROMISE",
                frame(FRAME_TYPE_PUSH_PROMISE, FLAG_END_HEADERS, 9, &[0, 0, 0, 2, 0x82]),
            ),
        ];
        for (name, garbage) in cases {
            let mut input = start.clone();
            input.extend(garbage);
            input.extend(data(9)); // dropped: h2 is closing the connection
            let (output, mode) = run(&input, 50);
            assert_eq!(mode, Mode::Poisoned, "{name}");
            assert_eq!(&output[..clean.len()], &clean[..], "{name}");
            let poison = &output[clean.len()..];
            assert_eq!(poison.len(), POISON_LEN, "{name}");
            let head = FrameHead::parse(poison[..9].try_into().unwrap());
            assert_eq!((head.kind, head.stream_id), (FRAME_TYPE_HEADERS, 0), "{name}");
        }
    }

    #[test]
    fn decompression_bomb_is_not_rewritten() {
        // One 4000-byte entry in the table, then a block that references it 20
        // times: 80 KB of header list from 20 bytes.
        let mut encoder = TestEncoder::default();
        let mut fields = request("/a", BAD);
        fields.push(("x-big".to_string(), "b".repeat(4000)));
        let mut input = connection_start();
        input.extend(headers(1, true, &encode(&mut encoder, &fields)));
        let big_index = 62; // the most recent entry
        input.extend(headers(3, true, &[0x80 | big_index; 20]));
        let (output, mode) = run(&input, 512);
        assert_eq!(mode, Mode::Poisoned);
        assert_eq!(
            &output[output.len() - POISON_LEN..output.len() - 1],
            &[0, 0, 1, 1, 4, 0, 0, 0, 0]
        );
    }

    #[test]
    fn pending_output_is_bounded() {
        let mut encoder = TestEncoder::default();
        let mut fields = request("/a", BAD);
        fields.push(("x-big".to_string(), "b".repeat(3000)));
        let mut input = connection_start();
        input.extend(headers(1, true, &encode(&mut encoder, &fields)));
        // Many 10-byte blocks that each expand to about 3 KB.
        for stream_id in (3..2000).step_by(2) {
            input.extend(headers(stream_id, true, &[0x80 | 62]));
        }
        let mut filter = AuthorityFilter::new();
        let mut total = Vec::new();
        let mut rest = &input[..];
        while !rest.is_empty() {
            let mut out = Vec::new();
            let consumed = filter.feed(rest, &mut out);
            assert!(consumed > 0);
            assert!(
                out.len() < PENDING_BYTES_SOFT_MAX + HEADER_LIST_BYTES_MAX + 1024,
                "{}",
                out.len()
            );
            total.extend(out);
            rest = &rest[consumed..];
        }
        assert_eq!(filter.mode, Mode::Rewriting);
        assert_eq!(decode_output(&parse_frames(&total)).len(), 1000);
    }

    #[test]
    fn random_frames_never_panic() {
        let mut rng = XorShift(42);
        let mut encoder = TestEncoder::default();
        let good_start = {
            let mut bytes = connection_start();
            bytes.extend(headers(1, false, &encode(&mut encoder, &request("/a", BAD))));
            bytes
        };
        for round in 0..3000 {
            let mut input = if round % 2 == 0 {
                good_start.clone()
            } else {
                connection_start()
            };
            for _ in 0..rng.below(6) {
                let kind = [0x0, 0x1, 0x1, 0x5, 0x9, 0x9, 0x8, 0xff][rng.below(8)];
                let flags = rng.next() as u8;
                let stream_id = rng.below(4) as u32;
                let payload: Vec<u8> = (0..rng.below(40)).map(|_| rng.next() as u8).collect();
                input.extend(frame(kind, flags, stream_id, &payload));
            }
            let cut = input.len() - rng.below(5).min(input.len() - 24);
            let (output, mode) = run(&input[..cut], 1 + rng.below(64));
            if mode == Mode::PassThrough && round % 2 == 1 {
                assert_eq!(output, &input[..cut]);
            }
        }
    }

    #[tokio::test]
    async fn adapter_rewrites_reads_and_passes_writes_through() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (input, _) = bad_connection(BAD);
        let (expected, _) = run(&input, input.len());
        let (mut client, server) = tokio::io::duplex(64);
        let mut server = AuthorityFixer::new(server);
        let writer = {
            let input = input.clone();
            tokio::spawn(async move {
                for piece in input.chunks(11) {
                    client.write_all(piece).await.unwrap();
                }
                client.shutdown().await.unwrap();
                let mut echoed = Vec::new();
                client.read_to_end(&mut echoed).await.unwrap();
                echoed
            })
        };
        let mut seen = Vec::new();
        server.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen, expected);
        assert_eq!(server.mode(), Mode::Rewriting);
        server.write_all(b"server bytes are not touched").await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"server bytes are not touched");
    }

    #[tokio::test]
    async fn adapter_passes_a_valid_connection_through() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let (input, _) = bad_connection(GOOD);
        let (mut client, server) = tokio::io::duplex(1024);
        let mut server = AuthorityFixer::new(server);
        client.write_all(&input).await.unwrap();
        drop(client);
        let mut seen = Vec::new();
        server.read_to_end(&mut seen).await.unwrap();
        assert_eq!(seen, input);
        assert_eq!(server.mode(), Mode::PassThrough);
    }

    /// A small deterministic generator, so a failing input can be replayed.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }
}
