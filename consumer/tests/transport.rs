//! The comparison transports carry the right bytes: `memcpy` (the producer copies each frame
//! into shared memory, the consumer into a staging buffer) and `socket-copy` (the bytes
//! through `SOCKET.bytes`, into the staging buffer or private memory) deliver frames whose
//! checksums match the producer's; the producer's `--stats-json` splits its CPU; mismatched
//! transports fail with a clear error instead of hanging.

mod common;
use common::*;
use std::time::Duration;

fn transport(name: &str, transport: &str, import: &str, format: &str, size: &str) {
    let sock = socket(name);
    let pjson = sock.with_extension("producer.json");
    let p = Producer::start(
        &sock,
        &[
            "--alloc",
            "memfd",
            "--no-pace",
            "--frames",
            "40",
            "--format",
            format,
            "--size",
            size,
            "--transport",
            transport,
            "--stats-json",
            pjson.to_str().unwrap(),
        ],
    );
    let s = consume(
        &sock,
        transport,
        &["--verify", "--transport", transport, "--import", import],
        Duration::from_secs(120),
    );
    assert_eq!(s["frames"], 40, "{s:#}");
    assert_eq!(s["verified"], 40, "{s:#}");
    assert_eq!(s["mismatches"], 0, "{s:#}");
    assert_eq!(s["transport"], transport);
    assert_eq!(s["import_path"], import);
    assert!(s["steady_frames"].as_u64().unwrap() >= 20, "{s:#}");
    let (st, err) = p.wait(Duration::from_secs(20));
    assert!(st.success(), "producer: {err}");
    let pj = read_json(&pjson);
    assert_eq!(pj["transport"], transport);
    assert_eq!(pj["frames"], 40);
    let cpu = pj["steady_cpu_ns"].as_u64().unwrap();
    let src = pj["steady_source_cpu_ns"].as_u64().unwrap();
    let tr = pj["steady_transport_cpu_ns"].as_u64().unwrap();
    assert!(src > 0 && tr > 0 && src + tr == cpu, "{pj:#}");
    assert!(
        !sock.with_extension("sock.bytes").exists(),
        "the byte stream socket is removed on exit"
    );
}

#[test]
fn memcpy_frames_are_verified() {
    transport("tr-memcpy", "memcpy", "copy", "NV12", "1279x719");
    // The comparison paths carry every format: 10-bit, 4:2:2, grey, 24-bit RGB.
    transport("tr-memcpy-p010", "memcpy", "copy", "P010", "641x361");
    transport("tr-memcpy-s210", "memcpy", "copy", "S210", "641x361");
}

#[test]
fn socket_copy_frames_are_verified_on_the_gpu_path() {
    transport("tr-sock-gpu", "socket-copy", "copy", "I420", "1279x719");
    transport("tr-sock-gpu-r8", "socket-copy", "copy", "R8", "641x361");
    transport(
        "tr-sock-gpu-bg24",
        "socket-copy",
        "copy",
        "BGR888",
        "641x361",
    );
}

#[test]
fn socket_copy_frames_are_verified_without_a_gpu() {
    transport(
        "tr-sock-cpu",
        "socket-copy",
        "cpu-map",
        "XRGB8888",
        "641x361",
    );
}

#[test]
fn mismatched_transports_are_clear_errors() {
    // The producer sends bytes nobody reads: it gives up on the byte stream and says why.
    let sock = socket("tr-mismatch");
    let _p = Producer::start(
        &sock,
        &[
            "--alloc",
            "memfd",
            "--size",
            "64x64",
            "--no-pace",
            "--transport",
            "socket-copy",
        ],
    );
    let out = run_consumer(&sock, &["--import", "copy"], Duration::from_secs(60));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--transport socket-copy"), "{err}");

    // The consumer expects a byte stream the producer does not offer.
    let sock = socket("tr-mismatch2");
    let _p = Producer::start(&sock, &["--alloc", "memfd", "--size", "64x64", "--no-pace"]);
    let out = run_consumer(
        &sock,
        &["--transport", "socket-copy", "--connect-timeout", "2"],
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("byte stream"), "{err}");

    // Options that cannot go together.
    let out = run_consumer(
        &sock,
        &["--transport", "memcpy", "--import", "host-pointer"],
        Duration::from_secs(60),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --import copy"));
}
