//! Counters, the live statistics line and the `--stats-json` report.

use dmabuf_core::procstat;
use dmabuf_core::time::{monotonic_ns, process_cpu_ns};
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Colorimetry in the statistics.
#[derive(Debug, Default, Serialize)]
pub struct Colorimetry {
    pub matrix: u8,
    pub matrix_name: String,
    pub range: String,
    pub primaries: u8,
    pub primaries_name: String,
    pub transfer: u8,
    pub transfer_name: String,
    pub chroma_location: u8,
    /// What the YUV to RGB conversion uses (the carried matrix, or the guess for unspecified).
    pub converted_with: String,
}

/// The `--stats-json` object.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub frames: u64,
    pub verified: u64,
    pub mismatches: u64,
    /// Frames the producer skipped for us (gaps in the sequence numbers).
    pub dropped: u64,
    /// The stream's colorimetry as the Welcome carried it (H.273 code points, with names) and
    /// the matrix the conversions use for it.
    pub colorimetry: Colorimetry,
    /// Sample aspect ratio "N:D" ("" when unknown), the quarter turns clockwise and mirror that
    /// display it upright, and the resulting display size (snapshots and the window use it).
    pub sar: String,
    pub rotation_degrees: u32,
    pub mirrored: bool,
    pub display_width: u32,
    pub display_height: u32,
    /// The longest time between two frames' arrivals, in milliseconds (a freeze shows here
    /// even when fps and latency look normal).
    pub max_gap_ms: f64,
    /// The first and last frames' presentation timestamps as sent (`Frame.pts_ns`: the
    /// source's own timeline, in nanoseconds).
    pub first_pts_ns: Option<i64>,
    pub last_pts_ns: Option<i64>,
    /// `--expect-framemd5`: frames whose MD5 matched the reference, and those that did not
    /// (null without the option).
    pub framemd5_matched: Option<u64>,
    pub framemd5_mismatches: Option<u64>,
    /// Frames the producer marked corrupted (a decoder that concealed errors in them: `Chunk`
    /// flag bit 0); used as they are.
    pub corrupted: u64,
    /// Frames used while the producer was ending the connection (it had dropped this consumer,
    /// so their buffers may have been reused): discarded, not counted as verified nor written.
    pub reclaimed: u64,
    /// Frames that came without a checksum while --verify was on.
    pub unverifiable: u64,
    /// Frames whose pixels the producer's CPU copied into the buffer (`Frame` flag bit 1).
    pub producer_copied: u64,
    /// How the frames got into the shared buffers: `direct` (written in place: decoded straight
    /// into the buffer, or drawn there), `copy` (one CPU copy each), `mixed`, or empty for none.
    pub decode_path: String,
    /// Mid-stream format changes (the fields below describe the last format).
    pub renegotiations: u64,
    pub alloc: String,
    pub memory: String,
    pub import_path: String,
    pub pixel_format: String,
    pub width: u32,
    pub height: u32,
    pub buffers: u32,
    /// This process's CPU time from connect to the end, all threads, in ns.
    pub cpu_ns: u64,
    pub cpu_ns_per_frame: f64,
    pub wall_ns: u64,
    pub fps: f64,
    /// Producer's publish (`CLOCK_MONOTONIC` in the Frame message) to the consumer holding the
    /// frame, in microseconds.
    pub latency_us_p50: f64,
    pub latency_us_p99: f64,
    pub latency_us_max: f64,
    /// Time the consumer spent on a frame (verify, dump) before releasing it, in microseconds.
    pub process_us_p50: f64,
    /// The Vulkan device (null on the cpu-map path).
    pub vk_device: Option<String>,
    /// `vkAllocateMemory` calls and external-memory imports over the whole run (they must not
    /// grow with the number of frames).
    pub vk_allocations: Option<u64>,
    pub vk_imports: Option<u64>,
    /// GPU submits that waited on a dma-buf's exported sync file (implicit sync).
    pub implicit_sync_waits: Option<u64>,
    /// Whether `verified` was computed by the GPU over the imported memory.
    pub gpu_verified: bool,
    /// Open descriptors after the first 3 frames (every buffer imported, and whatever the
    /// driver opens lazily on first use) and at the end of the (last) stream, its connection
    /// still open: equal unless something leaks per frame.
    pub fds_after_warmup: usize,
    pub fds_at_end: usize,
    /// `--transport`: zero-copy, memcpy or socket-copy.
    pub transport: String,
    /// How frames and releases came and went: `ring` (the shared-memory ring, docs/PROTOCOL.md
    /// "Ring") or `socket`.
    pub messages: String,
    /// Producer's publish to the frame being GPU-visible (the import's acquire, the upload or
    /// the checksum finished: fence signalled), in microseconds, over the steady state.
    pub visible_us_p50: f64,
    pub visible_us_p99: f64,
    /// The steady state: the frames after `--stats-warmup`.
    pub warmup_frames: u64,
    pub steady_frames: u64,
    pub steady_wall_ns: u64,
    /// Process CPU (all threads) over the steady state.
    pub steady_cpu_ns: u64,
    /// Of which inside GPU submits and fence waits (lavapipe runs the GPU's work on the CPU).
    pub steady_gpu_cpu_ns: u64,
    /// The rest: receiving, copies, releasing (`steady_cpu_ns - steady_gpu_cpu_ns`).
    pub steady_transport_cpu_ns: u64,
    pub steady_minflt: u64,
    pub steady_majflt: u64,
    pub steady_cpu_ns_per_frame: f64,
    pub gpu_cpu_ns_per_frame: f64,
    pub transport_cpu_ns_per_frame: f64,
    pub minflt_per_frame: f64,
    pub majflt_per_frame: f64,
    /// Medians over the steady frames of each frame's CPU (frame to frame), in ns.
    pub cpu_ns_p50: f64,
    pub gpu_cpu_ns_p50: f64,
    pub transport_cpu_ns_p50: f64,
    pub steady_fps: f64,
    /// Steady-state CPU as a share of one core over wall time, in %.
    pub cpu_percent: f64,
    /// PNG snapshots written.
    pub snapshots: Vec<String>,
    /// Times the consumer resumed with a new producer (--reconnect). Counters add up across
    /// producers; a new producer's first frame is not counted as a gap.
    pub reconnects: u64,
    /// RSS and open descriptors over time: at the first frame, every --report-every seconds,
    /// and at the end.
    pub resources: Vec<Sample>,
    /// `null` when the stream ended normally, else what went wrong.
    pub error: Option<String>,
}

