//! Running `dmabuf-vulkan`'s `wgpu_receive` example against the producer's pattern and checking
//! its PNG against the pattern's definition (shared by `wgpu_example` and `hw_wgpu`).
#![allow(dead_code)]

use super::common::*;
use std::path::PathBuf;
use std::process::Command;

/// The example binary; it needs the `wgpu` feature, so `--bins --examples` alone does not
/// build it.
pub fn wgpu_example() -> PathBuf {
    let p = consumer_bin()
        .with_file_name("examples")
        .join("wgpu_receive");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p dmabuf-vulkan --features wgpu --examples` \
         (ci/test.sh builds the workspace with --features dmabuf-vulkan/wgpu)",
        p.display()
    );
    p
}

/// Run the example on `frames` frames of a producer drawing `format` at `size` with `alloc`;
/// its standard output, its exit status and the PNG's path.
pub fn run(
    tag: &str,
    alloc: &str,
    format: &str,
    size: &str,
    frames: u32,
) -> (String, std::process::ExitStatus, PathBuf) {
    run_with(tag, alloc, format, size, frames, None)
}

/// [`run`], forcing the example's import path when `path` is given.
pub fn run_with(
    tag: &str,
    alloc: &str,
    format: &str,
    size: &str,
    frames: u32,
    path: Option<&str>,
) -> (String, std::process::ExitStatus, PathBuf) {
    let sock = socket(&format!("{tag}-{format}-{size}-{}", path.unwrap_or("best")));
    let png = sock.with_extension("png");
    let _ = std::fs::remove_file(&png);
    let _p = Producer::start(
        &sock,
        &[
            "--alloc",
            alloc,
            "--no-pace",
            "--format",
            format,
            "--size",
            size,
            "--stall-timeout",
            "60",
        ],
    );
    let out = Command::new(wgpu_example())
        .arg(&sock)
        .arg(frames.to_string())
        .arg(&png)
        .args(path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text, out.status, png)
}

pub fn read_png(path: &std::path::Path) -> (Vec<u8>, u32, u32) {
    let d = png::Decoder::new(std::fs::File::open(path).unwrap());
    let mut r = d.read_info().unwrap();
    let info = r.info();
    assert_eq!(info.color_type, png::ColorType::Rgba, "{}", path.display());
    assert_eq!(info.bit_depth, png::BitDepth::Eight, "{}", path.display());
    let mut buf = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (buf, info.width, info.height)
}

/// The pattern's 75 % bars (producer/src/source/pattern.rs), left to right.
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

/// Check a rendered pattern frame of `w` x `h`: the bars above the box (every pixel of each
/// bar, except 2 columns at its edges where chroma is shared with the neighbour, within `tol`
/// levels of the bar's RGB: a wrong range is ~11 levels off, swapped Cb/Cr or a misplaced
/// chroma plane changes the hues), one white box (w/8 wide) on its row, and a grey ramp below
/// (R = G = B, dark to light).
pub fn check_pattern(rgba: &[u8], w: u32, h: u32, tol: u8, what: &str) {
    let (w, h) = (w as usize, h as usize);
    assert_eq!(rgba.len(), w * h * 4, "{what}");
    let px = |x: usize, y: usize| {
        let i = (y * w + x) * 4;
        [rgba[i], rgba[i + 1], rgba[i + 2], rgba[i + 3]]
    };
    let bh = (h / 8).max(2);
    let box_top = (h * 3 / 8).saturating_sub(bh / 2);
    let mut worst = (0u8, 0, 0);
    for y in [0, box_top / 2, box_top - 1] {
        for x in 0..w {
            let k = x * 8 / w;
            let (x0, x1) = ((k * w).div_ceil(8), ((k + 1) * w).div_ceil(8));
            if x < x0 + 2 || x + 2 >= x1 {
                continue;
            }
            let p = px(x, y);
            assert_eq!(p[3], 255, "{what}: alpha at ({x}, {y})");
            for c in 0..3 {
                let d = p[c].abs_diff(BARS[k][c]);
                if d > worst.0 {
                    worst = (d, x, y);
                }
                assert!(
                    d <= tol,
                    "{what}: pixel ({x}, {y}) in bar {k} is {:?}, the bar is {:?} (tolerance {tol})",
                    &p[..3],
                    BARS[k]
                );
            }
        }
    }
    // The box: one run of white pixels, w/8 wide, on the row through its middle.
    let y = box_top + bh / 2;
    let white: Vec<usize> = (0..w)
        .filter(|&x| px(x, y)[..3].iter().all(|&c| c >= 255 - tol))
        .collect();
    let bw = (w / 8).max(2);
    assert!(
        !white.is_empty() && white.len().abs_diff(bw) <= 2,
        "{what}: {} white pixels on row {y}, the box is {bw} wide",
        white.len()
    );
    assert_eq!(
        white.last().unwrap() - white[0] + 1,
        white.len(),
        "{what}: the white pixels on row {y} are not one run"
    );
    // The ramp: grey, spanning dark to light.
    let y = h - 1;
    let (mut lo, mut hi) = (255u8, 0u8);
    for x in 0..w {
        let [r, g, b, _] = px(x, y);
        assert!(
            r.abs_diff(g) <= tol && g.abs_diff(b) <= tol,
            "{what}: ramp pixel ({x}, {y}) is not grey: {r} {g} {b}"
        );
        lo = lo.min(g);
        hi = hi.max(g);
    }
    assert!(lo < 40 && hi > 215, "{what}: the ramp spans {lo}..{hi}");
    eprintln!(
        "{what}: bars within {} levels (worst at {}, {}), box and ramp as drawn",
        worst.0, worst.1, worst.2
    );
}
