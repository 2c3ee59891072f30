//! How a frame's pixels reach the consumer, and the producer's own CPU accounting.
//!
//! - `zero-copy` (the product): the source draws straight into the pool buffer; only the small
//!   `Frame` message crosses the socket.
//! - `memcpy` (comparison): the source draws into a private buffer, and each frame is copied into
//!   the pool buffer (shared memory) before it is published.
//! - `socket-copy` (comparison): the source draws into a private buffer, and the frame's bytes
//!   are written through a second, `SOCK_STREAM` connection (`SOCKET.bytes`) right after the
//!   `Frame` message; the consumer reads them into its own memory. The pool buffer named by the
//!   `Frame` message is still leased and released as usual (same flow control), but its memory
//!   is not written. See docs/PROTOCOL.md, "Comparison byte stream".
//!
//! [`Meter`] splits the producer's CPU time into the source's work (pattern drawing or decoding,
//! and the checksum) and everything else (the transport), over the steady state (after a warm-up
//! of a few frames), and counts page faults over the same span.

use anyhow::{bail, Context as _, Result};
use dmabuf_core::format::{frame_checksum, FrameLayout};
use dmabuf_core::pool::Lease;
use dmabuf_core::time::{burn_cpu_ns, monotonic_ns, page_faults, process_cpu_ns};
use serde::Serialize;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use dmabuf_core::proto::bytestream::{bytes_socket_path, TransportKind};

/// Test-only knobs that make the measurement itself checkable.
#[derive(Debug, Clone, Copy, Default)]
pub struct TestLoad {
    /// CPU to burn in the transport step of every frame, in ns.
    pub burn_ns: u64,
    /// Fresh memfd pages to create and touch in the transport step of every frame (each one a
    /// page fault).
    pub fault_pages: u64,
}

pub struct Transport {
    kind: TransportKind,
    private: Vec<u8>,
    bytes_path: Option<PathBuf>,
    bytes_listener: Option<UnixListener>,
    stream: Option<UnixStream>,
    test: TestLoad,
    pub meter: Meter,
}

impl Transport {
    /// `metered`: keep the CPU accounting of `--stats-json` (two `CLOCK_PROCESS_CPUTIME_ID`
    /// reads and a `getrusage` per frame); without it the hot path makes no such syscalls.
    pub fn new(
        kind: TransportKind,
        socket: &Path,
        warmup: u64,
        test: TestLoad,
        metered: bool,
    ) -> Self {
        Self {
            kind,
            private: Vec::new(),
            bytes_path: (kind == TransportKind::SocketCopy).then(|| bytes_socket_path(socket)),
            bytes_listener: None,
            stream: None,
            test,
            meter: Meter::new(kind, warmup, metered),
        }
    }

    pub fn kind(&self) -> TransportKind {
        self.kind
    }

