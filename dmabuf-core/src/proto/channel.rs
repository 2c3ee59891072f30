//! `SOCK_SEQPACKET` Unix sockets: one message per datagram, its descriptors attached to it.

use super::wire::{self, Message, MAX_MESSAGE_LEN};
use super::ProtoError;
use crate::sys::scm;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, connect, getsockopt, listen, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    UnixAddr,
};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn seqpacket() -> Result<OwnedFd, ProtoError> {
    socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(ProtoError::io("socket(AF_UNIX, SOCK_SEQPACKET)"))
}

fn addr(path: &Path) -> Result<UnixAddr, ProtoError> {
    UnixAddr::new(path).map_err(|e| ProtoError::Path {
        path: path.display().to_string(),
        source: e.into(),
    })
}

/// Wait until `fd` is readable; `None` waits forever. `Ok(false)` on timeout.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Result<bool, ProtoError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        // Nanosecond precision (ppoll): no polling through a last partial millisecond.
        let left = deadline.map(|d| {
            nix::sys::time::TimeSpec::from_duration(d.saturating_duration_since(Instant::now()))
        });
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match nix::poll::ppoll(&mut fds, left, None) {
            Ok(0) => {
                if deadline.is_none_or(|d| Instant::now() >= d) {
                    return Ok(false);
                }
            }
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => {}
            Err(e) => {
                return Err(ProtoError::Io {
                    op: "poll",
                    source: e,
                })
            }
        }
    }
}

/// One connected end.
#[derive(Debug)]
pub struct Channel {
    sock: OwnedFd,
    buf: Box<[u8]>,
    /// The `SO_RCVTIMEO` set on the socket (`None`: the kernel's default, wait forever), so a
    /// blocking receive sets it only when the timeout changes.
    rcvtimeo: Option<Duration>,
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl Channel {
    /// A channel over a connected `SOCK_SEQPACKET` socket.
    pub fn from_fd(sock: OwnedFd) -> Self {
        Self {
            sock,
            buf: vec![0u8; MAX_MESSAGE_LEN].into_boxed_slice(),
            rcvtimeo: None,
        }
    }

    /// A connected pair (for tests and in-process use).
    pub fn pair() -> Result<(Channel, Channel), ProtoError> {
        let (a, b) = nix::sys::socket::socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(ProtoError::io("socketpair"))?;
        Ok((Channel::from_fd(a), Channel::from_fd(b)))
    }

    /// Connect to the producer's socket at `path`.
    pub fn connect(path: &Path) -> Result<Channel, ProtoError> {
        let sock = seqpacket()?;
        let a = addr(path)?;
        loop {
            match connect(std::os::fd::AsRawFd::as_raw_fd(&sock), &a) {
                Ok(()) => return Ok(Channel::from_fd(sock)),
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(ProtoError::Path {
                        path: path.display().to_string(),
                        source: e.into(),
                    })
                }
            }
        }
    }

    /// The peer's uid (`SO_PEERCRED`).
    pub fn peer_uid(&self) -> Result<u32, ProtoError> {
        getsockopt(&self.sock, sockopt::PeerCredentials)
            .map(|c| c.uid())
            .map_err(ProtoError::io("getsockopt(SO_PEERCRED)"))
    }

