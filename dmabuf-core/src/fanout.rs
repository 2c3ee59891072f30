//! Several consumers on one producer: the connections, the quota, publishing one frame to
//! many (used by [`crate::publisher::Publisher`] and by the `producer` binary).
//!
//! [`Fanout`] owns every connection the producer has: consumers still to say `Hello`
//! (*pending*, each with a deadline) and consumers being served (*members*, one
//! [`Session`] each). One `poll(2)` covers the listener, the pending connections and the members,
//! so new consumers are accepted and handshaken while frames are streaming, releases are
//! handled as they come, and a consumer that vanishes is noticed at once.
//!
//! A frame is one pool [`Lease`] shared (`Arc`) by every member it is sent to; each session keeps
//! its clone until that consumer releases the buffer (or its session ends, however it ends), so
//! the buffer returns to the pool only when the last consumer holding it has let go.
//!
//! Slow-consumer policy (see `docs/ARCHITECTURE.md` and `docs/PROTOCOL.md`, "Flow control"): with more than one member, a member may
//! hold at most [`Fanout::quota`] buffers (a share that shrinks with the number of members, so
//! that stalled members can never pin every buffer). When a member reaches its
//! quota, the producer waits up to one frame period for it to release (a bounded wait, once
//! per episode: see [`Fanout::waiting_on_quota`]); if it has not, it is skipped for that frame
//! and every following one until it comes back below its quota (the frame is not sent to it: it sees a gap in `seq`, which its
//! statistics count as dropped, and the producer counts it as `skipped`). So a stalled consumer
//! never pins the last free buffer and the others keep their rate. A member that holds its whole
//! quota and releases none for `--stall-timeout` is dropped (Goodbye `InternalError`, naming
//! why). A
//! single member may hold the whole pool (back-pressure, as before: nothing is dropped).

use crate::pool::{Lease, Pool};
use crate::proto::server::{accepts, read_hello, Pumped, Session};
use crate::proto::wire::{printable, Frame, Goodbye, GoodbyeReason, Hello, Welcome};
use crate::proto::{Channel, Listener, Message, ProtoError};
use nix::errno::Errno;
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::{TimeSpec, TimeVal, TimeValLike};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a `sendmsg` to one consumer may block (its socket buffer full because it stopped
/// reading) before that consumer is dropped; the others are not held up longer than this.
const SEND_TIMEOUT: Duration = Duration::from_millis(250);

/// How often a zero-timeout [`Fanout::wait`] polls everything (the listener, connections
/// owing a Hello); between, it only receives from the members without a poll.
const FULL_POLL_EVERY: Duration = Duration::from_millis(10);

/// A consumer being served.
pub struct Member {
    /// Connection number (1, 2, …) for the logs.
    pub n: u64,
    /// Its session (the frames it holds, as pool leases).
    pub sess: Session<Arc<Lease>>,
    /// Frames not sent to it because it held its quota.
    pub skipped: u64,
    /// Its last release, or when it was first seen at its quota after releasing
    /// ([`Fanout::drop_stalled`]): the stall clock.
    last_progress: Instant,
    /// It released something since its stall clock last started at its quota: reaching its
    /// quota again restarts the clock. False while it releases nothing, so a quota that grows
    /// (another member left) and fills again does not restart it.
    released_since_quota: bool,
    /// It was skipped at its quota and has not come back below it since: no more waiting for
    /// it.
    lagging: bool,
    /// A renegotiation it has not been told of yet because it still holds frames of the old
    /// pool: the new `Welcome` and pool, sent once it has released them all. Until then it
    /// gets no frames; the others go on in the new format.
    migrate: Option<Box<(Welcome, Pool)>>,
    /// What it said it can import (a renegotiation to something else ends its session).
    hello: Hello,
}

/// A consumer that connected and has not said `Hello` yet.
struct Pending {
    n: u64,
    chan: Channel,
    deadline: Instant,
}

/// A consumer whose `Hello` arrived: the server decides whether and how to serve it.
pub struct Arrival {
    /// Connection number, for the logs.
    pub n: u64,
    /// The connection.
    pub chan: Channel,
    /// What it can import.
    pub hello: Hello,
}

/// Every connection of a producer: pending handshakes and the consumers being served.
pub struct Fanout {
    members: Vec<Member>,
    pending: Vec<Pending>,
    next: u64,
    hello_timeout: Duration,
    /// After `accept` ran out of descriptors: do not poll the listener until then.
    listen_backoff: Option<(Instant, Duration)>,
    shed: RateLimited,
    /// The last full poll (see [`FULL_POLL_EVERY`]).
    last_poll: Instant,
}

/// Connections waiting for their `Hello` at once; more are accepted and closed at once (shed).
pub const MAX_PENDING: usize = 64;

/// A warning logged at most once a second, with how many were not.
pub struct RateLimited {
    count: u64,
    logged: u64,
    last: Option<Instant>,
}

impl RateLimited {
    /// Nothing counted yet.
    pub fn new() -> Self {
        Self {
            count: 0,
            logged: 0,
            last: None,
        }
    }

    /// Count one occurrence; log it unless one was logged less than a second ago.
    pub fn warn(&mut self, what: std::fmt::Arguments<'_>) {
        self.count += 1;
        if self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            let quiet = self.count - self.logged - 1;
            if quiet > 0 {
                tracing::warn!("{what} ({quiet} more like it not logged)");
            } else {
                tracing::warn!("{what}");
            }
            self.logged = self.count;
            self.last = Some(Instant::now());
        }
    }
}

