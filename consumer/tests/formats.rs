//! The pixel formats video engineers meet daily (issue 12): 10-bit 4:2:0 from H.264 High10,
//! HEVC Main10, VP9 profile 2 and AV1; 4:2:2 and 4:4:4 (8 and 10 bit); greyscale; packed
//! 24-bit RGB; P010, NV16 and NV24 on request (`--format`); formats no DRM fourcc describes
//! (12-bit, 4:1:1) converted once to the nearest carried one. Each is byte for byte what the
//! FFmpeg CLI decodes to the same layout, every frame's checksum verified; decoded 10-bit
//! video is verified by the GPU (lavapipe) and its snapshot matches FFmpeg's own conversion.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dmabuf-formats-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A 1 s, 10 fps, odd-sized (odd chroma rounding) clip made by the ffmpeg CLI.
fn clip(name: &str, size: &str, args: &[&str]) -> PathBuf {
    let out = scratch().join(name);
    let st = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={size}:rate=10"))
        .args(["-t", "1"])
        .args(args)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "making {}", out.display());
    out
}

/// Play `file` to a cpu-map consumer that verifies every frame and dumps it.
fn play(name: &str, file: &Path, producer_extra: &[&str]) -> (Vec<u8>, serde_json::Value, String) {
    let sock = socket(name);
    let src = format!("file:{}", file.display());
    let mut pargs = vec!["--source", &src, "--alloc", "memfd", "--no-pace"];
    pargs.extend_from_slice(producer_extra);
    let p = Producer::start(&sock, &pargs);
    let dump = sock.with_extension("raw");
    let s = consume(
        &sock,
        name,
        &[
            "--import",
            "cpu-map",
            "--verify",
            "--dump-raw",
            dump.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    let (st, log) = p.wait(Duration::from_secs(30));
    assert!(st.success(), "{name}: producer: {log}");
    let bytes = std::fs::read(&dump).unwrap();
    let _ = std::fs::remove_file(&dump);
    (bytes, s, log)
}

struct Case {
    name: &'static str,
    encode: &'static [&'static str],
    /// `--format` for the producer, if any.
    format: Option<&'static str>,
    /// What the consumer is told (DRM name) and FFmpeg's name for the same layout.
    carried: &'static str,
    ffmpeg_pix_fmt: &'static str,
    /// Decoded straight into the shared buffers (no copy, no conversion).
    in_place: bool,
}

fn cases() -> Vec<Case> {
    let c = |name, encode, format, carried, ffmpeg_pix_fmt, in_place| Case {
        name,
        encode,
        format,
        carried,
        ffmpeg_pix_fmt,
        in_place,
    };
    vec![
        // 10-bit 4:2:0 as software decoders write it.
        c(
            "h264-high10.mkv",
            &["-c:v", "libx264", "-pix_fmt", "yuv420p10le"],
            None,
            "S010",
            "yuv420p10le",
            true,
        ),
        c(
            "hevc-main10.mkv",
            &[
                "-c:v",
                "libx265",
                "-pix_fmt",
                "yuv420p10le",
                "-preset",
                "ultrafast",
                "-x265-params",
                "log-level=error",
            ],
            None,
            "S010",
            "yuv420p10le",
            true,
        ),
        c(
            "vp9-profile2.webm",
            &[
                "-c:v",
                "libvpx-vp9",
                "-pix_fmt",
                "yuv420p10le",
                "-deadline",
                "realtime",
                "-b:v",
                "200k",
            ],
            None,
            "S010",
            "yuv420p10le",
            true,
        ),
        c(
            "av1-10bit.mkv",
            &[
                "-c:v",
                "libaom-av1",
                "-pix_fmt",
                "yuv420p10le",
                "-cpu-used",
                "8",
                "-b:v",
                "200k",
            ],
            None,
            "S010",
            "yuv420p10le",
            false,
        ),
        // 4:2:2 and 4:4:4, 8 and 10 bit.
        c(
            "h264-422.mkv",
            &["-c:v", "libx264", "-pix_fmt", "yuv422p"],
            None,
            "YUV422",
            "yuv422p",
            true,
        ),
        c(
            "h264-422-10.mkv",
            &["-c:v", "libx264", "-pix_fmt", "yuv422p10le"],
            None,
            "S210",
            "yuv422p10le",
            true,
        ),
        c(
            "h264-444.mkv",
            &["-c:v", "libx264", "-pix_fmt", "yuv444p"],
            None,
            "YUV444",
            "yuv444p",
            true,
        ),
        c(
            "hevc-444-10.mkv",
            &[
                "-c:v",
                "libx265",
                "-pix_fmt",
                "yuv444p10le",
                "-preset",
                "ultrafast",
                "-x265-params",
                "log-level=error",
            ],
            None,
            "S410",
            "yuv444p10le",
            true,
        ),
        // Greyscale and packed 24-bit RGB.
        c(
            "ffv1-gray.mkv",
            &["-c:v", "ffv1", "-pix_fmt", "gray"],
            None,
            "R8",
            "gray",
            true,
        ),
        c(
            "raw-rgb24.nut",
            &["-c:v", "rawvideo", "-pix_fmt", "rgb24"],
            None,
            "BGR888",
            "rgb24",
            false,
        ),
        c(
            "raw-bgr24.nut",
            &["-c:v", "rawvideo", "-pix_fmt", "bgr24"],
            None,
            "RGB888",
            "bgr24",
            false,
        ),
        // Asked for: the two-plane layouts GPUs sample natively.
        c(
            "to-p010.mkv",
            &["-c:v", "libx264", "-pix_fmt", "yuv420p10le"],
            Some("P010"),
            "P010",
            "p010le",
            false,
        ),
        c(
            "to-nv24.mkv",
            &["-c:v", "libx264", "-pix_fmt", "yuv444p"],
            Some("nv24"),
            "NV24",
            "nv24",
            false,
        ),
        // No DRM fourcc describes these: one counted conversion to the nearest carried format.
        c(
            "hevc-main12.mkv",
            &[
                "-c:v",
                "libx265",
                "-pix_fmt",
                "yuv420p12le",
                "-preset",
                "ultrafast",
                "-x265-params",
                "log-level=error",
            ],
            None,
            "S010",
            "yuv420p10le",
            false,
        ),
        c(
            "ffv1-411.mkv",
            &["-c:v", "ffv1", "-pix_fmt", "yuv411p"],
            None,
            "I420",
            "yuv420p",
            false,
        ),
    ]
}

#[test]
fn every_common_format_is_byte_exact_against_ffmpeg() {
    for case in cases() {
        let file = clip(case.name, "321x241", case.encode);
        let extra: Vec<&str> = case.format.map(|f| vec!["--format", f]).unwrap_or_default();
        let (dump, s, log) = play(case.name, &file, &extra);
        let name = case.name;
        assert_eq!(s["pixel_format"], case.carried, "{name}: {s}");
        assert_eq!(s["frames"], 10, "{name}: {s}");
        assert_eq!(s["verified"], 10, "{name}: {s}");
        assert_eq!(s["mismatches"], 0, "{name}: {s}");
        let want = ffmpeg_raw(&file, case.ffmpeg_pix_fmt, None);
        assert_eq!(dump.len(), want.len(), "{name}: dump size");
        assert!(
            dump == want,
            "{name}: the dump differs from ffmpeg's decode to {}",
            case.ffmpeg_pix_fmt
        );
        if case.in_place {
            assert_eq!(s["decode_path"], "direct", "{name}: {s}\n{log}");
            assert_eq!(s["producer_copied"], 0, "{name}: {s}");
        } else {
            // Copied (and converted where the format differs): counted, never hidden.
            assert_eq!(s["producer_copied"], 10, "{name}: {s}\n{log}");
        }
        let converts = case.format.is_some() || name.contains("main12") || name.contains("411");
        assert_eq!(
            log.contains("converted by swscale 10"),
            converts,
            "{name}: {log}"
        );
    }
}

/// A conversion swscale cannot make is refused up front, naming the ones it can.
#[test]
fn an_impossible_conversion_is_a_clear_error() {
    let file = clip(
        "nv16-refused.mkv",
        "64x48",
        &["-c:v", "libx264", "-pix_fmt", "yuv422p"],
    );
    let out = Command::new(producer_bin())
        .args(["--socket"])
        .arg(socket("nv16-refused"))
        .arg("--source")
        .arg(format!("file:{}", file.display()))
        .args(["--format", "NV16"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--format NV16: this FFmpeg's swscale cannot write") && err.contains("P010"),
        "{err}"
    );
}

/// A PNG's pixels, width and height.
fn read_png(path: &str) -> (Vec<u8>, u32, u32) {
    let d = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut r = d.read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (buf, info.width, info.height)
}

/// Decoded 10-bit, 4:2:2, 4:4:4, greyscale and RGB video imported into Vulkan (lavapipe) with
/// no copy: every frame's checksum recomputed by the GPU, and the first frame's snapshot
/// close to the FFmpeg CLI's own RGB conversion of it.
#[test]
fn decoded_formats_are_verified_and_converted_by_the_gpu() {
    if !vulkan_or_skip("decoded_formats_are_verified_and_converted_by_the_gpu") {
        return;
    }
    for case in cases().into_iter().filter(|c| {
        [
            "h264-high10.mkv",
            "h264-422-10.mkv",
            "h264-444.mkv",
            "ffv1-gray.mkv",
            "raw-rgb24.nut",
            "to-p010.mkv",
        ]
        .contains(&c.name)
    }) {
        let name = format!("gpu-{}", case.name);
        let file = clip(&name, "320x240", case.encode);
        let sock = socket(&name);
        let src = format!("file:{}", file.display());
        let mut pargs = vec!["--source", &src, "--alloc", "memfd", "--no-pace"];
        if let Some(f) = case.format {
            pargs.extend(["--format", f]);
        }
        let _p = Producer::start(&sock, &pargs);
        let dir = sock.with_extension("snaps");
        let s = consume(
            &sock,
            &name,
            &[
                "--import",
                "host-pointer",
                "--verify",
                "--snapshot-every",
                "1000",
                "--snapshot-dir",
                dir.to_str().unwrap(),
            ],
            Duration::from_secs(120),
        );
        assert_eq!(s["pixel_format"], case.carried, "{name}: {s}");
        assert_eq!(s["gpu_verified"], true, "{name}: {s}");
        assert_eq!(s["verified"], 10, "{name}: {s}");
        assert_eq!(s["mismatches"], 0, "{name}: {s}");
        let (rgba, w, h) = read_png(s["snapshots"][0].as_str().unwrap());
        assert_eq!((w, h), (320, 240));
        // FFmpeg's conversion of the same frame, BT.601 (what an untagged SD stream is taken
        // as on both sides).
        let out = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-i"])
            .arg(&file)
            .args([
                "-frames:v",
                "1",
                "-vf",
                "scale=in_color_matrix=bt601:flags=bicubic+full_chroma_int+accurate_rnd",
            ])
            .args(["-f", "rawvideo", "-pix_fmt", "rgba", "-"])
            .output()
            .unwrap();
        assert!(out.status.success());
        let diff = rgba
            .iter()
            .zip(&out.stdout)
            .map(|(a, b)| f64::from(a.abs_diff(*b)))
            .sum::<f64>()
            / rgba.len() as f64;
        // Nearest-sample chroma against FFmpeg's interpolated chroma: a few levels on
        // testsrc2's sharp colour edges; wrong planes or bit depths are tens of levels.
        assert!(
            diff < 6.0,
            "{name}: mean difference {diff:.2} from FFmpeg's RGB"
        );
    }
}