/// One point of the `resources` time series.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Sample {
    /// Seconds since the consumer connected (started, if it never did).
    pub t_s: f64,
    pub frames: u64,
    pub rss_kib: u64,
    pub fds: usize,
}

pub struct Stats {
    pub report: Report,
    latencies_us: Histogram,
    process_us: Histogram,
    /// This second's latencies, for the live line.
    line_latencies_us: Vec<f64>,
    start: Instant,
    cpu0: u64,
    last_seq: Option<u64>,
    last_received_ns: Option<u64>,
    live: bool,
    tty: bool,
    last_line: Instant,
    line_frames: u64,
    line_cpu: u64,
    sample_every: Option<Duration>,
    last_sample: Instant,
    warmup: u64,
    visible_us: Histogram,
    steady: Option<Snapshot>,
    last: Snapshot,
    /// Per steady frame, in ns (histograms: constant memory): process CPU, of which GPU
    /// work, and the rest.
    cpu_ns: Histogram,
    gpu_cpu_ns: Histogram,
    transport_cpu_ns: Histogram,
}

/// Percentiles in constant memory (a run may last days): log-spaced buckets 0.5 % wide from
/// 0.01 µs to 1e8 µs; a percentile is its bucket's geometric middle (within 0.25 %), the maximum
/// is exact.
struct Histogram {
    counts: Vec<u64>,
    n: u64,
    max: f64,
}

const H_MIN: f64 = 0.01;
const H_STEP: f64 = 1.005;

impl Histogram {
    fn new() -> Self {
        let buckets = ((1e8f64 / H_MIN).ln() / H_STEP.ln()).ceil() as usize + 1;
        Self {
            counts: vec![0; buckets],
            n: 0,
            max: 0.0,
        }
    }

