//! `compare --peers`: our zero-copy path next to the peers engineers already use to move frames
//! between processes — GStreamer's `shmsink → shmsrc` and PipeWire's `pipewiresink →
//! pipewiresrc` (through a private PipeWire daemon) — with the same frames, sizes and pacing,
//! every process measured the same way from outside.
//!
//! How a figure is made, for every process alike:
//! - each process is a child of `compare`; when it is reaped, the growth of
//!   `getrusage(RUSAGE_CHILDREN)` is its CPU (user + system, all its threads) and its context
//!   switches (voluntary: the times it slept and was woken);
//! - daemons (pipewire, wireplumber) live across runs: their process CPU clocks are read before
//!   and after each run;
//! - every case runs with N frames and with N/10; the per-frame figure is the marginal one,
//!   `(CPU(N) - CPU(N/10)) / (N - N/10)`, so start-up (plugin registry, pool allocation) and
//!   tear-down cancel. Rounds alternate the cases (A B C, A B C, …) and the median is quoted;
//! - syscalls per frame come from a separate pass under `strace -f -c` (its slowdown does not
//!   touch the CPU figures), marginal in the same way.
//!
//! The source: GStreamer's `videotestsrc pattern=smpte75` fills each frame by copying a cached
//! frame, about what our pattern's row-template fill costs; the `gst-source` case
//! (`videotestsrc ! fakesink`) measures it alone, so "beyond the source" can be read for both.

use anyhow::{bail, Context as _, Result};
use nix::sys::resource::{getrusage, UsageWho};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A way to move the frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Case {
    /// Our producer (pattern, sealed-memfd pool, zero-copy) → our consumer `--import cpu-map`;
    /// frames and releases through the shared-memory ring.
    Ours,
    /// `Ours` with `--no-ring` on both sides: frames and releases on the socket.
    OursSocket,
    /// `Ours` with the binaries of `--peers-before DIR` (an older build), alternated with ours
    /// in every round: before/after figures of a change.
    OursBefore,
    /// `videotestsrc pattern=smpte75 ! fakesink`: GStreamer's source alone.
    GstSource,
    /// `videotestsrc ! shmsink` → `shmsrc ! fakesink`.
    GstShm,
    /// `videotestsrc ! dmabufpipesink` → `dmabufpipesrc ! fakesink`: our GStreamer elements
    /// (`gst/`), the same frames and pacing as `GstShm`.
    #[serde(rename = "gst-dmabufpipe")]
    GstPipe,
    /// `videotestsrc ! pipewiresink mode=provide` → `pipewiresrc ! fakesink`, private daemon.
    Pipewire,
    /// Our producer's PipeWire node (`--pipewire`, the pool's memfds as PipeWire's buffers) →
    /// `pipewiresrc ! fakesink`, the same daemon.
    OursPipewire,
}

impl Case {
    pub const ALL: [Case; 8] = [
        Case::Ours,
        Case::OursSocket,
        Case::OursBefore,
        Case::GstSource,
        Case::GstShm,
        Case::GstPipe,
        Case::Pipewire,
        Case::OursPipewire,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Case::Ours => "ours",
            Case::OursSocket => "ours-socket",
            Case::OursBefore => "ours-before",
            Case::GstSource => "gst-source",
            Case::GstShm => "gst-shm",
            Case::GstPipe => "gst-dmabufpipe",
            Case::Pipewire => "pipewire",
            Case::OursPipewire => "ours-pipewire",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Case::Ours => {
                "our producer → consumer (memfd, zero-copy, `--import cpu-map`), frames and \
                 releases through the shared-memory ring"
            }
            Case::OursSocket => "the same on the socket alone (`--no-ring` on both sides)",
            Case::OursBefore => "the same with an older build's binaries (`--peers-before`)",
            Case::GstSource => "`videotestsrc pattern=smpte75 ! fakesink` (the source alone)",
            Case::GstShm => "GStreamer `shmsink → shmsrc ! fakesink`",
            Case::GstPipe => {
                "our GStreamer elements `dmabufpipesink → dmabufpipesrc ! fakesink` (memfd pool \
                 proposed upstream: videotestsrc draws into it)"
            }
            Case::Pipewire => "PipeWire `pipewiresink → pipewiresrc ! fakesink` (+ daemon)",
            Case::OursPipewire => {
                "our producer's PipeWire node (`--pipewire`, its memfd pool as PipeWire's \
                 buffers) → `pipewiresrc ! fakesink` (+ daemon)"
            }
        }
    }
}

/// One process's figures over a run.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    pub cpu_ns: u64,
    /// Voluntary context switches: sleeps that ended in a wake-up.
    pub wakeups: u64,
    /// All context switches (voluntary and preempted).
    pub switches: u64,
}

/// One run: every process's usage, the daemons' CPU, and the internal figures of ours.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Run {
    pub frames: u64,
    pub producer: Usage,
    pub consumer: Usage,
    pub daemon_cpu_ns: u64,
    pub wall_s: f64,
    /// Ours: the producer's internal source CPU per frame (`--stats-json`), in ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_source_ns: Option<f64>,
    /// Ours: the producer's and consumer's internal transport CPU per frame, in ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_transport_ns: Option<(f64, f64)>,
    /// Ours, paced: publish → consumer holding the frame, µs (p50, p99).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<(f64, f64)>,
}

