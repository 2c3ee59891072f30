//! `sendmsg(2)`/`recvmsg(2)` with `SCM_RIGHTS` on a `SOCK_SEQPACKET` socket.
//!
//! Received descriptors are wrapped into `OwnedFd` before anything else looks at the message, so a
//! rejected message can never leak them. Receiving uses `MSG_CMSG_CLOEXEC`.

use nix::errno::Errno;
use nix::sys::socket::{
    accept4, recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, UnixAddr,
};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Room for this many descriptors in one received message; more sets `MSG_CTRUNC` and the kernel
/// discards the excess.
pub const MAX_RECV_FDS: usize = 8;

/// One received datagram.
#[derive(Debug)]
pub struct Received {
    /// Bytes written into the caller's buffer (0 means the peer closed the connection).
    pub len: usize,
    /// Every descriptor that arrived, already owned.
    pub fds: Vec<OwnedFd>,
    /// `MSG_TRUNC`: the datagram was longer than the buffer.
    pub truncated: bool,
    /// `MSG_CTRUNC`: more control data (descriptors) arrived than there was room for.
    pub ctrunc: bool,
}

/// Receive one datagram with up to [`MAX_RECV_FDS`] descriptors.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], nonblocking: bool) -> Result<Received, Errno> {
    let mut iov = [IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; MAX_RECV_FDS]);
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let msg = loop {
        match recvmsg::<UnixAddr>(sock.as_raw_fd(), &mut iov, Some(&mut space), flags) {
            Err(Errno::EINTR) => continue,
            other => break other?,
        }
    };
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            for fd in raw {
                // SAFETY: SCM_RIGHTS installed this descriptor in our table for us alone;
                // wrapping it at once gives it exactly one owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Ok(Received {
        len: msg.bytes,
        fds,
        truncated: msg.flags.contains(MsgFlags::MSG_TRUNC),
        ctrunc: msg.flags.contains(MsgFlags::MSG_CTRUNC),
    })
}

/// Send one datagram, with `fds` attached when not empty. `MSG_NOSIGNAL`: a vanished peer is an
/// `EPIPE` error, never a `SIGPIPE`.
pub fn send(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<usize, Errno> {
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &rights };
    let iov = [IoSlice::new(data)];
    loop {
        match sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// `accept4(SOCK_CLOEXEC)` one connection from a listening socket.
pub fn accept(listener: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    let fd = accept4(listener.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
    // SAFETY: accept4 just installed this descriptor for us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