impl Default for RateLimited {
    fn default() -> Self {
        Self::new()
    }
}

impl Fanout {
    /// No connections; a connection that sends no `Hello` within `hello_timeout` is closed.
    pub fn new(hello_timeout: Duration) -> Self {
        Self {
            members: Vec::new(),
            pending: Vec::new(),
            next: 1,
            hello_timeout,
            listen_backoff: None,
            shed: RateLimited::new(),
            last_poll: Instant::now(),
        }
    }

    /// No consumer is being served.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Consumers being served.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Start serving a consumer whose handshake is done (Welcome and buffers sent); `hello`
    /// is what it offered.
    pub fn join(&mut self, n: u64, sess: Session<Arc<Lease>>, hello: Hello) {
        self.members.push(Member {
            n,
            sess,
            skipped: 0,
            last_progress: Instant::now(),
            released_since_quota: true,
            lagging: false,
            migrate: None,
            hello,
        });
    }

    /// How many buffers of the consumers' share (`share`: `--buffers`) one member may hold: all
    /// of them when it is alone; with `n` members, `(share - 1) / (n - 1)` (at least 1, at most
    /// half the share), so that any `n - 1` stalled members together hold at most `share - 1`
    /// buffers and at least one is always left for the healthy ones. The server admits at most
    /// `share` members ([`Fanout::max_members`]), so the bound holds for every `k < n` stalled.
    pub fn quota(&self, share: usize) -> usize {
        let n = self.members.len();
        if n <= 1 {
            share
        } else {
            (share.saturating_sub(1) / (n - 1)).clamp(1, share.div_ceil(2).max(1))
        }
    }

    /// The most members a share of `share` buffers serves with the guarantee above.
    pub fn max_members(share: usize) -> usize {
        share.max(1)
    }

    /// Whether a member that is not known to lag holds its quota: the server then waits for
    /// it (a bounded time: one frame period) before skipping it, so that a consumer that was
    /// only briefly descheduled, or got a burst of late frames, loses nothing.
    pub fn waiting_on_quota(&self, pool_len: usize) -> bool {
        let quota = self.quota(pool_len);
        self.members
            .iter()
            .any(|m| !m.lagging && (m.migrate.is_some() || m.sess.held_count() >= quota))
    }