/// Per-frame figures of one case at one size and pacing: medians over the rounds of the
/// marginal figures.
#[derive(Debug, Clone, Serialize)]
pub struct PeerEntry {
    pub case: Case,
    pub width: u32,
    pub height: u32,
    pub paced: bool,
    pub producer_us: f64,
    pub consumer_us: f64,
    pub daemon_us: f64,
    pub producer_wakeups: f64,
    pub consumer_wakeups: f64,
    /// From the `strace -f -c` pass (None without strace or when the pass failed).
    pub producer_syscalls: Option<f64>,
    pub consumer_syscalls: Option<f64>,
    /// Producer CPU beyond its source: ours minus its internal source figure; GStreamer's
    /// minus the `gst-source` case at the same size and pacing.
    pub producer_beyond_source_us: Option<f64>,
    /// Ours: the internal figures (producer, consumer transport µs per frame) next to the
    /// external ones.
    pub internal_transport_us: Option<(f64, f64)>,
    pub latency_us: Option<(f64, f64)>,
    /// Every round's marginal (producer, consumer, daemon) µs per frame.
    pub rounds_us: Vec<(f64, f64, f64)>,
    /// Runs that failed and were run again (once each).
    pub retries: u32,
    pub error: Option<String>,
}

/// The whole peer comparison.
#[derive(Debug, Clone, Serialize)]
pub struct PeersReport {
    pub versions: Vec<String>,
    /// Cases that could not run here, and why.
    pub skipped: Vec<(String, String)>,
    pub rounds: u32,
    pub fps: u32,
    pub frames_unpaced: u64,
    pub frames_paced: u64,
    pub entries: Vec<PeerEntry>,
    pub elapsed_s: f64,
}

/// What to run.
pub struct PeerOptions {
    pub sizes: Vec<(u32, u32)>,
    pub fps: u32,
    pub rounds: u32,
    pub frames_unpaced: u64,
    pub frames_paced: u64,
    pub producer: PathBuf,
    pub consumer: PathBuf,
    pub dir: PathBuf,
    /// `--peers-before DIR`: an older build's producer and consumer, run as `ours-before`.
    pub before: Option<PathBuf>,
    /// Our GStreamer plugin (`libgstdmabufpipe.so`), for `gst-dmabufpipe`; skipped when absent.
    pub gst_plugin: Option<PathBuf>,
}

fn children_usage() -> Usage {
    match getrusage(UsageWho::RUSAGE_CHILDREN) {
        Ok(u) => {
            let us =
                |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
            Usage {
                cpu_ns: (us(u.user_time()) + us(u.system_time())) * 1000,
                wakeups: u.voluntary_context_switches() as u64,
                switches: (u.voluntary_context_switches() + u.involuntary_context_switches())
                    as u64,
            }
        }
        Err(_) => Usage::default(),
    }
}

fn minus(a: Usage, b: Usage) -> Usage {
    Usage {
        cpu_ns: a.cpu_ns.saturating_sub(b.cpu_ns),
        wakeups: a.wakeups.saturating_sub(b.wakeups),
        switches: a.switches.saturating_sub(b.switches),
    }
}

/// Wait for `child` up to `limit` (then kill it); its usage (the growth of the children's
/// usage when it was reaped) and whether it exited with one of `ok` codes.
fn reap(child: &mut Child, limit: Duration, ok: &[i32]) -> Result<(Usage, bool)> {
    let deadline = Instant::now() + limit;
    let before = children_usage();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() >= deadline {
            // Its whole group: a traced process must not outlive a killed strace.
            let pg = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let usage = minus(children_usage(), before);
    let good = status.is_some_and(|s| s.code().is_some_and(|c| ok.contains(&c)));
    Ok((usage, good))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(6)..].join("\n")
}

fn wait_for_path(p: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if p.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}

/// The daemon, then (once its socket is there) WirePlumber, in one shell.
const WITH_SESSION_MANAGER: &str = "pipewire & while [ ! -S \"$XDG_RUNTIME_DIR/pipewire-0\" ]; do sleep 0.05; done; wireplumber & wait";

/// A private PipeWire: `pipewire` and `wireplumber` under a private runtime directory, in
/// their own D-Bus session (as a desktop session runs them).
struct PipewireDaemon {
    session: Child,
    runtime: PathBuf,
    pids: Vec<nix::unistd::Pid>,
}

