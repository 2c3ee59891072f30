#!/usr/bin/env bash
# The demo: set-up, build, then a producer and a consumer moving 1080p60 frames without a copy,
# with a live statistics line; in a window too when DISPLAY is set. No arguments needed: it
# plays the bundled clip (samples/clip-1080p60.mp4, H.264, decoded by FFmpeg) twice through at
# its own 60 fps. These variables change what it plays:
#
#   DEMO_SOURCE=file:samples/clip-1080p60.mp4 (or: pattern)   DEMO_FRAMES=360   DEMO_ALLOC=auto
#   with DEMO_SOURCE=pattern: DEMO_FORMAT=NV12  DEMO_SIZE=1920x1080  DEMO_FPS=60
#
# The consumer imports the frames into Vulkan (lavapipe when there is no GPU), verifies every
# frame's checksum on the GPU and writes a PNG snapshot every 150 frames to
# target/demo/snapshots. Statistics go to target/demo/stats.json, the producer's log to
# target/demo/producer.log.
set -euo pipefail
cd "$(dirname "$0")/.."

SOURCE=${DEMO_SOURCE:-file:samples/clip-1080p60.mp4}
FRAMES=${DEMO_FRAMES:-360}
ALLOC=${DEMO_ALLOC:-auto}
source_args=(--source "$SOURCE")
if [ "$SOURCE" = pattern ]; then
  source_args+=(--format "${DEMO_FORMAT:-NV12}" --size "${DEMO_SIZE:-1920x1080}" --fps "${DEMO_FPS:-60}")
else
  source_args+=(--loop)
fi

echo "==> set-up" >&2
ci/setup.sh
echo "==> cargo build --release" >&2
cargo build --release --bins

out=target/demo
mkdir -p "$out"
dir=$(mktemp -d)
sock="$dir/frames.sock"
producer_pid=""
cleanup() {
  [ -n "$producer_pid" ] && kill "$producer_pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

echo "==> producer: ${source_args[*]}, allocator $ALLOC, $FRAMES frames" >&2
target/release/producer --socket "$sock" "${source_args[@]}" --alloc "$ALLOC" \
  --frames "$FRAMES" 2>"$out/producer.log" &
producer_pid=$!

echo "==> consumer: Vulkan import, every frame's checksum verified on the GPU" >&2
rm -rf "$out/snapshots"
window=()
if [ -n "${DISPLAY:-}" ]; then
  echo "==> DISPLAY=$DISPLAY: showing the video in a window (Esc or q closes it)" >&2
  window=(--window --window-hold 2)
fi
set +e
target/release/consumer --socket "$sock" --verify --stats-json "$out/stats.json" \
  --snapshot-every 150 --snapshot-dir "$out/snapshots" "${window[@]}"
rc=$?
set -e
wait "$producer_pid" 2>/dev/null || true
producer_pid=""
echo >&2
grep -E "source:|allocator:|decode_path:|decoded in place|sent [0-9]+ frames" "$out/producer.log" | sed -E 's/^.*(INFO|WARN) +/producer: /' >&2 || true
echo "statistics: $out/stats.json   snapshots: $out/snapshots/   producer log: $out/producer.log" >&2
exit $rc
