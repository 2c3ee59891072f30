//! MJPEG from a webcam: each captured buffer is one JPEG, decoded by FFmpeg (libavcodec's
//! `mjpeg`) and converted by libswscale into the pool's NV12 buffer. Webcams send 4:2:2 or
//! 4:2:0 full-range JPEGs; the pool gets BT.601 limited-range NV12, like the raw formats.

use anyhow::{bail, Context as _, Result};
use dmabuf_core::format::FrameLayout;
use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

pub struct MjpegDecoder {
    decoder: ffmpeg::decoder::Video,
    frame: ffmpeg::frame::Video,
    nv12: ffmpeg::frame::Video,
    /// Made for the first frame's decoded format; remade if a later frame differs.
    scaler: Option<(Pixel, scaling::Context)>,
    width: u32,
    height: u32,
}

impl MjpegDecoder {
    /// A decoder for `width`x`height` JPEG frames.
    pub fn new(width: u32, height: u32) -> Result<Self> {
        ffmpeg::init().context("initialising FFmpeg")?;
        let codec = ffmpeg::decoder::find(ffmpeg::codec::Id::MJPEG)
            .context("this FFmpeg has no MJPEG decoder")?;
        let ctx = ffmpeg::codec::context::Context::new_with_codec(codec);
        let decoder = ctx.decoder().video().context("opening the MJPEG decoder")?;
        Ok(Self {
            decoder,
            frame: ffmpeg::frame::Video::empty(),
            nv12: ffmpeg::frame::Video::new(Pixel::NV12, width, height),
            scaler: None,
            width,
            height,
        })
    }