impl PipewireDaemon {
    fn start(dir: &Path) -> Result<Self> {
        let runtime = dir.join("xdg-runtime");
        let home = dir.join("home");
        std::fs::create_dir_all(&home)?;
        std::fs::create_dir_all(&runtime)?;
        std::fs::set_permissions(
            &runtime,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        let log = std::fs::File::create(dir.join("pipewire.log"))?;
        let mut cmd = Command::new("dbus-run-session");
        // WirePlumber gives up at once when the daemon's socket is not there yet.
        cmd.args(["--", "sh", "-c", WITH_SESSION_MANAGER])
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("PIPEWIRE_RUNTIME_DIR", &runtime)
            .env("HOME", &home)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let session = cmd.spawn().context("starting dbus-run-session")?;
        let mut daemon = Self {
            pids: Vec::new(),
            session,
            runtime,
        };
        if !wait_for_path(&daemon.runtime.join("pipewire-0"), Duration::from_secs(10)) {
            bail!(
                "pipewire did not create its socket within 10 s:\n{}",
                tail(&dir.join("pipewire.log"))
            );
        }
        // WirePlumber links the streams; give it a moment to load its policy.
        std::thread::sleep(Duration::from_millis(1500));
        daemon.pids = descendants(daemon.session.id())
            .into_iter()
            .filter(|(_, comm)| comm == "pipewire" || comm == "wireplumber")
            .map(|(pid, _)| nix::unistd::Pid::from_raw(pid as i32))
            .collect();
        if daemon.pids.len() < 2 {
            bail!(
                "pipewire and wireplumber are not both running:\n{}",
                tail(&dir.join("pipewire.log"))
            );
        }
        Ok(daemon)
    }

    /// The daemons' CPU so far, in ns.
    fn cpu_ns(&self) -> u64 {
        self.pids
            .iter()
            .filter_map(|&pid| {
                let clock = nix::time::clock_getcpuclockid(pid).ok()?;
                let t = nix::time::clock_gettime(clock).ok()?;
                Some(t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            })
            .sum()
    }

    fn env(&self) -> [(&'static str, &Path); 2] {
        [
            ("XDG_RUNTIME_DIR", &self.runtime),
            ("PIPEWIRE_RUNTIME_DIR", &self.runtime),
        ]
    }
}

impl Drop for PipewireDaemon {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.session.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if matches!(self.session.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.session.wait();
    }
}

/// Every process below `root`, with its command name.
fn descendants(root: u32) -> Vec<(u32, String)> {
    let mut procs = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = stat[open + 1..close].to_string();
            let ppid = stat[close + 1..]
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u32>().ok())
                .unwrap_or(0);
            procs.push((pid, ppid, comm));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (pid, ppid, comm) in &procs {
            if *ppid == p {
                out.push((*pid, comm.clone()));
                frontier.push(*pid);
            }
        }
    }
    out
}

struct Runner<'a> {
    opts: &'a PeerOptions,
    pw: Option<PipewireDaemon>,
    counter: u32,
}

/// How a producer shows it is ready for its consumer.
enum Ready {
    /// Its socket exists.
    Path(PathBuf),
    /// Its PipeWire node is in the daemon's graph.
    Node(String),
}

/// The two command lines of a case, and how the producer says it is ready.
struct Plan {
    producer: Vec<String>,
    consumer: Option<Vec<String>>,
    ready: Option<Ready>,
    /// Exit codes accepted from the producer: shmsink's poll thread and pipewiresink end
    /// with an error once their consumer, having its N buffers, leaves.
    producer_ok: Vec<i32>,
    jsons: Option<(PathBuf, PathBuf)>,
    /// The producer runs until told (SIGTERM) once the consumer has its frames.
    stop_producer: bool,
}

/// Our producer drawing `frames` frames of the NV12 pattern at `w`x`h` into a memfd pool,
/// without checksums.
fn ours_producer(bin: &Path, sock: &Path, (w, h): (u32, u32), frames: u64) -> Vec<String> {
    vec![
        bin.display().to_string(),
        "--socket".into(),
        sock.display().to_string(),
        "--source".into(),
        "pattern".into(),
        "--alloc".into(),
        "memfd".into(),
        "--size".into(),
        format!("{w}x{h}"),
        "--format".into(),
        "NV12".into(),
        "--frames".into(),
        frames.to_string(),
        "--no-checksum".into(),
    ]
}

