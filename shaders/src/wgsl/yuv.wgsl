// Shared by the converters.
//
// A format is described by `flags` (format_flags) and three packed component descriptors:
//   bits 0-1 plane, 2 log2 hsub, 3 log2 vsub, 4-5 pixels per block, 6-9 bytes per block,
//   10-13 byte offset in the block, 14-17 bytes between the block's pixels.
// flags: bits 0-1 colour model (0 Y'CbCr, 1 grey, 2 RGB), 2 full range, 3-4 bytes per sample,
//   5-8 right shift of a 16-bit word, 9-12 significant bits, 13 write B, G, R, A.

fn sample_bytes(flags: u32) -> u32 {
    return (flags >> 3u) & 3u;
}

fn sample_shift(flags: u32) -> u32 {
    return (flags >> 5u) & 15u;
}

// The row of a component's plane that holds pixel row `y`.
fn comp_row(d: u32, y: u32) -> u32 {
    return y >> ((d >> 3u) & 1u);
}

// The byte offset, in its plane's row, of a component's sample of pixel column `x`.
fn comp_byte(d: u32, x: u32) -> u32 {
    let px = x >> ((d >> 2u) & 1u);
    let bw = (d >> 4u) & 3u;
    let bb = (d >> 6u) & 15u;
    return (px / bw) * bb + ((d >> 10u) & 15u) + (px % bw) * ((d >> 14u) & 15u);
}

// Raw samples (Y', Cb, Cr or R, G, B) to RGBA8 with the stream's matrix and range.
fn to_rgba(s: vec3<f32>, flags: u32, kr: f32, kb: f32) -> u32 {
    let model = flags & 3u;
    let full = ((flags >> 2u) & 1u) == 1u;
    let bits = (flags >> 9u) & 15u;
    let max = f32((1u << bits) - 1u);
    if (model == 2u) {
        return pack_rgb(s / max);
    }
    // To the 8-bit scale: limited range divides exactly (16·2^(n-8) is black), full range
    // stretches (2^n - 1 is white).
    var e = s / f32(1u << (bits - 8u));
    if (full) {
        e = s * (255.0 / max);
    }
    var range = 1u;
    if (full) {
        range = 2u;
    }
    if (model == 1u) {
        return yuv_to_rgba(e.x, 128.0, 128.0, kr, kb, range);
    }
    return yuv_to_rgba(e.x, e.y, e.z, kr, kb, range);
}

// Y'CbCr on the 8-bit scale to RGBA8 with the luma coefficients Kr, Kb of the stream's matrix
// (BT.601, BT.709, BT.2020, ...). range: 2 full, else limited.
fn yuv_to_rgba(yb: f32, ub: f32, vb: f32, kr: f32, kb: f32, range: u32) -> u32 {
    var y: f32;
    var cb: f32;
    var cr: f32;
    if (range == 2u) {
        y = yb / 255.0;
        cb = (ub - 128.0) / 255.0;
        cr = (vb - 128.0) / 255.0;
    } else {
        y = (yb - 16.0) / 219.0;
        cb = (ub - 128.0) / 224.0;
        cr = (vb - 128.0) / 224.0;
    }
    let kg = 1.0 - kr - kb;
    let r = y + 2.0 * (1.0 - kr) * cr;
    let b = y + 2.0 * (1.0 - kb) * cb;
    let g = (y - kr * r - kb * b) / kg;
    return pack_rgb(vec3<f32>(r, g, b));
}

fn pack_rgb(c: vec3<f32>) -> u32 {
    let v = vec3<u32>(round(clamp(c, vec3<f32>(0.0), vec3<f32>(1.0)) * 255.0));
    return v.x | (v.y << 8u) | (v.z << 16u) | (255u << 24u);
}

fn swap_rb(c: u32, flags: u32) -> u32 {
    if (((flags >> 13u) & 1u) == 0u) {
        return c;
    }
    return (c & 0xff00ff00u) | ((c & 0xffu) << 16u) | ((c >> 16u) & 0xffu);
}

// The display transform: output pixel (ox, oy) of the upright, aspect-corrected picture to the
// source pixel it shows (nearest). The picture is first scaled horizontally to `scaled_w`
// (the sample aspect ratio), mirrored if asked, then turned `rot` quarter turns clockwise.
fn source_xy(ox: u32, oy: u32, out_w: u32, out_h: u32, scaled_w: u32, width: u32, rot: u32,
             mirror: u32) -> vec2<u32> {
    var px = ox;
    var py = oy;
    if (rot == 1u) {
        px = oy;
        py = out_w - 1u - ox;
    } else if (rot == 2u) {
        px = out_w - 1u - ox;
        py = out_h - 1u - oy;
    } else if (rot == 3u) {
        px = out_h - 1u - oy;
        py = ox;
    }
    if (mirror == 1u) {
        px = scaled_w - 1u - px;
    }
    let sx = min(u32((f32(px) + 0.5) * f32(width) / f32(scaled_w)), width - 1u);
    return vec2<u32>(sx, py);
}
