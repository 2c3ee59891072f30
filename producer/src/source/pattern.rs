//! A moving test pattern drawn straight into the frame buffer in its own pixel format: colour
//! bars over the top three quarters with a white box sliding across them, and a scrolling grey
//! ramp below. Each frame is built from three template rows per plane (bars, bars with the box,
//! ramp), so filling a frame costs about one memcpy of it.

use dmabuf_core::format::{plane_geometry, ColorModel, FrameLayout, PixelFormat};

/// 75 % colour bars (R, G, B): white, yellow, cyan, green, magenta, red, blue, black.
const BARS: [[u8; 3]; 8] = [
    [191, 191, 191],
    [191, 191, 0],
    [0, 191, 191],
    [0, 191, 0],
    [191, 0, 191],
    [191, 0, 0],
    [0, 0, 191],
    [0, 0, 0],
];

/// BT.709 limited-range Y, Cb, Cr of an RGB colour (what the Welcome message announces).
pub fn rgb_to_yuv709(rgb: [u8; 3]) -> [u8; 3] {
    let [r, g, b] = rgb.map(|c| f32::from(c) / 255.0);
    let y = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    let cb = (b - y) / 1.8556;
    let cr = (r - y) / 1.5748;
    [
        (16.0 + 219.0 * y).round() as u8,
        (128.0 + 224.0 * cb).round().clamp(16.0, 240.0) as u8,
        (128.0 + 224.0 * cr).round().clamp(16.0, 240.0) as u8,
    ]
}

/// Encode one row of RGB pixels into each plane's row bytes for `pixel`: each component's
/// samples go where [`PixelFormat::sampling`] says; subsampled chroma is the rounded mean of the
/// pair (2i, 2i+1), the second clamped for odd widths; 10-bit samples are the 8-bit ones × 4.
fn encode_row(pixel: PixelFormat, rgb: &[[u8; 3]], out: &mut [Vec<u8>]) {
    let w = rgb.len() as u32;
    let sampling = pixel.sampling();
    let values: Vec<[u8; 3]> = match sampling.model {
        ColorModel::Rgb => rgb.to_vec(),
        ColorModel::Yuv | ColorModel::Grey => rgb.iter().map(|&c| rgb_to_yuv709(c)).collect(),
    };
    for (p, o) in out.iter_mut().enumerate() {
        let (row_bytes, _) = plane_geometry(pixel, p, w, 1);
        o.clear();
        o.resize(row_bytes as usize, 0);
        if sampling.model == ColorModel::Rgb && pixel.planes()[p].block_bytes == 4 {
            // The X (or opaque A) byte of 32-bit RGB.
            for px in o.chunks_exact_mut(4) {
                px[3] = 255;
            }
        }
    }
    let channels = if sampling.model == ColorModel::Grey {
        1
    } else {
        3
    };
    for (c, comp) in sampling.components.iter().enumerate().take(channels) {
        let info = pixel.planes()[comp.plane as usize];
        // Pixels that share one sample: the plane's subsampling, times the block for a sample
        // the block's pixels share (packed 4:2:2's chroma).
        let group = info.hsub * if comp.step == 0 { info.block_w } else { 1 };
        let row = &mut out[comp.plane as usize];
        for g in 0..w.div_ceil(group) {
            let v = if group == 2 {
                let a = u16::from(values[(2 * g) as usize][c]);
                let b = u16::from(values[(2 * g + 1).min(w - 1) as usize][c]);
                (a + b).div_ceil(2) as u8
            } else {
                values[g as usize][c]
            };
            let px = g * group / info.hsub;
            let at = ((px / info.block_w) * info.block_bytes
                + comp.offset
                + (px % info.block_w) * comp.step) as usize;
            if sampling.sample_bytes == 2 {
                let word = (u16::from(v) << 2) << sampling.shift;
                row[at..at + 2].copy_from_slice(&word.to_le_bytes());
            } else {
                row[at] = v;
            }
        }
    }
}

/// The pattern generator for one format and size.
#[derive(Debug)]
pub struct Pattern {
    pixel: PixelFormat,
    width: u32,
    height: u32,
    bars_rgb: Vec<[u8; 3]>,
    scratch: Vec<[u8; 3]>,
    bars: Vec<Vec<u8>>,
    with_box: Vec<Vec<u8>>,
    ramp: Vec<Vec<u8>>,
}

