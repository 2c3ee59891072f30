//! A bridge between the pipe and [PipeWire](https://docs.pipewire.org/): a producer's
//! [`Pool`](dmabuf_core::pool::Pool) published as a PipeWire `Video/Source` node
//! ([`Output`]) whose buffers are the pool's own (`SPA_DATA_MemFd` or `SPA_DATA_DmaBuf` data
//! blocks on the pool's fds), so desktop clients (OBS's PipeWire source, browsers, GStreamer's
//! `pipewiresrc`) read the frames without a copy.
//!
//! Built with pipewire-rs against libpipewire 0.3 (PipeWire 1.4 in bookworm-backports).
//!
//! A program that publishes frames on the pipe's socket and as a PipeWire camera at once
//! (PipeWire holds a frame's lease until its client gives the buffer back; a frame that would
//! exceed its quota is skipped for PipeWire, counted in [`Output::stats`]):
//!
//! ```no_run
//! use dmabuf_core::publisher::{FrameMeta, Publisher, PublisherOptions};
//! use dmabuf_core::{FrameFormat, PixelFormat};
//! use dmabuf_pipewire::{Output, OutputOptions};
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let format = FrameFormat::linear(PixelFormat::Nv12, 1280, 720);
//! let opts = PublisherOptions { buffers: 8, fps: (30, 1), ..Default::default() };
//! let mut publisher = Publisher::bind("/tmp/frames.sock", format, opts)?;
//! let node = Output::start(
//!     publisher.pool(),
//!     OutputOptions {
//!         name: "my-camera".into(),          // pipewiresrc target-object=my-camera
//!         description: "My camera".into(),   // what a desktop lists
//!         fps: (30, 1),
//!         color: publisher.stream_info().0,
//!         max_held: None,                    // half the pool
//!     },
//! )?;
//! let start = Instant::now();
//! for seq in 0..300u64 {
//!     let Some(lease) = publisher.acquire(Duration::from_secs(1))? else { continue };
//!     lease.with_bytes_mut(|frame| frame.fill(0x80))?; // draw into the shared buffer
//!     let lease = Arc::new(lease);
//!     let pts_ns = (seq * 1_000_000_000 / 30) as i64;
//!     node.push(&lease, pts_ns, seq, false);
//!     publisher.publish_shared(lease, FrameMeta { pts_ns, ..Default::default() })?;
//!     // Pacing: sleep to the next frame serving new consumers; releases are taken then.
//!     let due = start + Duration::from_nanos((seq + 1) * 1_000_000_000 / 30);
//!     while Instant::now() < due {
//!         publisher.serve_until(due)?;
//!     }
//! }
//! println!("{:?}", node.stats());
//! # Ok(())
//! # }
//! ```
//!
//! [`Input`] goes the other way: [`Input::connect`] to a node, then [`Input::try_event`] (poll
//! its [`std::os::fd::AsFd`]) yields the negotiated buffers and each frame, and
//! [`Input::recycle`] gives a buffer back (`producer --source pipewire:` is its user).
#![warn(missing_docs)]

mod connection;
mod format;
mod input;
mod list;
mod output;
mod raw;

pub use format::{from_spa, to_spa};
pub use input::{
    plane_layout, Chunk, DataBlock, Input, InputBuffer, InputEvent, InputFormat, InputFrame,
    InputOptions,
};
pub use list::{video_nodes, VideoNode};
pub use output::{Output, OutputOptions, OutputStats};

/// What the bridge does about explicit sync, for logs: no node or stream here offers or takes
/// PipeWire's `SPA_META_SyncTimeline` (a client that requires it does not link); buffers are
/// shared with implicit sync (the dma-buf's own fences; memfds have none to wait for). Says
/// whether this machine has a DRM device that could make timeline syncobjs
/// ([`dmabuf_core::drm`]).
pub fn explicit_sync_note() -> String {
    let nodes = dmabuf_core::drm::nodes();
    let summary = dmabuf_core::drm::explicit_sync_summary(&nodes);
    if nodes.iter().any(|n| n.timeline) {
        format!(
            "explicit sync (SPA_META_SyncTimeline) is not offered: {summary}, but this bridge \
             does not use them yet: implicit sync"
        )
    } else {
        format!("explicit sync (SPA_META_SyncTimeline) is not offered: {summary}")
    }
}

/// Log [`explicit_sync_note`] once per process.
fn log_explicit_sync() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| tracing::info!("PipeWire: {}", explicit_sync_note()));
}

/// Wait (up to 10 s) for a stream thread to say it is running; on an error or no answer, the
/// error (the thread is joined when it answered with one).
fn await_ready(
    ready: &std::sync::mpsc::Receiver<Result<(), Error>>,
    thread: std::thread::JoinHandle<()>,
) -> Result<std::thread::JoinHandle<()>, Error> {
    match ready.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(Ok(())) => {
            log_explicit_sync();
            Ok(thread)
        }
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(Error::NoDaemon(
            "the PipeWire daemon did not answer within 10 s".into(),
        )),
    }
}

/// Why the bridge could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No PipeWire daemon answered.
    #[error("{0}")]
    NoDaemon(String),
    /// The node could not be made or connected.
    #[error("PipeWire node: {0}")]
    Node(String),
}
