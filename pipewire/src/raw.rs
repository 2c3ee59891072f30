//! The FFI layer: PipeWire's buffers (`struct pw_buffer` → `struct spa_buffer`, its
//! `spa_data` blocks, their `spa_chunk`s and the `spa_meta_header`), which pipewire-rs gives
//! only as raw pointers for a stream that allocates its own buffers. Every pointer here is one
//! the stream handed us in `add_buffer` or `dequeue_buffer` and that stays valid until the
//! matching `remove_buffer` (`pw_stream_events` in `pipewire/stream.h`).
#![allow(unsafe_code)]

use dmabuf_core::FrameBuffer;
use pipewire::spa::sys as spa;
use pipewire::stream::Stream;
use pipewire::sys as pw;
use std::os::fd::AsRawFd;

/// A buffer of the stream's (`struct pw_buffer *`), as an opaque key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PwBuffer(*mut pw::pw_buffer);

impl PwBuffer {
    /// The stream's buffer behind an `add_buffer`/`remove_buffer` callback's pointer.
    pub fn from_callback(b: *mut pw::pw_buffer) -> Option<Self> {
        (!b.is_null()).then_some(Self(b))
    }
}

/// The `spa_data` blocks of a buffer.
fn datas(b: &mut PwBuffer) -> &mut [spa::spa_data] {
    // SAFETY: `b` came from the stream (add_buffer or dequeue) and is not removed yet (see the
    // module docs): `buffer` points at its spa_buffer, whose `datas` holds `n_datas` entries.
    // Only the stream's thread (this one) touches them between dequeue and queue.
    unsafe {
        let sb = (*b.0).buffer;
        if sb.is_null() || (*sb).datas.is_null() {
            return &mut [];
        }
        std::slice::from_raw_parts_mut((*sb).datas, (*sb).n_datas as usize)
    }
}

/// Point each of `b`'s data blocks at the plane of `buf` with the same index (its fd, the
/// whole fd mapped from offset 0), as a stream with `PW_STREAM_FLAG_ALLOC_BUFFERS` must in
/// `add_buffer`. The fds stay ours (kept open by the pool) and are never closed by PipeWire.
/// The data type is `buf`'s own (`SPA_DATA_MemFd`, `SPA_DATA_DmaBuf`), or, for a dma-buf the
/// peer takes only as shared memory, `SPA_DATA_MemFd` (it maps alike).
pub fn attach(mut b: PwBuffer, buf: &FrameBuffer, data_type: u32) -> Result<(), String> {
    let blocks = datas(&mut b);
    if blocks.len() != buf.layout.planes.len() {
        return Err(format!(
            "PipeWire made {} data blocks for a {}-plane frame",
            blocks.len(),
            buf.layout.planes.len()
        ));
    }
    for (d, (k, _plane)) in blocks.iter_mut().zip(buf.planes()) {
        let data_type = if d.type_ & (1 << data_type) != 0 {
            data_type
        } else if data_type == spa::SPA_DATA_DmaBuf && d.type_ & (1 << spa::SPA_DATA_MemFd) != 0 {
            spa::SPA_DATA_MemFd
        } else {
            return Err(format!(
                "the PipeWire peer does not take this memory (data types {:#x}, ours {})",
                d.type_, data_type
            ));
        };
        let size = u32::try_from(buf.fd_sizes[k]).map_err(|_| "a buffer over 4 GiB")?;
        d.type_ = data_type;
        d.flags = spa::SPA_DATA_FLAG_READABLE | spa::SPA_DATA_FLAG_MAPPABLE;
        d.fd = i64::from(buf.fds[k].as_raw_fd());
        d.mapoffset = 0;
        d.maxsize = size;
        d.data = std::ptr::null_mut();
    }
    Ok(())
}

/// Describe the frame in `buf` on `b` before queueing it: each block's chunk is its plane
/// (offset, stride, `stride × rows` bytes, clipped to the fd), and the header meta, where the
/// peer asked for one, carries the presentation time (ns) and sequence number.
pub fn stamp(mut b: PwBuffer, buf: &FrameBuffer, pts_ns: i64, seq: u64, corrupted: bool) {
    for (d, (k, plane)) in datas(&mut b).iter_mut().zip(buf.planes()) {
        if d.chunk.is_null() {
            continue;
        }
        let fd_size = buf.fd_sizes[k];
        let size = (u64::from(plane.stride) * u64::from(plane.rows))
            .min(fd_size.saturating_sub(plane.offset));
        // SAFETY: `chunk` belongs to this data block of a buffer we hold dequeued (module docs).
        unsafe {
            let c = &mut *d.chunk;
            c.offset = plane.offset as u32;
            c.size = size as u32;
            c.stride = plane.stride as i32;
            c.flags = if corrupted {
                spa::SPA_CHUNK_FLAG_CORRUPTED as i32
            } else {
                0
            };
        }
    }
    if let Some(h) = header(&mut b) {
        h.pts = pts_ns;
        h.seq = seq;
        h.dts_offset = 0;
        h.flags = if corrupted {
            spa::SPA_META_HEADER_FLAG_CORRUPTED
        } else {
            0
        };
    }
}

