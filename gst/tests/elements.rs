//! `dmabufpipesink` and `dmabufpipesrc` in Debian's real `gst-launch-1.0`, against the
//! workspace's producer and consumer and the FFmpeg CLI.

mod common;
use common::*;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

fn sink_pipeline(sock: &std::path::Path, caps: &str, n: u32, middle: &[&str]) -> Proc {
    let nb = format!("num-buffers={n}");
    let socket = format!("socket={}", sock.display());
    let mut args = vec!["videotestsrc", "pattern=ball", &nb, "!", caps, "!"];
    args.extend_from_slice(middle);
    args.extend(["dmabufpipesink", &socket, "wait-consumers=1"]);
    Proc::spawn(gst_launch(&args))
}

/// Upstream takes the proposed pool: every frame drawn straight into shared memory, and the
/// consumer verifies every one (GPU import on lavapipe).
#[test]
fn videotestsrc_draws_into_the_shared_buffers() {
    let dir = scratch("sink-in-place");
    for (fmt, w, h) in [
        ("NV12", 1280, 720),
        ("I420", 321, 241),
        ("BGRx", 320, 240),
        ("P010_10LE", 322, 182),
        ("YUY2", 320, 180),
    ] {
        let sock = dir.join(format!("{fmt}.sock"));
        let caps = format!("video/x-raw,format={fmt},width={w},height={h},framerate=60/1");
        let gst = sink_pipeline(&sock, &caps, 60, &[]);
        assert!(
            wait_for_path(&sock, Duration::from_secs(20)),
            "{fmt}: the sink did not listen"
        );
        let dump = dir.join(format!("{fmt}.raw"));
        let stats = consumer(
            &sock,
            &["--verify", "--dump-raw", dump.to_str().unwrap()],
            LIMIT,
        );
        let (ok, out) = gst.finish(LIMIT);
        assert!(ok, "{fmt}: gst-launch failed:\n{out}");
        assert_eq!(stats["frames"], 60, "{fmt}: {stats}");
        assert_eq!(stats["verified"], 60, "{fmt}: {stats}");
        assert_eq!(
            sink_stats(&out),
            Some((60, 0)),
            "{fmt}: expected 60 in place, 0 copied:\n{out}"
        );
        // The pixels are videotestsrc's moving ball frame for frame (where GStreamer's own
        // layout has no row padding, so that its filesink output is packed like --dump-raw).
        if w % 4 == 0 {
            let direct = dir.join(format!("{fmt}-direct.raw"));
            let (ok, out) = Proc::spawn(gst_launch(&[
                "videotestsrc",
                "pattern=ball",
                "num-buffers=60",
                "!",
                &caps,
                "!",
                "filesink",
                &format!("location={}", direct.display()),
            ]))
            .finish(LIMIT);
            assert!(ok, "{out}");
            assert!(
                std::fs::read(&dump).unwrap() == std::fs::read(&direct).unwrap(),
                "{fmt}: the consumer's frames differ from videotestsrc's"
            );
        }
    }
}

/// Upstream that does not take the pool (identity drop-allocation=true): one counted copy a
/// frame, still every frame verified.
#[test]
fn foreign_buffers_are_copied_once_and_counted() {
    let dir = scratch("sink-copy");
    let sock = dir.join("copy.sock");
    let gst = sink_pipeline(
        &sock,
        "video/x-raw,format=I420,width=321,height=241,framerate=60/1",
        40,
        &["identity", "drop-allocation=true", "!"],
    );
    assert!(wait_for_path(&sock, Duration::from_secs(20)));
    let stats = consumer(&sock, &["--verify", "--import", "cpu-map"], LIMIT);
    let (ok, out) = gst.finish(LIMIT);
    assert!(ok, "{out}");
    assert_eq!(stats["verified"], 40, "{stats}");
    assert_eq!(sink_stats(&out), Some((0, 40)), "{out}");
}

/// The bundled clip through the producer and `dmabufpipesrc ! filesink`: byte for byte what the
/// FFmpeg CLI decodes (filesink takes no GstVideoMeta: the source copies into GStreamer's
/// default layout where the producer's differs, and says so in `frames-copied`).
#[test]
fn the_clip_through_the_source_is_byte_exact() {
    let dir = scratch("src-clip");
    let sock = dir.join("clip.sock");
    let clip = root().join("samples/clip-1080p60.mp4");
    let _p = producer(
        &sock,
        &[
            "--source",
            &format!("file:{}", clip.display()),
            "--frames",
            "30",
        ],
    );
    let out_file = dir.join("out.raw");
    let (ok, out) = Proc::spawn(gst_launch(&[
        "dmabufpipesrc",
        &format!("socket={}", sock.display()),
        "!",
        "filesink",
        &format!("location={}", out_file.display()),
    ]))
    .finish(LIMIT);
    assert!(ok, "{out}");
    // The decoder's layout (aligned strides, room for its references) is not GStreamer's
    // default and filesink takes no GstVideoMeta: each frame copied once, and counted.
    assert_eq!(src_stats(&out), Some((30, 30)), "{out}");
    let got = std::fs::read(&out_file).unwrap();
    let want = ffmpeg_raw(&clip, "yuv420p", 30);
    assert_eq!(got.len(), want.len(), "30 frames of 1920x1080 I420");
    assert!(
        got == want,
        "dmabufpipesrc's frames differ from the ffmpeg CLI's decode"
    );
}

