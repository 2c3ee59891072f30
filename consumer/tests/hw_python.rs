//! The Python package (`python/`, `dmabuf_pipeline`) on real dma-bufs: its receiver on
//! dma-heap buffers (byte-exact against the Rust consumer's `--dump-raw`, views inside the
//! mapping, DLPack sharing memory) and its publisher allocating from dma-heap and udmabuf,
//! verified by the Rust consumer. Runs `python/tests/test_hw.py` with the venv `ci/setup.sh`
//! makes (`target/pyenv`, the package built into it by `maturin develop`, as `ci/test.sh`
//! does). Needs `/dev/dma_heap/system` (the real-kernel lane, `ci/vm-lane`); on a host without
//! it the test prints `SKIP` and why.

use dmabuf_core::testing::skip_or_fail;
use std::path::Path;
use std::process::Command;

#[test]
fn the_python_package_on_dma_bufs() {
    let t = "the_python_package_on_dma_bufs";
    if !Path::new("/dev/dma_heap/system").exists() {
        skip_or_fail(t, "/dev/dma_heap/system does not exist");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run ci/setup.sh, then `maturin develop -m python/Cargo.toml` in that venv (ci/test.sh does both)",
        python.display()
    );
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"])
        .arg(root.join("python/tests/test_hw.py"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(root.join("python"))
        .output()
        .expect("running pytest");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "pytest failed:\n{text}");
    assert!(text.contains("5 passed"), "expected 5 passed:\n{text}");
}