    fn add(&mut self, v: f64) {
        let i = if v <= H_MIN {
            0
        } else {
            ((v / H_MIN).ln() / H_STEP.ln()) as usize
        };
        let last = self.counts.len() - 1;
        self.counts[i.min(last)] += 1;
        self.n += 1;
        self.max = self.max.max(v);
    }

    fn percentile(&self, p: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let rank = ((self.n - 1) as f64 * p).round() as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen > rank {
                let mid = H_MIN * H_STEP.powf(i as f64 + 0.5);
                return mid.min(self.max);
            }
        }
        self.max
    }
}

/// Counters at one instant.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    frames: u64,
    wall_ns: u64,
    cpu_ns: u64,
    gpu_cpu_ns: u64,
    minflt: u64,
    majflt: u64,
}

fn snap(frames: u64, gpu_cpu_ns: u64) -> Snapshot {
    let (minflt, majflt) = dmabuf_core::time::metered_page_faults();
    Snapshot {
        frames,
        wall_ns: monotonic_ns(),
        cpu_ns: dmabuf_core::time::metered_cpu_ns(),
        gpu_cpu_ns,
        minflt,
        majflt,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

impl Report {
    /// Take the stream's colorimetry and geometry from its Welcome.
    pub fn describe(&mut self, w: &dmabuf_core::proto::wire::Welcome) {
        let c = w.color;
        let converted_with = match c.luma_coefficients(w.height) {
            _ if !w.pixel.is_yuv() => "RGB (no matrix)".to_string(),
            Some((_, m)) => dmabuf_core::proto::wire::ColorInfo { matrix: m, ..c }
                .matrix_name()
                .to_string(),
            None => format!("BT.709 (no conversion for {})", c.matrix_name()),
        };
        self.colorimetry = Colorimetry {
            matrix: c.matrix,
            matrix_name: c.matrix_name().into(),
            range: c.range_name().into(),
            primaries: c.primaries,
            primaries_name: c.primaries_name().into(),
            transfer: c.transfer,
            transfer_name: c.transfer_name().into(),
            chroma_location: c.chroma_location,
            converted_with,
        };
        let g = w.geometry;
        self.sar = if g.sar_den > 0 {
            format!("{}:{}", g.sar_num, g.sar_den)
        } else {
            String::new()
        };
        self.rotation_degrees = 90 * u32::from(g.rotation);
        self.mirrored = g.mirror;
        let ((dw, dh), _) = g.display_size(w.width, w.height);
        (self.display_width, self.display_height) = (dw, dh);
    }
}

impl Stats {
    pub fn new(live: bool, sample_every: Option<Duration>, warmup: u64) -> Self {
        Self {
            report: Report::default(),
            latencies_us: Histogram::new(),
            process_us: Histogram::new(),
            line_latencies_us: Vec::new(),
            start: Instant::now(),
            cpu0: process_cpu_ns(),
            last_seq: None,
            last_received_ns: None,
            live,
            tty: std::io::stderr().is_terminal(),
            last_line: Instant::now(),
            line_frames: 0,
            line_cpu: process_cpu_ns(),
            sample_every,
            last_sample: Instant::now(),
            warmup: warmup.max(1),
            visible_us: Histogram::new(),
            steady: None,
            last: Snapshot::default(),
            cpu_ns: Histogram::new(),
            gpu_cpu_ns: Histogram::new(),
            transport_cpu_ns: Histogram::new(),
        }
    }

    /// A connection's stream ended (its socket and buffers still open): the fds to compare
    /// with `fds_after_warmup`.
    pub fn stream_ended(&mut self) {
        self.report.fds_at_end = procstat::fd_count();
        // A reconnect's wait is not a gap between frames of a stream.
        self.last_received_ns = None;
    }

    /// The first producer answered: wall time and CPU count from here (`fps`, `cpu_ns` are
    /// "from connect to the end"), not from the wait for its socket. Later connections
    /// (`--reconnect`) keep counting.
    pub fn connected(&mut self) {
        if self.report.frames == 0 && self.report.reconnects == 0 {
            self.start = Instant::now();
            self.cpu0 = process_cpu_ns();
            self.last_line = Instant::now();
            self.line_cpu = self.cpu0;
        }
    }

    /// A new producer: its sequence numbers start afresh.
    pub fn reconnected(&mut self) {
        self.report.reconnects += 1;
        self.last_seq = None;
    }

    fn sample(&mut self) {
        let s = Sample {
            t_s: self.start.elapsed().as_secs_f64(),
            frames: self.report.frames,
            rss_kib: procstat::rss_kib(),
            fds: procstat::fd_count(),
        };
        if self.sample_every.is_some() {
            eprintln!(
                "consumer: t={:.0} s frames {} RSS {} KiB fds {} dropped {}",
                s.t_s, s.frames, s.rss_kib, s.fds, self.report.dropped
            );
        }
        self.report.resources.push(s);
        self.last_sample = Instant::now();
    }

    /// Count a frame that the consumer is done with, for the steady-state figures: it was
    /// published at `publish_ns`, GPU-visible at `visible_ns` (None without a GPU), and the
    /// GPU's work so far cost `gpu_cpu_ns` of process CPU.
    pub fn steady(&mut self, publish_ns: u64, visible_ns: Option<u64>, gpu_cpu_ns: u64) {
        let s = snap(self.report.frames, gpu_cpu_ns);
        if self.steady.is_some() {
            let cpu = s.cpu_ns - self.last.cpu_ns;
            let gpu = s.gpu_cpu_ns - self.last.gpu_cpu_ns;
            self.cpu_ns.add(cpu as f64);
            self.gpu_cpu_ns.add(gpu as f64);
            self.transport_cpu_ns.add(cpu.saturating_sub(gpu) as f64);
            if let Some(v) = visible_ns {
                self.visible_us
                    .add(v.saturating_sub(publish_ns) as f64 / 1e3);
            }
        } else if self.report.frames >= self.warmup {
            self.steady = Some(s);
        }
        self.last = s;
    }

    /// Count a frame that the consumer is done with; `received_ns` is when it arrived.
    pub fn frame(&mut self, seq: u64, pts_ns: i64, publish_ns: u64, received_ns: u64) {
        if let Some(prev) = self.last_received_ns {
            let gap = received_ns.saturating_sub(prev) as f64 / 1e6;
            self.report.max_gap_ms = self.report.max_gap_ms.max(gap);
        }
        self.last_received_ns = Some(received_ns);
        self.report.first_pts_ns.get_or_insert(pts_ns);
        self.report.last_pts_ns = Some(pts_ns);
        if self.report.frames < 3 {
            self.report.fds_after_warmup = procstat::fd_count();
        }
        if let Some(last) = self.last_seq {
            self.report.dropped += seq.saturating_sub(last + 1);
        }
        self.last_seq = Some(seq);
        self.report.frames += 1;
        self.line_frames += 1;
        if self.report.frames == 1
            || self
                .sample_every
                .is_some_and(|d| self.last_sample.elapsed() >= d)
        {
            self.sample();
        }
        let lat = received_ns.saturating_sub(publish_ns) as f64 / 1e3;
        self.latencies_us.add(lat);
        if self.live {
            self.line_latencies_us.push(lat);
        }
        self.process_us
            .add(monotonic_ns().saturating_sub(received_ns) as f64 / 1e3);
        if self.live && self.last_line.elapsed() >= Duration::from_secs(1) {
            self.print_line();
        }
    }

    fn print_line(&mut self) {
        let dt = self.last_line.elapsed().as_secs_f64();
        let cpu = process_cpu_ns();
        let fps = self.line_frames as f64 / dt;
        let cpu_pct = (cpu - self.line_cpu) as f64 / 1e9 / dt * 100.0;
        let mut r = std::mem::take(&mut self.line_latencies_us);
        r.sort_by(f64::total_cmp);
        let line = format!(
            "frames {:>6} | {:6.1} fps | latency p50 {:7.1} µs p99 {:7.1} µs | consumer CPU {:5.1} % | verified {} mismatches {} dropped {}",
            self.report.frames,
            fps,
            percentile(&r, 0.5),
            percentile(&r, 0.99),
            cpu_pct,
            self.report.verified,
            self.report.mismatches,
            self.report.dropped
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
        self.last_line = Instant::now();
        self.line_frames = 0;
        self.line_cpu = cpu;
    }

    /// Close the report.
    pub fn finish(mut self) -> Report {
        if self.live && self.tty {
            eprintln!();
        }
        if self.report.frames == 0 {
            self.report.fds_at_end = procstat::fd_count();
        }
        self.sample();
        let wall = self.start.elapsed();
        self.report.wall_ns = wall.as_nanos() as u64;
        self.report.cpu_ns = process_cpu_ns() - self.cpu0;
        let n = self.report.frames.max(1) as f64;
        self.report.cpu_ns_per_frame = self.report.cpu_ns as f64 / n;
        self.report.fps = self.report.frames as f64 / wall.as_secs_f64().max(1e-9);
        self.report.latency_us_p50 = self.latencies_us.percentile(0.5);
        self.report.latency_us_p99 = self.latencies_us.percentile(0.99);
        self.report.latency_us_max = self.latencies_us.max;
        self.report.process_us_p50 = self.process_us.percentile(0.5);
        self.report.decode_path = match (self.report.frames, self.report.producer_copied) {
            (0, _) => String::new(),
            (_, 0) => "direct".into(),
            (n, c) if c == n => "copy".into(),
            _ => "mixed".into(),
        };
        self.report.visible_us_p50 = self.visible_us.percentile(0.5);
        self.report.visible_us_p99 = self.visible_us.percentile(0.99);
        let a = self.steady.unwrap_or(self.last);
        let b = self.last;
        let r = &mut self.report;
        let n = b.frames - a.frames;
        let per = |v: u64| if n == 0 { 0.0 } else { v as f64 / n as f64 };
        r.warmup_frames = a.frames;
        r.steady_frames = n;
        r.steady_wall_ns = b.wall_ns - a.wall_ns;
        r.steady_cpu_ns = b.cpu_ns - a.cpu_ns;
        r.steady_gpu_cpu_ns = b.gpu_cpu_ns - a.gpu_cpu_ns;
        r.steady_transport_cpu_ns = r.steady_cpu_ns.saturating_sub(r.steady_gpu_cpu_ns);
        r.steady_minflt = b.minflt - a.minflt;
        r.steady_majflt = b.majflt - a.majflt;
        r.steady_cpu_ns_per_frame = per(r.steady_cpu_ns);
        r.gpu_cpu_ns_per_frame = per(r.steady_gpu_cpu_ns);
        r.transport_cpu_ns_per_frame = per(r.steady_transport_cpu_ns);
        r.minflt_per_frame = per(r.steady_minflt);
        r.majflt_per_frame = per(r.steady_majflt);
        r.cpu_ns_p50 = self.cpu_ns.percentile(0.5);
        r.gpu_cpu_ns_p50 = self.gpu_cpu_ns.percentile(0.5);
        r.transport_cpu_ns_p50 = self.transport_cpu_ns.percentile(0.5);
        if r.steady_wall_ns > 0 {
            r.steady_fps = n as f64 * 1e9 / r.steady_wall_ns as f64;
            r.cpu_percent = r.steady_cpu_ns as f64 * 100.0 / r.steady_wall_ns as f64;
        }
        self.report
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn histogram_percentiles_are_within_half_a_percent() {
        let mut h = super::Histogram::new();
        let mut v: Vec<f64> = (1..=10_000).map(|i| i as f64 * 0.37).collect();
        for x in &v {
            h.add(*x);
        }
        v.sort_by(f64::total_cmp);
        for p in [0.5, 0.99] {
            let exact = super::percentile(&v, p);
            let got = h.percentile(p);
            assert!((got / exact - 1.0).abs() < 0.005, "p{p}: {got} vs {exact}");
        }
        assert_eq!(h.max, 3700.0);
        assert_eq!(super::Histogram::new().percentile(0.5), 0.0);
    }
}
