// Frame imported as one image per plane to RGBA8, one invocation per displayed pixel. Unused plane
// bindings hold plane 0 again.
struct Params {
    fmt: u32,
    width: u32,
    height: u32,
    kr: f32,
    kb: f32,
    range: u32,
    swap_rb: u32,  // 1: write B, G, R, A (for a BGRA swapchain)
    out_w: u32,    // the displayed picture (see source_xy)
    out_h: u32,
    scaled_w: u32,
    rot: u32,
    mirror: u32,
}
@group(0) @binding(0) var t0: texture_2d<f32>;
@group(0) @binding(1) var t1: texture_2d<f32>;
@group(0) @binding(2) var t2: texture_2d<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<u32>;
var<immediate> p: Params;

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= p.out_w || gid.y >= p.out_h) {
        return;
    }
    let sxy = source_xy(gid.x, gid.y, p.out_w, p.out_h, p.scaled_w, p.width, p.rot, p.mirror);
    let x = sxy.x;
    let y = sxy.y;
    let xy = vec2<i32>(i32(x), i32(y));
    let c = vec2<i32>(i32(x / 2u), i32(y / 2u));
    var out: u32;
    if (p.fmt == 1u) {
        out = yuv_to_rgba(textureLoad(t0, xy, 0).r * 255.0, textureLoad(t1, c, 0).r * 255.0,
                          textureLoad(t2, c, 0).r * 255.0, p.kr, p.kb, p.range);
    } else if (p.fmt == 2u) {
        let uv = textureLoad(t1, c, 0).rg * 255.0;
        out = yuv_to_rgba(textureLoad(t0, xy, 0).r * 255.0, uv.x, uv.y, p.kr, p.kb, p.range);
    } else if (p.fmt == 3u) {
        // R8G8B8A8 texels holding Y0 U Y1 V.
        let t = textureLoad(t0, vec2<i32>(i32(x / 2u), i32(y)), 0) * 255.0;
        var yv = t.x;
        if ((x & 1u) == 1u) {
            yv = t.z;
        }
        out = yuv_to_rgba(yv, t.y, t.w, p.kr, p.kb, p.range);
    } else {
        // B8G8R8A8 image: the texel is already (r, g, b, a).
        out = pack_rgb(textureLoad(t0, xy, 0).rgb);
    }
    dst[gid.y * p.out_w + gid.x] = swap_rb(out, p.swap_rb);
}
