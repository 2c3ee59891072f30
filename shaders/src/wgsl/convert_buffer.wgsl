// Frame in buffers (byte addressed, one binding per plane; planes sharing a buffer bind it again)
// to RGBA8, one invocation per displayed pixel. Formats are described, not named: see
// `sample` in yuv.wgsl and dmabuf_core::format::Sampling.
struct Params {
    width: u32,
    height: u32,
    kr: f32,
    kb: f32,
    flags: u32,    // see format_flags in yuv.wgsl
    comp0: u32,    // the three components (Y', Cb, Cr or R, G, B): see sample_at
    comp1: u32,
    comp2: u32,
    off0: u32,     // each plane's byte offset and stride in its buffer
    stride0: u32,
    off1: u32,
    stride1: u32,
    off2: u32,
    stride2: u32,
    out_w: u32,    // the displayed picture (see source_xy)
    out_h: u32,
    scaled_w: u32,
    rot: u32,
    mirror: u32,
}
@group(0) @binding(0) var<storage, read> src0: array<u32>;
@group(0) @binding(1) var<storage, read> src1: array<u32>;
@group(0) @binding(2) var<storage, read> src2: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<u32>;
var<immediate> p: Params;

fn byte_at(plane: u32, addr: u32) -> u32 {
    var w: u32;
    if (plane == 0u) {
        w = src0[addr >> 2u];
    } else if (plane == 1u) {
        w = src1[addr >> 2u];
    } else {
        w = src2[addr >> 2u];
    }
    return (w >> ((addr & 3u) * 8u)) & 0xffu;
}

// The raw sample of component `d` (packed descriptor) at pixel (x, y).
fn sample_at(d: u32, x: u32, y: u32) -> f32 {
    let plane = d & 3u;
    var off = p.off0;
    var stride = p.stride0;
    if (plane == 1u) {
        off = p.off1;
        stride = p.stride1;
    } else if (plane == 2u) {
        off = p.off2;
        stride = p.stride2;
    }
    let addr = off + comp_row(d, y) * stride + comp_byte(d, x);
    var v = byte_at(plane, addr);
    if (sample_bytes(p.flags) == 2u) {
        v = (v | (byte_at(plane, addr + 1u) << 8u)) >> sample_shift(p.flags);
    }
    return f32(v);
}

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= p.out_w || gid.y >= p.out_h) {
        return;
    }
    let sxy = source_xy(gid.x, gid.y, p.out_w, p.out_h, p.scaled_w, p.width, p.rot, p.mirror);
    let s = vec3<f32>(sample_at(p.comp0, sxy.x, sxy.y), sample_at(p.comp1, sxy.x, sxy.y),
                      sample_at(p.comp2, sxy.x, sxy.y));
    dst[gid.y * p.out_w + gid.x] = swap_rb(to_rgba(s, p.flags, p.kr, p.kb), p.flags);
}