/// A PNG of the pattern through `dmabufpipesrc ! videoconvert ! pngenc` is the PNG GStreamer
/// makes from the same frame read back from a raw file (the Rust consumer's --dump-raw).
#[test]
fn a_png_through_the_source_is_the_frame() {
    let dir = scratch("src-png");
    let sock = dir.join("png.sock");
    let raw = dir.join("ref.raw");
    {
        let _p = producer(
            &sock,
            &["--format", "NV12", "--size", "640x360", "--frames", "1"],
        );
        let s = consumer(
            &sock,
            &["--import", "cpu-map", "--dump-raw", raw.to_str().unwrap()],
            LIMIT,
        );
        assert_eq!(s["frames"], 1);
    }
    let _p = producer(
        &sock,
        &["--format", "NV12", "--size", "640x360", "--frames", "1"],
    );
    let ours = dir.join("ours.png");
    let (ok, out) = Proc::spawn(gst_launch(&[
        "dmabufpipesrc",
        &format!("socket={}", sock.display()),
        "num-buffers=1",
        "!",
        "videoconvert",
        "!",
        "video/x-raw,format=RGB",
        "!",
        "pngenc",
        "!",
        "filesink",
        &format!("location={}", ours.display()),
    ]))
    .finish(LIMIT);
    assert!(ok, "{out}");
    let reference = dir.join("ref.png");
    let (ok, out) = Proc::spawn(gst_launch(&[
        "filesrc",
        &format!("location={}", raw.display()),
        "!",
        "rawvideoparse",
        "format=nv12",
        "width=640",
        "height=360",
        // The stream's colorimetry and chroma siting, as the producer announces them.
        "colorimetry=bt709",
        "!",
        "capssetter",
        "caps=video/x-raw,chroma-site=mpeg2",
        "!",
        "videoconvert",
        "!",
        "video/x-raw,format=RGB",
        "!",
        "pngenc",
        "!",
        "filesink",
        &format!("location={}", reference.display()),
    ]))
    .finish(LIMIT);
    assert!(ok, "{out}");
    let decode = |p: &std::path::Path| {
        let d = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(p).unwrap()));
        let mut r = d.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    };
    let (w, h, a) = decode(&ours);
    let (_, _, b) = decode(&reference);
    assert_eq!((w, h), (640, 360));
    assert!(
        a == b,
        "the PNG through dmabufpipesrc differs from the frame's own conversion"
    );
    // Not a blank picture: the pattern's bars differ from one another.
    let px = |x: usize| &a[(100 * w as usize + x) * 3..][..3];
    assert_ne!(px(10), px(630));
}

/// dmabufpipesink → dmabufpipesrc, two gst-launch processes: the frames arrive as
/// videotestsrc draws them (its moving ball), every one.
#[test]
fn sink_to_source_across_two_processes() {
    let dir = scratch("sink-src");
    let sock = dir.join("chain.sock");
    let caps = "video/x-raw,format=I420,width=320,height=240,framerate=30/1";
    let n = 30;
    let direct = dir.join("direct.raw");
    let (ok, out) = Proc::spawn(gst_launch(&[
        "videotestsrc",
        "pattern=ball",
        &format!("num-buffers={n}"),
        "!",
        caps,
        "!",
        "filesink",
        &format!("location={}", direct.display()),
    ]))
    .finish(LIMIT);
    assert!(ok, "{out}");
    let socket = format!("socket={}", sock.display());
    let nb = format!("num-buffers={n}");
    let sink = Proc::spawn(gst_launch(&[
        "videotestsrc",
        "pattern=ball",
        &nb,
        "!",
        caps,
        "!",
        "dmabufpipesink",
        &socket,
        "wait-consumers=1",
    ]));
    assert!(wait_for_path(&sock, Duration::from_secs(20)));
    let through = dir.join("through.raw");
    let (ok, out) = Proc::spawn(gst_launch(&[
        "dmabufpipesrc",
        &socket,
        "!",
        "filesink",
        &format!("location={}", through.display()),
    ]))
    .finish(LIMIT);
    assert!(ok, "{out}");
    // The sink's pool has GStreamer's own layout: passed on to filesink with no copy.
    assert_eq!(src_stats(&out), Some((n as u64, 0)), "{out}");
    let (ok, sout) = sink.finish(LIMIT);
    assert!(ok, "{sout}");
    assert_eq!(sink_stats(&sout), Some((n as u64, 0)), "{sout}");
    let (a, b) = (
        std::fs::read(&direct).unwrap(),
        std::fs::read(&through).unwrap(),
    );
    assert_eq!(b.len(), a.len(), "every frame arrived");
    assert!(
        a == b,
        "the frames through the pipe differ from videotestsrc's"
    );
}

