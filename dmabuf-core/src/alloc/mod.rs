//! Allocators of frame buffers: sealed memfd (always), dma-heap, udmabuf and GBM (when their
//! device exists), and `auto`, which test-allocates each in order of preference and says why it
//! picked the one it did.

mod dma_heap;
#[cfg(feature = "gbm")]
mod gbm;
mod memfd;
mod udmabuf;

pub use self::dma_heap::DmaHeapAllocator;
#[cfg(feature = "gbm")]
pub use self::gbm::GbmAllocator;
pub use self::memfd::{sealed_memfd, MemfdAllocator};
pub use self::udmabuf::UdmabufAllocator;

use crate::buffer::{AllocatorKind, FrameBuffer};
use crate::format::{FrameFormat, FrameLayout, LayoutError};
use nix::errno::Errno;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, thiserror::Error)]
/// Why an allocation failed.
pub enum AllocError {
    /// The allocator's device does not exist or cannot be opened here.
    #[error("{allocator} unavailable: {path}: {source}")]
    Unavailable {
        /// Which allocator.
        allocator: AllocatorKind,
        /// The device path tried.
        path: String,
        /// Why it could not be opened.
        source: std::io::Error,
    },
    /// The device exists but refused this allocation.
    #[error("{allocator}: {what} failed for {format}: {source}")]
    Failed {
        /// Which allocator.
        allocator: AllocatorKind,
        /// The call that failed.
        what: &'static str,
        /// What was asked for.
        format: FrameFormat,
        /// The errno.
        source: Errno,
    },
    #[error("{allocator} cannot allocate {format}: {why}")]
    /// The allocator cannot make this format (modifier, size, layout).
    Unsupported {
        /// Which allocator.
        allocator: AllocatorKind,
        /// What was asked for.
        format: FrameFormat,
        /// Why not.
        why: String,
    },
    #[error(transparent)]
    /// The size cannot be laid out.
    Layout(#[from] LayoutError),
    /// `auto` tried every allocator and none could allocate: why each one failed.
    #[error("no allocator can allocate {format}: {}", tried.join("; "))]
    NoneWorked {
        /// What was asked for.
        format: FrameFormat,
        /// Each allocator's failure, in the order tried.
        tried: Vec<String>,
    },
}

/// Something that makes frame buffers.
pub trait Allocator: Send + Sync {
    /// Which allocator this is.
    fn kind(&self) -> AllocatorKind;
    /// Allocate one buffer able to hold a `format` frame (layout chosen by the allocator).
    fn allocate(&self, format: FrameFormat) -> Result<FrameBuffer, AllocError>;
    /// Allocate one buffer with exactly `layout` (for a writer with its own alignment rules,
    /// such as a decoder). Allocators that choose their own layout refuse.
    fn allocate_layout(&self, layout: &FrameLayout) -> Result<FrameBuffer, AllocError> {
        Err(AllocError::Unsupported {
            allocator: self.kind(),
            format: layout.format,
            why: "this allocator chooses its own layout".into(),
        })
    }
    /// Is the memory ordinary cached system memory, fit for a CPU to read back as well as
    /// write (a decoder reading its reference frames)? Device memory that may be
    /// write-combined (GBM on a real GPU) is not.
    fn cpu_cached(&self) -> bool {
        true
    }
}

/// What the user asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocChoice {
    /// The first of [`AUTO_ORDER`] that can allocate the format.
    Auto,
    /// This one, or an error.
    Only(AllocatorKind),
}

impl FromStr for AllocChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(AllocChoice::Auto);
        }
        AllocatorKind::ALL
            .into_iter()
            .filter(|k| !k.is_foreign())
            .find(|k| k.name() == s)
            .map(AllocChoice::Only)
            .ok_or_else(|| {
                format!("unknown allocator {s:?}: expected auto, memfd, dma-heap, udmabuf or gbm")
            })
    }
}

impl fmt::Display for AllocChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocChoice::Auto => f.write_str("auto"),
            AllocChoice::Only(k) => f.write_str(k.name()),
        }
    }
}