/// `pipewiresrc target-object=NODE NUM_BUFFERS ! fakesink sync=false` (WirePlumber 0.5 links
/// it only with a media type).
fn pipewiresrc(node: &str, num_buffers: &str) -> Vec<String> {
    let target = format!("target-object={node}");
    [
        "gst-launch-1.0",
        "-q",
        "pipewiresrc",
        &target,
        num_buffers,
        "stream-properties=props,media.type=Video,media.category=Capture,media.role=Camera",
        "!",
        "fakesink",
        "sync=false",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn gst_caps(w: u32, h: u32, fps: u32) -> String {
    format!("video/x-raw,format=NV12,width={w},height={h},framerate={fps}/1")
}

impl Runner<'_> {
    /// `stats`: ours writes its `--stats-json` (its per-frame meters then cost two system calls
    /// a frame on each side: left out of the syscall pass).
    fn plan(
        &mut self,
        case: Case,
        (w, h): (u32, u32),
        paced: bool,
        frames: u64,
        stats: bool,
    ) -> Plan {
        self.counter += 1;
        let dir = &self.opts.dir;
        let tag = format!("peer{}", self.counter);
        let caps = gst_caps(w, h, self.opts.fps);
        let sync = if paced { "sync=true" } else { "sync=false" };
        let gst = |rest: &[&str]| -> Vec<String> {
            ["gst-launch-1.0", "-q"]
                .iter()
                .chain(rest)
                .map(|s| s.to_string())
                .collect()
        };
        let nb = format!("num-buffers={frames}");
        let src = ["videotestsrc", "pattern=smpte75", &nb, "!", &caps, "!"];
        match case {
            Case::Ours | Case::OursSocket | Case::OursBefore => {
                let (pbin, cbin) = match (&self.opts.before, case) {
                    (Some(d), Case::OursBefore) => (d.join("producer"), d.join("consumer")),
                    _ => (self.opts.producer.clone(), self.opts.consumer.clone()),
                };
                let sock = dir.join(format!("{tag}.sock"));
                let (pj, cj) = (
                    dir.join(format!("{tag}-p.json")),
                    dir.join(format!("{tag}-c.json")),
                );
                let mut producer = ours_producer(&pbin, &sock, (w, h), frames);
                producer.extend([
                    "--stats-warmup".into(),
                    (frames / 10).clamp(2, 10).to_string(),
                ]);
                if stats {
                    producer.extend(["--stats-json".into(), pj.display().to_string()]);
                }
                if paced {
                    producer.extend(["--fps".into(), self.opts.fps.to_string()]);
                } else {
                    producer.push("--no-pace".into());
                }
                let mut consumer = vec![
                    cbin.display().to_string(),
                    "--socket".into(),
                    sock.display().to_string(),
                    "--import".into(),
                    "cpu-map".into(),
                    "--stats-warmup".into(),
                    (frames / 10).clamp(2, 10).to_string(),
                    "--quiet".into(),
                ];
                if stats {
                    consumer.extend(["--stats-json".into(), cj.display().to_string()]);
                }
                if case == Case::OursSocket {
                    producer.push("--no-ring".into());
                    consumer.push("--no-ring".into());
                }
                Plan {
                    producer,
                    consumer: Some(consumer),
                    ready: Some(Ready::Path(sock)),
                    producer_ok: vec![0],
                    jsons: stats.then_some((pj, cj)),
                    stop_producer: false,
                }
            }
            Case::GstSource => Plan {
                producer: gst(&[&src[..], &["fakesink", sync]].concat()),
                consumer: None,
                ready: None,
                producer_ok: vec![0],
                jsons: None,
                stop_producer: false,
            },
            Case::GstShm => {
                let sock = dir.join(format!("{tag}.shm"));
                let sp = format!("socket-path={}", sock.display());
                // The shared area: GStreamer's default 64 MiB, or 8 frames where that holds
                // fewer (an area of a few frames deadlocks shmsink in 1.22).
                let area = format!(
                    "shm-size={}",
                    (u64::from(w) * u64::from(h) * 3 / 2 * 8).max(64 << 20)
                );
                Plan {
                    producer: gst(&[
                        &src[..],
                        &["shmsink", &sp, "wait-for-connection=true", sync, &area],
                    ]
                    .concat()),
                    consumer: Some(gst(&[
                        "shmsrc",
                        &sp,
                        &nb,
                        "!",
                        &caps,
                        "!",
                        "fakesink",
                        "sync=false",
                    ])),
                    ready: Some(Ready::Path(sock)),
                    producer_ok: vec![0, 1],
                    jsons: None,
                    stop_producer: false,
                }
            }
            Case::GstPipe => {
                let sock = dir.join(format!("{tag}.pipe"));
                let sp = format!("socket={}", sock.display());
                let env = |mut argv: Vec<String>| -> Vec<String> {
                    // GStreamer scans every .so of a GST_PLUGIN_PATH directory: a directory
                    // with only this plugin in it (made by `run`).
                    let mut v = vec![
                        "env".to_string(),
                        format!("GST_PLUGIN_PATH={}", dir.join("gst-plugin").display()),
                    ];
                    v.append(&mut argv);
                    v
                };
                Plan {
                    producer: env(gst(&[
                        &src[..],
                        &[
                            "dmabufpipesink",
                            &sp,
                            "wait-consumers=1",
                            "alloc=memfd",
                            "checksum=false",
                            sync,
                        ],
                    ]
                    .concat())),
                    consumer: Some(env(gst(&[
                        "dmabufpipesrc",
                        &sp,
                        &nb,
                        "!",
                        "fakesink",
                        "sync=false",
                    ]))),
                    ready: Some(Ready::Path(sock)),
                    producer_ok: vec![0],
                    jsons: None,
                    stop_producer: false,
                }
            }
            Case::Pipewire => {
                // pipewiresink publishes whether or not a consumer is linked yet: frames made
                // before the link are lost. It makes 4 s of frames more than the consumer
                // takes, and ends (an error, accepted) when the consumer leaves with its N;
                // the extra cancels between the N and N/10 runs.
                let more = format!("num-buffers={}", frames + 4 * u64::from(self.opts.fps));
                let src = ["videotestsrc", "pattern=smpte75", &more, "!", &caps, "!"];
                let node = format!("compare-{}-{tag}", std::process::id());
                let props = format!(
                    "stream-properties=props,node.name={node},media.type=Video,\
                     media.category=Playback,media.role=Camera"
                );
                Plan {
                    producer: gst(
                        &[&src[..], &["pipewiresink", "mode=provide", sync, &props]].concat()
                    ),
                    consumer: Some(pipewiresrc(&node, &nb)),
                    ready: Some(Ready::Node(node)),
                    producer_ok: vec![0, 1],
                    jsons: None,
                    stop_producer: false,
                }
            }
            Case::OursPipewire => {
                // Our node streams while a client is linked: the producer makes frames for as
                // long as pipewiresrc takes them (its N), then idles until stopped. PipeWire
                // may lose the first frame of a link: twice N is only a ceiling.
                let node = format!("compare-ours-{}-{tag}", std::process::id());
                let sock = dir.join(format!("{tag}.sock"));
                let mut producer =
                    ours_producer(&self.opts.producer, &sock, (w, h), 2 * frames + 10);
                producer.extend([
                    "--fps".into(),
                    self.opts.fps.to_string(),
                    "--pipewire".into(),
                    node.clone(),
                ]);
                Plan {
                    producer,
                    consumer: Some(pipewiresrc(&node, &nb)),
                    ready: Some(Ready::Node(node)),
                    producer_ok: vec![0],
                    jsons: None,
                    stop_producer: true,
                }
            }
        }
    }

    /// Poll the daemon's graph (`pw-cli ls Node`) until node `name` is in it.
    fn wait_for_node(&self, name: &str, limit: Duration) -> bool {
        let Some(pw) = &self.pw else {
            return false;
        };
        let deadline = Instant::now() + limit;
        let want = format!("node.name = \"{name}\"");
        while Instant::now() < deadline {
            let mut cmd = Command::new("pw-cli");
            cmd.args(["ls", "Node"]);
            for (k, v) in pw.env() {
                cmd.env(k, v);
            }
            if let Ok(out) = cmd.stderr(Stdio::null()).output() {
                if String::from_utf8_lossy(&out.stdout).contains(&want) {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn command(&self, argv: &[String], log: &Path, strace: Option<&Path>) -> Result<Command> {
        let mut cmd = match strace {
            Some(out) => {
                let mut c = Command::new("strace");
                c.args(["-f", "-c", "-o"]).arg(out).arg("--").args(argv);
                c
            }
            None => {
                let mut c = Command::new(&argv[0]);
                c.args(&argv[1..]);
                c
            }
        };
        if let Some(pw) = &self.pw {
            for (k, v) in pw.env() {
                cmd.env(k, v);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        Ok(cmd)
    }

    /// Run `case` once with `frames` frames; with `strace`, under `strace -f -c` (then only the
    /// syscall counts mean anything): returns the run and the (producer, consumer) syscalls.
    fn run(
        &mut self,
        case: Case,
        size: (u32, u32),
        paced: bool,
        frames: u64,
        strace: bool,
    ) -> Result<(Run, Option<(u64, u64)>)> {
        let plan = self.plan(case, size, paced, frames, !strace);
        let dir = self.opts.dir.clone();
        let n = self.counter;
        let (plog, clog) = (dir.join(format!("p{n}.log")), dir.join(format!("c{n}.log")));
        let (ptrace, ctrace) = (
            dir.join(format!("p{n}.strace")),
            dir.join(format!("c{n}.strace")),
        );
        if let Some(Ready::Path(r)) = &plan.ready {
            let _ = std::fs::remove_file(r);
        }
        let limit = Duration::from_secs(60 + frames / 10);
        let daemon0 = self.pw.as_ref().map_or(0, |d| d.cpu_ns());
        let start = Instant::now();
        let mut producer = self
            .command(&plan.producer, &plog, strace.then_some(ptrace.as_path()))?
            .spawn()
            .with_context(|| format!("starting {}", plan.producer[0]))?;
        let mut run = Run {
            frames,
            ..Run::default()
        };
        let mut consumer_ok = true;
        if let Some(cargv) = &plan.consumer {
            let ready = match &plan.ready {
                Some(Ready::Path(p)) => wait_for_path(p, Duration::from_secs(20)),
                Some(Ready::Node(n)) => self.wait_for_node(n, Duration::from_secs(20)),
                None => true,
            };
            if !ready {
                let _ = producer.kill();
                let _ = producer.wait();
                bail!("{} did not start:\n{}", case.name(), tail(&plog));
            }
            let mut consumer = self
                .command(cargv, &clog, strace.then_some(ctrace.as_path()))?
                .spawn()
                .with_context(|| format!("starting {}", cargv[0]))?;
            let (usage, ok) = reap(&mut consumer, limit, &[0])?;
            run.consumer = usage;
            consumer_ok = ok;
        }
        if plan.stop_producer {
            // The producer itself, not strace around it.
            let pid = descendants(producer.id())
                .into_iter()
                .find(|(_, comm)| comm == "producer")
                .map_or(producer.id(), |(pid, _)| pid);
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let (usage, producer_ok) = reap(&mut producer, Duration::from_secs(15), &plan.producer_ok)?;
        run.producer = usage;
        run.wall_s = start.elapsed().as_secs_f64();
        run.daemon_cpu_ns = self
            .pw
            .as_ref()
            .map_or(0, |d| d.cpu_ns().saturating_sub(daemon0));
        if !consumer_ok || !producer_ok {
            bail!(
                "{} {}x{} {} failed:\nproducer:\n{}\nconsumer:\n{}",
                case.name(),
                size.0,
                size.1,
                if paced { "paced" } else { "unpaced" },
                tail(&plog),
                tail(&clog)
            );
        }
        if let Some((pj, cj)) = &plan.jsons {
            let read = |p: &Path| -> Option<Value> {
                serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok()
            };
            if let (Some(p), Some(c)) = (read(pj), read(cj)) {
                let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
                run.internal_source_ns = f(&p, "source_cpu_ns_per_frame");
                run.internal_transport_ns =
                    f(&p, "transport_cpu_ns_per_frame").zip(f(&c, "transport_cpu_ns_per_frame"));
                if paced {
                    run.latency_us = f(&c, "latency_us_p50").zip(f(&c, "latency_us_p99"));
                }
            }
        }
        let syscalls = strace.then(|| {
            let count = |p: &Path| strace_total(&std::fs::read_to_string(p).unwrap_or_default());
            (count(&ptrace), count(&ctrace))
        });
        for f in [&plog, &clog, &ptrace, &ctrace] {
            let _ = std::fs::remove_file(f);
        }
        if let Some((pj, cj)) = &plan.jsons {
            let _ = std::fs::remove_file(pj);
            let _ = std::fs::remove_file(cj);
        }
        Ok((run, syscalls))
    }
}

/// The `calls` column of the `total` line of `strace -c` (0 when absent).
fn strace_total(text: &str) -> u64 {
    text.lines()
        .find(|l| l.trim_end().ends_with("total"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

fn version(argv: &[&str], line: usize) -> Option<String> {
    let out = Command::new(argv[0]).args(&argv[1..]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines().nth(line).map(|l| l.trim().to_string())
}

/// Each round's run with N frames and with N/10.
type Pairs = Vec<(Run, Run)>;

/// Run the peer comparison.
pub fn run(opts: &PeerOptions) -> Result<PeersReport> {
    let t0 = Instant::now();
    let mut skipped = Vec::new();
    let mut versions = Vec::new();
    let gst = which("gst-launch-1.0");
    let mut cases = vec![Case::Ours, Case::OursSocket];
    if let Some(d) = &opts.before {
        for b in ["producer", "consumer"] {
            if !d.join(b).exists() {
                bail!("--peers-before: {} not found", d.join(b).display());
            }
        }
        cases.push(Case::OursBefore);
    }
    if gst {
        versions.extend(version(&["gst-launch-1.0", "--version"], 1));
        cases.extend([Case::GstSource, Case::GstShm]);
        match &opts.gst_plugin {
            Some(so) if so.exists() => {
                let d = opts.dir.join("gst-plugin");
                std::fs::create_dir_all(&d)?;
                let link = d.join("libgstdmabufpipe.so");
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(std::fs::canonicalize(so)?, &link)?;
                cases.push(Case::GstPipe);
            }
            _ => skipped.push((
                Case::GstPipe.name().to_string(),
                "libgstdmabufpipe.so not found beside compare (cargo build -p \
                 gst-plugin-dmabufpipe)"
                    .to_string(),
            )),
        }
    } else {
        for c in [Case::GstSource, Case::GstShm, Case::GstPipe, Case::Pipewire] {
            skipped.push((
                c.name().to_string(),
                "gst-launch-1.0 not found (ci/setup.sh installs gstreamer1.0-tools)".to_string(),
            ));
        }
    }
    let mut runner = Runner {
        opts,
        pw: None,
        counter: 0,
    };
    if gst {
        let have_pw = which("pipewire") && which("wireplumber") && which("dbus-run-session");
        let element = Command::new("gst-inspect-1.0")
            .arg("pipewiresrc")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !have_pw || !element {
            skipped.push((
                "pipewire".into(),
                "pipewire, wireplumber, dbus-run-session or GStreamer's pipewiresrc not found \
                 (ci/setup.sh installs them from bookworm-backports)"
                    .into(),
            ));
        } else {
            match PipewireDaemon::start(&opts.dir) {
                Ok(d) => {
                    versions.extend(version(&["pipewire", "--version"], 2));
                    versions.extend(version(&["wireplumber", "--version"], 2));
                    runner.pw = Some(d);
                    cases.extend([Case::Pipewire, Case::OursPipewire]);
                }
                Err(e) => skipped.push(("pipewire".into(), format!("{e:#}"))),
            }
        }
    }
    let strace = which("strace");
    if !strace {
        skipped.push((
            "syscall counts".into(),
            "strace not found (ci/setup.sh installs it)".into(),
        ));
    }
    let mut entries = Vec::new();
    for &size in &opts.sizes {
        for paced in [false, true] {
            let big = if paced {
                opts.frames_paced
            } else {
                opts.frames_unpaced
            };
            let small = (big / 10).max(2);
            // PipeWire deadlocks unpaced (`sync=false` on pipewiresink): paced only.
            let here: Vec<Case> = cases
                .iter()
                .copied()
                .filter(|&c| paced || !matches!(c, Case::Pipewire | Case::OursPipewire))
                .collect();
            let mut per_case: Vec<(Pairs, Option<String>)> =
                here.iter().map(|_| (Vec::new(), None)).collect();
            let mut retries = vec![0u32; here.len()];
            for round in 0..opts.rounds {
                // Each round starts at another case, so that no case always runs first (after
                // the previous size's last case, a daemon still settling): a case's place in
                // the round biases its figures (measured: up to 20 µs a frame paced).
                let n = here.len();
                let first = round as usize * n / opts.rounds.max(1) as usize;
                for i in (0..n).map(|k| (k + first) % n) {
                    let case = here[i];
                    if per_case[i].1.is_some() {
                        continue;
                    }
                    eprintln!(
                        "compare: peers {}x{} {} round {}/{}: {} …",
                        size.0,
                        size.1,
                        if paced { "paced" } else { "unpaced" },
                        round + 1,
                        opts.rounds,
                        case.name()
                    );
                    let mut once = |frames: u64| -> Result<Run> {
                        match runner.run(case, size, paced, frames, false) {
                            Ok((r, _)) => Ok(r),
                            Err(e) => {
                                // A failed run is run again once, and counted.
                                eprintln!("compare: {}: {e:#}; running it again", case.name());
                                retries[i] += 1;
                                Ok(runner.run(case, size, paced, frames, false)?.0)
                            }
                        }
                    };
                    let pair = once(big).and_then(|a| Ok((a, once(small)?)));
                    match pair {
                        Ok(p) => per_case[i].0.push(p),
                        Err(e) => per_case[i].1 = Some(format!("{e:#}")),
                    }
                }
            }
            let mut made: Vec<PeerEntry> = Vec::new();
            for (i, &case) in here.iter().enumerate() {
                let (pairs, error) = &per_case[i];
                let marg = |f: &dyn Fn(&Run) -> f64| -> Vec<f64> {
                    pairs
                        .iter()
                        .map(|(a, b)| (f(a) - f(b)) / (a.frames - b.frames) as f64)
                        .collect()
                };
                let us = |f: &dyn Fn(&Run) -> u64| median(marg(&|r| f(r) as f64 / 1e3));
                let rounds_us: Vec<(f64, f64, f64)> = pairs
                    .iter()
                    .map(|(a, b)| {
                        let d = (a.frames - b.frames) as f64 * 1e3;
                        (
                            (a.producer.cpu_ns as f64 - b.producer.cpu_ns as f64) / d,
                            (a.consumer.cpu_ns as f64 - b.consumer.cpu_ns as f64) / d,
                            (a.daemon_cpu_ns as f64 - b.daemon_cpu_ns as f64) / d,
                        )
                    })
                    .collect();
                let internal = |f: &dyn Fn(&Run) -> Option<f64>| -> Option<f64> {
                    let v: Vec<f64> = pairs.iter().filter_map(|(a, _)| f(a)).collect();
                    (!v.is_empty()).then(|| median(v))
                };
                let internal_source = internal(&|r| r.internal_source_ns.map(|n| n / 1e3));
                let internal_transport = internal(&|r| r.internal_transport_ns.map(|t| t.0 / 1e3))
                    .zip(internal(&|r| r.internal_transport_ns.map(|t| t.1 / 1e3)));
                let latency = internal(&|r| r.latency_us.map(|l| l.0))
                    .zip(internal(&|r| r.latency_us.map(|l| l.1)));
                let producer_us = us(&|r| r.producer.cpu_ns);
                // The syscall pass: one pair under strace.
                let syscalls = if strace && error.is_none() && !pairs.is_empty() {
                    runner
                        .run(case, size, paced, big, true)
                        .and_then(|(_, a)| Ok((a, runner.run(case, size, paced, small, true)?.1)))
                        .ok()
                        .and_then(|(a, b)| a.zip(b))
                        .map(|((pa, ca), (pb, cb))| {
                            let d = (big - small) as f64;
                            ((pa as f64 - pb as f64) / d, (ca as f64 - cb as f64) / d)
                        })
                } else {
                    None
                };
                made.push(PeerEntry {
                    case,
                    width: size.0,
                    height: size.1,
                    paced,
                    producer_us,
                    consumer_us: us(&|r| r.consumer.cpu_ns),
                    daemon_us: us(&|r| r.daemon_cpu_ns),
                    producer_wakeups: median(marg(&|r| r.producer.wakeups as f64)),
                    consumer_wakeups: median(marg(&|r| r.consumer.wakeups as f64)),
                    producer_syscalls: syscalls.map(|s| s.0),
                    consumer_syscalls: syscalls.map(|s| s.1).filter(|_| case != Case::GstSource),
                    producer_beyond_source_us: match case {
                        Case::Ours | Case::OursSocket | Case::OursBefore => {
                            internal_source.map(|s| producer_us - s)
                        }
                        _ => None,
                    },
                    internal_transport_us: internal_transport,
                    latency_us: latency,
                    rounds_us,
                    retries: retries[i],
                    error: error.clone(),
                });
            }
            // GStreamer's producers beyond their source: minus the source alone.
            let gst_src = made
                .iter()
                .find(|e| e.case == Case::GstSource && e.error.is_none())
                .map(|e| e.producer_us);
            for e in &mut made {
                if matches!(e.case, Case::GstShm | Case::GstPipe | Case::Pipewire) {
                    e.producer_beyond_source_us = gst_src.map(|s| e.producer_us - s);
                }
            }
            entries.extend(made);
        }
    }
    Ok(PeersReport {
        versions,
        skipped,
        rounds: opts.rounds,
        fps: opts.fps,
        frames_unpaced: opts.frames_unpaced,
        frames_paced: opts.frames_paced,
        entries,
        elapsed_s: t0.elapsed().as_secs_f64(),
    })
}

fn cell(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "–".into(),
    }
}

impl PeersReport {
    /// The table (Markdown), one row per case, size and pacing.
    pub fn table(&self) -> String {
        let mut s = String::from(
            "| size | pacing | case | producer µs/frame | beyond source | consumer µs/frame | daemon µs/frame | total | wake-ups/frame (p / c) | syscalls/frame (p / c) | ours internal (p / c) | latency p50 / p99 µs |\n\
             |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for e in &self.entries {
            if let Some(err) = &e.error {
                let first = err
                    .lines()
                    .skip(1)
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or(err);
                s += &format!(
                    "| {}x{} | {} | {} | failed: {first} | | | | | | | | |\n",
                    e.width,
                    e.height,
                    if e.paced { "paced" } else { "unpaced" },
                    e.case.name()
                );
                continue;
            }
            let total = e.producer_us + e.consumer_us + e.daemon_us;
            s += &format!(
                "| {}x{} | {} | {} | {:.1} | {} | {} | {} | {:.1} | {:.2} / {} | {} / {} | {} | {} |\n",
                e.width,
                e.height,
                if e.paced {
                    format!("{} fps", self.fps)
                } else {
                    "unpaced".into()
                },
                e.case.name(),
                e.producer_us,
                cell(e.producer_beyond_source_us, 1),
                if e.case == Case::GstSource {
                    "–".into()
                } else {
                    format!("{:.1}", e.consumer_us)
                },
                if matches!(e.case, Case::Pipewire | Case::OursPipewire) {
                    format!("{:.1}", e.daemon_us)
                } else {
                    "–".into()
                },
                total,
                e.producer_wakeups,
                if e.case == Case::GstSource {
                    "–".into()
                } else {
                    format!("{:.2}", e.consumer_wakeups)
                },
                cell(e.producer_syscalls, 1),
                cell(e.consumer_syscalls, 1),
                match e.internal_transport_us {
                    Some((p, c)) => format!("{p:.1} / {c:.1}"),
                    None => "–".into(),
                },
                match e.latency_us {
                    Some((a, b)) => format!("{a:.0} / {b:.0}"),
                    None => "–".into(),
                },
            );
        }
        s
    }

    /// One line per size and pacing: each peer's total CPU per frame against ours.
    pub fn ratios(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ours in self
            .entries
            .iter()
            .filter(|e| e.case == Case::Ours && e.error.is_none())
        {
            let ours_total = ours.producer_us + ours.consumer_us;
            for peer in self.entries.iter().filter(|e| {
                matches!(
                    e.case,
                    Case::OursSocket
                        | Case::GstShm
                        | Case::GstPipe
                        | Case::Pipewire
                        | Case::OursPipewire
                        | Case::OursBefore
                ) && e.error.is_none()
                    && (e.width, e.height, e.paced) == (ours.width, ours.height, ours.paced)
            }) {
                let total = peer.producer_us + peer.consumer_us + peer.daemon_us;
                out.push(format!(
                    "{}x{} {}: {} {:.1} µs/frame (all processes) vs ours {:.1}: {:.1}x",
                    ours.width,
                    ours.height,
                    if ours.paced { "paced" } else { "unpaced" },
                    peer.case.name(),
                    total,
                    ours_total,
                    total / ours_total.max(0.01)
                ));
            }
        }
        // PipeWire's own path (pipewiresink, buffers the daemon makes) against our node (our
        // pool as PipeWire's buffers), same client.
        for node in self
            .entries
            .iter()
            .filter(|e| e.case == Case::OursPipewire && e.error.is_none())
        {
            if let Some(pw) = self.entries.iter().find(|e| {
                e.case == Case::Pipewire
                    && e.error.is_none()
                    && (e.width, e.height, e.paced) == (node.width, node.height, node.paced)
            }) {
                let all = |e: &PeerEntry| e.producer_us + e.consumer_us + e.daemon_us;
                out.push(format!(
                    "{}x{} {}: pipewire (pipewiresink) {:.1} µs/frame in all vs ours-pipewire \
                     (our node) {:.1}: {:.1}x",
                    node.width,
                    node.height,
                    if node.paced { "paced" } else { "unpaced" },
                    all(pw),
                    all(node),
                    all(pw) / all(node).max(0.01)
                ));
            }
        }
        // GStreamer's own cross-process path against our elements, same pipeline otherwise.
        for pipe in self
            .entries
            .iter()
            .filter(|e| e.case == Case::GstPipe && e.error.is_none())
        {
            if let Some(shm) = self.entries.iter().find(|e| {
                e.case == Case::GstShm
                    && e.error.is_none()
                    && (e.width, e.height, e.paced) == (pipe.width, pipe.height, pipe.paced)
            }) {
                out.push(format!(
                    "{}x{} {}: gst-shm producer {:.1} / consumer {:.1} µs/frame vs \
                     gst-dmabufpipe {:.1} / {:.1}: {:.1}x the CPU in all",
                    pipe.width,
                    pipe.height,
                    if pipe.paced { "paced" } else { "unpaced" },
                    shm.producer_us,
                    shm.consumer_us,
                    pipe.producer_us,
                    pipe.consumer_us,
                    (shm.producer_us + shm.consumer_us)
                        / (pipe.producer_us + pipe.consumer_us).max(0.01)
                ));
            }
        }
        out
    }

    /// The Markdown section for docs/BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s += &format!(
            "Measured by `compare --peers` ({} round(s), {} frames unpaced / {} paced at {} fps, \
             each against a run of a tenth as many: marginal CPU per frame, median over the \
             rounds, each round starting at another case; {:.0} s). Versions: {}.\n\n",
            self.rounds,
            self.frames_unpaced,
            self.frames_paced,
            self.fps,
            self.elapsed_s,
            if self.versions.is_empty() {
                "–".to_string()
            } else {
                self.versions.join("; ")
            }
        );
        for c in Case::ALL {
            if self.entries.iter().any(|e| e.case == c) {
                s += &format!("- `{}`: {}\n", c.name(), c.describe());
            }
        }
        for (what, why) in &self.skipped {
            s += &format!("- skipped {what}: {why}\n");
        }
        s += "\n";
        s += &self.table();
        s += "\n";
        for r in self.ratios() {
            s += &format!("- {r}\n");
        }
        s
    }
}

pub const BEGIN: &str =
    "<!-- compare-peers:begin (generated by `compare --peers --update-docs`) -->";
pub const END: &str = "<!-- compare-peers:end -->";

/// Replace the peers section of `doc` (between [`BEGIN`] and [`END`]), or append it.
pub fn splice(doc: &str, section: &str) -> String {
    crate::report::splice_between(doc, BEGIN, END, "Peers side by side", section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_summary_total_is_read() {
        let text = "% time     seconds  usecs/call     calls    errors syscall\n\
                    ------ ----------- ----------- --------- --------- ----------------\n\
                     60.00    0.000300           3       100        10 recvmsg\n\
                    ------ ----------- ----------- --------- --------- ----------------\n\
                    100.00    0.000500           2       250        12 total\n";
        assert_eq!(strace_total(text), 250);
        assert_eq!(strace_total("no summary"), 0);
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
