//! The comparison transports both ends agree on (`--transport`), and where the socket-copy
//! byte stream lives (docs/PROTOCOL.md, "Comparison byte stream").

use std::path::{Path, PathBuf};
use std::str::FromStr;

/// How a frame's pixels reach the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// The product: the pool buffer is shared; only the `Frame` message crosses the socket.
    ZeroCopy,
    /// Comparison: the producer copies each frame into the pool buffer, the consumer copies it
    /// into a staging buffer and uploads it.
    Memcpy,
    /// Comparison: the frame's bytes go through a second, stream socket.
    SocketCopy,
}

impl TransportKind {
    /// Every transport.
    pub const ALL: [TransportKind; 3] = [
        TransportKind::ZeroCopy,
        TransportKind::Memcpy,
        TransportKind::SocketCopy,
    ];
    /// The names `--transport` takes, in the order of [`TransportKind::ALL`].
    pub const NAMES: [&'static str; 3] = ["zero-copy", "memcpy", "socket-copy"];

    /// The name used on command lines and in statistics.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::ZeroCopy => "zero-copy",
            TransportKind::Memcpy => "memcpy",
            TransportKind::SocketCopy => "socket-copy",
        }
    }
}

impl FromStr for TransportKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("unknown transport {s:?}: expected zero-copy, memcpy or socket-copy")
            })
    }
}

/// The path of the socket-copy byte stream next to the producer socket `socket`.
pub fn bytes_socket_path(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".bytes");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (k, n) in TransportKind::ALL.into_iter().zip(TransportKind::NAMES) {
            assert_eq!(k.name(), n);
            assert_eq!(n.parse::<TransportKind>(), Ok(k));
        }
        assert!("copy".parse::<TransportKind>().is_err());
        assert_eq!(
            bytes_socket_path(Path::new("/tmp/f.sock")),
            Path::new("/tmp/f.sock.bytes")
        );
    }
}