/// A stream that changes size mid-way renegotiates downstream: each picture at its own size,
/// byte for byte as the FFmpeg CLI decodes it (-autoscale 0).
#[test]
fn a_size_change_renegotiates_downstream() {
    let dir = scratch("src-sizes");
    let mut stream = Vec::new();
    for (i, size) in ["320x240", "480x270"].iter().enumerate() {
        let seg = dir.join(format!("seg{i}.h264"));
        let st = std::process::Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!("testsrc2=size={size}:rate=30"))
            .args([
                "-frames:v",
                "10",
                "-pix_fmt",
                "yuv420p",
                "-c:v",
                "libx264",
                "-bsf:v",
                "h264_mp4toannexb",
                "-f",
                "h264",
            ])
            .arg(&seg)
            .status()
            .unwrap();
        assert!(st.success());
        stream.extend(std::fs::read(&seg).unwrap());
    }
    let file = dir.join("sizes.h264");
    std::fs::write(&file, stream).unwrap();
    let sock = dir.join("sizes.sock");
    let _p = producer(
        &sock,
        &[
            "--source",
            &format!("file:{}", file.display()),
            "--frames",
            "20",
        ],
    );
    let out_file = dir.join("out.raw");
    let (ok, out) = Proc::spawn({
        let mut c = gst_launch(&[
            "-v",
            "dmabufpipesrc",
            &format!("socket={}", sock.display()),
            "!",
            "filesink",
            &format!("location={}", out_file.display()),
        ]);
        c.env("GST_DEBUG", "dmabufpipe:4");
        c
    })
    .finish(LIMIT);
    assert!(ok, "{out}");
    assert!(
        out.contains("width=(int)320") && out.contains("width=(int)480"),
        "caps for both sizes:\n{out}"
    );
    let want = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-i"])
        .arg(&file)
        .args([
            "-autoscale",
            "0",
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
    let got = std::fs::read(&out_file).unwrap();
    assert_eq!(got.len(), want.len(), "20 frames, 10 at each size");
    assert!(
        got == want,
        "renegotiated frames differ from the ffmpeg CLI's"
    );
}

#[test]
fn no_producer_and_a_lost_producer_are_errors_naming_the_socket() {
    let dir = scratch("src-errors");
    let sock = dir.join("none.sock");
    let (ok, out) = Proc::spawn(gst_launch(&[
        "dmabufpipesrc",
        &format!("socket={}", sock.display()),
        "timeout=2",
        "!",
        "fakesink",
    ]))
    .finish(LIMIT);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("producer at {}", sock.display())),
        "{out}"
    );

    let mut p = producer(
        &sock,
        &["--format", "NV12", "--size", "320x240", "--fps", "30"],
    );
    let gst = Proc::spawn(gst_launch(&[
        "dmabufpipesrc",
        &format!("socket={}", sock.display()),
        "!",
        "fakesink",
    ]));
    std::thread::sleep(Duration::from_millis(1500));
    let _ = p.0.kill();
    let (ok, out) = gst.finish(LIMIT);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("producer at {} lost", sock.display())),
        "{out}"
    );
}

/// wait-for-producer=true: the source waits for a producer that comes later, and for a new one
/// after the first is killed.
#[test]
fn wait_for_producer_reconnects() {
    let dir = scratch("src-wait");
    let sock = dir.join("late.sock");
    let gst = Proc::spawn(gst_launch(&[
        "dmabufpipesrc",
        &format!("socket={}", sock.display()),
        "wait-for-producer=true",
        "num-buffers=90",
        "!",
        "fakesink",
    ]));
    std::thread::sleep(Duration::from_secs(1));
    let mut p = producer(
        &sock,
        &["--format", "NV12", "--size", "320x240", "--fps", "60"],
    );
    std::thread::sleep(Duration::from_millis(700));
    let _ = p.0.kill();
    let _ = p.0.wait();
    let _ = std::fs::remove_file(&sock);
    std::thread::sleep(Duration::from_millis(500));
    let _p2 = producer(
        &sock,
        &["--format", "I420", "--size", "320x240", "--fps", "60"],
    );
    let (ok, out) = gst.finish(LIMIT);
    assert!(ok, "{out}");
}

