//! Zero-copy video frames between processes: formats, allocators, CPU mappings, a buffer pool
//! and the wire protocol. See `docs/ARCHITECTURE.md` for how a frame flows.
#![warn(missing_docs)]

pub mod alloc;
pub mod buffer;
pub mod drm;
pub mod fanout;
pub mod format;
pub mod mapping;
pub mod pool;
pub mod procstat;
pub mod proto;
pub mod publisher;
pub mod receiver;
pub mod sys;
#[doc(hidden)]
pub mod testing;
pub mod time;

pub use buffer::{AllocatorKind, FrameBuffer, MemoryKind};
pub use format::{FrameFormat, FrameLayout, PixelFormat, PlaneLayout};
