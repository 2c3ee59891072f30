// Shared by the converters: Y'CbCr bytes to RGBA8, BT.601 or BT.709, limited or full range.
// fmt: 1 I420, 2 NV12, 3 YUYV, 4 XRGB8888, 5 ARGB8888. matrix: 1 BT.601, else BT.709.
// range: 2 full, else limited.
fn yuv_to_rgba(yb: f32, ub: f32, vb: f32, matrix: u32, range: u32) -> u32 {
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
    var kr = 0.2126;
    var kb = 0.0722;
    if (matrix == 1u) {
        kr = 0.299;
        kb = 0.114;
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