#[test]
fn gst_inspect_documents_every_property() {
    for (element, props) in [
        (
            "dmabufpipesink",
            &[
                "socket",
                "buffers",
                "alloc",
                "mode",
                "checksum",
                "wait-consumers",
                "frames-in-place",
                "frames-copied",
                "consumers",
            ][..],
        ),
        (
            "dmabufpipesrc",
            &[
                "socket",
                "timeout",
                "wait-for-producer",
                "do-timestamp",
                "frames",
                "frames-copied",
            ][..],
        ),
    ] {
        let o = std::process::Command::new("gst-inspect-1.0")
            .arg(element)
            .env("GST_PLUGIN_PATH", plugin_dir())
            .output()
            .unwrap();
        let t = text(&o);
        assert!(o.status.success(), "{t}");
        for p in props {
            assert!(
                t.contains(&format!("  {p} ")),
                "{element}: no property {p}:\n{t}"
            );
        }
    }
}

/// Downstream of the sink's upstream a queue, and the sink keeping its last sample: a shared
/// buffer GStreamer still holds is not lent again until it comes back, so frames arrive exactly
/// and nothing stalls.
#[test]
fn a_queue_and_a_last_sample_neither_stall_nor_corrupt() {
    let dir = scratch("sink-queue");
    let caps = "video/x-raw,format=I420,width=320,height=240,framerate=60/1";
    let n = 120;
    let direct = dir.join("direct.raw");
    let (ok, out) = Proc::spawn(gst_launch(&[
        "videotestsrc",
        "pattern=ball",
        &format!("num-buffers={n}"),
        "!",
        caps,
        "!",
        "filesink",
        &format!("location={}", direct.display()),
    ]))
    .finish(LIMIT);
    assert!(ok, "{out}");
    for last_sample in ["enable-last-sample=false", "enable-last-sample=true"] {
        let sock = dir.join("q.sock");
        let _ = std::fs::remove_file(&sock);
        let gst = Proc::spawn(gst_launch(&[
            "videotestsrc",
            "pattern=ball",
            &format!("num-buffers={n}"),
            "!",
            caps,
            "!",
            "queue",
            "!",
            "dmabufpipesink",
            &format!("socket={}", sock.display()),
            "wait-consumers=1",
            last_sample,
        ]));
        assert!(wait_for_path(&sock, Duration::from_secs(20)));
        let dump = dir.join("q.raw");
        let s = consumer(
            &sock,
            &[
                "--import",
                "cpu-map",
                "--verify",
                "--producer-timeout",
                "10",
                "--dump-raw",
                dump.to_str().unwrap(),
            ],
            LIMIT,
        );
        let (ok, out) = gst.finish(LIMIT);
        assert!(ok, "{last_sample}: {out}");
        assert_eq!(s["frames"], n, "{last_sample}: {s}");
        assert!(
            std::fs::read(&dump).unwrap() == std::fs::read(&direct).unwrap(),
            "{last_sample}: frames differ from videotestsrc's"
        );
    }
}

/// Small frames into filesink (which buffers 64 KiB before writing): the source copies rather
/// than let downstream hold every shared buffer, so the producer never stalls.
#[test]
fn a_downstream_that_holds_frames_does_not_stall_the_producer() {
    let dir = scratch("src-hold");
    let sock = dir.join("small.sock");
    let _p = producer(
        &sock,
        &[
            "--format",
            "ARGB8888",
            "--size",
            "64x48",
            "--frames",
            "30",
            "--no-pace",
        ],
    );
    let out_file = dir.join("small.raw");
    let (ok, out) = Proc::spawn(gst_launch(&[
        "dmabufpipesrc",
        &format!("socket={}", sock.display()),
        "!",
        "filesink",
        &format!("location={}", out_file.display()),
    ]))
    .finish(LIMIT);
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::metadata(&out_file).unwrap().len(),
        30 * 64 * 48 * 4,
        "{out}"
    );
    assert_eq!(src_stats(&out).map(|s| s.0), Some(30), "{out}");
}

/// wait-for-producer with no producer at all: Ctrl-C (the pipeline going to NULL) ends it.
#[test]
fn waiting_for_a_producer_can_be_interrupted() {
    let dir = scratch("src-wait-int");
    let sock = dir.join("nobody.sock");
    let gst = Proc::spawn(gst_launch(&[
        "dmabufpipesrc",
        &format!("socket={}", sock.display()),
        "wait-for-producer=true",
        "!",
        "fakesink",
    ]));
    std::thread::sleep(Duration::from_secs(1));
    let pid = gst.0.id() as i32;
    let _ = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status();
    let t0 = std::time::Instant::now();
    let (_ok, out) = gst.finish(Duration::from_secs(10));
    assert!(!out.contains("TIMED OUT"), "{out}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{out}");
}