    /// Send raw bytes with descriptors (tests use this to speak the protocol wrongly).
    pub fn send_raw(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ProtoError> {
        match scm::send(self.sock.as_fd(), bytes, fds) {
            Ok(_) => Ok(()),
            Err(Errno::EPIPE) | Err(Errno::ECONNRESET) => Err(ProtoError::Closed),
            Err(e) => Err(ProtoError::Io {
                op: "sendmsg",
                source: e,
            }),
        }
    }

    /// Send one message (no descriptors).
    pub fn send(&self, msg: &Message) -> Result<(), ProtoError> {
        self.send_raw(&wire::encode(msg), &[])
    }

    /// Send one message with `fds` attached (`SCM_RIGHTS`; `AddBuffer` and `Ring` only).
    pub fn send_with_fds(&self, msg: &Message, fds: &[BorrowedFd<'_>]) -> Result<(), ProtoError> {
        self.send_raw(&wire::encode(msg), fds)
    }

    /// Receive and decode one message, waiting at most `timeout` (`None`: forever).
    ///
    /// Descriptors are only accepted on `AddBuffer`, and then exactly as many as it declares;
    /// in every error case the received descriptors are closed before returning.
    pub fn recv(
        &mut self,
        timeout: Option<Duration>,
        what: &'static str,
    ) -> Result<(Message, Vec<OwnedFd>), ProtoError> {
        let timed_out = ProtoError::Timeout {
            what,
            ms: timeout.map_or(0, |t| t.as_millis() as u64),
        };
        if timeout.is_some_and(|t| t.is_zero()) {
            return self.recv_now()?.ok_or(timed_out);
        }
        // One syscall per message: a blocking `recvmsg` bounded by `SO_RCVTIMEO` (set only
        // when the timeout changes), rather than a poll before every receive.
        let timeo = timeout.map(|t| t.max(Duration::from_micros(1)));
        if self.rcvtimeo != timeo {
            let tv = match timeo {
                Some(t) => nix::sys::time::TimeVal::new(
                    t.as_secs().min(i64::MAX as u64 / 2) as _,
                    t.subsec_micros() as _,
                ),
                None => nix::sys::time::TimeVal::new(0, 0),
            };
            nix::sys::socket::setsockopt(&self.sock, sockopt::ReceiveTimeout, &tv)
                .map_err(ProtoError::io("setsockopt(SO_RCVTIMEO)"))?;
            self.rcvtimeo = timeo;
        }
        self.recv_msg(false)?.ok_or(timed_out)
    }

    /// Receive one message if one is waiting.
    pub fn try_recv(&mut self) -> Result<Option<(Message, Vec<OwnedFd>)>, ProtoError> {
        self.recv_now()
    }

    /// Whether the peer has closed its end: `POLLHUP`, reported even while messages it sent
    /// before closing are still unread. (Not `POLLRDHUP`: nix cannot name it, and its
    /// `revents()` gives nothing at all when an unknown bit is set.)
    pub fn peer_closed(&self) -> bool {
        let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(_) => fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
            Err(_) => false,
        }
    }

    /// End the connection so that the peer can read everything we sent (a Goodbye above all):
    /// shut down writing (the peer reads our messages, then end of file), then read and drop
    /// what the peer had queued for us. Closing a Unix socket with unread messages makes the
    /// peer's next `recvmsg` fail with `ECONNRESET` before it reads ours.
    pub fn close_gracefully(mut self) {
        self.shutdown_and_drain();
    }

    /// The first half of [`Channel::close_gracefully`], for a channel owned elsewhere: shut
    /// down writing and drop what the peer had queued; the descriptor closes when the channel
    /// is dropped.
    pub fn shutdown_and_drain(&mut self) {
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&self.sock),
            nix::sys::socket::Shutdown::Write,
        );
        // Bounded: a peer cannot keep us here by sending more.
        for _ in 0..1024 {
            match scm::recv(self.sock.as_fd(), &mut self.buf, true) {
                Ok(r) if r.len > 0 || !r.fds.is_empty() => {}
                _ => break,
            }
        }
    }

    fn recv_now(&mut self) -> Result<Option<(Message, Vec<OwnedFd>)>, ProtoError> {
        self.recv_msg(true)
    }

    /// One message; `Ok(None)` when none came (at once when `nonblocking`, else within the
    /// socket's `SO_RCVTIMEO`).
    fn recv_msg(
        &mut self,
        nonblocking: bool,
    ) -> Result<Option<(Message, Vec<OwnedFd>)>, ProtoError> {
        let mut reset = false;
        let r = loop {
            match scm::recv(self.sock.as_fd(), &mut self.buf, nonblocking || reset) {
                Ok(r) => break r,
                Err(Errno::EAGAIN) if reset => return Err(ProtoError::Closed),
                Err(Errno::EAGAIN) => return Ok(None),
                // The peer closed with our messages unread: the error comes first, but what it
                // sent before closing (a Goodbye) may still be queued. Read on once.
                Err(Errno::ECONNRESET) if !reset => reset = true,
                Err(Errno::ECONNRESET) => return Err(ProtoError::Closed),
                Err(e) => {
                    return Err(ProtoError::Io {
                        op: "recvmsg",
                        source: e,
                    })
                }
            }
        };
        if r.ctrunc {
            // Our own descriptor limit, or a peer sending too many?
            // (Counting needs a descriptor of its own: at the limit, /proc/self/fd cannot even
            // be opened and the count reads 0.)
            let open = crate::procstat::fd_count();
            let limit = crate::procstat::fd_limit();
            if limit > 0 && (open == 0 || open as u64 + scm::MAX_RECV_FDS as u64 >= limit) {
                return Err(ProtoError::FdLimit { limit });
            }
            return Err(ProtoError::TooManyFds {
                max: scm::MAX_RECV_FDS,
            });
        }
        if r.truncated {
            return Err(ProtoError::Oversized {
                max: MAX_MESSAGE_LEN,
            });
        }
        if r.len == 0 && r.fds.is_empty() {
            return Err(ProtoError::Closed);
        }
        let msg = wire::decode(&self.buf[..r.len])?;
        let expected = match &msg {
            Message::AddBuffer(a) => a.n_fds as usize,
            Message::Ring(_) => 1,
            _ => 0,
        };
        if r.fds.len() != expected {
            return Err(ProtoError::FdCount {
                msg: msg.name(),
                count: r.fds.len(),
                expected,
            });
        }
        Ok(Some((msg, r.fds)))
    }
}