    /// A consumer was welcomed: for socket-copy, wait (up to `timeout`) for its byte stream.
    pub fn session_start(&mut self, timeout: Duration) -> Result<()> {
        self.stream = None;
        let Some(path) = &self.bytes_path else {
            return Ok(());
        };
        if self.bytes_listener.is_none() {
            // The main socket is ours (Listener::bind refuses a live one), so a file here is
            // stale.
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path)
                .with_context(|| format!("binding the byte stream {}", path.display()))?;
            l.set_nonblocking(true)?;
            self.bytes_listener = Some(l);
        }
        let l = self.bytes_listener.as_ref().expect("bound above");
        let deadline = Instant::now() + timeout;
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false)?;
                    self.stream = Some(s);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        bail!(
                            "--transport socket-copy: the consumer did not connect to {} within {timeout:?} (run it with --transport socket-copy)",
                            path.display()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(e).context("accepting the byte stream"),
            }
        }
    }

    /// Run a step of the source's own work (making the next frame ready: decoding), metered as
    /// source CPU.
    pub fn source_step<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let t0 = self.meter.cpu();
        let r = f();
        self.meter.source_ns += self.meter.cpu() - t0;
        r
    }

    /// Produce frame `seq` for `lease`: the source's work (metered as source CPU), then the
    /// transport's copy into the pool buffer where it has one. Returns the checksum and the
    /// publish time (taken when the frame's content is complete, before any transport copy).
    ///
    /// The third value says whether the producer's CPU copied pixels into the pool buffer
    /// (`FRAME_FLAG_COPIED`): a decoded picture written by the source, or the memcpy transport.
    pub fn write_frame(
        &mut self,
        lease: &Lease,
        write: &mut dyn FnMut(&mut [u8], &FrameLayout) -> Result<bool>,
        checksum: bool,
    ) -> Result<(Option<u32>, u64, bool)> {
        self.meter.frame_start();
        let layout = &lease.buffer().layout;
        let src0 = self.meter.cpu();
        let mut copied = self.kind == TransportKind::Memcpy;
        let sum = match self.kind {
            TransportKind::ZeroCopy => lease
                .with_bytes_mut(|data| -> Result<Option<u32>> {
                    copied = write(data, layout)?;
                    Ok(checksum
                        .then(|| frame_checksum(data, &layout.planes))
                        .flatten())
                })
                .context("writing the frame")??,
            TransportKind::Memcpy | TransportKind::SocketCopy => {
                // socket-copy sends the whole buffer (its fd's size, as the consumer's staging
                // buffer has); memcpy copies the frame's layout.
                let len = match self.kind {
                    TransportKind::SocketCopy => {
                        let buf = lease.buffer();
                        if buf.fds.len() != 1 {
                            bail!("--transport socket-copy needs single-fd buffers");
                        }
                        buf.fd_sizes[0].max(layout.size)
                    }
                    _ => layout.size,
                };
                self.private.resize(len as usize, 0);
                write(&mut self.private, layout)?;
                checksum
                    .then(|| frame_checksum(&self.private, &layout.planes))
                    .flatten()
            }
        };
        self.meter.source_ns += self.meter.cpu() - src0;
        let publish_ns = monotonic_ns();
        if self.kind == TransportKind::Memcpy {
            let private = &self.private;
            lease
                .with_bytes_mut(|data| data[..private.len()].copy_from_slice(private))
                .context("copying the frame into shared memory")?;
        }
        self.test_load()?;
        Ok((sum, publish_ns, copied))
    }

    /// A frame the source already put in a pool buffer (decoded in place, or captured): only
    /// its checksum (`checksum`, metered as source work) is left. Zero-copy only: the
    /// comparison transports draw or decode into private memory.
    pub fn filled_frame(
        &mut self,
        checksum: impl FnOnce() -> Result<Option<u32>>,
    ) -> Result<(Option<u32>, u64)> {
        if self.kind != TransportKind::ZeroCopy {
            bail!(
                "--transport {} needs a source that draws into private memory",
                self.kind.name()
            );
        }
        self.meter.frame_start();
        let src0 = self.meter.cpu();
        let sum = checksum()?;
        self.meter.source_ns += self.meter.cpu() - src0;
        let publish_ns = monotonic_ns();
        self.test_load()?;
        Ok((sum, publish_ns))
    }

    /// The `Frame` message went out: socket-copy now writes the frame's bytes.
    pub fn after_send(&mut self) -> Result<()> {
        if self.kind == TransportKind::SocketCopy {
            let s = self
                .stream
                .as_mut()
                .context("socket-copy without a byte stream")?;
            s.write_all(&self.private)
                .context("writing the frame through the byte stream")?;
        }
        self.meter.frame_done();
        Ok(())
    }

    fn test_load(&self) -> Result<()> {
        if self.test.burn_ns > 0 {
            burn_cpu_ns(self.test.burn_ns);
        }
        if self.test.fault_pages > 0 {
            let len = self.test.fault_pages * 4096;
            let fd =
                dmabuf_core::alloc::sealed_memfd("fault-test", len, nix::fcntl::SealFlag::empty())?;
            let mut map = dmabuf_core::mapping::CpuMapping::new(
                std::sync::Arc::new(fd),
                len,
                true,
                dmabuf_core::MemoryKind::Memfd,
            )?;
            let mut w = map.write()?;
            for page in w.chunks_mut(4096) {
                page[0] = 1;
            }
        }
        Ok(())
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        if let (Some(path), Some(_)) = (&self.bytes_path, &self.bytes_listener) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Counters at one instant.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    frames: u64,
    wall_ns: u64,
    cpu_ns: u64,
    source_ns: u64,
    minflt: u64,
    majflt: u64,
}

/// The producer's CPU accounting.
pub struct Meter {
    kind: TransportKind,
    /// Off: no per-frame CPU or page-fault reads (the report says 0).
    enabled: bool,
    warmup: u64,
    frames: u64,
    source_ns: u64,
    start: Option<Snapshot>,
    steady: Option<Snapshot>,
    last: Snapshot,
    /// Per steady frame: (process CPU, source CPU) in ns.
    samples: Vec<(u64, u64)>,
}

fn median(mut v: Vec<u64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    v[v.len() / 2] as f64
}