    /// Whether a member still holds frames of a pool before the last renegotiation.
    pub fn migrating(&self) -> bool {
        self.members.iter().any(|m| m.migrate.is_some())
    }

    /// Wait up to `timeout` for activity and handle it: accept connections, read `Hello`s
    /// (returned for the server to admit), handle releases and departures. Returns as soon as
    /// something happened (or the time is up). Fails only if the listener itself fails.
    pub fn wait(
        &mut self,
        listener: &Listener,
        timeout: Duration,
    ) -> Result<Vec<Arrival>, ProtoError> {
        Ok(self.wait_with(listener, None, timeout)?.0)
    }

    /// [`Fanout::wait`], also returning (without waiting further) as soon as `extra` (a
    /// capture device, a timer) is readable; the flag says whether it was.
    pub fn wait_with(
        &mut self,
        listener: &Listener,
        extra: Option<BorrowedFd<'_>>,
        timeout: Duration,
    ) -> Result<(Vec<Arrival>, bool), ProtoError> {
        self.wait_inner(listener, extra, timeout, true)
    }

    /// Sleep up to `timeout` without waking for releases (a paced server's wait for its next
    /// tick: one wake-up per frame): only a connection, a `Hello`, a departure or another
    /// message on a ring member's socket ends the sleep early. Releases that came meanwhile
    /// are all taken when it ends: from the rings, and from the sockets of members without a
    /// ring (polled meanwhile for a hang-up only: their releases would wake us one by one).
    /// A member that holds no frame costs no receive.
    pub fn sleep(
        &mut self,
        listener: &Listener,
        timeout: Duration,
    ) -> Result<Vec<Arrival>, ProtoError> {
        Ok(self.wait_inner(listener, None, timeout, false)?.0)
    }

