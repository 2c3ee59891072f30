// The frame checksum (dmabuf_core::format::frame_checksum) of one plane that lives in a buffer:
// one invocation per row; each hashes its row's visible bytes (FNV-1a style chain seeded with
// (plane << 24) ^ y ^ 0x811c9dc5) and adds the row hash to out[0].
struct Params {
    offset: u32,     // byte offset of row 0 in the buffer
    stride: u32,     // bytes between rows
    row_bytes: u32,  // visible bytes per row
    rows: u32,
    plane: u32,
}
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> out: array<atomic<u32>>;
var<immediate> p: Params;

fn byte_at(addr: u32) -> u32 {
    return (src[addr >> 2u] >> ((addr & 3u) * 8u)) & 0xffu;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let y = gid.x;
    if (y >= p.rows) {
        return;
    }
    var h: u32 = (p.plane << 24u) ^ y ^ 0x811c9dc5u;
    let start = p.offset + y * p.stride;
    for (var x: u32 = 0u; x < p.row_bytes; x = x + 1u) {
        h = (h ^ byte_at(start + x)) * 0x01000193u;
    }
    atomicAdd(&out[0], h);
}
