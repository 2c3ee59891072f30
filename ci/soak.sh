#!/usr/bin/env bash
# Soak test: one producer and one consumer at 1080p60 (NV12, pattern, every frame verified on
# the CPU mapping) for DURATION seconds, sampling both processes' RSS (VmRSS) and open
# descriptors every EVERY seconds, then a verdict: flat or not.
#
#   ci/soak.sh [DURATION_S=600] [EVERY_S=30]
#
# Environment: ALLOC (producer --alloc, default auto), BIN_DIR (default target/debug, built
# first unless SKIP_BUILD=1), SOAK_OUT (where logs and samples go; default a fresh temp dir).
#
# "Flat": from the first sample after warm-up (one EVERY in: the pool and mappings are touched,
# the allocator has settled) to the end, each process's fd count never changes and its RSS
# grows by at most RSS_TOL_KIB (default 1024 KiB: a few pages of allocator and stdio noise;
# a leak of one 1080p frame per minute would be 3 MiB per minute).
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-600}
every=${2:-30}
bin=${BIN_DIR:-target/debug}
tol=${RSS_TOL_KIB:-1024}
[[ ${SKIP_BUILD:-0} == 1 ]] || cargo build --workspace --bins
out=${SOAK_OUT:-$(mktemp -d /tmp/dmabuf-soak.XXXXXX)}
mkdir -p "$out"
sock="$out/frames.sock"

"$bin/producer" --socket "$sock" --alloc "${ALLOC:-auto}" --size 1920x1080 --format NV12 \
  --fps 60 --duration "$dur" --report-every "$every" 2>"$out/producer.log" &
ppid=$!
trap 'kill $ppid ${cpid:-} 2>/dev/null || true' EXIT
for _ in $(seq 100); do [[ -S $sock ]] && break; sleep 0.1; done
"$bin/consumer" --socket "$sock" --import cpu-map --verify --quiet --report-every "$every" \
  --stats-json "$out/consumer.json" 2>"$out/consumer.log" &
cpid=$!

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
fds() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
echo "t_s producer_rss_kib producer_fds consumer_rss_kib consumer_fds" >"$out/samples.txt"
start=$(date +%s)
sleep 1
while kill -0 "$cpid" 2>/dev/null && kill -0 "$ppid" 2>/dev/null; do
  line="$(( $(date +%s) - start )) $(rss $ppid) $(fds $ppid) $(rss $cpid) $(fds $cpid)"
  echo "$line" | tee -a "$out/samples.txt"
  for _ in $(seq "$every"); do kill -0 "$cpid" 2>/dev/null || break; sleep 1; done
done
set +e
wait "$cpid"; crc=$?
wait "$ppid"; prc=$?
set -e
trap - EXIT
echo "consumer: $(tail -n 1 "$out/consumer.log")"
awk -v tol="$tol" -v crc="$crc" -v prc="$prc" '
  NR == 1 { next }
  { n++; t[n] = $1; pr[n] = $2; pf[n] = $3; cr[n] = $4; cf[n] = $5 }
  END {
    if (n < 3) { print "soak: too few samples (" n ")"; exit 1 }
    w = 2   # first sample after warm-up
    pmax = 0; cmax = 0; fdflat = 1
    for (i = w; i <= n; i++) {
      if (pr[i] > pmax) pmax = pr[i]; if (cr[i] > cmax) cmax = cr[i]
      if (pf[i] != pf[w] || cf[i] != cf[w]) fdflat = 0
    }
    printf "soak: %d samples over %d s\n", n, t[n]
    printf "producer: RSS %d KiB at %d s -> %d KiB at %d s (max %d), fds %d -> %d\n", pr[w], t[w], pr[n], t[n], pmax, pf[w], pf[n]
    printf "consumer: RSS %d KiB at %d s -> %d KiB at %d s (max %d), fds %d -> %d\n", cr[w], t[w], cr[n], t[n], cmax, cf[w], cf[n]
    flat = fdflat && pmax - pr[w] <= tol && cmax - cr[w] <= tol
    printf "exit codes: producer %d consumer %d\n", prc, crc
    if (flat && crc == 0 && prc == 0) { print "verdict: FLAT (RSS within " tol " KiB, fd counts constant)"; exit 0 }
    print "verdict: NOT FLAT or a process failed"; exit 1
  }' "$out/samples.txt"
echo "logs and samples in $out"