/// `producer --stats-json`: figures over the steady state (frames after the warm-up).
#[derive(Debug, Serialize)]
pub struct ProducerReport {
    pub transport: &'static str,
    pub frames: u64,
    pub warmup_frames: u64,
    pub steady_frames: u64,
    pub steady_wall_ns: u64,
    /// Process CPU (all threads, `CLOCK_PROCESS_CPUTIME_ID`) over the steady state.
    pub steady_cpu_ns: u64,
    /// Of which the source's work: drawing or decoding the frame, and its checksum.
    pub steady_source_cpu_ns: u64,
    /// The rest: copies, socket writes, messages, waiting for releases.
    pub steady_transport_cpu_ns: u64,
    pub steady_minflt: u64,
    pub steady_majflt: u64,
    pub cpu_ns_per_frame: f64,
    pub source_cpu_ns_per_frame: f64,
    pub transport_cpu_ns_per_frame: f64,
    pub minflt_per_frame: f64,
    pub majflt_per_frame: f64,
    /// Medians over the steady frames of each frame's CPU (frame to frame), in ns.
    pub cpu_ns_p50: f64,
    pub source_cpu_ns_p50: f64,
    pub transport_cpu_ns_p50: f64,
    pub fps: f64,
    /// Steady-state CPU as a share of one core over wall time, in %.
    pub cpu_percent: f64,
}

impl Meter {
    fn new(kind: TransportKind, warmup: u64, enabled: bool) -> Self {
        Self {
            kind,
            enabled,
            warmup,
            frames: 0,
            source_ns: 0,
            start: None,
            steady: None,
            last: Snapshot::default(),
            samples: Vec::new(),
        }
    }

    /// Process CPU now, or 0 when metering is off.
    fn cpu(&self) -> u64 {
        if self.enabled {
            process_cpu_ns()
        } else {
            0
        }
    }

    fn snap(&self) -> Snapshot {
        let (minflt, majflt) = page_faults();
        Snapshot {
            frames: self.frames,
            wall_ns: monotonic_ns(),
            cpu_ns: process_cpu_ns(),
            source_ns: self.source_ns,
            minflt,
            majflt,
        }
    }

    fn frame_start(&mut self) {
        if self.enabled && self.start.is_none() {
            self.start = Some(self.snap());
        }
    }

    fn frame_done(&mut self) {
        self.frames += 1;
        if !self.enabled {
            return;
        }
        let s = self.snap();
        if self.steady.is_some() {
            self.samples.push((
                s.cpu_ns - self.last.cpu_ns,
                s.source_ns - self.last.source_ns,
            ));
        } else if self.frames >= self.warmup.max(1) {
            self.steady = Some(s);
        }
        self.last = s;
    }

    pub fn report(&self) -> ProducerReport {
        let a = self.steady.unwrap_or(self.last);
        let b = self.last;
        let n = b.frames - a.frames;
        let per = |v: u64| if n == 0 { 0.0 } else { v as f64 / n as f64 };
        let cpu = b.cpu_ns - a.cpu_ns;
        let source = b.source_ns - a.source_ns;
        let wall = b.wall_ns - a.wall_ns;
        ProducerReport {
            transport: self.kind.name(),
            frames: self.frames,
            warmup_frames: a.frames,
            steady_frames: n,
            steady_wall_ns: wall,
            steady_cpu_ns: cpu,
            steady_source_cpu_ns: source,
            steady_transport_cpu_ns: cpu.saturating_sub(source),
            steady_minflt: b.minflt - a.minflt,
            steady_majflt: b.majflt - a.majflt,
            cpu_ns_per_frame: per(cpu),
            source_cpu_ns_per_frame: per(source),
            transport_cpu_ns_per_frame: per(cpu.saturating_sub(source)),
            minflt_per_frame: per(b.minflt - a.minflt),
            majflt_per_frame: per(b.majflt - a.majflt),
            cpu_ns_p50: median(self.samples.iter().map(|s| s.0).collect()),
            source_cpu_ns_p50: median(self.samples.iter().map(|s| s.1).collect()),
            transport_cpu_ns_p50: median(
                self.samples
                    .iter()
                    .map(|s| s.0.saturating_sub(s.1))
                    .collect(),
            ),
            fps: if wall == 0 {
                0.0
            } else {
                n as f64 * 1e9 / wall as f64
            },
            cpu_percent: if wall == 0 {
                0.0
            } else {
                cpu as f64 * 100.0 / wall as f64
            },
        }
    }
}
