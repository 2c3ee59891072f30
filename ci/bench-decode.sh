#!/usr/bin/env bash
# Decode benchmark: the producer's unpaced decode-and-publish rate against bare FFmpeg decoding of
# the same clip with the same thread count, measured side by side (runs alternate) in one go.
# Prints the table and rewrites its own section of docs/BENCHMARKS.md (between the
# "bench-decode" markers), leaving the rest of the file alone.
#
#   ci/bench-decode.sh            # 5 runs of each, the bundled clip looped 4 times (720 frames)
#   RUNS=9 LOOPS=8 ci/bench-decode.sh
#
# "publish" = decode (straight into a pool buffer) + the Frame message; the consumer only
# receives and releases (--import cpu-map, no --verify) and the producer computes no checksum,
# so the figure is the pipeline's cost on top of decoding, not verification.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-5}
LOOPS=${LOOPS:-4}
THREADS=${THREADS:-$(nproc)}
CLIP=samples/clip-1080p60.mp4
ci/setup.sh >/dev/null
cargo build --release --bins -q
FRAMES=$((180 * LOOPS))
dir=$(mktemp -d); trap 'rm -rf "$dir"' EXIT
now() { date +%s.%N; }
bare=(); ours=()
for r in $(seq "$RUNS"); do
  # Bare FFmpeg: demux + decode, frames discarded (-f null), same thread count.
  t=$(now)
  ffmpeg -hide_banner -loglevel error -threads "$THREADS" -stream_loop $((LOOPS - 1)) -i "$CLIP" \
    -f null - 
  bare+=("$(echo "$FRAMES / ($(now) - $t)" | bc -l)")
  # Ours: producer (decode, copy into the pool, publish) → consumer (receive, release).
  sock="$dir/b$r.sock"
  target/release/producer --socket "$sock" --source "file:$CLIP" --loop --frames "$FRAMES" \
    --no-pace --no-checksum --alloc memfd --decode-threads "$THREADS" 2>"$dir/p$r.log" &
  pid=$!
  target/release/consumer --socket "$sock" -q --import cpu-map --stats-json "$dir/s$r.json" 2>/dev/null
  wait $pid
  ours+=("$(python3 -c "import json;print(json.load(open('$dir/s$r.json'))['fps'])")")
  paths=$(grep -o 'decoded in place.*' "$dir/p$r.log" | tail -1 || true)
  printf 'run %d: ffmpeg %.1f fps, producer→consumer %.1f fps (%s)\n' "$r" "${bare[-1]}" "${ours[-1]}" "$paths"
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mb=$(med "${bare[@]}"); mo=$(med "${ours[@]}")
ratio=$(echo "$mo / $mb" | bc -l)
table=$(printf '| path | median fps (%d runs) | runs |\n|---|---|---|\n| bare `ffmpeg -threads %d -f null` | %.1f | %s |\n| producer decode into the pool + publish → consumer | %.1f | %s |\n| ratio | **%.3f** | target ≥ 0.95 |\n' \
  "$RUNS" "$THREADS" "$mb" "$(printf '%.0f ' "${bare[@]}")" "$mo" "$(printf '%.0f ' "${ours[@]}")" "$ratio")
echo; echo "$table"
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
section=$(
  echo "<!-- bench-decode: start (written by ci/bench-decode.sh) -->"
  echo "## Decode and publish vs bare decode"
  echo
  echo "\`ci/bench-decode.sh\` (RUNS=$RUNS LOOPS=$LOOPS THREADS=$THREADS), $(date -u +%Y-%m-%d), on $(nproc) vCPUs"
  echo "($cpu), $(free -g | awk '/Mem/{print $2}') GiB, no GPU. The bundled clip (1920x1080 H.264, 180 frames)"
  echo "looped to $FRAMES frames, unpaced; runs alternate, figures are medians."
  echo
  echo "$table"
  echo
  echo "The producer decodes straight into pool buffers (a custom \`get_buffer2\`, \`decode_path: direct\`)"
  echo "and publishes them; the consumer only receives and releases (\`--import cpu-map\`, no \`--verify\`),"
  echo "and the producer computes no checksum. Last run's producer: $paths."
  echo
  echo "Reproduce: \`ci/bench-decode.sh\`."
  echo "<!-- bench-decode: end -->"
)
python3 - "$section" <<'PY'
import re, sys, pathlib
p = pathlib.Path("docs/BENCHMARKS.md")
new = sys.argv[1]
text = p.read_text() if p.exists() else "# Benchmarks\n"
start, end = "<!-- bench-decode: start", "<!-- bench-decode: end -->"
if start in text:
    a = text.index(start)
    b = text.index(end) + len(end)
    text = text[:a] + new + text[b:]
else:
    text = text.rstrip("\n") + "\n\n" + new + "\n"
p.write_text(text)
PY
echo "updated the decode section of docs/BENCHMARKS.md"
