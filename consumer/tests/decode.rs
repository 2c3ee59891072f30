//! `producer --source file:…`: what the consumer receives is byte for byte what the FFmpeg CLI
//! decodes from the same file, for the bundled clip and for clips in other codecs and odd sizes
//! made here by the test.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/clip-1080p60.mp4")
}

/// Play `file` through producer and consumer (`--dump-raw`); the dump and the stats.
fn play(name: &str, file: &Path, alloc: &str, extra: &[&str]) -> (Vec<u8>, serde_json::Value) {
    let sock = socket(name);
    let src = format!("file:{}", file.display());
    let mut pargs = vec!["--source", &src, "--alloc", alloc, "--no-pace"];
    pargs.extend_from_slice(extra);
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
        Duration::from_secs(300),
    );
    let (st, err) = p.wait(Duration::from_secs(30));
    assert!(st.success(), "{name}: producer: {err}");
    // What the producer set up, and what the frames said happened.
    let copy = extra.windows(2).any(|w| w == ["--decode-path", "copy"]);
    // A pool too small for the decoder, or a size change (pictures of the new size decoded
    // before the new pool exists), sends some frames through the copy.
    let small_pool =
        extra.contains(&"--decoder-buffers") || s["renegotiations"].as_u64().unwrap() > 0;
    let (setup, path) = match (copy, small_pool) {
        (true, _) => ("copy", "copy"),
        (false, true) => ("direct", "mixed"),
        (false, false) => ("direct", "direct"),
    };
    assert!(err.contains(&format!("decode_path: {setup}")), "{err}");
    assert_eq!(s["decode_path"], path, "{name}: {s}\n{err}");
    let bytes = std::fs::read(&dump).unwrap();
    // The bundled clip's dump is 560 MB: do not leave it behind.
    let _ = std::fs::remove_file(&dump);
    (bytes, s)
}

#[test]
fn bundled_clip_is_byte_identical_to_ffmpeg() {
    let want = ffmpeg_raw(&sample(), "yuv420p", None);
    // Decoded straight into the shared buffers; copied once per frame (for comparison); and
    // with a pool too small for the decoder's references, so that most pictures find it dry
    // and go through the same-layout spare buffers and one copy (the fallback).
    for (name, extra) in [
        ("clip", &[][..]),
        ("clip-copy", &["--decode-path", "copy"][..]),
        ("clip-dry", &["--decoder-buffers", "2"][..]),
    ] {
        let (dump, s) = play(name, &sample(), "memfd", extra);
        assert_eq!(s["frames"], 180, "{s}");
        assert_eq!(s["verified"], 180, "{s}");
        let copied = s["producer_copied"].as_u64().unwrap();
        match name {
            "clip" => assert_eq!(copied, 0, "{s}"),
            "clip-copy" => assert_eq!(copied, 180, "{s}"),
            _ => assert!(copied > 0 && copied < 180, "{s}"),
        }
        assert_eq!(s["pixel_format"], "I420");
        assert_eq!(
            (s["width"].as_u64(), s["height"].as_u64()),
            (Some(1920), Some(1080))
        );
        assert_eq!(dump.len(), want.len(), "{name}: dump size");
        assert!(
            dump == want,
            "{name}: the dump differs from ffmpeg's decode"
        );
    }
}

#[test]
fn the_sample_matches_its_committed_hashes() {
    let out = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-i"])
        .arg(sample())
        .args(["-pix_fmt", "yuv420p", "-f", "framemd5", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let hashes = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit(',').next().unwrap().trim().to_string())
            .collect()
    };
    let got = hashes(&String::from_utf8_lossy(&out.stdout));
    let want_text = std::fs::read_to_string(sample().with_extension("framemd5")).unwrap();
    let want = hashes(&want_text);
    assert_eq!(want.len(), 180);
    assert_eq!(got, want);
}

/// Make a short clip with the FFmpeg CLI.
fn make_clip(name: &str, size: &str, codec_args: &[&str], ext: &str) -> PathBuf {
    let out = scratch_dir("decode").join(format!("{name}.{ext}"));
    let mut args = vec!["-t", "1", "-pix_fmt", "yuv420p"];
    args.extend_from_slice(codec_args);
    ffmpeg_make_sized(&out, size, &args);
    out
}

#[test]
fn other_codecs_and_odd_sizes_are_byte_identical() {
    for (name, size, args, ext) in [
        (
            "vp9",
            "641x361",
            &[
                "-c:v",
                "libvpx-vp9",
                "-b:v",
                "300k",
                "-deadline",
                "realtime",
            ][..],
            "webm",
        ),
        (
            "hevc",
            "1279x719",
            &[
                "-c:v",
                "libx265",
                "-preset",
                "ultrafast",
                "-x265-params",
                "log-level=error",
            ][..],
            "mkv",
        ),
    ] {
        let clip = make_clip(name, size, args, ext);
        let (dump, s) = play(name, &clip, "memfd", &[]);
        let want = ffmpeg_raw(&clip, "yuv420p", None);
        assert_eq!(s["frames"], 30, "{name}: {s}");
        assert_eq!(dump.len(), want.len(), "{name}: dump size");
        assert!(
            dump == want,
            "{name}: the dump differs from ffmpeg's decode"
        );
    }
}

