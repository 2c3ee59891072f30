//! The comparison in the real-kernel lane: with a dma-buf allocator, `compare` runs the
//! `dmabuf` path too (dma-buf pool, Vulkan dma-buf import) beside the memfd and copy paths, and
//! every figure is there and sane for every path. On a host without `/dev/dma_heap` this
//! prints SKIP; inside the lane (`DMABUF_REQUIRE_HW=1`) that is a failure.

mod common;
use common::*;
use dmabuf_core::testing::skip_or_fail;

#[test]
fn hw_compare_runs_every_path_including_dmabuf() {
    if !std::path::Path::new("/dev/dma_heap/system").exists() {
        skip_or_fail(
            "hw_compare_runs_every_path_including_dmabuf",
            "/dev/dma_heap/system does not exist",
        );
        return;
    }
    let v = compare(
        "hw",
        &[
            "--sources",
            "pattern",
            "--sizes",
            "320x240",
            "--frames",
            "16",
            "--paced-frames",
            "8",
            "--repeat",
            "1",
        ],
    );
    for p in v["paths"].as_array().unwrap() {
        assert_eq!(p["ran"], true, "every path must run here: {p}");
    }
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 4, "4 paths x 1 size");
    for e in entries {
        assert_complete(e, true);
    }
    let d = entry(&v, "dmabuf");
    assert_eq!(d["allocator"], "dma-heap");
    let imp = d["import_path"].as_str().unwrap();
    assert!(imp.starts_with("dmabuf-"), "dmabuf path imported via {imp}");
    assert!(
        num(d, "/producer/minflt_per_frame") < 1.0 && num(d, "/consumer/minflt_per_frame") < 1.0,
        "dmabuf steady state faults: {d:#}"
    );
}
