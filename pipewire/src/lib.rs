//! A bridge between the pipe and [PipeWire](https://docs.pipewire.org/): a producer's
//! [`Pool`](dmabuf_core::pool::Pool) published as a PipeWire `Video/Source` node
//! ([`Output`]) whose buffers are the pool's own (`SPA_DATA_MemFd` or `SPA_DATA_DmaBuf` data
//! blocks on the pool's fds), so desktop clients (OBS's PipeWire source, browsers, GStreamer's
//! `pipewiresrc`) read the frames without a copy.
//!
//! Built with pipewire-rs against libpipewire 0.3 (PipeWire 1.4 in bookworm-backports).
#![warn(missing_docs)]

mod connection;
mod format;
mod input;
mod list;
mod output;
mod raw;

pub use format::{from_spa, to_spa};
pub use input::{
    plane_layout, Chunk, DataBlock, Input, InputBuffer, InputEvent, InputFormat, InputOptions,
};
pub use list::{video_nodes, VideoNode};
pub use output::{Output, OutputOptions, OutputStats};

/// Wait (up to 10 s) for a stream thread to say it is running; on an error or no answer, the
/// error (the thread is joined when it answered with one).
fn await_ready(
    ready: &std::sync::mpsc::Receiver<Result<(), Error>>,
    thread: std::thread::JoinHandle<()>,
) -> Result<std::thread::JoinHandle<()>, Error> {
    match ready.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(Ok(())) => Ok(thread),
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
