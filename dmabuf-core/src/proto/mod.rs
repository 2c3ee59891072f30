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
pub mod ring;
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
    /// A system call failed.
    Io {
        /// The call.
        op: &'static str,
        /// The errno.
        source: Errno,
    },
    #[error("{path}: {source}")]
    /// The socket path cannot be used.
    Path {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    #[error("socket {path} is in use by a running producer")]
    /// Another producer is serving that path.
    InUse {
        /// The path.
        path: String,
    },
    #[error("peer closed the connection")]
    /// The peer closed the connection.
    Closed,
    #[error("timed out after {ms} ms waiting for {what}")]
    /// Nothing came within the time allowed.
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// How long, in milliseconds.
        ms: u64,
    },
    // (Not #[from]/#[source]: the text is already in the message; a source would print it
    // twice in an error chain.)
    #[error("malformed message: {0}")]
    /// A message that does not decode.
    Wire(WireError),
    #[error("message longer than the largest valid message ({max} bytes)")]
    /// A message longer than any valid one.
    Oversized {
        /// The largest valid message, in bytes.
        max: usize,
    },
    #[error("too many descriptors in one message (more than {max}); all were closed")]
    /// More descriptors than one message may carry.
    TooManyFds {
        /// The most one message carries.
        max: usize,
    },
    #[error(
        "descriptors sent with a message were discarded (MSG_CTRUNC): this process is at or near \
         its limit of {limit} open descriptors (RLIMIT_NOFILE); raise it (ulimit -n)"
    )]
    /// This process ran out of descriptors receiving some (`MSG_CTRUNC`).
    FdLimit {
        /// This process's descriptor limit.
        limit: u64,
    },
    #[error("{msg} carried {count} descriptor(s); it must carry {expected}")]
    /// A message with the wrong number of descriptors.
    FdCount {
        /// The message.
        msg: &'static str,
        /// Descriptors that came.
        count: usize,
        /// Descriptors it must carry.
        expected: usize,
    },
    #[error("expected {expected}, got {got}")]
    /// A message out of order.
    Unexpected {
        /// What could come now.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
    #[error("protocol version mismatch: this build speaks version {ours}, the peer version {theirs} (upgrade the older side)")]
    /// The peer speaks another protocol version.
    Version {
        /// Our version.
        ours: u32,
        /// The peer's.
        theirs: u32,
    },
    #[error("buffer {id}: {why}")]
    /// An `AddBuffer` or `RemoveBuffer` that breaks a rule.
    BadBuffer {
        /// The buffer id.
        id: u32,
        /// The rule broken.
        why: String,
    },
    #[error("frame: {0}")]
    /// A `Frame` that breaks a rule.
    BadFrame(String),
    #[error("ring: {0}")]
    /// The shared-memory ring (its memfd, its header, a slot) breaks a rule.
    BadRing(String),
    #[error("release: {0}")]
    /// A `Release` that breaks a rule.
    BadRelease(String),
    #[error("no format in common: {0}")]
    /// No format, modifier and memory kind in common.
    Unsupported(String),
    #[error(
        "accept4: {errno} (out of descriptors or memory); {}",
        if *shed { "that connection was shed" } else { "could not shed the connection" }
    )]
    /// `accept4` ran out of descriptors or memory.
    Exhausted {
        /// `EMFILE`, `ENFILE`, `ENOMEM` or `ENOBUFS`.
        errno: Errno,
        /// Whether the connection was accepted and closed with the spare descriptor.
        shed: bool,
    },
    #[error("peer refused uid {uid}: {why}")]
    /// A connection from a uid that is not allowed (`SO_PEERCRED`).
    PeerRefused {
        /// The peer's uid.
        uid: u32,
        /// Why it is refused.
        why: &'static str,
    },
    #[error("peer said goodbye ({reason:?}): {}", wire::printable(message))]
    /// The peer said goodbye.
    Goodbye {
        /// Why.
        reason: wire::GoodbyeReason,
        /// Its text (peer input: escape it before showing it).
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
