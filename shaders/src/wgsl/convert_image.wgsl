// Frame imported as one image per plane to RGBA8, one invocation per displayed pixel. Unused
// plane bindings hold plane 0 again. Each plane is an image of whole texels (R8, R8G8,
// R8G8B8A8, R16, R16G16); a sample's byte address in its row picks the texel and channel.
struct Params {
    width: u32,
    height: u32,
    kr: f32,
    kb: f32,
    flags: u32,    // see format_flags in yuv.wgsl
    comp0: u32,    // the three components: see sample_at in convert_buffer.wgsl
    comp1: u32,
    comp2: u32,
    texel_bytes: u32,  // bytes per texel of planes 0, 1, 2: 4 bits each
    out_w: u32,
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

fn load(plane: u32, xy: vec2<i32>) -> vec4<f32> {
    if (plane == 1u) {
        return textureLoad(t1, xy, 0);
    } else if (plane == 2u) {
        return textureLoad(t2, xy, 0);
    }
    return textureLoad(t0, xy, 0);
}

fn sample_at(d: u32, x: u32, y: u32) -> f32 {
    let plane = d & 3u;
    let bpt = (p.texel_bytes >> (plane * 4u)) & 15u;
    let sb = sample_bytes(p.flags);
    let b = comp_byte(d, x);
    let t = load(plane, vec2<i32>(i32(b / bpt), i32(comp_row(d, y))));
    let ch = (b % bpt) / sb;
    var v: f32;
    if (sb == 2u) {
        v = round(t[ch] * 65535.0);
        return f32(u32(v) >> sample_shift(p.flags));
    }
    return round(t[ch] * 255.0);
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
