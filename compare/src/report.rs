//! The figures of each run, the table, the ratios, the JSON and the Markdown section.

use crate::run::{PathKind, RunResult};
use serde::Serialize;
use serde_json::Value;

/// Whether a path ran, and why not.
#[derive(Debug, Serialize)]
pub struct PathStatus {
    pub path: String,
    pub ran: bool,
    pub skip_reason: Option<String>,
    pub allocator: Option<String>,
}

/// One process's figures. CPU in µs per frame: medians of each steady frame's process CPU
/// (`*_p50`) and means over the steady state (`*_mean`).
#[derive(Debug, Default, Serialize)]
pub struct Side {
    pub cpu_us_p50: f64,
    pub cpu_us_mean: f64,
    /// CPU less the work that is not transport (the producer's source, the consumer's GPU).
    pub transport_us_p50: f64,
    pub transport_us_mean: f64,
    /// The producer's source work (draw or decode) or the consumer's GPU work, µs per frame.
    pub work_us_p50: f64,
    pub work_us_mean: f64,
    pub minflt_per_frame: f64,
    pub majflt_per_frame: f64,
    /// % of one core at the paced rate: the paced run's steady CPU per frame (mean) times the
    /// frame rate (the pattern's --fps; a clip's measured rate).
    pub core_percent_paced: Option<f64>,
    /// The paced run's steady CPU over its wall time, % of one core (differs from the above
    /// when a path cannot keep the rate, or catches up after a slow start).
    pub core_percent_wall: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Entry {
    pub path: String,
    pub source: String,
    pub source_arg: String,
    pub width: u32,
    pub height: u32,
    pub pixel_format: String,
    pub frame_bytes: u64,
    pub allocator: String,
    pub import_path: String,
    pub steady_frames_unpaced: u64,
    pub fps_unpaced: f64,
    pub producer: Side,
    pub consumer: Side,
    /// From the paced run: the producer's publish to the frame being GPU-visible.
    pub visible_us_p50: Option<f64>,
    pub visible_us_p99: Option<f64>,
    pub fps_paced: Option<f64>,
    /// Every unpaced run's transport CPU per frame (producer + consumer medians, µs): the
    /// spread between repetitions.
    pub transport_us_runs: Vec<f64>,
    pub error: Option<String>,
    /// Both processes' own `--stats-json` objects, unpaced and paced.
    pub raw: Value,
}

fn f(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// The run with the median `key` among the successful ones (or the first error), and every
/// successful run's figures for the JSON.
fn median_run(
    runs: Vec<anyhow::Result<RunResult>>,
    key: impl Fn(&RunResult) -> f64,
) -> (Option<anyhow::Result<RunResult>>, Vec<Value>) {
    let mut ok = Vec::new();
    let mut first_err = None;
    for r in runs {
        match r {
            Ok(r) => ok.push(r),
            Err(e) if first_err.is_none() => first_err = Some(e),
            Err(_) => {}
        }
    }
    let all: Vec<Value> = ok
        .iter()
        .map(|r| serde_json::json!({"producer": r.producer, "consumer": r.consumer, "wall_s": r.wall_s}))
        .collect();
    if ok.is_empty() {
        return (first_err.map(Err), all);
    }
    ok.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mid = ok.len() / 2;
    (Some(Ok(ok.swap_remove(mid))), all)
}

fn nv12_bytes(w: u32, h: u32) -> u64 {
    let (w, h) = (u64::from(w), u64::from(h));
    w * h + 2 * w.div_ceil(2) * h.div_ceil(2)
}

impl Entry {
    pub fn new(
        path: PathKind,
        label: &str,
        source_arg: &str,
        size: Option<(u32, u32)>,
        unpaced: Vec<anyhow::Result<RunResult>>,
        paced: Vec<anyhow::Result<RunResult>>,
        target_fps: Option<u32>,
    ) -> Self {
        let (w, h) = size.unwrap_or((1920, 1080));
        let mut e = Entry {
            path: path.name().into(),
            source: if label == "clip" { "clip" } else { "pattern" }.into(),
            source_arg: source_arg.into(),
            width: w,
            height: h,
            pixel_format: "NV12".into(),
            frame_bytes: nv12_bytes(w, h),
            allocator: String::new(),
            import_path: String::new(),
            steady_frames_unpaced: 0,
            fps_unpaced: f64::NAN,
            producer: Side::default(),
            consumer: Side::default(),
            visible_us_p50: None,
            visible_us_p99: None,
            fps_paced: None,
            transport_us_runs: Vec::new(),
            error: None,
            raw: Value::Null,
        };
        let mut errors = Vec::new();
        let mut raw = serde_json::Map::new();
        let key_unpaced = |r: &RunResult| {
            f(&r.producer, "transport_cpu_ns_p50") + f(&r.consumer, "transport_cpu_ns_p50")
        };
        let key_paced = |r: &RunResult| {
            f(&r.producer, "cpu_ns_per_frame") + f(&r.consumer, "steady_cpu_ns_per_frame")
        };
        e.transport_us_runs = unpaced
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .map(|r| key_unpaced(r) / 1e3)
            .collect();
        let unpaced_all = unpaced.len();
        let paced_all = paced.len();
        let (unpaced, unpaced_runs) = median_run(unpaced, key_unpaced);
        let (paced, paced_runs) = median_run(paced, key_paced);
        raw.insert("unpaced_runs".into(), serde_json::json!(unpaced_runs));
        raw.insert("paced_runs".into(), serde_json::json!(paced_runs));
        if unpaced_runs.len() < unpaced_all || paced_runs.len() < paced_all {
            errors.push(format!(
                "{} of {unpaced_all} unpaced and {} of {paced_all} paced runs failed",
                unpaced_all - unpaced_runs.len(),
                paced_all - paced_runs.len()
            ));
        }
        match unpaced {
            Some(Ok(r)) => {
                let (p, c) = (&r.producer, &r.consumer);
                e.width = f(c, "width") as u32;
                e.height = f(c, "height") as u32;
                e.pixel_format = c
                    .get("pixel_format")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .into();
                e.frame_bytes = nv12_bytes(e.width, e.height);
                e.allocator = c.get("alloc").and_then(Value::as_str).unwrap_or("?").into();
                e.import_path = c
                    .get("import_path")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .into();
                e.steady_frames_unpaced = f(c, "steady_frames") as u64;
                e.fps_unpaced = f(c, "steady_fps");
                e.producer = Side {
                    cpu_us_p50: f(p, "cpu_ns_p50") / 1e3,
                    cpu_us_mean: f(p, "cpu_ns_per_frame") / 1e3,
                    transport_us_p50: f(p, "transport_cpu_ns_p50") / 1e3,
                    transport_us_mean: f(p, "transport_cpu_ns_per_frame") / 1e3,
                    work_us_p50: f(p, "source_cpu_ns_p50") / 1e3,
                    work_us_mean: f(p, "source_cpu_ns_per_frame") / 1e3,
                    minflt_per_frame: f(p, "minflt_per_frame"),
                    majflt_per_frame: f(p, "majflt_per_frame"),
                    core_percent_paced: None,
                    core_percent_wall: None,
                };
                e.consumer = Side {
                    cpu_us_p50: f(c, "cpu_ns_p50") / 1e3,
                    cpu_us_mean: f(c, "steady_cpu_ns_per_frame") / 1e3,
                    transport_us_p50: f(c, "transport_cpu_ns_p50") / 1e3,
                    transport_us_mean: f(c, "transport_cpu_ns_per_frame") / 1e3,
                    work_us_p50: f(c, "gpu_cpu_ns_p50") / 1e3,
                    work_us_mean: f(c, "gpu_cpu_ns_per_frame") / 1e3,
                    minflt_per_frame: f(c, "minflt_per_frame"),
                    majflt_per_frame: f(c, "majflt_per_frame"),
                    core_percent_paced: None,
                    core_percent_wall: None,
                };
                raw.insert(
                    "unpaced".into(),
                    serde_json::json!({"producer": r.producer, "consumer": r.consumer, "wall_s": r.wall_s}),
                );
            }
            Some(Err(err)) => errors.push(format!("unpaced: {err:#}")),
            None => errors.push("no unpaced run".into()),
        }
        match paced {
            Some(Ok(r)) => {
                let (p, c) = (&r.producer, &r.consumer);
                e.visible_us_p50 = Some(f(c, "visible_us_p50"));
                e.visible_us_p99 = Some(f(c, "visible_us_p99"));
                e.fps_paced = Some(f(c, "steady_fps"));
                let rate = match target_fps {
                    Some(fps) => f64::from(fps),
                    None => f(c, "steady_fps").round(),
                };
                e.producer.core_percent_paced = Some(f(p, "cpu_ns_per_frame") * rate / 1e7);
                e.consumer.core_percent_paced = Some(f(c, "steady_cpu_ns_per_frame") * rate / 1e7);
                e.producer.core_percent_wall = Some(f(p, "cpu_percent"));
                e.consumer.core_percent_wall = Some(f(c, "cpu_percent"));
                raw.insert(
                    "paced".into(),
                    serde_json::json!({"producer": r.producer, "consumer": r.consumer, "wall_s": r.wall_s}),
                );
            }
            Some(Err(err)) => errors.push(format!("paced: {err:#}")),
            None => {}
        }
        if !errors.is_empty() {
            e.error = Some(errors.join("; "));
        }
        e.raw = Value::Object(raw);
        e
    }

    /// Transport CPU per frame, both sides, medians (µs).
    pub fn transport_us(&self) -> f64 {
        self.producer.transport_us_p50 + self.consumer.transport_us_p50
    }

    pub fn one_line(&self) -> String {
        if let Some(e) = &self.error {
            return format!("FAILED: {}", e.lines().next().unwrap_or(""));
        }
        format!(
            "producer {:.0} µs/frame (transport {:.1}), consumer {:.0} µs/frame (transport {:.1}), faults {:.2}/{:.2} per frame, {:.0} fps unpaced",
            self.producer.cpu_us_p50,
            self.producer.transport_us_p50,
            self.consumer.cpu_us_p50,
            self.consumer.transport_us_p50,
            self.producer.minflt_per_frame + self.producer.majflt_per_frame,
            self.consumer.minflt_per_frame + self.consumer.majflt_per_frame,
            self.fps_unpaced
        )
    }
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
    pub vulkan_device: String,
    pub date_utc: String,
    /// `/proc/loadavg` (1, 5, 15 min) at the end of the run: other work on the machine.
    pub load_average: String,
}

impl Machine {
    pub fn detect(entries: &[Entry]) -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let vulkan_device = entries
            .iter()
            .filter_map(|e| e.raw.pointer("/unpaced/consumer/vk_device"))
            .find_map(Value::as_str)
            .unwrap_or("none")
            .to_string();
        let date_utc = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        Machine {
            load_average,
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel,
            vulkan_device,
            date_utc,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Measured {
    pub command: String,
    pub machine: Machine,
    pub paths: Vec<PathStatus>,
    pub notes: Vec<String>,
    pub fps: u32,
    /// Runs per combination (unpaced and paced each); the median one is reported.
    pub repeat: u32,
    pub elapsed_s: f64,
    pub entries: Vec<Entry>,
    /// `--peers`: GStreamer and PipeWire side by side with our zero-copy path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<crate::peers::PeersReport>,
}

fn opt(v: Option<f64>, prec: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.prec$}"),
        _ => "–".into(),
    }
}

impl Measured {
    /// The table (Markdown, readable on a terminal too).
    pub fn table(&self) -> String {
        let mut t = String::new();
        t.push_str(&format!(
            "| source | size | MB/frame | path | producer CPU µs/frame (transport) | consumer CPU µs/frame (transport) | page faults/frame P / C | fps unpaced | publish→GPU-visible µs p50 / p99 | % of a core at {} fps P / C (fps reached) |\n",
            self.fps
        ));
        t.push_str("|---|---|---:|---|---:|---:|---:|---:|---:|---:|\n");
        for e in &self.entries {
            let size = format!("{}x{}", e.width, e.height);
            let mb = e.frame_bytes as f64 / 1e6;
            if let Some(err) = &e.error {
                t.push_str(&format!(
                    "| {} | {size} | {mb:.1} | {} | failed: {} | | | | | |\n",
                    e.source,
                    e.path,
                    err.lines().next().unwrap_or("").replace('|', "/")
                ));
                continue;
            }
            t.push_str(&format!(
                "| {} | {size} | {mb:.1} | {} | {:.0} ({:.1}) | {:.0} ({:.1}) | {:.2} / {:.2} | {:.0} | {} / {} | {} / {} ({}) |\n",
                e.source,
                e.path,
                e.producer.cpu_us_p50,
                e.producer.transport_us_p50,
                e.consumer.cpu_us_p50,
                e.consumer.transport_us_p50,
                e.producer.minflt_per_frame + e.producer.majflt_per_frame,
                e.consumer.minflt_per_frame + e.consumer.majflt_per_frame,
                e.fps_unpaced,
                opt(e.visible_us_p50, 0),
                opt(e.visible_us_p99, 0),
                opt(e.producer.core_percent_paced, 1),
                opt(e.consumer.core_percent_paced, 1),
                opt(e.fps_paced, 0),
            ));
        }
        for s in &self.paths {
            if let Some(why) = &s.skip_reason {
                t.push_str(&format!(
                    "\n`{}` skipped: {}\n",
                    s.path,
                    why.replace('|', "/")
                ));
            }
        }
        t
    }

    /// Transport CPU (both sides, medians) of each copy path against the zero-copy paths, per
    /// pattern size.
    pub fn ratios(&self) -> Vec<String> {
        let mut out = Vec::new();
        let find = |path: &str, w: u32, h: u32| {
            self.entries.iter().find(|e| {
                e.source == "pattern"
                    && e.path == path
                    && e.width == w
                    && e.height == h
                    && e.error.is_none()
            })
        };
        let mut sizes: Vec<(u32, u32)> = self
            .entries
            .iter()
            .filter(|e| e.source == "pattern")
            .map(|e| (e.width, e.height))
            .collect();
        sizes.dedup();
        for (w, h) in sizes {
            for zc in ["dmabuf", "memfd-zero-copy"] {
                let Some(z) = find(zc, w, h) else { continue };
                let parts: Vec<String> = ["memcpy", "socket-copy"]
                    .iter()
                    .filter_map(|c| find(c, w, h).map(|e| (c, e)))
                    .map(|(c, e)| {
                        format!(
                            "{c} {:.1}× ({:.0} µs)",
                            e.transport_us() / z.transport_us().max(1e-3),
                            e.transport_us()
                        )
                    })
                    .collect();
                if !parts.is_empty() {
                    out.push(format!(
                        "{w}x{h}: transport CPU per frame (producer + consumer, medians) against {zc} ({:.1} µs): {}",
                        z.transport_us(),
                        parts.join(", ")
                    ));
                }
            }
        }
        out
    }

    /// The generated part of docs/BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut s = String::new();
        s.push_str(&format!(
            "Measured {} on {} ({} cores), kernel {}, Vulkan device {}, load average {} at the end, in {:.0} s with:\n\n```\n{}\n```\n\n",
            m.date_utc,
            m.cpu,
            m.cores,
            m.kernel,
            m.vulkan_device,
            m.load_average,
            self.elapsed_s,
            self.command
        ));
        s.push_str(&self.table());
        s.push('\n');
        for r in self.ratios() {
            s.push_str(&format!("- {r}\n"));
        }
        for n in &self.notes {
            s.push_str(&format!("- {n}\n"));
        }
        s.push_str("\n![Transport CPU per frame against frame size](compare.svg)\n");
        s
    }
}

pub const BEGIN: &str = "<!-- compare:begin (generated by `compare --update-docs`) -->";
pub const END: &str = "<!-- compare:end -->";

/// `doc` with the text between the markers replaced by `section` (appended with its own
/// heading if the markers are missing).
pub fn splice(doc: &str, section: &str) -> String {
    splice_between(doc, BEGIN, END, "CPU-usage comparison", section)
}

/// `doc` with the text between `begin` and `end` replaced by `section`, or, without the
/// markers, `doc` followed by `## heading`, the markers and `section`.
pub fn splice_between(doc: &str, begin: &str, end: &str, heading: &str, section: &str) -> String {
    if let (Some(a), Some(b)) = (doc.find(begin), doc.find(end)) {
        if a < b {
            return format!("{}{begin}\n{section}{}", &doc[..a], &doc[b..]);
        }
    }
    format!("{doc}\n## {heading}\n\n{begin}\n{section}{end}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_the_generated_part() {
        let doc = format!("# B\n\nintro\n{BEGIN}\nold table\n{END}\n\nafter\n");
        let out = splice(&doc, "new table\n");
        assert_eq!(
            out,
            format!("# B\n\nintro\n{BEGIN}\nnew table\n{END}\n\nafter\n")
        );
        let appended = splice("# B\n", "t\n");
        assert!(
            appended.contains(BEGIN)
                && appended.contains("t\n")
                && appended.ends_with(&format!("{END}\n"))
        );
        assert_eq!(splice(&appended, "u\n").matches(BEGIN).count(), 1);
    }

    #[test]
    fn nv12_sizes() {
        assert_eq!(nv12_bytes(1920, 1080), 1920 * 1080 * 3 / 2);
        assert_eq!(nv12_bytes(3, 3), 9 + 2 * 2 * 2);
    }
}
