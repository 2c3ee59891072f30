//! `sendmsg(2)`/`recvmsg(2)` with `SCM_RIGHTS` on a `SOCK_SEQPACKET` socket.
//!
//! Received descriptors are wrapped into `OwnedFd` before anything else looks at the message, so a
//! rejected message can never leak them. Receiving uses `MSG_CMSG_CLOEXEC`.

use nix::errno::Errno;
use nix::sys::socket::{accept4, sendmsg, ControlMessage, MsgFlags, SockFlag, UnixAddr};
use std::io::IoSlice;
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

/// Control buffer for exactly [`MAX_RECV_FDS`] descriptors (`CMSG_SPACE(8 * 4)` = 48 bytes on
/// 64-bit Linux), aligned for `cmsghdr`: a ninth sets `MSG_CTRUNC`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 48]);
const _: () = assert!(
    std::mem::size_of::<nix::libc::cmsghdr>()
        + MAX_RECV_FDS * std::mem::size_of::<nix::libc::c_int>()
        == 48
);

/// Receive one datagram with up to [`MAX_RECV_FDS`] descriptors.
///
/// Written against libc rather than nix because nix refuses to walk the control messages when
/// `MSG_CTRUNC` is set, yet the kernel has installed the descriptors that fit by then (and
/// `cmsg_len` covers exactly those): they must be owned and closed, or they leak.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], nonblocking: bool) -> Result<Received, Errno> {
    use nix::libc;
    let mut cbuf = CmsgBuf([0; 48]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.0.as_mut_ptr().cast();
    msg.msg_controllen = cbuf.0.len() as _;
    let mut flags = libc::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= libc::MSG_DONTWAIT;
    }
    let n = loop {
        // SAFETY: `msg` points at `iov` (over `buf`) and `cbuf`, all live and writable for the
        // call, with their true lengths.
        let r = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) };
        if r >= 0 {
            break r as usize;
        }
        match Errno::last() {
            Errno::EINTR => continue,
            e => return Err(e),
        }
    };
    let mut fds = Vec::new();
    let ctl_start = cbuf.0.as_ptr() as usize;
    let ctl_end = ctl_start + (msg.msg_controllen as usize).min(cbuf.0.len());
    // SAFETY: `msg` describes the control buffer the kernel just filled.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR/CMSG_NXTHDR only return headers that lie inside the buffer.
        let hdr = unsafe { &*cmsg };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: `cmsg` is a valid header inside the buffer.
            let data = unsafe { libc::CMSG_DATA(cmsg) } as usize;
            let end = (cmsg as usize + hdr.cmsg_len as usize).min(ctl_end);
            let count = end.saturating_sub(data) / std::mem::size_of::<libc::c_int>();
            for i in 0..count {
                let at = (data + i * std::mem::size_of::<libc::c_int>()) as *const libc::c_int;
                // SAFETY: `at` lies within the control buffer (bounded by `end` above).
                let raw: RawFd = unsafe { at.read_unaligned() };
                // SAFETY: SCM_RIGHTS installed this descriptor in our table for us alone;
                // wrapping it at once gives it exactly one owner.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR; returns null past the last header.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(Received {
        len: n.min(buf.len()),
        fds,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        ctrunc: msg.msg_flags & libc::MSG_CTRUNC != 0,
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
