// Shared by the converters: Y'CbCr bytes to RGBA8 with the luma coefficients Kr, Kb of the
// stream's matrix (BT.601, BT.709, BT.2020, ...), limited or full range.
// fmt: 1 I420, 2 NV12, 3 YUYV, 4 XRGB8888, 5 ARGB8888. range: 2 full, else limited.
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

fn swap_rb(c: u32, on: u32) -> u32 {
    if (on == 0u) {
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
