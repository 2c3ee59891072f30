//! Compile the WGSL compute shaders to SPIR-V with naga (pure Rust: no system tools).
//! `yuv.wgsl` holds functions shared by the converters and is prepended to them.
use std::{env, fs, path::PathBuf};

fn compile(name: &str, source: &str, out: &std::path::Path) {
    let module = naga::front::wgsl::parse_str(source)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::all(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{name}: validation: {e:?}"));
    let opts = naga::back::spv::Options {
        lang_version: (1, 0),
        ..Default::default()
    };
    let words = naga::back::spv::write_vec(&module, &info, &opts, None)
        .unwrap_or_else(|e| panic!("{name}: SPIR-V: {e}"));
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    fs::write(out.join(format!("{name}.spv")), bytes).unwrap();
}

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    println!("cargo:rerun-if-changed=src/wgsl");
    let read = |f: &str| fs::read_to_string(format!("src/wgsl/{f}")).unwrap();
    let yuv = read("yuv.wgsl");
    compile("checksum_buffer", &read("checksum_buffer.wgsl"), &out);
    compile("checksum_image", &read("checksum_image.wgsl"), &out);
    compile(
        "convert_buffer",
        &(read("convert_buffer.wgsl") + &yuv),
        &out,
    );
    compile("convert_image", &(read("convert_image.wgsl") + &yuv), &out);
}