impl Pattern {
    pub fn new(pixel: PixelFormat, width: u32, height: u32) -> Self {
        let w = width as usize;
        let bars_rgb: Vec<[u8; 3]> = (0..w).map(|x| BARS[x * 8 / w]).collect();
        let n = pixel.planes().len();
        let mut bars = vec![Vec::new(); n];
        encode_row(pixel, &bars_rgb, &mut bars);
        Self {
            pixel,
            width,
            height,
            scratch: bars_rgb.clone(),
            bars_rgb,
            bars,
            with_box: vec![Vec::new(); n],
            ramp: vec![Vec::new(); n],
        }
    }

    /// Where the box is in frame `seq`: (x0, x1, y0, y1) in pixels.
    pub fn box_rect(&self, seq: u64) -> (usize, usize, usize, usize) {
        let (w, h) = (self.width as usize, self.height as usize);
        let bw = (w / 8).max(2);
        let bh = (h / 8).max(2);
        let span = (w - bw.min(w)).max(1) as u64;
        let step = (seq * (w as u64 / 160).max(1)) % (2 * span);
        let x0 = if step < span { step } else { 2 * span - step } as usize;
        let y0 = (h * 3 / 8).saturating_sub(bh / 2);
        (x0, (x0 + bw).min(w), y0, (y0 + bh).min(h))
    }

    /// Draw frame `seq` into `data` laid out as `layout`.
    pub fn fill(&mut self, seq: u64, data: &mut [u8], layout: &FrameLayout) {
        let (w, h) = (self.width as usize, self.height as usize);
        let (x0, x1, y0, y1) = self.box_rect(seq);
        self.scratch.copy_from_slice(&self.bars_rgb);
        for px in &mut self.scratch[x0..x1] {
            *px = [255, 255, 255];
        }
        encode_row(self.pixel, &self.scratch, &mut self.with_box);
        let shift = (seq * 4) as usize;
        for (x, px) in self.scratch.iter_mut().enumerate() {
            let v = ((x * 256 / w + shift) & 0xff) as u8;
            *px = [v, v, v];
        }
        encode_row(self.pixel, &self.scratch, &mut self.ramp);
        let ramp_from = h * 3 / 4;
        for (p, pl) in layout.planes.iter().enumerate() {
            let (row_bytes, rows) = plane_geometry(self.pixel, p, self.width, self.height);
            debug_assert_eq!(row_bytes, pl.row_bytes);
            let vsub = self.pixel.planes()[p].vsub as usize;
            for r in 0..rows as usize {
                let y = r * vsub;
                let src = if y >= ramp_from {
                    &self.ramp[p]
                } else if (y0..y1).contains(&y) {
                    &self.with_box[p]
                } else {
                    &self.bars[p]
                };
                let start = pl.offset as usize + r * pl.stride as usize;
                data[start..start + row_bytes as usize].copy_from_slice(src);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dmabuf_core::format::{frame_checksum, FrameFormat};

    #[test]
    fn bt709_reference_colours() {
        assert_eq!(rgb_to_yuv709([0, 0, 0]), [16, 128, 128]);
        assert_eq!(rgb_to_yuv709([255, 255, 255]), [235, 128, 128]);
        // 75 % red, BT.709 limited range (ITU-R BT.2111 bar values: 51, 109, 212).
        let [y, cb, cr] = rgb_to_yuv709([191, 0, 0]);
        assert!((50..=52).contains(&y) && (108..=110).contains(&cb) && (211..=213).contains(&cr));
    }

    #[test]
    fn frames_move_and_fill_every_format_and_odd_size() {
        for pixel in PixelFormat::ALL {
            for (w, h) in [(1920, 1080), (1279, 719), (2, 2)] {
                let layout = FrameLayout::gpu_friendly(FrameFormat::linear(pixel, w, h)).unwrap();
                let mut pat = Pattern::new(pixel, w, h);
                let mut a = vec![0u8; layout.size as usize];
                let mut b = a.clone();
                pat.fill(0, &mut a, &layout);
                pat.fill(1, &mut b, &layout);
                let ca = frame_checksum(&a, &layout.planes).unwrap();
                let cb = frame_checksum(&b, &layout.planes).unwrap();
                assert_ne!(ca, cb, "{pixel} {w}x{h}: the pattern must move");
                pat.fill(0, &mut b, &layout);
                assert_eq!(
                    frame_checksum(&b, &layout.planes).unwrap(),
                    ca,
                    "deterministic"
                );
            }
        }
    }
}
