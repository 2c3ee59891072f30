#!/usr/bin/env bash
# Makes the bundled clip from FFmpeg's own generators, and its expected per-frame hashes.
#
#   samples/make-sample.sh
#
# clip-1080p60.mp4: 3 s of testsrc2 at 1920x1080, 60 fps, H.264 (libx264, CRF 28, yuv420p).
# clip-1080p60.framemd5: MD5 of every decoded frame as yuv420p (ffmpeg -f framemd5), the
# reference a decoder must reproduce (H.264 decoding is bit-exact).
set -euo pipefail
cd "$(dirname "$0")"
ffmpeg -hide_banner -loglevel error -y \
  -f lavfi -i "testsrc2=size=1920x1080:rate=60,format=yuv420p" -t 3 \
  -c:v libx264 -preset veryfast -crf 28 -g 60 -bf 2 -pix_fmt yuv420p \
  -colorspace bt709 -color_primaries bt709 -color_trc bt709 -color_range tv \
  -movflags +faststart -map_metadata -1 -fflags +bitexact -flags +bitexact \
  clip-1080p60.mp4
ffmpeg -hide_banner -loglevel error -y -i clip-1080p60.mp4 -pix_fmt yuv420p -f framemd5 \
  clip-1080p60.framemd5
echo "clip-1080p60.mp4: $(stat -c %s clip-1080p60.mp4) bytes, $(grep -vc '^#' clip-1080p60.framemd5) frames"
