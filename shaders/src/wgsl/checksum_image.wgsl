// The frame checksum of one plane imported as an image (R8, R8G8, R8G8B8A8, R16 or R16G16
// texels): the bytes are rebuilt from the unorm texels in memory order (16-bit channels little
// endian). One invocation per row.
struct Params {
    texels: u32,  // texels per row
    rows: u32,
    bpt: u32,     // bytes per texel: 1, 2 or 4
    sb: u32,      // bytes per channel: 1 or 2
    plane: u32,
}
@group(0) @binding(0) var img: texture_2d<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<atomic<u32>>;
var<immediate> p: Params;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let y = gid.x;
    if (y >= p.rows) {
        return;
    }
    var h: u32 = (p.plane << 24u) ^ y ^ 0x811c9dc5u;
    let channels = p.bpt / p.sb;
    for (var x: u32 = 0u; x < p.texels; x = x + 1u) {
        let t = textureLoad(img, vec2<i32>(i32(x), i32(y)), 0);
        for (var c: u32 = 0u; c < channels; c = c + 1u) {
            if (p.sb == 2u) {
                let v = u32(round(clamp(t[c], 0.0, 1.0) * 65535.0));
                h = (h ^ (v & 0xffu)) * 0x01000193u;
                h = (h ^ (v >> 8u)) * 0x01000193u;
            } else {
                h = (h ^ u32(round(clamp(t[c], 0.0, 1.0) * 255.0))) * 0x01000193u;
            }
        }
    }
    atomicAdd(&out[0], h);
}