/// Open one allocator by kind (fails if its device is missing).
pub fn open(kind: AllocatorKind) -> Result<Box<dyn Allocator>, AllocError> {
    Ok(match kind {
        AllocatorKind::Memfd => Box::new(MemfdAllocator::new()),
        AllocatorKind::DmaHeap => Box::new(DmaHeapAllocator::open_system()?),
        AllocatorKind::Udmabuf => Box::new(UdmabufAllocator::open()?),
        #[cfg(feature = "gbm")]
        AllocatorKind::Gbm => Box::new(GbmAllocator::open_card()?),
        #[cfg(not(feature = "gbm"))]
        AllocatorKind::Gbm => {
            return Err(AllocError::Unavailable {
                allocator: kind,
                path: "(none)".into(),
                source: std::io::Error::other("built without the `gbm` feature of dmabuf-core"),
            })
        }
        AllocatorKind::V4l2 | AllocatorKind::PipeWire => {
            return Err(AllocError::Unavailable {
                allocator: kind,
                path: "(none)".into(),
                source: std::io::Error::other(if kind == AllocatorKind::V4l2 {
                    "V4L2 buffers come from a capture device, not from an allocator"
                } else {
                    "PipeWire buffers come from a PipeWire peer, not from an allocator"
                }),
            })
        }
    })
}

/// Preference order for `auto`: dma-heap (cached system memory any device can import), udmabuf
/// (the same from a memfd), GBM (a DRM device's buffers), then the sealed memfd fallback.
pub const AUTO_ORDER: [AllocatorKind; 4] = [
    AllocatorKind::DmaHeap,
    AllocatorKind::Udmabuf,
    AllocatorKind::Gbm,
    AllocatorKind::Memfd,
];

/// Pick an allocator for `format`. `auto` opens and test-allocates each candidate in
/// [`AUTO_ORDER`]; the returned text says which was picked and why the ones before it were not.
pub fn select(
    choice: AllocChoice,
    format: FrameFormat,
) -> Result<(Box<dyn Allocator>, String), AllocError> {
    match choice {
        AllocChoice::Only(kind) => {
            let a = open(kind)?;
            // Test-allocate so an impossible choice fails now, not on the first frame.
            a.allocate(format)?;
            Ok((a, format!("{kind} (asked for)")))
        }
        AllocChoice::Auto => {
            let mut rejected = Vec::new();
            for kind in AUTO_ORDER {
                match open(kind).and_then(|a| a.allocate(format).map(|_| a)) {
                    Ok(a) => {
                        let why = if rejected.is_empty() {
                            format!("{kind} (auto: first choice)")
                        } else {
                            format!("{kind} (auto: {})", rejected.join("; "))
                        };
                        return Ok((a, why));
                    }
                    Err(e) => rejected.push(e.to_string()),
                }
            }
            // Even memfd can fail: an impossible size, or this process at its fd limit.
            Err(AllocError::NoneWorked {
                format,
                tried: rejected,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::PixelFormat;

    /// `auto` ends in a typed error naming every allocator it tried, never a panic (a size no
    /// allocator can make; the same path is taken at the fd limit, where memfd_create fails).
    #[test]
    fn auto_with_nothing_possible_is_an_error_listing_each_try() {
        for (w, h) in [(0, 0), (crate::format::MAX_DIMENSION + 1, 16)] {
            let f = FrameFormat::linear(PixelFormat::Nv12, w, h);
            match select(AllocChoice::Auto, f) {
                Err(AllocError::NoneWorked { tried, .. }) => {
                    assert_eq!(tried.len(), AUTO_ORDER.len(), "{tried:?}");
                    assert!(tried.last().unwrap().contains("out of range"), "{tried:?}");
                }
                Err(e) => panic!("{w}x{h}: {e}"),
                Ok((a, why)) => panic!("{w}x{h}: {} ({why})", a.kind()),
            }
        }
    }
}
