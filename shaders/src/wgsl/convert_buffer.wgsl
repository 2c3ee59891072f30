// Frame in a buffer (byte addressed) to RGBA8, one invocation per displayed pixel.
struct Params {
    fmt: u32,
    width: u32,
    height: u32,
    kr: f32,
    kb: f32,
    range: u32,
    off0: u32,
    stride0: u32,
    off1: u32,
    stride1: u32,
    off2: u32,
    stride2: u32,
    swap_rb: u32,  // 1: write B, G, R, A (for a BGRA swapchain)
    out_w: u32,    // the displayed picture (see source_xy)
    out_h: u32,
    scaled_w: u32,
    rot: u32,
    mirror: u32,
}
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
var<immediate> p: Params;

fn byte_at(addr: u32) -> f32 {
    return f32((src[addr >> 2u] >> ((addr & 3u) * 8u)) & 0xffu);
}

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= p.out_w || gid.y >= p.out_h) {
        return;
    }
    let sxy = source_xy(gid.x, gid.y, p.out_w, p.out_h, p.scaled_w, p.width, p.rot, p.mirror);
    let x = sxy.x;
    let y = sxy.y;
    var out: u32;
    if (p.fmt == 1u || p.fmt == 2u) {
        let yv = byte_at(p.off0 + y * p.stride0 + x);
        var u: f32;
        var v: f32;
        if (p.fmt == 1u) {
            u = byte_at(p.off1 + (y / 2u) * p.stride1 + x / 2u);
            v = byte_at(p.off2 + (y / 2u) * p.stride2 + x / 2u);
        } else {
            let a = p.off1 + (y / 2u) * p.stride1 + (x / 2u) * 2u;
            u = byte_at(a);
            v = byte_at(a + 1u);
        }
        out = yuv_to_rgba(yv, u, v, p.kr, p.kb, p.range);
    } else if (p.fmt == 3u) {
        let a = p.off0 + y * p.stride0 + (x / 2u) * 4u;
        let yv = byte_at(a + (x & 1u) * 2u);
        out = yuv_to_rgba(yv, byte_at(a + 1u), byte_at(a + 3u), p.kr, p.kb, p.range);
    } else {
        let a = p.off0 + y * p.stride0 + x * 4u;
        out = pack_rgb(vec3<f32>(byte_at(a + 2u), byte_at(a + 1u), byte_at(a)) / 255.0);
    }
    dst[gid.y * p.out_w + gid.x] = swap_rb(out, p.swap_rb);
}
