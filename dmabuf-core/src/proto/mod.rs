//! The protocol between one producer and its consumers (see `docs/PROTOCOL.md`).
//!
//! - [`wire`]: byte layouts, encode/decode, no I/O;
//! - [`channel`]: `SOCK_SEQPACKET` sockets carrying one message (+ fds) per datagram;
//! - [`validate`]: checks on received buffers (fd kind, seals, sizes, plane layouts);
//! - [`client`] / [`server`]: the two ends of a session, enforcing message order and buffer
//!   ownership;
//! - [`bytestream`]: the comparison transports and the socket-copy byte stream's path.

pub mod bytestream;
pub mod channel;
pub mod client;
pub mod server;
pub mod validate;
pub mod wire;

pub use channel::{Channel, Listener, ListenerOptions};
pub use wire::{Message, WireError};

use nix::errno::Errno;

/// Everything that can end a connection.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("{op}: {source}")]
    Io { op: &'static str, source: Errno },
    #[error("{path}: {source}")]
    Path {
        path: String,
        source: std::io::Error,
    },
    #[error("socket {path} is in use by a running producer")]
    InUse { path: String },
    #[error("peer closed the connection")]
    Closed,
    #[error("timed out after {ms} ms waiting for {what}")]
    Timeout { what: &'static str, ms: u64 },
    // (Not #[from]/#[source]: the text is already in the message; a source would print it
    // twice in an error chain.)
    #[error("malformed message: {0}")]
    Wire(WireError),
    #[error("message longer than the largest valid message ({max} bytes)")]
    Oversized { max: usize },
    #[error("too many descriptors in one message (more than {max}); all were closed")]
    TooManyFds { max: usize },
    #[error(
        "descriptors sent with a message were discarded (MSG_CTRUNC): this process is at or near \
         its limit of {limit} open descriptors (RLIMIT_NOFILE); raise it (ulimit -n)"
    )]
    FdLimit { limit: u64 },
    #[error("{msg} carried {count} descriptor(s); it must carry {expected}")]
    FdCount {
        msg: &'static str,
        count: usize,
        expected: usize,
    },
    #[error("expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("protocol version mismatch: this build speaks version {ours}, the peer version {theirs} (upgrade the older side)")]
    Version { ours: u32, theirs: u32 },
    #[error("buffer {id}: {why}")]
    BadBuffer { id: u32, why: String },
    #[error("frame: {0}")]
    BadFrame(String),
    #[error("release: {0}")]
    BadRelease(String),
    #[error("no format in common: {0}")]
    Unsupported(String),
    #[error(
        "accept4: {errno} (out of descriptors or memory); {}",
        if *shed { "that connection was shed" } else { "could not shed the connection" }
    )]
    Exhausted { errno: Errno, shed: bool },
    #[error("peer refused uid {uid}: {why}")]
    PeerRefused { uid: u32, why: &'static str },
    #[error("peer said goodbye ({reason:?}): {}", wire::printable(message))]
    Goodbye {
        reason: wire::GoodbyeReason,
        message: String,
    },
}

impl From<WireError> for ProtoError {
    fn from(e: WireError) -> Self {
        ProtoError::Wire(e)
    }
}

impl ProtoError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(Errno) -> ProtoError {
        move |source| ProtoError::Io { op, source }
    }
}