    /// Decode one JPEG and write it as NV12 into `data`, laid out as `layout`.
    pub fn decode_into(
        &mut self,
        jpeg: &[u8],
        data: &mut [u8],
        layout: &FrameLayout,
    ) -> Result<()> {
        if jpeg.is_empty() {
            bail!("an empty MJPEG frame");
        }
        let pkt = ffmpeg::Packet::copy(jpeg);
        self.decoder
            .send_packet(&pkt)
            .context("decoding an MJPEG frame")?;
        self.decoder
            .receive_frame(&mut self.frame)
            .context("decoding an MJPEG frame")?;
        let (w, h) = (self.frame.width(), self.frame.height());
        if (w, h) != (self.width, self.height) {
            bail!(
                "an MJPEG frame of {w}x{h} in a {}x{} stream",
                self.width,
                self.height
            );
        }
        let fmt = self.frame.format();
        if self.scaler.as_ref().map(|(f, _)| *f) != Some(fmt) {
            let ctx = scaling::Context::get(
                fmt,
                w,
                h,
                Pixel::NV12,
                w,
                h,
                scaling::Flags::BILINEAR | scaling::Flags::ACCURATE_RND,
            )
            .with_context(|| format!("no conversion from {fmt:?} to NV12"))?;
            self.scaler = Some((fmt, ctx));
        }
        let (_, scaler) = self.scaler.as_mut().expect("set above");
        scaler
            .run(&self.frame, &mut self.nv12)
            .context("converting an MJPEG frame to NV12")?;
        for (i, pl) in layout.planes.iter().enumerate().take(2) {
            let src = self.nv12.data(i);
            let sstride = self.nv12.stride(i);
            let n = pl.row_bytes as usize;
            for y in 0..pl.rows as usize {
                let d = pl.offset as usize + y * pl.stride as usize;
                let (Some(dst), Some(s)) = (
                    data.get_mut(d..d + n),
                    src.get(y * sstride..y * sstride + n),
                ) else {
                    bail!("an MJPEG frame does not fit the pool's layout");
                };
                dst.copy_from_slice(s);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Frames a webcam would send, made by the `ffmpeg` CLI, through the same decoder the
    //! capture path uses; the reference is the `ffmpeg` CLI's own NV12 conversion.
    use super::*;
    use dmabuf_core::format::{FrameFormat, PixelFormat};
    use std::process::Command;

    fn ffmpeg_out(args: &[&str]) -> Vec<u8> {
        let out = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin"])
            .args(args)
            .output()
            .expect("the ffmpeg CLI (ci/setup.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn webcam_jpegs_decode_to_the_reference_nv12() {
        let dir = std::env::temp_dir().join(format!("mjpeg-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // 4:2:2 is what most webcams send; 4:2:0 the rest. Odd-free sizes, as webcams use.
        for (pix, size) in [("yuvj422p", "640x480"), ("yuvj420p", "1280x720")] {
            let jpg = dir.join(format!("{pix}.jpg"));
            let jpeg = ffmpeg_out(&[
                "-f",
                "lavfi",
                "-i",
                &format!("testsrc2=size={size}:rate=30"),
                "-frames:v",
                "1",
                "-pix_fmt",
                pix,
                "-q:v",
                "3",
                "-f",
                "mjpeg",
                "-",
            ]);
            std::fs::write(&jpg, &jpeg).unwrap();
            let reference = ffmpeg_out(&[
                "-i",
                jpg.to_str().unwrap(),
                "-pix_fmt",
                "nv12",
                "-f",
                "rawvideo",
                "-",
            ]);
            let (w, h) = size.split_once('x').unwrap();
            let (w, h): (u32, u32) = (w.parse().unwrap(), h.parse().unwrap());
            // The pool's layout (padded strides), not a packed one.
            let layout =
                FrameLayout::gpu_friendly(FrameFormat::linear(PixelFormat::Nv12, w, h)).unwrap();
            let mut data = vec![0u8; layout.size as usize];
            let mut dec = MjpegDecoder::new(w, h).unwrap();
            for _ in 0..2 {
                dec.decode_into(&jpeg, &mut data, &layout).unwrap();
            }
            // Compare plane by plane, row by row against the packed reference.
            let mut packed = Vec::new();
            for pl in &layout.planes {
                for y in 0..pl.rows as u64 {
                    let s = (pl.offset + y * u64::from(pl.stride)) as usize;
                    packed.extend_from_slice(&data[s..s + pl.row_bytes as usize]);
                }
            }
            assert_eq!(packed.len(), reference.len(), "{pix}");
            let diffs: Vec<u32> = packed
                .iter()
                .zip(&reference)
                .map(|(a, b)| u32::from(a.abs_diff(*b)))
                .collect();
            let mean = diffs.iter().sum::<u32>() as f64 / diffs.len() as f64;
            let max = *diffs.iter().max().unwrap();
            // Same libraries; only the chroma filter may differ from the CLI's default.
            assert!(mean < 1.0 && max <= 24, "{pix}: mean {mean:.3}, max {max}");
            let luma = (w * h) as usize;
            let luma_same = packed[..luma]
                .iter()
                .zip(&reference[..luma])
                .filter(|(a, b)| a.abs_diff(**b) <= 1)
                .count();
            assert!(luma_same * 1000 >= luma * 999, "{pix}: luma differs");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn broken_jpegs_are_errors() {
        let layout =
            FrameLayout::gpu_friendly(FrameFormat::linear(PixelFormat::Nv12, 64, 48)).unwrap();
        let mut data = vec![0u8; layout.size as usize];
        let mut dec = MjpegDecoder::new(64, 48).unwrap();
        assert!(dec.decode_into(&[], &mut data, &layout).is_err());
        assert!(dec
            .decode_into(b"\xff\xd8 definitely not a jpeg", &mut data, &layout)
            .is_err());
        // A valid JPEG of the wrong size.
        let jpeg = ffmpeg_out(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=32x32",
            "-frames:v",
            "1",
            "-f",
            "mjpeg",
            "-",
        ]);
        let e = dec.decode_into(&jpeg, &mut data, &layout).unwrap_err();
        assert!(format!("{e:#}").contains("32x32 in a 64x48"), "{e:#}");
    }
}
