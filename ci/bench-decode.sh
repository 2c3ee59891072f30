#!/usr/bin/env bash
# Decode benchmark: the producer's unpaced decode-and-publish rate against bare FFmpeg decoding of
# the same clip with the same thread count, measured side by side (runs alternate) in one go.
# Prints the table and writes docs/BENCHMARKS.md.
#
#   ci/bench-decode.sh            # 5 runs of each, the bundled clip looped 4 times (720 frames)
#   RUNS=9 LOOPS=8 ci/bench-decode.sh
#
# "publish" = decode + the one copy into a pool buffer + the Frame message; the consumer only
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
  printf 'run %d: ffmpeg %.1f fps, producer→consumer %.1f fps\n' "$r" "${bare[-1]}" "${ours[-1]}"
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mb=$(med "${bare[@]}"); mo=$(med "${ours[@]}")
ratio=$(echo "$mo / $mb" | bc -l)
table=$(printf '| path | median fps (%d runs) | runs |\n|---|---|---|\n| bare `ffmpeg -threads %d -f null` | %.1f | %s |\n| producer decode + copy + publish → consumer | %.1f | %s |\n| ratio | **%.3f** | target ≥ 0.95 |\n' \
  "$RUNS" "$THREADS" "$mb" "$(printf '%.0f ' "${bare[@]}")" "$mo" "$(printf '%.0f ' "${ours[@]}")" "$ratio")
echo; echo "$table"
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
{
  echo "# Benchmarks"
  echo
  echo "Numbers from \`ci/bench-decode.sh\` (RUNS=$RUNS LOOPS=$LOOPS THREADS=$THREADS), $(date -u +%Y-%m-%d),"
  echo "on $(nproc) vCPUs ($cpu), $(free -g | awk '/Mem/{print $2}') GiB, no GPU. This machine is shared"
  echo "and noisy: runs alternate, figures are medians, compare the ratio rather than absolute fps."
  echo
  echo "## Decode and publish vs bare decode"
  echo
  echo "The bundled clip (1920x1080 H.264, 180 frames) looped to $FRAMES frames, unpaced."
  echo
  echo "$table"
  echo
  echo "The producer's path today decodes into FFmpeg's own buffers and copies each picture once"
  echo "into a pool buffer (\`decode_path: copy\`, about 3 MB per frame); decoding straight into pool"
  echo "buffers through \`get_buffer2\` removes that copy. The consumer only receives and releases."
  echo
  echo "Reproduce: \`ci/bench-decode.sh\`."
} > docs/BENCHMARKS.md
echo "wrote docs/BENCHMARKS.md"
