//! `producer --list-devices`: every `/dev/video*` node with its formats, sizes and frame rates
//! (`VIDIOC_QUERYCAP`, `VIDIOC_ENUM_FMT`, `VIDIOC_ENUM_FRAMESIZES`,
//! `VIDIOC_ENUM_FRAMEINTERVALS`).

use super::{fourcc_name, open_device, Q, QM};
use std::fmt::Write as _;
use std::fs::File;
use std::path::PathBuf;
use v4l2r::bindings::{v4l2_frmivalenum, v4l2_frmsizeenum};
use v4l2r::ioctl::{self, Capabilities, FmtDesc, FrmIvalTypes, FrmSizeTypes};

/// At most this many entries of any one enumeration (a broken driver must not loop us forever).
const MAX_ENUM: u32 = 256;

fn video_nodes() -> Vec<PathBuf> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n: u32 = name.strip_prefix("video")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, p)| p).collect()
}

fn frame_sizes(dev: &File, cc: u32) -> Vec<v4l2_frmsizeenum> {
    (0..MAX_ENUM)
        .map_while(|i| ioctl::enum_frame_sizes::<v4l2_frmsizeenum>(dev, i, cc.into()).ok())
        .collect()
}

/// The sizes a device offers for fourcc `cc`, as text.
pub(crate) fn sizes_text(dev: &File, cc: u32) -> String {
    let sizes = frame_sizes(dev, cc);
    if sizes.is_empty() {
        return "not enumerated".into();
    }
    sizes
        .iter()
        .filter_map(|s| match s.size()? {
            FrmSizeTypes::Discrete(d) => Some(format!("{}x{}", d.width, d.height)),
            FrmSizeTypes::StepWise(s) => Some(format!(
                "{}x{} to {}x{} in steps of {}x{}",
                s.min_width, s.min_height, s.max_width, s.max_height, s.step_width, s.step_height
            )),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn fps_text(num: u32, den: u32) -> String {
    // An interval is num/den seconds per frame.
    if num == 0 {
        return "?".into();
    }
    if den.is_multiple_of(num) {
        format!("{}", den / num)
    } else {
        format!("{:.2}", f64::from(den) / f64::from(num))
    }
}

fn rates_text(dev: &File, cc: u32, w: u32, h: u32) -> String {
    let ivals: Vec<v4l2_frmivalenum> = (0..MAX_ENUM)
        .map_while(|i| {
            ioctl::enum_frame_intervals::<v4l2_frmivalenum>(dev, i, cc.into(), w, h).ok()
        })
        .collect();
    let rates: Vec<String> = ivals
        .iter()
        .filter_map(|iv| match iv.intervals()? {
            FrmIvalTypes::Discrete(f) => Some(fps_text(f.numerator, f.denominator)),
            FrmIvalTypes::StepWise(s) => Some(format!(
                "{}-{}",
                fps_text(s.max.numerator, s.max.denominator),
                fps_text(s.min.numerator, s.min.denominator)
            )),
        })
        .collect();
    if rates.is_empty() {
        "rates not enumerated".into()
    } else {
        format!("{} fps", rates.join(", "))
    }
}

/// The device table `--list-devices` prints.
pub fn list_devices() -> String {
    let nodes = video_nodes();
    if nodes.is_empty() {
        return "no V4L2 devices (no /dev/video* nodes)\n".into();
    }
    let mut out = String::new();
    for path in nodes {
        let (dev, cap) = match open_device(&path) {
            Ok(x) => x,
            Err(e) => {
                let _ = writeln!(out, "{}: {e:#}", path.display());
                continue;
            }
        };
        let caps = cap.device_caps();
        let _ = writeln!(
            out,
            "{}: {} (driver {}, bus {})",
            path.display(),
            cap.card,
            cap.driver,
            cap.bus_info
        );
        let q = if caps.contains(Capabilities::VIDEO_CAPTURE) {
            Q
        } else if caps.contains(Capabilities::VIDEO_CAPTURE_MPLANE) {
            let _ = writeln!(out, "  multi-planar capture");
            QM
        } else {
            let _ = writeln!(out, "  not a video capture node ({caps})");
            continue;
        };
        let fmts: Vec<FmtDesc> = (0..MAX_ENUM)
            .map_while(|i| ioctl::enum_fmt::<FmtDesc>(&dev, q, i).ok())
            .collect();
        if fmts.is_empty() {
            let _ = writeln!(out, "  no formats enumerated");
        }
        for f in fmts {
            let cc: u32 = f.pixelformat.into();
            let usable = if super::FORMATS
                .iter()
                .any(|(_, c, _)| u32::from_le_bytes(**c) == cc)
            {
                ""
            } else {
                " (not capturable by this producer)"
            };
            let _ = writeln!(out, "  {:<4} {}{usable}", fourcc_name(cc), f.description);
            for s in frame_sizes(&dev, cc) {
                match s.size() {
                    Some(FrmSizeTypes::Discrete(d)) => {
                        let _ = writeln!(
                            out,
                            "         {:>5}x{:<5} {}",
                            d.width,
                            d.height,
                            rates_text(&dev, cc, d.width, d.height)
                        );
                    }
                    Some(FrmSizeTypes::StepWise(st)) => {
                        let _ = writeln!(
                            out,
                            "         {}x{} to {}x{} (steps {}x{}), {} at the largest",
                            st.min_width,
                            st.min_height,
                            st.max_width,
                            st.max_height,
                            st.step_width,
                            st.step_height,
                            rates_text(&dev, cc, st.max_width, st.max_height)
                        );
                    }
                    None => {}
                }
            }
        }
    }
    out
}