/// How a producer's socket is created and who may connect.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    /// File mode of the socket (default 0600: only the owner may connect).
    pub mode: u32,
    /// Extra uids allowed besides our own.
    pub allow_uids: Vec<u32>,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        Self {
            mode: 0o600,
            allow_uids: Vec::new(),
        }
    }
}

/// A listening socket; the socket file is removed on drop.
#[derive(Debug)]
pub struct Listener {
    sock: OwnedFd,
    path: PathBuf,
    allow: Vec<u32>,
    /// A descriptor kept in reserve (`/dev/null`): when `accept` fails for want of descriptors,
    /// it is closed to accept and shed the waiting connection, then reopened.
    spare: std::sync::Mutex<Option<OwnedFd>>,
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl Listener {
    /// Bind `path`. A stale socket file (nobody listening) is replaced; one a live producer
    /// listens on is left alone and reported as [`ProtoError::InUse`].
    pub fn bind(path: &Path, opts: &ListenerOptions) -> Result<Listener, ProtoError> {
        let perr = |source: std::io::Error| ProtoError::Path {
            path: path.display().to_string(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => match Channel::connect(path) {
                Ok(_) => {
                    return Err(ProtoError::InUse {
                        path: path.display().to_string(),
                    })
                }
                Err(_) => {
                    tracing::info!("removing stale socket {}", path.display());
                    std::fs::remove_file(path).map_err(perr)?;
                }
            },
            Ok(_) => {
                return Err(perr(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a socket; refusing to replace it",
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(perr(e)),
        }
        let sock = seqpacket()?;
        bind(std::os::fd::AsRawFd::as_raw_fd(&sock), &addr(path)?).map_err(|e| perr(e.into()))?;
        // Nobody can connect before listen(), so setting the mode here leaves no window.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(opts.mode)).map_err(perr)?;
        listen(&sock, Backlog::new(16).unwrap_or(Backlog::MAXCONN))
            .map_err(ProtoError::io("listen"))?;
        let mut allow = opts.allow_uids.clone();
        allow.push(nix::unistd::geteuid().as_raw());
        Ok(Listener {
            sock,
            path: path.to_path_buf(),
            allow,
            spare: std::sync::Mutex::new(open_spare()),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accept one connection (waiting at most `timeout`); `Ok(None)` on timeout. Peers whose
    /// uid is not allowed are refused with an error (the connection is closed).
    pub fn accept(&self, timeout: Option<Duration>) -> Result<Option<Channel>, ProtoError> {
        if !wait_readable(self.sock.as_fd(), timeout)? {
            return Ok(None);
        }
        let fd = loop {
            match scm::accept(self.sock.as_fd()) {
                Ok(fd) => break fd,
                Err(Errno::EINTR) | Err(Errno::ECONNABORTED) => continue,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM | Errno::ENOBUFS)) => {
                    // Out of descriptors (or memory): shed the waiting connection with the
                    // spare descriptor, so it does not stay ready and spin the caller.
                    let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
                    let shed = spare.take().is_some() && scm::accept(self.sock.as_fd()).is_ok();
                    *spare = open_spare();
                    return Err(ProtoError::Exhausted { errno: e, shed });
                }
                Err(e) => {
                    return Err(ProtoError::Io {
                        op: "accept4",
                        source: e,
                    })
                }
            }
        };
        let chan = Channel::from_fd(fd);
        let uid = chan.peer_uid()?;
        if !self.allow.contains(&uid) {
            return Err(ProtoError::PeerRefused {
                uid,
                why: "not our uid and not in --allow-uid",
            });
        }
        Ok(Some(chan))
    }
}

/// The reserve descriptor of a [`Listener`].
fn open_spare() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
