#!/usr/bin/env bash
# Runs inside the virtme-ng guest (see ci/vm-lane). Usage: vm-guest.sh OUT "MODULES" TESTBIN...
# Writes one log per test binary, a progress trail and a status file into OUT (shared rw).
set -u
OUT=$1; MODULES=$2; shift 2
step() { echo "$(cut -d' ' -f1 /proc/uptime)s $*" >>"$OUT/progress"; }
step "guest up: $(uname -r), $(nproc) cpus"

# No udev here: give vng's console channels their names so its own output is not lost.
mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/*; do
  n=$(cat "$p/name" 2>/dev/null) || continue
  [ -n "$n" ] && ln -sf "/dev/$(basename "$p")" "/dev/virtio-ports/$n"
done

ok=1
for m in $MODULES; do
  params=()
  # vivid: two instances with one single-planar video capture node each (/dev/video0, video1):
  # hw_v4l2 captures from the first and unplugs the second (its Disconnect control); a third
  # with a multi-planar capture node (V4L2_CAP_VIDEO_CAPTURE_MPLANE, NV12M and friends).
  [ "$m" = vivid ] && params=(n_devs=3 node_types=0x1,0x1,0x1 multiplanar=1,1,2)
  step "modprobe $m ${params[*]}"
  if ! modprobe "$m" "${params[@]}" 2>>"$OUT/status"; then ok=0; echo "FAIL modprobe $m" >>"$OUT/status"; fi
done
[ $ok = 1 ] && echo "ok modules: $MODULES" >>"$OUT/status"
{
  echo "devices:"
  ls -l /dev/dma_heap/ /dev/udmabuf /dev/dri/ 2>&1 | sed 's/^/  /'
  ls /dev/video* 2>&1 | sed 's/^/  /'
} >>"$OUT/status"

export DMABUF_REQUIRE_HW=1 RUST_BACKTRACE=1
cd /tmp
for bin in "$@"; do
  name=$(basename "$bin" | sed 's/-[0-9a-f]*$//')
  step "running $name"
  s=$(cut -d' ' -f1 /proc/uptime)
  "$bin" --test-threads=1 >"$OUT/$name.log" 2>&1
  rc=$?; echo "exit $rc $name ($(awk -v s="$s" '{printf "%.1f", $1 - s}' /proc/uptime) s)" >>"$OUT/status"
done
step "done"
