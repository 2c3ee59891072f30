// The frame checksum of one plane imported as an image (R8, R8G8 or 4-byte texels): the bytes
// are rebuilt from the unorm texels in memory order. One invocation per row.
struct Params {
    texels: u32,  // texels per row
    rows: u32,
    bpt: u32,     // bytes per texel: 1, 2 or 4
    bgra: u32,    // 1: a B8G8R8A8 image (memory order b, g, r, a)
    plane: u32,
}
@group(0) @binding(0) var img: texture_2d<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<atomic<u32>>;
var<immediate> p: Params;

fn to_byte(v: f32) -> u32 {
    return u32(round(clamp(v, 0.0, 1.0) * 255.0));
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let y = gid.x;
    if (y >= p.rows) {
        return;
    }
    var h: u32 = (p.plane << 24u) ^ y ^ 0x811c9dc5u;
    for (var x: u32 = 0u; x < p.texels; x = x + 1u) {
        var t = textureLoad(img, vec2<i32>(i32(x), i32(y)), 0);
        if (p.bgra == 1u) {
            t = t.bgra;
        }
        h = (h ^ to_byte(t.r)) * 0x01000193u;
        if (p.bpt >= 2u) {
            h = (h ^ to_byte(t.g)) * 0x01000193u;
        }
        if (p.bpt == 4u) {
            h = (h ^ to_byte(t.b)) * 0x01000193u;
            h = (h ^ to_byte(t.a)) * 0x01000193u;
        }
    }
    atomicAdd(&out[0], h);
}
