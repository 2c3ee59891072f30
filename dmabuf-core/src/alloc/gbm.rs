//! GBM on a DRM card node. Render nodes refuse dumb buffers (EACCES on vgem), so this opens
//! `/dev/dri/card*`. `gbm_bo_get_fd` can give a read-only fd, so the dma-buf is exported with
//! `DRM_IOCTL_PRIME_HANDLE_TO_FD` and `DRM_RDWR` instead.
//!
//! RGB formats are allocated natively (GBM picks the stride). Planar YUV is allocated as one
//! linear R8 "blob" holding every plane at the pool's own layout, because dumb-buffer drivers
//! (vgem) offer no NV12.

use super::{AllocError, Allocator};
use crate::buffer::{AllocatorKind, FrameBuffer};
use crate::format::{FrameFormat, FrameLayout, PixelFormat, PlaneLayout};
use drm::control::Device as _;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

/// An opened DRM node, as the `drm`/`gbm` crates want it.
#[derive(Debug)]
struct Card(File);

impl AsFd for Card {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}
impl drm::Device for Card {}
impl drm::control::Device for Card {}

/// Allocates LINEAR buffer objects through GBM on a DRM card node and exports them as dma-bufs (PRIME).
pub struct GbmAllocator {
    // gbm_device is not thread-safe; serialise every call.
    dev: Mutex<gbm::Device<Card>>,
    path: String,
}

impl std::fmt::Debug for GbmAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GbmAllocator")
            .field("path", &self.path)
            .finish()
    }
}

fn unavailable(path: &str, source: std::io::Error) -> AllocError {
    AllocError::Unavailable {
        allocator: AllocatorKind::Gbm,
        path: path.to_string(),
        source,
    }
}

impl GbmAllocator {
    /// Open the DRM node at `path`.
    pub fn open(path: &str) -> Result<Self, AllocError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| unavailable(path, e))?;
        let dev = gbm::Device::new(Card(file)).map_err(|e| unavailable(path, e))?;
        Ok(Self {
            dev: Mutex::new(dev),
            path: path.to_string(),
        })
    }

    /// The first `/dev/dri/card*` node that GBM accepts (render nodes refuse dumb buffers).
    pub fn open_card() -> Result<Self, AllocError> {
        let mut first_err = None;
        for i in 0..16 {
            let path = format!("/dev/dri/card{i}");
            if !std::path::Path::new(&path).exists() {
                continue;
            }
            match Self::open(&path) {
                Ok(a) => return Ok(a),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or_else(|| {
            unavailable(
                "/dev/dri/card*",
                std::io::Error::new(std::io::ErrorKind::NotFound, "no DRM card node"),
            )
        }))
    }

    /// The DRM node opened.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl Allocator for GbmAllocator {
    fn kind(&self) -> AllocatorKind {
        AllocatorKind::Gbm
    }

    fn cpu_cached(&self) -> bool {
        // A real GPU's GBM buffers may be write-combined: fine to fill, ruinous to read back.
        false
    }

    fn allocate(&self, format: FrameFormat) -> Result<FrameBuffer, AllocError> {
        let failed = |what, e: std::io::Error| AllocError::Failed {
            allocator: AllocatorKind::Gbm,
            what,
            format,
            source: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO)),
        };
        if format.modifier != crate::format::MOD_LINEAR {
            return Err(AllocError::Unsupported {
                allocator: AllocatorKind::Gbm,
                format,
                why: "only LINEAR buffers are allocated through GBM here".into(),
            });
        }
        let base = FrameLayout::gpu_friendly(format)?;
        let (gbm_format, width, height) = match format.pixel {
            PixelFormat::Xrgb8888 => (drm_fourcc::DrmFourcc::Xrgb8888, format.width, format.height),
            PixelFormat::Argb8888 => (drm_fourcc::DrmFourcc::Argb8888, format.width, format.height),
            _ => {
                let w = base.planes[0].stride;
                let rows = base.size.div_ceil(u64::from(w));
                let rows = u32::try_from(rows).map_err(|_| AllocError::Unsupported {
                    allocator: AllocatorKind::Gbm,
                    format,
                    why: "frame too large".into(),
                })?;
                (drm_fourcc::DrmFourcc::R8, w, rows)
            }
        };
        let dev = self.dev.lock().unwrap_or_else(|p| p.into_inner());
        let bo = dev
            .create_buffer_object::<()>(width, height, gbm_format, gbm::BufferObjectFlags::LINEAR)
            .map_err(|e| failed("gbm_bo_create", e))?;
        let stride = bo.stride();
        let fd = dev
            .buffer_to_prime_fd(
                drm::buffer::Buffer::handle(&bo),
                (nix::libc::O_RDWR | nix::libc::O_CLOEXEC) as u32,
            )
            .map_err(|e| failed("DRM_IOCTL_PRIME_HANDLE_TO_FD", e))?;
        // The dma-buf keeps the memory alive; the GEM handle goes with the bo.
        drop(bo);
        drop(dev);
        let size = nix::unistd::lseek(&fd, 0, nix::unistd::Whence::SeekEnd)
            .map_err(|e| failed("lseek(SEEK_END)", e.into()))? as u64;
        let layout = match format.pixel {
            PixelFormat::Xrgb8888 | PixelFormat::Argb8888 => FrameLayout {
                format,
                planes: vec![PlaneLayout {
                    offset: 0,
                    stride,
                    row_bytes: format.width * 4,
                    rows: format.height,
                }],
                size,
            },
            _ => base,
        };
        if layout.size > size {
            return Err(AllocError::Unsupported {
                allocator: AllocatorKind::Gbm,
                format,
                why: format!("GBM gave {size} bytes, the frame needs {}", layout.size),
            });
        }
        Ok(FrameBuffer::single(layout, fd, size, AllocatorKind::Gbm))
    }
}
