#!/usr/bin/env bash
# The test command: set-up, formatting, lints, every test suite of the workspace on this host,
# then the hardware tests again inside the real-kernel lane (ci/vm-lane).
#
#   ci/test.sh               # host lane + real-kernel lane
#   ci/test.sh --host-only   # host lane only
#
# Host lane: memfd, sockets, both processes, FFmpeg's libavutil. Hardware-dependent tests print
# `SKIP <test>: <reason>` here when a device is missing; the real-kernel lane runs them for real
# and fails if any is missing there.
set -euo pipefail
cd "$(dirname "$0")/.."
lane=1
case "${1:-}" in
  --host-only) lane=0 ;;
  "") ;;
  *) echo "usage: ci/test.sh [--host-only]" >&2; exit 2 ;;
esac

step() { printf '\n==> %s\n' "$*" >&2; }

step "set-up (ci/setup.sh)"
ci/setup.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
# dmabuf-vulkan's optional wgpu module and its example (wgpu is checked once, here).
step "cargo clippy -p dmabuf-vulkan --features wgpu --all-targets -D warnings"
cargo clippy -p dmabuf-vulkan --features wgpu --all-targets -- -D warnings

# The libraries' public docs: complete (missing_docs) and with no broken links.
step "cargo doc (dmabuf-core, dmabuf-vulkan, dmabuf-pipewire) with -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc -p dmabuf-core -p dmabuf-vulkan -p dmabuf-pipewire --no-deps -q
RUSTDOCFLAGS="-D warnings" cargo doc -p dmabuf-vulkan --features wgpu --no-deps -q

# A receiver can leave GBM out: keep that build compiling (check only: seconds).
step "cargo check -p dmabuf-core --no-default-features"
cargo check -p dmabuf-core --no-default-features

# The integration tests run both binaries and the library examples; build them all first so
# none is stale.
step "cargo build --workspace --bins --examples (and the GStreamer plugin)"
cargo build --workspace --bins --examples
cargo build -p gst-plugin-dmabufpipe
# The wgpu example (required-features = ["wgpu"]; consumer/tests/wgpu_example.rs runs it). Only
# dmabuf-vulkan is built again with the feature; wgpu itself once.
step "cargo build -p dmabuf-vulkan --features wgpu --examples"
cargo build -p dmabuf-vulkan --features wgpu --examples

# The Python package, built (dev profile, the workspace's target/) into the venv ci/setup.sh
# made; consumer/tests/hw_python.rs and the pytest suite below use it.
step "maturin develop (python/ into target/pyenv)"
VIRTUAL_ENV=$PWD/target/pyenv target/pyenv/bin/maturin develop -q -m python/Cargo.toml

step "cargo test --workspace"
# ci/setup.sh installed lavapipe: a missing Vulkan device is a failure here, not a skip.
export DMABUF_REQUIRE_VULKAN=1
log=$(mktemp)
export DMABUF_SKIP_LOG
DMABUF_SKIP_LOG=$(mktemp)
trap 'rm -f "$log" "$DMABUF_SKIP_LOG"' EXIT
set +e
cargo test --workspace --no-fail-fast 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
passed=$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -oE 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$log" | awk '{s+=$6} END {print s+0}')

# The Python package's tests: real producer and consumer processes, real sockets, numpy.
step "pytest python/tests"
pylog=$(mktemp)
set +e
(cd python && PYTHONDONTWRITEBYTECODE=1 ../target/pyenv/bin/python -m pytest -q -rs -p no:cacheprovider tests) 2>&1 | tee "$pylog"
pyrc=${PIPESTATUS[0]}
set -e
pypassed=$( (grep -oE '[0-9]+ passed' "$pylog" || true) | tail -1 | awk '{print $1+0}')
pyfailed=$( (grep -oE '[0-9]+ (failed|error)' "$pylog" || true) | awk '{s+=$1} END {print s+0}')
passed=$((passed + ${pypassed:-0}))
failed=$((failed + pyfailed))
rm -f "$pylog"
skips=$(sort -u "$DMABUF_SKIP_LOG" | wc -l)
echo
echo "Skipped here (run for real by ci/vm-lane):"
sort -u "$DMABUF_SKIP_LOG" | sed 's/^/  /'
echo "host lane: $passed passed, $failed failed ($skips hardware checks skipped: no such device on this kernel)"
if [ "$rc" != 0 ]; then
  echo "FAILED: cargo test exited $rc" >&2
  exit "$rc"
fi
if [ "$pyrc" != 0 ]; then
  echo "FAILED: pytest exited $pyrc" >&2
  exit "$pyrc"
fi

if [ $lane = 1 ]; then
  step "real-kernel lane (ci/vm-lane)"
  ci/vm-lane
fi