    fn wait_inner(
        &mut self,
        listener: &Listener,
        extra: Option<BorrowedFd<'_>>,
        timeout: Duration,
        wake_on_release: bool,
    ) -> Result<(Vec<Arrival>, bool), ProtoError> {
        let now = Instant::now();
        if timeout.is_zero()
            && extra.is_none()
            && self.pending.is_empty()
            && now.saturating_duration_since(self.last_poll) < FULL_POLL_EVERY
        {
            // The per-frame check of a busy stream: one non-blocking receive per member (its
            // Release, or nothing), no poll; the listener and everything else are polled at
            // least every FULL_POLL_EVERY.
            // With a ring, the Release is read from shared memory: no system call at all.
            for i in (0..self.members.len()).rev() {
                let socket = !self.members[i].sess.uses_ring();
                self.pump_member(i, socket);
            }
            return Ok((Vec::new(), false));
        }
        // A pending Hello's deadline shortens the wait.
        let timeout = self
            .pending
            .iter()
            .map(|p| p.deadline.saturating_duration_since(now))
            .fold(timeout, Duration::min);
        // Out of descriptors a moment ago: leave the listener alone for a while (its backlog
        // waits; it would be ready again at once).
        let listen = !matches!(self.listen_backoff, Some((until, _)) if now < until);
        let timeout = match self.listen_backoff {
            Some((until, _)) if !listen => timeout.min(until.saturating_duration_since(now)),
            _ => timeout,
        };
        // About to sleep: consumers with a ring send `Wake` after a release from now on (and
        // one already waiting means no sleep).
        // (Not when sleeping to a tick: releases wait for it.)
        let mut timeout = timeout;
        if !timeout.is_zero() && wake_on_release {
            for m in &self.members {
                if m.sess.set_waiting(true) {
                    timeout = Duration::ZERO;
                }
            }
        }
        // Members' sockets wake us when readable; when sleeping to a tick, those of members
        // without a ring (whose releases come on the socket) only when the peer hangs up
        // (closes its socket).
        let quiet = |m: &Member| !wake_on_release && !m.sess.uses_ring();
        let readable = PollFlags::POLLIN;
        let fds: Vec<(BorrowedFd<'_>, PollFlags)> = extra
            .into_iter()
            .chain(std::iter::once(listener.as_fd()).filter(|_| listen))
            .chain(self.pending.iter().map(|p| p.chan.as_fd()))
            .map(|fd| (fd, readable))
            .chain(self.members.iter().map(|m| {
                let events = if quiet(m) {
                    // No events asked: POLLHUP (the peer closed) and POLLERR come regardless.
                    PollFlags::empty()
                } else {
                    readable
                };
                (m.sess.channel().as_fd(), events)
            }))
            .collect();
        let ready = match poll_readable(&fds, timeout) {
            Ok(r) => r,
            Err(Errno::EINTR) => vec![false; fds.len()],
            Err(e) => {
                return Err(ProtoError::Io {
                    op: "poll",
                    source: e,
                })
            }
        };
        // (When the poll returned: a sleep to a tick is followed by checks without one.)
        self.last_poll = Instant::now();
        let (extra_ready, ready) = match extra {
            Some(_) => (ready[0], &ready[1..]),
            None => (false, &ready[..]),
        };
        let (listen_ready, rest) = if listen {
            let (l, rest) = ready.split_first().expect("the listener is polled");
            (*l, rest)
        } else {
            (false, ready)
        };
        let (pending_ready, member_ready) = rest.split_at(self.pending.len());

        if wake_on_release {
            for m in &self.members {
                m.sess.set_waiting(false);
            }
        }
        for i in (0..self.members.len()).rev() {
            if quiet(&self.members[i]) {
                // Its releases did not wake us: take them all now.
                self.drain_member(i, member_ready[i]);
            } else if member_ready[i] || self.members[i].sess.uses_ring() {
                self.pump_member(i, member_ready[i]);
            }
        }
        let mut arrivals = Vec::new();
        let now = Instant::now();
        for (i, p) in std::mem::take(&mut self.pending).into_iter().enumerate() {
            if pending_ready[i] {
                let Pending { n, mut chan, .. } = p;
                match read_hello(&mut chan, Duration::ZERO) {
                    Ok(hello) => arrivals.push(Arrival { n, chan, hello }),
                    Err(e) => tracing::warn!("consumer #{n}: handshake failed: {e}"),
                }
            } else if now >= p.deadline {
                let msg = format!("no Hello within {:?}", self.hello_timeout);
                tracing::warn!("consumer #{}: {msg}; closing", p.n);
                let _ = p.chan.send(&Message::Goodbye(Goodbye {
                    reason: GoodbyeReason::ProtocolError,
                    message: msg,
                }));
            } else {
                self.pending.push(p);
            }
        }
        if listen_ready {
            self.accept_all(listener)?;
        }
        Ok((arrivals, extra_ready))
    }

    fn accept_all(&mut self, listener: &Listener) -> Result<(), ProtoError> {
        loop {
            match listener.accept(Some(Duration::ZERO)) {
                Ok(Some(chan)) => {
                    self.listen_backoff = None;
                    if self.pending.len() >= MAX_PENDING {
                        // Too many connections that have not said Hello: shed this one.
                        self.shed.warn(format_args!(
                            "{MAX_PENDING} connections are waiting for their Hello; \
                             closing a new one"
                        ));
                        drop(chan);
                        continue;
                    }
                    let n = self.next;
                    self.next += 1;
                    let tv = TimeVal::milliseconds(SEND_TIMEOUT.as_millis() as i64);
                    if let Err(e) = setsockopt(&chan, sockopt::SendTimeout, &tv) {
                        tracing::warn!("consumer #{n}: SO_SNDTIMEO: {e}");
                    }
                    tracing::debug!("consumer #{n} connected; waiting for its Hello");
                    self.pending.push(Pending {
                        n,
                        chan,
                        deadline: Instant::now() + self.hello_timeout,
                    });
                }
                Ok(None) => return Ok(()),
                Err(e @ ProtoError::PeerRefused { .. }) => {
                    tracing::warn!("refused a connection: {e}")
                }
                Err(e @ ProtoError::Exhausted { .. }) => {
                    // Back off (100 ms, doubling to 2 s) and keep serving the stream.
                    let wait = self
                        .listen_backoff
                        .map_or(Duration::from_millis(100), |(_, w)| {
                            (w * 2).min(Duration::from_secs(2))
                        });
                    self.listen_backoff = Some((Instant::now() + wait, wait));
                    self.shed.warn(format_args!(
                        "{e}; not accepting for {} ms; the stream goes on",
                        wait.as_millis()
                    ));
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Take every release member `i` (without a ring) sent, one receive each, while it holds
    /// frames, and when its socket said it hung up (`hung_up`) what follows them (its
    /// `Goodbye`, its end); a receive that takes no release ends it. No receive for a member
    /// that holds nothing and did not hang up.
    fn drain_member(&mut self, i: usize, hung_up: bool) {
        let n = self.members[i].n;
        loop {
            let held = self.members[i].sess.held_count();
            if held == 0 && !hung_up {
                return;
            }
            self.pump_member(i, true);
            let still = self.members.get(i).is_some_and(|m| m.n == n);
            if !still || self.members[i].sess.held_count() >= held {
                return;
            }
        }
    }

    /// Handle member `i`'s releases (from its ring) and, when `socket`, its messages; remove
    /// it if it left or broke the protocol.
    fn pump_member(&mut self, i: usize, socket: bool) {
        let m = &mut self.members[i];
        let got = if socket {
            m.sess.pump(Duration::ZERO)
        } else {
            m.sess.pump_ring().map(Pumped::Released)
        };
        match got {
            Ok(Pumped::Released(k)) => {
                if k > 0 {
                    m.last_progress = Instant::now();
                    m.released_since_quota = true;
                }
                if m.migrate.is_some() && m.sess.held_count() == 0 {
                    let (welcome, pool) = *m.migrate.take().expect("checked");
                    self.tell(i, &welcome, &pool);
                }
            }
            Ok(Pumped::Left) => {
                let m = self.members.remove(i);
                tracing::info!(
                    "consumer #{} left after {} frames ({} skipped); {} left",
                    m.n,
                    m.sess.frames_sent,
                    m.skipped,
                    self.members.len()
                );
            }
            Err(e) => {
                let m = self.members.remove(i);
                tracing::warn!("consumer #{}: {e}; dropped", m.n);
            }
        }
    }

    /// Send `frame` (in `lease`) to every member below its quota; skip (and count) the others.
    /// Returns how many members it went to.
    pub fn publish(&mut self, frame: &Frame, lease: Arc<Lease>, pool_len: usize) -> usize {
        let quota = self.quota(pool_len);
        let mut sent = 0;
        for i in (0..self.members.len()).rev() {
            let m = &mut self.members[i];
            if m.migrate.is_some() || m.sess.held_count() >= quota {
                m.lagging = true;
                m.skipped += 1;
                if m.skipped.is_power_of_two() {
                    tracing::info!(
                        "consumer #{} holds {} buffers ({}): {} frame(s) skipped so far",
                        m.n,
                        m.sess.held_count(),
                        if m.migrate.is_some() {
                            "of the pool before a format change"
                        } else {
                            "its quota"
                        },
                        m.skipped
                    );
                }
                continue;
            }
            m.lagging = false;
            match m.sess.send_frame(frame.clone(), lease.clone()) {
                Ok(()) => {
                    sent += 1;
                }
                Err(ProtoError::Closed) => {
                    let m = self.members.remove(i);
                    tracing::info!("consumer #{} went away", m.n);
                }
                Err(ProtoError::Goodbye {
                    reason: GoodbyeReason::Leaving | GoodbyeReason::EndOfStream,
                    message,
                }) => {
                    let m = self.members.remove(i);
                    tracing::info!("consumer #{} left: {}", m.n, printable(&message));
                }
                Err(e) => {
                    let m = self.members.remove(i);
                    tracing::warn!("consumer #{}: sending a frame: {e}; dropped", m.n);
                }
            }
        }
        sent
    }

    /// Drop every member that holds its whole quota (alone: every buffer), or any frame of a
    /// pool before a renegotiation (it keeps that pool alive), and has released none for
    /// `limit`. One that holds less of the current pool blocks nobody, however slow it is.
    pub fn drop_stalled(&mut self, limit: Duration, pool_len: usize) {
        let quota = self.quota(pool_len);
        let mut i = 0;
        while i < self.members.len() {
            let m = &mut self.members[i];
            if m.migrate.is_none() && m.sess.held_count() >= quota && m.released_since_quota {
                // It reached its quota (a frame sent, or the quota shrank as another member
                // joined): it blocks now (alone: the pool is dry), and its stall clock starts
                // — unless it has released nothing since it last started (its quota grew when
                // another member went; it is as stalled as before).
                m.last_progress = Instant::now();
                m.released_since_quota = false;
                i += 1;
                continue;
            }
            let holding = if m.migrate.is_some() {
                m.sess.held_count() > 0
            } else {
                m.sess.held_count() >= quota
            };
            if holding && m.last_progress.elapsed() >= limit {
                let m = self.members.remove(i);
                let msg = format!(
                    "consumer holds {} buffer(s) and released none for {limit:?}; dropping it",
                    m.sess.held_count()
                );
                tracing::warn!("consumer #{}: {msg}", m.n);
                m.sess
                    .finish(GoodbyeReason::InternalError, &msg, Duration::ZERO);
            } else {
                i += 1;
            }
        }
    }

    /// Say goodbye to every member, give them up to `grace` together to release what they hold,
    /// then end every session (and close the pending connections).
    pub fn finish_all(&mut self, reason: GoodbyeReason, message: &str, grace: Duration) {
        self.pending.clear();
        for m in &mut self.members {
            m.sess.say_goodbye(reason, message);
        }
        let deadline = Instant::now() + grace;
        loop {
            self.members.retain(|m| m.sess.held_count() > 0);
            let left = deadline.saturating_duration_since(Instant::now());
            if self.members.is_empty() || left.is_zero() {
                break;
            }
            let mut waiting = false;
            for m in &self.members {
                waiting |= m.sess.set_waiting(true);
            }
            let wait = if waiting { Duration::ZERO } else { left };
            let fds: Vec<(BorrowedFd<'_>, PollFlags)> = self
                .members
                .iter()
                .map(|m| (m.sess.channel().as_fd(), PollFlags::POLLIN))
                .collect();
            let ready =
                poll_readable(&fds, wait).unwrap_or_else(|_| vec![false; self.members.len()]);
            for i in (0..self.members.len()).rev() {
                self.members[i].sess.set_waiting(false);
                if ready[i] || self.members[i].sess.uses_ring() {
                    self.pump_member(i, ready[i]);
                }
            }
        }
        self.members.clear();
    }

    /// End member `n`'s session with a Goodbye (`reason`, `message`); false if it is not a
    /// member (it left already).
    pub fn dismiss(&mut self, n: u64, reason: GoodbyeReason, message: &str) -> bool {
        let Some(i) = self.members.iter().position(|m| m.n == n) else {
            return false;
        };
        let m = self.members.remove(i);
        m.sess.finish(reason, message, Duration::ZERO);
        true
    }

    /// End the sessions of the members that joined last until at most `keep` are left
    /// (Goodbye(`reason`, `message`)).
    pub fn shed_newest(&mut self, keep: usize, reason: GoodbyeReason, message: &str) {
        for m in self.members.drain(keep.min(self.members.len())..) {
            tracing::warn!("consumer #{}: {message}; dropped", m.n);
            m.sess.finish(reason, message, Duration::ZERO);
        }
    }

    /// The most buffers any member holds.
    pub fn max_held(&self) -> usize {
        self.members
            .iter()
            .map(|m| m.sess.held_count())
            .max()
            .unwrap_or(0)
    }

    /// Tell every member the stream's format changed: remove its buffers, send the new
    /// `Welcome` and `pool`'s buffers — at once to a member that holds nothing, and to one
    /// that still holds frames once it has released them (it gets no frames meanwhile; the
    /// others are not held up). A member that cannot be told is dropped, and so is one that
    /// did not offer the new format and memory in its `Hello` (Goodbye(unsupported), rather
    /// than a `Welcome` it would refuse).
    pub fn renegotiate(&mut self, welcome: &Welcome, pool: &Pool) {
        self.drop_unaccepting(pool);
        for i in (0..self.members.len()).rev() {
            let m = &mut self.members[i];
            if m.sess.held_count() > 0 {
                if m.migrate.is_none() {
                    // The stall clock starts now: it gets the whole stall timeout to release
                    // what it holds, however long it held it already.
                    m.last_progress = Instant::now();
                }
                m.migrate = Some(Box::new((welcome.clone(), pool.clone())));
            } else {
                m.migrate = None;
                self.tell(i, welcome, pool);
            }
        }
    }

    /// End the session of every member whose `Hello` did not offer `pool`'s format and memory
    /// (Goodbye(unsupported), naming them): the first step of a renegotiation to `pool`.
    pub fn drop_unaccepting(&mut self, pool: &Pool) {
        let (format, memory) = (pool.format(), pool.memory());
        let msg = format!(
            "the stream renegotiated to {format} in {memory}, which this consumer did not offer"
        );
        let (keep, gone): (Vec<Member>, Vec<Member>) = std::mem::take(&mut self.members)
            .into_iter()
            .partition(|m| accepts(&m.hello, &format, memory));
        self.members = keep;
        for m in gone {
            tracing::warn!("consumer #{}: {msg}; dropped", m.n);
            m.sess
                .finish(GoodbyeReason::Unsupported, &msg, Duration::ZERO);
        }
    }

    /// Send member `i` (holding nothing) the renegotiation; drop it if that fails.
    fn tell(&mut self, i: usize, welcome: &Welcome, pool: &Pool) {
        let sess = &mut self.members[i].sess;
        let told = sess.renegotiate(welcome).and_then(|()| {
            (0..pool.len() as u32)
                .try_for_each(|id| sess.add_buffer(id, pool.buffer(id).expect("id in range")))
        });
        if let Err(e) = told {
            let m = self.members.remove(i);
            tracing::warn!("consumer #{}: renegotiating: {e}; dropped", m.n);
        }
    }

    /// One line about every member, for the progress log.
    pub fn summary(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "#{} holds {} skipped {}",
                    m.n,
                    m.sess.held_count(),
                    m.skipped
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `ppoll(2)` `fds` for their events (`POLLIN`, or none for a hang-up or error alone) for up
/// to `timeout` (nanosecond precision: a paced caller sleeps to its deadline instead of polling
/// through the last partial millisecond): which became ready (or hung up, or failed).
fn poll_readable(
    fds: &[(BorrowedFd<'_>, PollFlags)],
    timeout: Duration,
) -> Result<Vec<bool>, Errno> {
    let mut pfds: Vec<PollFd> = fds
        .iter()
        .map(|(fd, events)| PollFd::new(*fd, *events))
        .collect();
    ppoll(&mut pfds, Some(TimeSpec::from_duration(timeout)), None)?;
    Ok(pfds
        .iter()
        .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
        .collect())
}