#[test]
fn a_size_change_mid_stream_renegotiates() {
    let clip = size_changing_clip();
    // The reference keeps each frame's own size (-autoscale 0), as our dump does.
    let want = size_changing_clip_decoded(&clip);
    let (dump, s) = play("size-change", &clip, "memfd", &[]);
    assert_eq!(s["frames"], 45, "{s}");
    assert_eq!(s["verified"], 45, "{s}");
    assert_eq!(s["renegotiations"], 2, "{s}");
    assert_eq!(
        (s["width"].as_u64(), s["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert!(dump == want, "the dump differs from ffmpeg's decode");
    // The old buffers' fds were closed at each change: the last pool (15 buffers, as the first)
    // leaves no more fds open than the first did; leaking the 480x360 pool would add 19.
    assert!(
        s["fds_at_end"].as_u64().unwrap() <= s["fds_after_warmup"].as_u64().unwrap(),
        "{s}"
    );

    // Through Vulkan (lavapipe): verified on the GPU, snapshots at each size.
    let sock = socket("size-change-vk");
    let src = format!("file:{}", clip.display());
    let _p = Producer::start(&sock, &["--source", &src, "--alloc", "memfd", "--no-pace"]);
    let snaps = sock.with_extension("snaps");
    let s = consume(
        &sock,
        "size-change-vk",
        &[
            "--verify",
            "--snapshot-every",
            "20",
            "--snapshot-dir",
            snaps.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    assert_eq!(
        (s["verified"].as_u64(), s["gpu_verified"].as_bool()),
        (Some(45), Some(true)),
        "{s}"
    );
    assert_eq!(s["renegotiations"], 2, "{s}");
    let sizes: Vec<(u32, u32)> = s["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let d = png::Decoder::new(std::fs::File::open(p.as_str().unwrap()).unwrap());
            let r = d.read_info().unwrap();
            (r.info().width, r.info().height)
        })
        .collect();
    assert_eq!(sizes, [(320, 240), (480, 360), (320, 240)]);
}

#[test]
fn loop_repeats_the_clip_and_pacing_follows_the_stream() {
    let clip = make_clip(
        "loop",
        "160x90",
        &["-c:v", "libx264", "-preset", "ultrafast"],
        "mp4",
    );
    let (dump, s) = play("loop", &clip, "memfd", &["--loop", "--frames", "75"]);
    assert_eq!(s["frames"], 75, "{s}");
    assert_eq!(s["verified"], 75, "{s}");
    let once = ffmpeg_raw(&clip, "yuv420p", None);
    let frame = once.len() / 30;
    // Frames 30..60 are the clip again.
    assert!(
        dump[30 * frame..60 * frame] == once[..],
        "the second pass differs"
    );
    // Paced (no --no-pace): 30 frames of a 30 fps clip take about a second.
    let sock = socket("paced-file");
    let src = format!("file:{}", clip.display());
    let _p = Producer::start(&sock, &["--source", &src, "--alloc", "memfd"]);
    let t = Instant::now();
    let out = run_consumer(
        &sock,
        &["--import", "cpu-map", "--frames", "30"],
        Duration::from_secs(30),
    );
    assert!(out.status.success());
    assert!(
        t.elapsed() >= Duration::from_millis(850),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn bad_files_and_options_are_named() {
    let text = std::env::temp_dir().join(format!("not-a-video-{}.txt", std::process::id()));
    std::fs::write(&text, b"hello").unwrap();
    let clip = format!("file:{}", sample().display());
    for (args, want) in [
        (
            vec!["--source".to_string(), "file:/nonexistent.mp4".into()],
            "cannot open /nonexistent.mp4",
        ),
        (
            vec!["--source".into(), format!("file:{}", text.display())],
            "cannot open",
        ),
        (
            vec![
                "--source".into(),
                clip.clone(),
                "--size".into(),
                "640x480".into(),
            ],
            "a file plays at its own size",
        ),
        (
            vec!["--source".into(), "pattern".into(), "--loop".into()],
            "apply to a file source",
        ),
        (
            vec!["--source".into(), "webcam:/dev/video0".into()],
            "unknown source",
        ),
    ] {
        let sock = socket("badfile");
        let out = Command::new(producer_bin())
            .arg("--socket")
            .arg(&sock)
            .args(&args)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {e}");
        assert!(e.contains(want), "{args:?}: {e:?} lacks {want:?}");
        assert!(!e.contains("panicked"), "{e}");
    }
}

/// Concatenate segments of testsrc2 at `sizes` (12 frames each, or `frames`) encoded with
/// `codec_args` into one stream: raw Annex B H.264 (`ext` "h264", by `cat`, as users do) or
/// MPEG-TS (the concat protocol).
fn size_change_stream(name: &str, sizes: &[&str], codec_args: &[&str], ext: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dmabuf-sizes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (seg_ext, extra): (&str, &[&str]) = match ext {
        "h264" => ("h264", &["-bsf:v", "h264_mp4toannexb", "-f", "h264"]),
        _ => ("ts", &["-f", "mpegts"]),
    };
    let mut all = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let seg = dir.join(format!("{name}-{i}.{seg_ext}"));
        let st = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!("testsrc2=size={size}:rate=30"))
            .args(["-frames:v", "12", "-pix_fmt", "yuv420p"])
            .args(codec_args)
            .args(extra)
            .arg(&seg)
            .status()
            .unwrap();
        assert!(st.success(), "making {name} {size}");
        all.extend(std::fs::read(&seg).unwrap());
    }
    // Raw H.264 and MPEG-TS are both streams that concatenate byte-wise.
    let out = dir.join(format!("{name}.{ext}"));
    std::fs::write(&out, all).unwrap();
    out
}

/// The FFmpeg CLI's per-frame MD5s of `file`, each frame at its own size.
fn framemd5(file: &Path) -> PathBuf {
    let out = file.with_extension("framemd5");
    let st = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-i"])
        .arg(file)
        .args([
            "-map",
            "0:v:0",
            "-autoscale",
            "0",
            "-fps_mode",
            "passthrough",
        ])
        .args(["-pix_fmt", "yuv420p", "-f", "framemd5"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    out
}

/// Issue 11 §1: a picture of a new size and every reference it predicts from share one layout,
/// whatever the size pair (growing and shrinking, strides that differ), the codec and the
/// container. Each stream is checked two ways: byte for byte against the FFmpeg CLI's decode
/// (`-autoscale 0`), and frame by frame against its framemd5 by the consumer itself
/// (`--expect-framemd5`, the end-to-end decode check that `--verify` is not).
#[test]
fn size_changes_are_byte_exact_in_any_container() {
    let x264: &[&str] = &["-c:v", "libx264", "-preset", "ultrafast"];
    let cases: [(&str, &[&str], &[&str], &str); 5] = [
        // The report's example: raw H.264, 640x360 then 320x240 (strides 768 vs 512).
        ("h264-shrink", &["640x360", "320x240"], x264, "h264"),
        // Growing past the first pool's storage, then shrinking below it.
        (
            "h264-ts",
            &["320x240", "1280x720", "176x144", "650x370"],
            x264,
            "ts",
        ),
        (
            "hevc-ts",
            &["352x288", "640x480", "320x180"],
            &["-c:v", "libx265", "-x265-params", "log-level=none"],
            "ts",
        ),
        (
            "mpeg2-ts",
            &["720x576", "320x240", "480x270"],
            &["-c:v", "mpeg2video"],
            "ts",
        ),
        ("h264-grow", &["176x144", "1920x1080"], x264, "h264"),
    ];
    for (name, sizes, codec, ext) in cases {
        let file = size_change_stream(name, sizes, codec, ext);
        let want = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-i"])
            .arg(&file)
            .args(["-autoscale", "0", "-fps_mode", "passthrough"])
            .args(["-f", "rawvideo", "-pix_fmt", "yuv420p", "-"])
            .output()
            .unwrap();
        assert!(want.status.success());
        let reference = framemd5(&file);
        let sock = socket(name);
        let src = format!("file:{}", file.display());
        let p = Producer::start(&sock, &["--source", &src, "--alloc", "memfd", "--no-pace"]);
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
                "--expect-framemd5",
                reference.to_str().unwrap(),
            ],
            Duration::from_secs(120),
        );
        let (st, err) = p.wait(Duration::from_secs(30));
        assert!(st.success(), "{name}: producer: {err}");
        // What the FFmpeg CLI decodes (MPEG-2 loses the open GOP's leading B-frames at each
        // joint, as it does for ffmpeg).
        let n = std::fs::read_to_string(&reference)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("0,"))
            .count() as u64;
        assert!(n >= (sizes.len() * 10) as u64, "{name}: {n} frames");
        assert_eq!(s["frames"], n, "{name}: {s}");
        assert_eq!(s["verified"], n, "{name}: {s}");
        assert_eq!(s["framemd5_matched"], n, "{name}: {s}");
        assert_eq!(s["framemd5_mismatches"], 0, "{name}: {s}");
        assert_eq!(
            s["renegotiations"].as_u64(),
            Some(sizes.len() as u64 - 1),
            "{name}: {s}"
        );
        let got = std::fs::read(&dump).unwrap();
        let _ = std::fs::remove_file(&dump);
        assert_eq!(got.len(), want.stdout.len(), "{name}: dump size");
        assert!(
            got == want.stdout,
            "{name}: the dump differs from ffmpeg's decode"
        );
        // Most pictures still decode in place (only those decoded before each new pool
        // existed are copied).
        assert!(
            s["producer_copied"].as_u64().unwrap() < n / 2,
            "{name}: {s}\n{err}"
        );
    }
}

/// The decode check catches what --verify cannot: a reference from another file (a decode
/// that went wrong looks the same to the consumer) gives mismatches and exit status 3.
#[test]
fn expect_framemd5_catches_wrong_pictures() {
    let a = make_clip("md5-a", "160x90", &["-c:v", "libx264"], "mp4");
    let other = make_clip("md5-b", "160x90", &["-c:v", "libx264", "-crf", "40"], "mp4");
    let reference = framemd5(&other);
    let sock = socket("md5-wrong");
    let src = format!("file:{}", a.display());
    let _p = Producer::start(&sock, &["--source", &src, "--alloc", "memfd", "--no-pace"]);
    let stats = sock.with_extension("json");
    let out = run_consumer(
        &sock,
        &[
            "--import",
            "cpu-map",
            "--verify",
            "--expect-framemd5",
            reference.to_str().unwrap(),
            "--stats-json",
            stats.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let s = read_json(&stats);
    assert_eq!(s["verified"], 30, "transport was fine: {s}");
    assert_eq!(s["framemd5_mismatches"], 30, "{s}");
    assert!(err.contains("differs from the reference"), "{err}");
}

/// Run `args` through ffmpeg (lavfi testsrc2 at 160x120) into `out`.
fn ffmpeg_make(out: &Path, args: &[&str]) {
    ffmpeg_make_sized(out, "160x120", args)
}

fn ffmpeg_make_sized(out: &Path, size: &str, args: &[&str]) {
    let st = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={size}:rate=30"))
        .args(args)
        .arg(out)
        .status()
        .unwrap();
    assert!(st.success(), "making {}", out.display());
}

/// Write the files `parts`, one after the other, to `out` (a stream spliced from segments).
fn concat(out: &Path, parts: &[&Path]) {
    let bytes: Vec<u8> = parts
        .iter()
        .flat_map(|p| std::fs::read(p).unwrap())
        .collect();
    std::fs::write(out, bytes).unwrap();
}

fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dmabuf-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Play `file` paced (as a user would) to a cpu-map consumer: its stats and the producer's log.
fn play_paced(name: &str, file: &Path) -> (serde_json::Value, String) {
    let sock = socket(name);
    let src = format!("file:{}", file.display());
    let p = Producer::start(&sock, &["--source", &src, "--alloc", "memfd"]);
    let s = consume(
        &sock,
        name,
        &["--import", "cpu-map"],
        Duration::from_secs(60),
    );
    let (st, err) = p.wait(Duration::from_secs(30));
    assert!(st.success(), "{name}: {err}");
    (s, err)
}

/// Issue 11 §2: frames are published at their own presentation times. A variable-frame-rate
/// file (30 frames at 30 fps, then 30 at 5 fps) takes its 6.8 s timeline, not 60 frames at
/// one average rate; the slow half's frames come 200 ms apart; and the pts consumers see are
/// the file's.
#[test]
fn pacing_follows_each_frames_timestamp() {
    let dir = scratch_dir("vfr");
    let vfr = dir.join("vfr.mkv");
    ffmpeg_make(
        &vfr,
        &[
            "-vf",
            "setpts='if(lt(N,30),N/30,1+(N-30)/5)/TB'",
            "-frames:v",
            "60",
            "-fps_mode",
            "passthrough",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ],
    );
    let (s, _) = play_paced("vfr", &vfr);
    assert_eq!(s["frames"], 60, "{s}");
    // The last frame's pts is 1 + 29/5 = 6.8 s (MKV keeps milliseconds).
    let span = s["last_pts_ns"].as_i64().unwrap() - s["first_pts_ns"].as_i64().unwrap();
    assert!(
        (span - 6_800_000_000).abs() <= 1_000_000,
        "pts span {span} ns: {s}"
    );
    let wall = s["wall_ns"].as_f64().unwrap() / 1e9;
    assert!(
        (6.6..8.5).contains(&wall),
        "wall {wall} s for a 6.8 s timeline: {s}"
    );
    let gap = s["max_gap_ms"].as_f64().unwrap();
    assert!(
        (180.0..400.0).contains(&gap),
        "largest gap {gap} ms (frames 200 ms apart)"
    );
}

/// Issue 11 §2: timestamp discontinuities neither stall nor burst the stream. Each file is 30
/// frames at 30 fps whose timestamps jump forward 100 s, jump back 95,000 s, wrap around
/// MPEG-TS's 33-bit clock, or are missing (raw H.264): each plays in about a second, with no
/// gap longer than a few frame periods, and a jump is logged as a discontinuity.
#[test]
fn timestamp_discontinuities_neither_stall_nor_burst() {
    let dir = scratch_dir("jumps");
    let x264 = ["-c:v", "libx264", "-preset", "ultrafast", "-frames:v", "15"];
    let seg = |name: &str, offset: &str| {
        let p = dir.join(format!("{name}.ts"));
        let mut a = x264.to_vec();
        a.extend(["-output_ts_offset", offset, "-f", "mpegts"]);
        ffmpeg_make(&p, &a);
        std::fs::read(p).unwrap()
    };
    let (early, late) = (seg("early", "0"), seg("late", "100"));
    let forward = dir.join("forward.ts");
    std::fs::write(&forward, [early.clone(), late.clone()].concat()).unwrap();
    let backward = dir.join("backward.ts");
    std::fs::write(&backward, [late, early].concat()).unwrap();
    // 2^33 / 90 kHz = 95443.7 s: the clock wraps half a second in.
    let wrap = dir.join("wrap.ts");
    let mut a = x264.to_vec();
    a[5] = "30";
    a.extend(["-output_ts_offset", "95443.2", "-f", "mpegts"]);
    ffmpeg_make(&wrap, &a);
    let raw = dir.join("raw.h264");
    let mut a = x264.to_vec();
    a[5] = "30";
    a.extend(["-bsf:v", "h264_mp4toannexb", "-f", "h264"]);
    ffmpeg_make(&raw, &a);
    for (name, file, jumps) in [
        ("forward", &forward, true),
        ("backward", &backward, true),
        ("wrap", &wrap, false),
        ("no-pts", &raw, false),
    ] {
        let (s, err) = play_paced(name, file);
        assert_eq!(s["frames"], 30, "{name}: {s}");
        let wall = s["wall_ns"].as_f64().unwrap() / 1e9;
        // 30 frames at 30 fps: no stall (100 s), no burst (all at once).
        assert!((0.85..2.5).contains(&wall), "{name}: wall {wall} s\n{err}");
        let gap = s["max_gap_ms"].as_f64().unwrap();
        assert!(gap < 250.0, "{name}: a {gap} ms gap\n{err}");
        let logged = err.matches("timestamp discontinuity").count();
        if jumps {
            assert_eq!(logged, 1, "{name}: one jump, logged once:\n{err}");
        }
    }
    // Duplicated timestamps (every fifth frame repeats its predecessor's: 100 frames over a
    // 3.2 s timeline) are sent with their twin: no drift, no discontinuity.
    let dups = dir.join("dups.mkv");
    ffmpeg_make(
        &dups,
        &[
            "-frames:v",
            "100",
            "-vf",
            "settb=1/1000,setpts='(N-floor(N/5))*40/1000/TB'",
            "-enc_time_base",
            "1:1000",
            "-fps_mode",
            "passthrough",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
        ],
    );
    let (s, err) = play_paced("dups", &dups);
    assert_eq!(s["frames"], 100, "{s}");
    let wall = s["wall_ns"].as_f64().unwrap() / 1e9;
    assert!(
        (3.0..3.7).contains(&wall),
        "wall {wall} s for a 3.2 s timeline\n{err}"
    );
    assert!(!err.contains("timestamp discontinuity"), "{err}");
    // The pts are the stream's own: the forward file ends 100 s later than it starts.
    let (s, _) = play_paced("forward-pts", &forward);
    let span = s["last_pts_ns"].as_i64().unwrap() - s["first_pts_ns"].as_i64().unwrap();
    assert!(span > 100_000_000_000, "pts span {span}: {s}");
}

/// Issue 11 §3: damaged and unusual files.
#[test]
fn damaged_and_unusual_files() {
    let dir = scratch_dir("damaged");
    // One damaged packet (a NAL length field overwritten): FFmpeg's CLI skips it and decodes
    // the other 47 pictures; so must we, byte for byte, and the producer must then exit.
    let src = dir.join("src.mp4");
    ffmpeg_make_sized(
        &src,
        "320x240",
        &[
            "-frames:v",
            "48",
            "-c:v",
            "libx264",
            "-g",
            "300",
            "-pix_fmt",
            "yuv420p",
        ],
    );
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v"])
        .args(["-show_entries", "packet=pos", "-of", "csv=p=0"])
        .arg(&src)
        .output()
        .unwrap();
    let pos: u64 = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(28)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut bytes = std::fs::read(&src).unwrap();
    bytes[pos as usize..pos as usize + 4].copy_from_slice(&[0x7f, 0xff, 0xff, 0xf0]);
    let damaged = dir.join("damaged.mp4");
    std::fs::write(&damaged, bytes).unwrap();
    // Passthrough: FFmpeg's CFR output would duplicate a frame to fill the gap.
    let want = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-i"])
        .arg(&damaged)
        .args([
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "yuv420p",
            "-",
        ])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(want.len(), 47 * 320 * 240 * 3 / 2, "ffmpeg decodes 47");
    let (dump, s) = play("damaged", &damaged, "memfd", &[]);
    assert_eq!(s["frames"], 47, "{s}");
    assert!(
        dump == want,
        "the damaged file's dump differs from ffmpeg's"
    );

    // No decodable picture (H.264 without its parameter sets): said so, not blamed on the
    // pixel format.
    let seg = dir.join("seg.h264");
    ffmpeg_make(
        &seg,
        &[
            "-frames:v",
            "10",
            "-c:v",
            "libx264",
            "-bsf:v",
            "h264_mp4toannexb",
            "-f",
            "h264",
        ],
    );
    let nosps = dir.join("nosps.h264");
    let st = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-i"])
        .arg(&seg)
        .args([
            "-c",
            "copy",
            "-bsf:v",
            "filter_units=remove_types=7|8",
            "-f",
            "h264",
        ])
        .arg(&nosps)
        .status()
        .unwrap();
    assert!(st.success());
    let o = Command::new(producer_bin())
        .arg("--socket")
        .arg(socket("nosps"))
        .arg("--source")
        .arg(format!("file:{}", nosps.display()))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("no decodable picture"), "{e}");
    assert!(!e.contains("convert it"), "{e}");
    assert!(e.lines().count() < 5, "FFmpeg's own log is not dumped: {e}");

    // A relative file name with ':' is a local path, not an FFmpeg protocol.
    std::fs::copy(&src, dir.join("clip:1.mp4")).unwrap();
    let sock = socket("colon");
    let mut p = Command::new(producer_bin())
        .current_dir(&dir)
        .arg("--socket")
        .arg(&sock)
        .args([
            "--source",
            "file:clip:1.mp4",
            "--alloc",
            "memfd",
            "--no-pace",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let s = consume(
        &sock,
        "colon",
        &["--import", "cpu-map"],
        Duration::from_secs(60),
    );
    assert_eq!(s["frames"], 48, "{s}");
    assert!(p.wait().unwrap().success());

    // --loop on a still image loops it.
    let jpg = dir.join("still.jpg");
    ffmpeg_make(&jpg, &["-frames:v", "1", "-pix_fmt", "yuvj420p"]);
    // The JPEG is full range (yuvj420p), carried as it is.
    let one = ffmpeg_raw(&jpg, "yuvj420p", None);
    let (dump, s) = play("still", &jpg, "memfd", &["--loop", "--frames", "10"]);
    assert_eq!(s["frames"], 10, "{s}");
    assert!(dump == one.repeat(10), "every frame is the image");
}

/// The first frame of `file` as the consumer's snapshot (converted on the GPU, lavapipe):
/// stats, RGBA bytes, width, height.
fn first_snapshot(name: &str, file: &Path) -> (serde_json::Value, Vec<u8>, u32, u32) {
    let sock = socket(name);
    let src = format!("file:{}", file.display());
    let _p = Producer::start(&sock, &["--source", &src, "--alloc", "memfd", "--no-pace"]);
    let dir = sock.with_extension("snaps");
    let s = consume(
        &sock,
        name,
        &[
            "--verify",
            "--snapshot-every",
            "1000",
            "--snapshot-dir",
            dir.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    let (rgba, w, h) = read_png(s["snapshots"][0].as_str().unwrap());
    (s, rgba, w, h)
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

/// The FFmpeg CLI's RGBA of the first frame of `file` through `vf` (its own conversion).
fn ffmpeg_rgba(file: &Path, vf: &str) -> Vec<u8> {
    let out = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-i"])
        .arg(file)
        .args(["-frames:v", "1", "-vf", vf])
        .args(["-f", "rawvideo", "-pix_fmt", "rgba", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn mean_abs_diff(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "image sizes differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(x.abs_diff(*y)))
        .sum::<f64>()
        / a.len() as f64
}

/// Issue 11 §4: colorimetry is carried from the decoder to the consumer and converted with
/// the stream's own matrix (an 8-bit BT.2020 H.264 was converted with BT.709 before; a small
/// BT.709-tagged stream would be guessed BT.601), and transfer functions are reported.
#[test]
fn colorimetry_is_carried_and_converted_with_the_streams_matrix() {
    let dir = scratch_dir("colour");
    for (name, tags, matrix, want_matrix, transfer) in [
        (
            "bt2020",
            &[
                "-colorspace",
                "bt2020nc",
                "-color_primaries",
                "bt2020",
                "-color_trc",
                "smpte2084",
            ][..],
            "bt2020",
            9,
            16,
        ),
        (
            "bt709-small",
            &[
                "-colorspace",
                "bt709",
                "-color_primaries",
                "bt709",
                "-color_trc",
                "bt709",
            ][..],
            "bt709",
            1,
            1,
        ),
        (
            "hlg",
            &[
                "-colorspace",
                "bt2020nc",
                "-color_primaries",
                "bt2020",
                "-color_trc",
                "arib-std-b67",
            ][..],
            "bt2020",
            9,
            18,
        ),
    ] {
        let file = dir.join(format!("{name}.mp4"));
        let mut args = vec!["-frames:v", "5", "-pix_fmt", "yuv420p", "-c:v", "libx264"];
        args.extend_from_slice(tags);
        ffmpeg_make_sized(&file, "320x240", &args);
        let (s, ours, w, h) = first_snapshot(name, &file);
        let c = &s["colorimetry"];
        assert_eq!(c["matrix"], want_matrix, "{name}: {s}");
        assert_eq!(c["transfer"], transfer, "{name}: {s}");
        assert_eq!(c["range"], "limited", "{name}: {s}");
        assert_eq!((w, h), (320, 240));
        let right = ffmpeg_rgba(
            &file,
            &format!("scale=in_color_matrix={matrix}:in_range=tv:flags=neighbor+accurate_rnd+full_chroma_int"),
        );
        let wrong_matrix = if matrix == "bt709" { "bt601" } else { "bt709" };
        let wrong = ffmpeg_rgba(
            &file,
            &format!("scale=in_color_matrix={wrong_matrix}:in_range=tv:flags=neighbor+accurate_rnd+full_chroma_int"),
        );
        let (d_right, d_wrong) = (mean_abs_diff(&ours, &right), mean_abs_diff(&ours, &wrong));
        assert!(
            d_right < 1.0 && d_wrong > 1.5,
            "{name}: mean difference {d_right:.2} from FFmpeg's {matrix} conversion, \
             {d_wrong:.2} from {wrong_matrix}"
        );
    }
}

/// Issue 11 §4: the container's rotation and the sample aspect ratio reach the consumer, and
/// snapshots are upright at the display aspect, as the FFmpeg CLI shows them (it autorotates).
#[test]
fn rotation_and_aspect_ratio_are_carried_and_honoured() {
    let dir = scratch_dir("geometry");
    let plain = dir.join("plain.mp4");
    ffmpeg_make_sized(
        &plain,
        "320x240",
        &["-frames:v", "5", "-pix_fmt", "yuv420p", "-c:v", "libx264"],
    );
    for (tag, degrees, size) in [
        ("90", 270, (240, 320)),
        ("180", 180, (320, 240)),
        ("270", 90, (240, 320)),
    ] {
        let rotated = dir.join(format!("rot{tag}.mp4"));
        let st = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-i"])
            .arg(&plain)
            .args(["-c", "copy", "-metadata:s:v", &format!("rotate={tag}")])
            .arg(&rotated)
            .status()
            .unwrap();
        assert!(st.success());
        let (s, ours, w, h) = first_snapshot(&format!("rot{tag}"), &rotated);
        // The degrees are what the picture is turned clockwise to display it (FFmpeg's
        // `rotate` tag is the opposite sense).
        assert_eq!(s["rotation_degrees"], degrees, "rotate={tag}: {s}");
        assert_eq!((w, h), size, "rotate={tag}");
        let cli = ffmpeg_rgba(&rotated, "null");
        let d = mean_abs_diff(&ours, &cli);
        assert!(
            d < 1.5,
            "rotate={tag}: mean difference {d:.2} from the FFmpeg CLI's upright picture"
        );
    }
    // Anamorphic DVD: 720x480 with 32:27 pixels is shown 853x480.
    let dvd = dir.join("dvd.mp4");
    ffmpeg_make_sized(
        &dvd,
        "720x480",
        &[
            "-frames:v",
            "5",
            "-vf",
            "setsar=32/27",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
        ],
    );
    let (s, ours, w, h) = first_snapshot("dvd", &dvd);
    assert_eq!(s["sar"], "32:27", "{s}");
    assert_eq!((w, h), (853, 480));
    assert_eq!(
        (s["width"].as_u64(), s["display_width"].as_u64()),
        (Some(720), Some(853))
    );
    let cli = ffmpeg_rgba(&dvd, "scale=853:480:flags=neighbor");
    let d = mean_abs_diff(&ours, &cli);
    assert!(d < 1.5, "mean difference {d:.2} from FFmpeg's 853x480");
}

/// Issue 11 §4 (a colour change mid-stream, as at a splice): two MPEG-TS segments of one size,
/// BT.709 limited range then BT.601 (BT.470BG) full range. The change renegotiates like a
/// size change, the consumer learns the new colorimetry, and each segment's snapshot is
/// converted with its own matrix and range (as the FFmpeg CLI converts each segment alone).
#[test]
fn a_colorimetry_change_mid_stream_is_announced() {
    let dir = scratch_dir("colour-splice");
    let a = dir.join("a.ts");
    ffmpeg_make_sized(
        &a,
        "320x240",
        &[
            "-frames:v",
            "12",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-colorspace",
            "bt709",
            "-color_primaries",
            "bt709",
            "-color_trc",
            "bt709",
            "-f",
            "mpegts",
        ],
    );
    let b = dir.join("b.ts");
    ffmpeg_make_sized(
        &b,
        "320x240",
        &[
            "-frames:v",
            "12",
            "-pix_fmt",
            "yuvj420p",
            "-c:v",
            "libx264",
            "-colorspace",
            "bt470bg",
            "-color_range",
            "pc",
            "-f",
            "mpegts",
        ],
    );
    let spliced = dir.join("spliced.ts");
    concat(&spliced, &[&a, &b]);
    let sock = socket("colour-splice");
    let src = format!("file:{}", spliced.display());
    let _p = Producer::start(&sock, &["--source", &src, "--alloc", "memfd", "--no-pace"]);
    let snaps = sock.with_extension("snaps");
    let s = consume(
        &sock,
        "colour-splice",
        &[
            "--verify",
            "--snapshot-every",
            "12",
            "--snapshot-dir",
            snaps.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    assert_eq!(s["frames"], 24, "{s}");
    assert_eq!(s["renegotiations"], 1, "{s}");
    assert_eq!(s["colorimetry"]["matrix"], 5, "{s}");
    assert_eq!(s["colorimetry"]["range"], "full", "{s}");
    let snapshots: Vec<String> = s["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(snapshots.len(), 2, "{s}");
    for (path, seg, vf) in [
        (
            &snapshots[0],
            &a,
            "scale=in_color_matrix=bt709:in_range=tv:flags=neighbor+accurate_rnd+full_chroma_int",
        ),
        (
            &snapshots[1],
            &b,
            "scale=in_color_matrix=bt601:in_range=pc:flags=neighbor+accurate_rnd+full_chroma_int",
        ),
    ] {
        let (ours, _, _) = read_png(path);
        let want = ffmpeg_rgba(seg, vf);
        let diff = mean_abs_diff(&ours, &want);
        assert!(diff < 1.0, "{path}: mean difference {diff:.2} from {vf}");
    }
}

/// A stream that fails in the source (here: the file is gone when `--loop` opens it again)
/// ends the producer with exit status 1 once its consumers are told, instead of lingering to
/// replay the failure to the next one (a change to 4:2:2 mid-stream, which ended the stream
/// before 4:2:2 was carried, now renegotiates); a video track with no decodable picture
/// (H.264 with its IDR pictures removed) is refused at start.
#[test]
fn a_failing_source_ends_the_producer() {
    let dir = scratch_dir("fatal");
    let a = dir.join("a.h264");
    ffmpeg_make(
        &a,
        &[
            "-frames:v",
            "10",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-f",
            "h264",
        ],
    );
    let b = dir.join("b.h264");
    ffmpeg_make(
        &b,
        &[
            "-frames:v",
            "10",
            "-pix_fmt",
            "yuv422p",
            "-c:v",
            "libx264",
            "-f",
            "h264",
        ],
    );
    let mixed = dir.join("mixed.h264");
    concat(&mixed, &[&a, &b]);
    // A change to 4:2:2 mid-stream is carried now (it ended the stream before 4:2:2 was):
    // one renegotiation, every frame verified.
    let sock = socket("fatal");
    let src = format!("file:{}", mixed.display());
    let p = Producer::start(&sock, &["--source", &src, "--alloc", "memfd", "--no-pace"]);
    let s = consume(
        &sock,
        "mixed",
        &["--import", "cpu-map", "--verify"],
        Duration::from_secs(60),
    );
    assert_eq!(s["frames"], 20, "{s}");
    assert_eq!(s["verified"], 20, "{s}");
    assert_eq!(s["renegotiations"], 1, "{s}");
    assert_eq!(s["pixel_format"], "YUV422", "{s}");
    drop(p);

    // The source failing mid-stream: the file is gone when --loop opens it again.
    let gone = dir.join("gone.h264");
    std::fs::copy(&a, &gone).unwrap();
    let sock = socket("fatal-gone");
    let src = format!("file:{}", gone.display());
    let p = Producer::start(&sock, &["--source", &src, "--alloc", "memfd", "--loop"]);
    std::fs::remove_file(&gone).unwrap();
    let out = run_consumer(&sock, &["--import", "cpu-map"], Duration::from_secs(60));
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("gone.h264"), "the consumer is told why: {e}");
    let (st, err) = p.wait(Duration::from_secs(20));
    assert_eq!(
        st.code(),
        Some(1),
        "the producer exits with the error: {err}"
    );
    assert!(err.contains("gone.h264"), "{err}");

    let noidr = dir.join("noidr.h264");
    let st = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-i"])
        .arg(&a)
        .args([
            "-c",
            "copy",
            "-bsf:v",
            "filter_units=remove_types=5",
            "-f",
            "h264",
        ])
        .arg(&noidr)
        .status()
        .unwrap();
    assert!(st.success());
    let o = Command::new(producer_bin())
        .arg("--socket")
        .arg(socket("noidr"))
        .arg("--source")
        .arg(format!("file:{}", noidr.display()))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "refused at start: {e}");
    assert!(e.contains("no decodable picture"), "{e}");
}

/// `--loop` over a file whose timestamps do not start at 0 (every MPEG-TS file starts at
/// 1.4 s): each pass continues one frame after the last, no jump, no stall at the wrap.
#[test]
fn loop_continues_the_timeline_whatever_the_start_time() {
    let dir = scratch_dir("loop-ts");
    let ts = dir.join("loop.ts");
    ffmpeg_make(
        &ts,
        &[
            "-frames:v",
            "15",
            "-c:v",
            "libx264",
            "-bf",
            "0",
            "-f",
            "mpegts",
        ],
    );
    let sock = socket("loop-ts");
    let src = format!("file:{}", ts.display());
    let _p = Producer::start(&sock, &["--source", &src, "--alloc", "memfd", "--loop"]);
    let s = consume(
        &sock,
        "loop-ts",
        &["--import", "cpu-map", "--frames", "45"],
        Duration::from_secs(60),
    );
    // 45 frames at 30 fps: 1.5 s, three passes, two wraps without a gap.
    let gap = s["max_gap_ms"].as_f64().unwrap();
    assert!(gap < 120.0, "a {gap} ms gap at a wrap: {s}");
    let span = s["last_pts_ns"].as_i64().unwrap() - s["first_pts_ns"].as_i64().unwrap();
    assert!(
        (span - 44 * 1_000_000_000 / 30).abs() < 2_000_000,
        "pts span {span} ns for 44 frame periods: {s}"
    );
}

/// A matrix the converter has no coefficients for (YCgCo) is shown with a warning, not a
/// failed run; a rotation that is not a quarter turn is carried to the nearest, with a warning.
#[test]
fn unusual_colour_and_rotation_are_said_not_fatal() {
    let dir = scratch_dir("unusual");
    let ycgco = dir.join("ycgco.mp4");
    ffmpeg_make(
        &ycgco,
        &[
            "-frames:v",
            "3",
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-colorspace",
            "ycgco",
        ],
    );
    let (s, _, w, h) = first_snapshot("ycgco", &ycgco);
    assert_eq!((w, h), (160, 120));
    assert_eq!(s["colorimetry"]["matrix"], 8, "{s}");
    assert!(
        s["colorimetry"]["converted_with"]
            .as_str()
            .unwrap()
            .contains("no conversion for YCgCo"),
        "{s}"
    );
    let plain = dir.join("plain.mp4");
    ffmpeg_make(&plain, &["-frames:v", "3", "-c:v", "libx264"]);
    let r45 = dir.join("r45.mp4");
    let st = Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-i"])
        .arg(&plain)
        .args(["-c", "copy", "-metadata:s:v", "rotate=45"])
        .arg(&r45)
        .status()
        .unwrap();
    assert!(st.success());
    let sock = socket("r45");
    let src = format!("file:{}", r45.display());
    let p = Producer::start(
        &sock,
        &[
            "--source",
            &src,
            "--alloc",
            "memfd",
            "--no-pace",
            "--frames",
            "3",
        ],
    );
    let _ = consume(
        &sock,
        "r45",
        &["--import", "cpu-map"],
        Duration::from_secs(60),
    );
    let (_, err) = p.wait(Duration::from_secs(20));
    assert!(err.contains("not a multiple of 90"), "{err}");
}

/// `--loop` over a stream whose size changes only in its cropping (320x250, 320x256, 320x242
/// share a coded size): every pass decodes as the first, frame for frame against the FFmpeg
/// CLI's framemd5 (a decoder flushed in place carried the last cropping into the next pass).
#[test]
fn every_loop_pass_decodes_as_the_first() {
    let x264: &[&str] = &["-c:v", "libx264", "-preset", "ultrafast"];
    let file = size_change_stream(
        "crop-loop",
        &["320x250", "320x256", "320x242"],
        x264,
        "h264",
    );
    let reference = framemd5(&file);
    let sock = socket("crop-loop");
    let src = format!("file:{}", file.display());
    let _p = Producer::start(
        &sock,
        &[
            "--source",
            &src,
            "--alloc",
            "memfd",
            "--no-pace",
            "--loop",
            "--frames",
            "108",
        ],
    );
    let s = consume(
        &sock,
        "crop-loop",
        &[
            "--import",
            "cpu-map",
            "--expect-framemd5",
            reference.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    assert_eq!(s["frames"], 108, "{s}");
    assert_eq!(s["framemd5_matched"], 108, "{s}");
}
