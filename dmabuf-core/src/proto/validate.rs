//! Checks on what a peer sends before anything maps or imports it: the fd is the kind of memory
//! announced, memfds are sealed against shrinking and growing (or a peer could shrink them under
//! our mapping and SIGBUS us), and every plane fits inside its fd (overflow-checked).

use super::wire::{AddBuffer, Welcome, MAX_PLANES};
use super::ProtoError;
use crate::buffer::{FrameBuffer, MemoryKind};
use crate::format::{plane_geometry, FrameFormat, FrameLayout, PlaneLayout};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::stat::{fstat, SFlag};
use nix::unistd::{lseek, Whence};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

/// The largest stride accepted (a 16K-wide 8-byte-per-pixel row, rounded generously).
pub const MAX_STRIDE: u32 = 1 << 20;

/// Check one fd against the announced memory kind and return its size in bytes.
pub fn check_fd(fd: BorrowedFd<'_>, memory: MemoryKind) -> Result<u64, String> {
    let st = fstat(fd).map_err(|e| format!("fstat: {e}"))?;
    let ftype = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "?".into());
    match memory {
        MemoryKind::Memfd => {
            if ftype != SFlag::S_IFREG {
                return Err(format!("expected a memfd, got {link}"));
            }
            let seals = fcntl(fd, FcntlArg::F_GET_SEALS)
                .map_err(|e| format!("expected a memfd, got {link} (F_GET_SEALS: {e})"))?;
            let seals = SealFlag::from_bits_truncate(seals);
            let need = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW;
            if !seals.contains(need) {
                let names: Vec<&str> = [
                    (SealFlag::F_SEAL_SEAL, "F_SEAL_SEAL"),
                    (SealFlag::F_SEAL_SHRINK, "F_SEAL_SHRINK"),
                    (SealFlag::F_SEAL_GROW, "F_SEAL_GROW"),
                    (SealFlag::F_SEAL_WRITE, "F_SEAL_WRITE"),
                ]
                .iter()
                .filter(|(f, _)| seals.contains(*f))
                .map(|(_, n)| *n)
                .collect();
                let has = if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join("|")
                };
                return Err(format!(
                    "memfd is not sealed with F_SEAL_SHRINK|F_SEAL_GROW (its seals: {has}); \
                     refusing it, a peer could shrink it under the mapping"
                ));
            }
        }
        MemoryKind::DmaBuf => {
            // The file system, not the name (a file can be called "/dmabuf:…"): dma-bufs live
            // on the dmabuf pseudo file system (DMA_BUF_MAGIC, include/uapi/linux/magic.h).
            const DMA_BUF_MAGIC: i64 = 0x444d_4142;
            let fs = nix::sys::statfs::fstatfs(fd).map_err(|e| format!("fstatfs: {e}"))?;
            if fs.filesystem_type().0 as i64 != DMA_BUF_MAGIC {
                return Err(format!(
                    "expected a dma-buf, got {link} (file system magic {:#x})",
                    fs.filesystem_type().0
                ));
            }
        }
    }
    let size = lseek(fd, 0, Whence::SeekEnd).map_err(|e| format!("lseek(SEEK_END): {e}"))?;
    if size <= 0 {
        return Err(format!("{link} is empty"));
    }
    Ok(size as u64)
}

/// Validate an `AddBuffer` and its fds against the session's `Welcome`; on success the fds
/// belong to the returned buffer, on failure they are closed.
pub fn validate_add_buffer(
    msg: &AddBuffer,
    fds: Vec<OwnedFd>,
    welcome: &Welcome,
) -> Result<FrameBuffer, ProtoError> {
    let id = msg.buffer_id;
    let bad = |why: String| ProtoError::BadBuffer { id, why };
    let format = FrameFormat {
        pixel: welcome.pixel,
        modifier: welcome.modifier,
        width: welcome.width,
        height: welcome.height,
    };
    let nplanes = welcome.pixel.planes().len();
    if msg.planes.len() != nplanes || nplanes > MAX_PLANES {
        return Err(bad(format!(
            "{} plane(s) declared, {} has {nplanes}",
            msg.planes.len(),
            welcome.pixel
        )));
    }
    if fds.len() != msg.n_fds as usize {
        return Err(bad(format!(
            "{} fd(s) declared, {} received",
            msg.n_fds,
            fds.len()
        )));
    }
    let mut sizes = Vec::with_capacity(fds.len());
    for (i, fd) in fds.iter().enumerate() {
        sizes.push(check_fd(fd.as_fd(), welcome.memory).map_err(|e| bad(format!("fd {i}: {e}")))?);
    }
    let mut planes = Vec::with_capacity(nplanes);
    let mut plane_fds = Vec::with_capacity(nplanes);
    let mut end_max = 0u64;
    for (i, p) in msg.planes.iter().enumerate() {
        let (row_bytes, rows) = plane_geometry(welcome.pixel, i, welcome.width, welcome.height);
        if p.stride < row_bytes || p.stride > MAX_STRIDE {
            return Err(bad(format!(
                "plane {i}: stride {} (rows need {row_bytes}..={MAX_STRIDE})",
                p.stride
            )));
        }
        let pl = PlaneLayout {
            offset: p.offset,
            stride: p.stride,
            row_bytes,
            rows,
        };
        // A plane spans stride x rows bytes (what each Frame's bytes_used says).
        let extent = u64::from(p.stride) * u64::from(rows);
        if p.size < extent {
            return Err(bad(format!(
                "plane {i}: declared size {} is smaller than stride x rows ({extent})",
                p.size
            )));
        }
        let fd_size = sizes[p.fd_index as usize];
        let end = p
            .offset
            .checked_add(p.size)
            .ok_or_else(|| bad(format!("plane {i}: offset + size overflows")))?;
        if end > fd_size {
            return Err(bad(format!(
                "plane {i}: bytes {}..{end} lie beyond the end of fd {} ({fd_size} bytes)",
                p.offset, p.fd_index
            )));
        }
        end_max = end_max.max(end);
        planes.push(pl);
        plane_fds.push(p.fd_index as usize);
    }
    // Every descriptor sent is one a plane uses (more than the planes name is refused).
    if let Some(unused) = (0..fds.len()).find(|i| !plane_fds.contains(i)) {
        return Err(bad(format!(
            "fd {unused} of {} is used by no plane",
            fds.len()
        )));
    }
    Ok(FrameBuffer {
        layout: FrameLayout {
            format,
            planes,
            size: end_max,
        },
        fds: fds.into_iter().map(Arc::new).collect(),
        fd_sizes: sizes,
        plane_fds,
        memory: welcome.memory,
        allocator: welcome.allocator,
    })
}
