#!/usr/bin/env bash
# One-time set-up for a fresh Debian 12 (bookworm) machine: the system packages the workspace
# builds against and the tools its tests run. Idempotent; safe to run before every command.
#
#   ci/setup.sh          # host lane: build deps, FFmpeg, Mesa 25 (lavapipe), Xvfb
#
# bookworm's Mesa 22.3 cannot import dma-bufs into Vulkan, so Mesa comes from bookworm-backports.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { log "need root or sudo to install packages"; exit 1; }
  SUDO=sudo
fi

# Packages from bookworm itself.
BASE_PKGS=(
  pkg-config libclang-dev clang
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev libavfilter-dev libavdevice-dev
  ffmpeg
  xvfb xauth
  libx11-xcb1 libxcursor1 libxi6 libxrandr2 libxkbcommon-x11-0
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
  dbus strace
  python3 python3-venv
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev
)
# Packages that must come from bookworm-backports (Mesa 25: lavapipe with dma-buf import;
# linux-libc-dev >= 6.5: the V4L2 UAPI headers v4l2r generates its bindings from).
# PipeWire 1.4 (and its GStreamer elements, WirePlumber): the peer `compare --peers` measures,
# and what the producer's `--pipewire` node (dmabuf-pipewire, libpipewire-0.3-dev) is built on.
BPO_PKGS=(mesa-vulkan-drivers libvulkan1 libvulkan-dev vulkan-tools libgbm-dev libdrm-dev linux-libc-dev
  pipewire pipewire-bin wireplumber gstreamer1.0-pipewire libpipewire-0.3-dev)

need_install=0
for p in "${BASE_PKGS[@]}" "${BPO_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || { need_install=1; break; }
done
# Mesa must be >= 25 (dma-buf import in lavapipe).
if [ $need_install = 0 ]; then
  v=$(dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || echo 0)
  dpkg --compare-versions "$v" ge 25 || need_install=1
  v=$(dpkg-query -W -f='${Version}' linux-libc-dev 2>/dev/null || echo 0)
  dpkg --compare-versions "$v" ge 6.5 || need_install=1
  v=$(dpkg-query -W -f='${Version}' pipewire 2>/dev/null || echo 0)
  dpkg --compare-versions "$v" ge 1.2 || need_install=1
fi

if [ $need_install = 1 ]; then
  BPO=/etc/apt/sources.list.d/bookworm-backports.sources
  if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding bookworm-backports ($BPO)"
    $SUDO tee "$BPO" >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  APT="$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q"
  log "apt-get update"
  $APT update -qq
  log "installing: ${BASE_PKGS[*]}"
  $APT install --no-install-recommends "${BASE_PKGS[@]}" >/dev/null
  log "installing from bookworm-backports: ${BPO_PKGS[*]}"
  $APT install --no-install-recommends -t bookworm-backports "${BPO_PKGS[@]}" >/dev/null
fi

# Rust components the test command enforces.
if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

# The Python package's build and test tools (maturin, numpy, pytest from PyPI) in a venv under
# target/, so nothing is installed into the system's Python.
PYENV=${DMABUF_PYENV:-$(cd "$(dirname "$0")/.." && pwd)/target/pyenv}
if [ ! -x "$PYENV/bin/maturin" ] || [ ! -x "$PYENV/bin/pytest" ]; then
  log "creating $PYENV (maturin, numpy, pytest from PyPI)"
  python3 -m venv "$PYENV"
  "$PYENV/bin/pip" install -q --disable-pip-version-check -r "$(dirname "$0")/../python/requirements-dev.txt"
fi

log "ok: mesa-vulkan-drivers $(dpkg-query -W -f='${Version}' mesa-vulkan-drivers), ffmpeg $(dpkg-query -W -f='${Version}' ffmpeg)"