/// The buffer's `spa_meta_header`, if the peer negotiated one.
fn header(b: &mut PwBuffer) -> Option<&mut spa::spa_meta_header> {
    // SAFETY: as in `datas`: the spa_buffer's `metas` holds `n_metas` entries, each `data`
    // pointing at `size` bytes; we take the header only when it is large enough.
    unsafe {
        let sb = (*b.0).buffer;
        if sb.is_null() || (*sb).metas.is_null() {
            return None;
        }
        let metas = std::slice::from_raw_parts((*sb).metas, (*sb).n_metas as usize);
        metas
            .iter()
            .find(|m| {
                m.type_ == spa::SPA_META_Header
                    && m.size as usize >= std::mem::size_of::<spa::spa_meta_header>()
                    && !m.data.is_null()
            })
            .map(|m| &mut *(m.data as *mut spa::spa_meta_header))
    }
}

/// A buffer the peer has given back (`pw_stream_dequeue_buffer`), or `None`.
pub fn dequeue(stream: &Stream) -> Option<PwBuffer> {
    // SAFETY: called on the stream's own loop thread; the pointer is either null or one of the
    // stream's buffers, now ours until queued.
    PwBuffer::from_callback(unsafe { stream.dequeue_raw_buffer() })
}

/// Hand a filled buffer to the peer (`pw_stream_queue_buffer`).
pub fn queue(stream: &Stream, b: PwBuffer) {
    // SAFETY: `b` is a buffer of this stream that we dequeued and have not queued since.
    unsafe { stream.queue_raw_buffer(b.0) }
}

/// The data blocks of a buffer PipeWire made for an input stream (`add_buffer`): each block's
/// fd duplicated (ours from here on), its size, offset and length. `None` for blocks that are
/// not fds (`SPA_DATA_MemPtr`), which cannot be passed on.
pub fn describe(mut b: PwBuffer) -> Result<Option<crate::InputBuffer>, String> {
    let mut memory = None;
    let mut blocks = Vec::new();
    for d in datas(&mut b).iter() {
        let kind = match d.type_ {
            spa::SPA_DATA_MemFd => dmabuf_core::MemoryKind::Memfd,
            spa::SPA_DATA_DmaBuf => dmabuf_core::MemoryKind::DmaBuf,
            _ => return Ok(None),
        };
        if memory.is_some_and(|m| m != kind) {
            return Err("a buffer mixing memfd and dma-buf blocks".into());
        }
        memory = Some(kind);
        let raw = i32::try_from(d.fd).map_err(|_| format!("fd {} out of range", d.fd))?;
        if raw < 0 {
            return Err("a data block without an fd".into());
        }
        // SAFETY: PipeWire keeps this fd open for as long as the buffer exists (until
        // remove_buffer), and we only duplicate it here.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        let fd = borrowed
            .try_clone_to_owned()
            .map_err(|e| format!("duplicating fd {raw}: {e}"))?;
        let mut file = std::fs::File::from(
            fd.try_clone()
                .map_err(|e| format!("duplicating fd {raw}: {e}"))?,
        );
        let fd_size = std::io::Seek::seek(&mut file, std::io::SeekFrom::End(0))
            .map_err(|e| format!("the size of fd {raw}: {e}"))?;
        blocks.push(crate::DataBlock {
            fd: std::sync::Arc::new(fd),
            fd_size,
            mapoffset: u64::from(d.mapoffset),
            maxsize: u64::from(d.maxsize),
        });
    }
    Ok(Some(crate::InputBuffer {
        memory: memory.ok_or("a buffer without data blocks")?,
        blocks,
    }))
}

/// What a dequeued input buffer holds: each block's chunk, and the header's pts, sequence
/// number and corrupted flag.
pub fn frame(mut b: PwBuffer) -> (Vec<crate::Chunk>, Option<i64>, Option<u64>, bool) {
    let mut corrupted = false;
    let chunks = datas(&mut b)
        .iter()
        .map(|d| {
            if d.chunk.is_null() {
                return crate::Chunk {
                    offset: 0,
                    size: 0,
                    stride: 0,
                };
            }
            // SAFETY: the chunk of a block of a buffer we hold dequeued (module docs).
            let c = unsafe { &*d.chunk };
            corrupted |= c.flags & spa::SPA_CHUNK_FLAG_CORRUPTED as i32 != 0;
            crate::Chunk {
                offset: c.offset,
                size: c.size,
                stride: c.stride,
            }
        })
        .collect();
    let (pts, seq) = match header(&mut b) {
        Some(h) => {
            corrupted |= h.flags & spa::SPA_META_HEADER_FLAG_CORRUPTED != 0;
            ((h.pts >= 0).then_some(h.pts), Some(h.seq))
        }
        None => (None, None),
    };
    (chunks, pts, seq, corrupted)
}

/// Run `f` over the bytes of each data block of a dequeued buffer whose blocks are memory in
/// this process (`SPA_DATA_MemPtr`, or blocks PipeWire mapped): `maxsize` bytes from `data`;
/// empty for a block without memory.
pub fn with_memory<R>(mut b: PwBuffer, f: impl FnOnce(&[&[u8]]) -> R) -> R {
    let blocks: Vec<&[u8]> = datas(&mut b)
        .iter()
        .map(|d| {
            if d.data.is_null() {
                return &[][..];
            }
            // SAFETY: PipeWire maps `maxsize` bytes at `data` for as long as the buffer exists;
            // the buffer is dequeued (ours) for the whole call, on the stream's thread, and the
            // slices do not outlive it.
            unsafe { std::slice::from_raw_parts(d.data as *const u8, d.maxsize as usize) }
        })
        .collect();
    f(&blocks)
}
