//! `--transport`: how pixels arrive. `zero-copy` and `memcpy` read the shared pool buffer (the
//! latter through `--import copy`: a memcpy into a staging buffer and an upload);
//! `socket-copy` reads each frame's bytes from the producer's byte stream (`SOCKET.bytes`,
//! docs/PROTOCOL.md "Comparison byte stream") into the staging buffer (or, without a GPU, into
//! private memory) and uploads them.

use anyhow::{bail, Context as _, Result};
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

pub use dmabuf_core::proto::bytestream::{bytes_socket_path, TransportKind};

/// The socket-copy byte stream.
pub struct ByteStream {
    stream: UnixStream,
    /// Where frames land without a GPU.
    pub private: Vec<u8>,
}

impl ByteStream {
    /// Connect to `SOCKET.bytes` (the producer binds it once it has welcomed us).
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self> {
        let path = bytes_socket_path(socket);
        let deadline = Instant::now() + timeout;
        loop {
            match UnixStream::connect(&path) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                    return Ok(Self {
                        stream,
                        private: Vec::new(),
                    });
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| {
                        format!(
                            "connecting to the byte stream {} (is the producer running with --transport socket-copy?)",
                            path.display()
                        )
                    })
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    /// Read one frame's bytes (exactly `dst.len()`).
    pub fn read_frame(&mut self, dst: &mut [u8]) -> Result<()> {
        match self.stream.read_exact(dst) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                bail!("the producer closed the byte stream in the middle of a frame")
            }
            Err(e) => Err(e).context("reading a frame from the byte stream"),
        }
    }
}
