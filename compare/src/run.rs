//! One measurement: a real producer and a real consumer over the real socket, each writing its
//! own `--stats-json`.

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A transport path of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Dmabuf,
    MemfdZeroCopy,
    Memcpy,
    SocketCopy,
}

impl PathKind {
    pub const ALL: [PathKind; 4] = [
        PathKind::Dmabuf,
        PathKind::MemfdZeroCopy,
        PathKind::Memcpy,
        PathKind::SocketCopy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PathKind::Dmabuf => "dmabuf",
            PathKind::MemfdZeroCopy => "memfd-zero-copy",
            PathKind::Memcpy => "memcpy",
            PathKind::SocketCopy => "socket-copy",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown path {s:?}: expected dmabuf, memfd-zero-copy, memcpy or socket-copy"
                )
            })
    }

    /// `--transport`, `--alloc` (memfd unless given the dma-buf allocator) and consumer
    /// `--import` for this path.
    fn args(self, dmabuf_alloc: &str) -> (&'static str, String, &'static str) {
        match self {
            PathKind::Dmabuf => ("zero-copy", dmabuf_alloc.to_string(), "auto"),
            PathKind::MemfdZeroCopy => ("zero-copy", "memfd".into(), "host-pointer"),
            PathKind::Memcpy => ("memcpy", "memfd".into(), "copy"),
            PathKind::SocketCopy => ("socket-copy", "memfd".into(), "copy"),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub path: PathKind,
    /// `pattern` or `file:PATH`.
    pub source: String,
    pub size: Option<(u32, u32)>,
    pub frames: u64,
    pub warmup: u64,
    /// `Some(fps)`: paced; `None`: unpaced.
    pub fps: Option<u32>,
    pub dmabuf_alloc: String,
    pub test_burn_us: u64,
    pub test_fault_pages: u64,
}

/// Both processes' `--stats-json` objects.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub producer: Value,
    pub consumer: Value,
    pub wall_s: f64,
}

pub struct Runner {
    pub producer: PathBuf,
    pub consumer: PathBuf,
    pub dir: PathBuf,
    pub counter: u32,
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

impl Runner {
    pub fn run(&mut self, spec: &RunSpec) -> Result<RunResult> {
        self.counter += 1;
        let tag = format!("run{}", self.counter);
        let sock = self.dir.join(format!("{tag}.sock"));
        let pjson = self.dir.join(format!("{tag}-producer.json"));
        let cjson = self.dir.join(format!("{tag}-consumer.json"));
        let plog = self.dir.join(format!("{tag}-producer.log"));
        let clog = self.dir.join(format!("{tag}-consumer.log"));
        let (transport, alloc, import) = spec.path.args(&spec.dmabuf_alloc);
        let mut p = Command::new(&self.producer);
        p.arg("--socket")
            .arg(&sock)
            .args(["--source", &spec.source])
            .args(["--alloc", &alloc])
            .args(["--transport", transport])
            .args(["--frames", &spec.frames.to_string()])
            .args(["--stats-warmup", &spec.warmup.to_string()])
            .arg("--no-checksum")
            .arg("--stats-json")
            .arg(&pjson);
        if let Some((w, h)) = spec.size {
            p.args(["--size", &format!("{w}x{h}"), "--format", "NV12"]);
        }
        if spec.source.starts_with("file:") {
            // One decoder thread: the decode runs inside the producer's metered source step.
            p.args(["--loop", "--decode-threads", "1"]);
        }
        match spec.fps {
            Some(fps) if spec.source == "pattern" => {
                p.args(["--fps", &fps.to_string()]);
            }
            Some(_) => {}
            None => {
                p.arg("--no-pace");
            }
        }
        if spec.test_burn_us > 0 {
            p.args(["--test-burn-us", &spec.test_burn_us.to_string()]);
        }
        if spec.test_fault_pages > 0 {
            p.args(["--test-fault-pages", &spec.test_fault_pages.to_string()]);
        }
        let mut producer = p
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&plog)?)
            .spawn()
            .with_context(|| format!("starting {}", self.producer.display()))?;
        let mut c = Command::new(&self.consumer);
        c.arg("--socket")
            .arg(&sock)
            .args(["--transport", transport])
            .args(["--import", import])
            .args(["--stats-warmup", &spec.warmup.to_string()])
            .arg("--quiet")
            .arg("--stats-json")
            .arg(&cjson);
        if spec.test_burn_us > 0 {
            c.args(["--test-burn-us", &spec.test_burn_us.to_string()]);
        }
        let start = Instant::now();
        let consumer = c
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&clog)?)
            .status();
        let consumer = match consumer {
            Ok(s) => s,
            Err(e) => {
                let _ = producer.kill();
                let _ = producer.wait();
                return Err(e).with_context(|| format!("starting {}", self.consumer.display()));
            }
        };
        // The producer ends after --frames; give it a moment, then stop it.
        let deadline = Instant::now() + Duration::from_secs(10);
        let pstatus = loop {
            if let Some(s) = producer.try_wait()? {
                break Some(s);
            }
            if Instant::now() >= deadline {
                let _ = producer.kill();
                let _ = producer.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let wall_s = start.elapsed().as_secs_f64();
        if !consumer.success() {
            bail!(
                "the consumer failed ({consumer}):\n{}\nproducer:\n{}",
                tail(&clog),
                tail(&plog)
            );
        }
        match pstatus {
            Some(s) if s.success() => {}
            Some(s) => bail!("the producer failed ({s}):\n{}", tail(&plog)),
            None => bail!(
                "the producer did not end after the stream:\n{}",
                tail(&plog)
            ),
        }
        let read = |p: &Path| -> Result<Value> {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
        };
        let result = RunResult {
            producer: read(&pjson)?,
            consumer: read(&cjson)?,
            wall_s,
        };
        for f in [&pjson, &cjson, &plog, &clog] {
            let _ = std::fs::remove_file(f);
        }
        Ok(result)
    }
}
