//! Frames from the producer rendered by wgpu: connect with the importer's capabilities, import
//! each buffer once as wgpu textures (`dmabuf_vulkan::wgpu`: the dma-buf itself on the
//! `dmabuf-image` path, a GPU copy from the imported buffer otherwise), and for each frame draw
//! a full-screen triangle whose fragment shader converts the Y'CbCr planes (NV12, I420, P010;
//! the matrix and range of the Welcome's colorimetry) to RGBA8 in an offscreen texture. The last
//! frame is read back and written as a PNG.
//!
//! ```sh
//! producer --socket /tmp/frames.sock --format NV12 &
//! cargo run -p dmabuf-vulkan --features wgpu --example wgpu_receive -- /tmp/frames.sock 60 out.png
//! ```
//!
//! A fourth argument forces an import path (`copy`, `host-pointer`, `dmabuf-buffer`,
//! `dmabuf-image`) instead of the best the device has for the stream.

use dmabuf_core::proto::wire::Welcome;
use dmabuf_core::receiver::{Receiver, ReceiverEvent};
use dmabuf_core::PixelFormat;
use dmabuf_vulkan::wgpu::{WgpuImport, WgpuImporter};
use dmabuf_vulkan::ImportPath;
use std::collections::HashMap;
use std::time::Duration;

const SHADER: &str = r#"
struct Params {
    // 1: two planes (Y, CbCr interleaved), 0: three planes (Y, Cb, Cr)
    two_planes: u32,
    // log2 of the horizontal and vertical chroma subsampling
    hsub: u32,
    vsub: u32,
    // 1: full range, 0: limited
    full: u32,
    // what a normalised sample is multiplied by to get its code value (255, or 65535/64 for
    // 10-bit samples in the top of 16-bit words), and the bits of that code value
    scale: f32,
    bits: f32,
    kr: f32,
    kb: f32,
};

@group(0) @binding(0) var plane0: texture_2d<f32>;
@group(0) @binding(1) var plane1: texture_2d<f32>;
@group(0) @binding(2) var plane2: texture_2d<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@vertex
fn vs(@builtin(vertex_index) i: u32) -> @builtin(position) vec4<f32> {
    // One triangle covering the viewport.
    let x = f32((i << 1u) & 2u) * 2.0 - 1.0;
    let y = f32(i & 2u) * 2.0 - 1.0;
    return vec4<f32>(x, y, 0.0, 1.0);
}

@fragment
fn fs(@builtin(position) pos: vec4<f32>) -> @location(0) vec4<f32> {
    let xy = vec2<u32>(pos.xy);
    let c = vec2<u32>(xy.x >> p.hsub, xy.y >> p.vsub);
    let yv = textureLoad(plane0, xy, 0).r;
    var cbcr: vec2<f32>;
    if (p.two_planes == 1u) {
        cbcr = textureLoad(plane1, c, 0).rg;
    } else {
        cbcr = vec2<f32>(textureLoad(plane1, c, 0).r, textureLoad(plane2, c, 0).r);
    }
    // Code values, then the nominal range: limited is 16..235 (Y') and 16..240 (Cb, Cr) on
    // the 8-bit scale, times 2^(bits-8).
    let code = vec3<f32>(yv, cbcr) * p.scale;
    let m = exp2(p.bits - 8.0);
    var e: vec3<f32>;
    if (p.full == 1u) {
        let top = exp2(p.bits) - 1.0;
        e = vec3<f32>(code.x / top, (code.yz - 128.0 * m) / top);
    } else {
        e = vec3<f32>((code.x - 16.0 * m) / (219.0 * m), (code.yz - 128.0 * m) / (224.0 * m));
    }
    let r = e.x + 2.0 * (1.0 - p.kr) * e.z;
    let b = e.x + 2.0 * (1.0 - p.kb) * e.y;
    let g = (e.x - p.kr * r - p.kb * b) / (1.0 - p.kr - p.kb);
    return vec4<f32>(clamp(vec3<f32>(r, g, b), vec3<f32>(0.0), vec3<f32>(1.0)), 1.0);
}
"#;

/// The shader's parameters for a stream, or why it cannot be shown.
fn params(w: &Welcome) -> Result<[u32; 8], String> {
    let (two_planes, hsub, vsub, scale, bits) = match w.pixel {
        PixelFormat::Nv12 => (1u32, 1u32, 1u32, 255.0f32, 8.0f32),
        PixelFormat::I420 => (0, 1, 1, 255.0, 8.0),
        PixelFormat::P010 => (1, 1, 1, 65535.0 / 64.0, 10.0),
        other => {
            return Err(format!(
                "wgpu_receive converts NV12, I420 and P010; the stream is {other}"
            ))
        }
    };
    let ((kr, kb), _) = w.color.luma_coefficients(w.height).ok_or_else(|| {
        format!(
            "no Y'CbCr conversion for the {} matrix",
            w.color.matrix_name()
        )
    })?;
    Ok([
        two_planes,
        hsub,
        vsub,
        u32::from(w.color.range == 2),
        scale.to_bits(),
        bits.to_bits(),
        kr.to_bits(),
        kb.to_bits(),
    ])
}

/// The pipeline and the offscreen target of one stream format.
struct Renderer {
    pipeline: wgpu::RenderPipeline,
    layout: wgpu::BindGroupLayout,
    uniform: wgpu::Buffer,
    target: wgpu::Texture,
    width: u32,
    height: u32,
}

impl Renderer {
    fn new(dev: &wgpu::Device, queue: &wgpu::Queue, w: &Welcome) -> Result<Self, String> {
        let p = params(w)?;
        let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("ycbcr to rgba"),
            source: wgpu::ShaderSource::Wgsl(SHADER.into()),
        });
        let tex = |binding| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::FRAGMENT,
            ty: wgpu::BindingType::Texture {
                sample_type: wgpu::TextureSampleType::Float { filterable: false },
                view_dimension: wgpu::TextureViewDimension::D2,
                multisampled: false,
            },
            count: None,
        };
        let layout = dev.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("planes"),
            entries: &[
                tex(0),
                tex(1),
                tex(2),
                wgpu::BindGroupLayoutEntry {
                    binding: 3,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
            ],
        });
        let pl = dev.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: None,
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = dev.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("ycbcr to rgba"),
            layout: Some(&pl),
            vertex: wgpu::VertexState {
                module: &module,
                entry_point: Some("vs"),
                compilation_options: Default::default(),
                buffers: &[],
            },
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            fragment: Some(wgpu::FragmentState {
                module: &module,
                entry_point: Some("fs"),
                compilation_options: Default::default(),
                targets: &[Some(wgpu::TextureFormat::Rgba8Unorm.into())],
            }),
            multiview_mask: None,
            cache: None,
        });
        let uniform = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: 32,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let bytes: Vec<u8> = p.iter().flat_map(|v| v.to_le_bytes()).collect();
        queue.write_buffer(&uniform, 0, &bytes);
        let target = dev.create_texture(&wgpu::TextureDescriptor {
            label: Some("rgba"),
            size: wgpu::Extent3d {
                width: w.width,
                height: w.height,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba8Unorm,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        Ok(Self {
            pipeline,
            layout,
            uniform,
            target,
            width: w.width,
            height: w.height,
        })
    }

    /// Record the conversion of `imp`'s planes into the target.
    fn draw(&self, dev: &wgpu::Device, imp: &WgpuImport) -> wgpu::CommandBuffer {
        let views: Vec<_> = imp
            .textures()
            .iter()
            .map(|t| t.create_view(&Default::default()))
            .collect();
        let third = views.get(2).unwrap_or(&views[1]);
        let group = dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.layout,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::TextureView(&views[0]),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: wgpu::BindingResource::TextureView(&views[1]),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: wgpu::BindingResource::TextureView(third),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: self.uniform.as_entire_binding(),
                },
            ],
        });
        let target = self.target.create_view(&Default::default());
        let mut enc = dev.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_render_pass(&wgpu::RenderPassDescriptor {
                label: Some("convert"),
                color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                    view: &target,
                    depth_slice: None,
                    resolve_target: None,
                    ops: wgpu::Operations {
                        load: wgpu::LoadOp::Clear(wgpu::Color::BLACK),
                        store: wgpu::StoreOp::Store,
                    },
                })],
                depth_stencil_attachment: None,
                timestamp_writes: None,
                occlusion_query_set: None,
                multiview_mask: None,
            });
            pass.set_pipeline(&self.pipeline);
            pass.set_bind_group(0, &group, &[]);
            pass.draw(0..3, 0..1);
        }
        enc.finish()
    }

    /// Read the target back: tightly packed RGBA rows.
    fn read(&self, wi: &WgpuImporter) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
        let (dev, queue) = (wi.device(), wi.queue());
        let row = self.width * 4;
        let pitch =
            row.div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT) * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
        let buf = dev.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: u64::from(pitch) * u64::from(self.height),
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        let mut enc = dev.create_command_encoder(&Default::default());
        enc.copy_texture_to_buffer(
            self.target.as_image_copy(),
            wgpu::TexelCopyBufferInfo {
                buffer: &buf,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(pitch),
                    rows_per_image: Some(self.height),
                },
            },
            self.target.size(),
        );
        let idx = queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        buf.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        wi.wait(idx)?;
        rx.recv()??;
        let data = buf.get_mapped_range(..)?;
        let mut out = Vec::with_capacity((row * self.height) as usize);
        for r in data.chunks(pitch as usize) {
            out.extend_from_slice(&r[..row as usize]);
        }
        Ok(out)
    }
}

fn write_png(path: &str, w: u32, h: u32, rgba: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(file, w, h);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    enc.write_header()?.write_image_data(rgba)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(sock), Some(frames), Some(out)) = (args.next(), args.next(), args.next()) else {
        eprintln!("usage: wgpu_receive SOCKET FRAMES OUT.png [IMPORT-PATH]");
        std::process::exit(2);
    };
    let frames: u64 = frames.parse()?;
    // Optional: force an import path (dmabuf-image, dmabuf-buffer, host-pointer, copy) instead
    // of the best one the device has for the stream.
    let forced = match args.next() {
        None => None,
        Some(name) => Some(
            ImportPath::ALL
                .into_iter()
                .find(|p| p.name() == name)
                .ok_or_else(|| format!("unknown import path {name}"))?,
        ),
    };

    let wi = WgpuImporter::new()?;
    let importer = wi.importer();
    let name = wi.adapter().map(|a| a.get_info().name).unwrap_or_default();
    let rx = Receiver::connect(
        &sock,
        importer.caps(&ImportPath::ALL),
        Duration::from_secs(5),
    )?;
    let mut w = rx.welcome();
    let best =
        |w: &Welcome| forced.unwrap_or_else(|| importer.best_path(w.pixel, w.modifier, w.memory));
    let mut path = best(&w);
    let mut renderer = match Renderer::new(wi.device(), wi.queue(), &w) {
        Ok(r) => r,
        Err(why) => refuse(rx, &why),
    };
    let announce = |w: &Welcome, path: ImportPath| {
        println!(
            "stream: {} {}x{} in {} ({} {} range), as wgpu textures by {path} ({}) on {name}",
            w.pixel,
            w.width,
            w.height,
            w.memory,
            w.color.matrix_name(),
            w.color.range_name(),
            if path == ImportPath::DmabufImage {
                "zero copy"
            } else if path == ImportPath::Copy {
                "CPU copy, then GPU copy"
            } else {
                "GPU copy"
            }
        )
    };
    announce(&w, path);

    let mut imports: HashMap<u32, WgpuImport> = HashMap::new();
    let (mut seen, mut made) = (0u64, 0u64);
    let mut last = None;
    while seen < frames {
        match rx.next_event(Some(Duration::from_secs(30)))? {
            ReceiverEvent::BufferAdded(id) => {
                let buf = rx.buffer(id).expect("just added");
                imports.insert(id, wi.import(&buf, path)?);
                made += 1;
            }
            ReceiverEvent::BufferRemoved(id) => {
                imports.remove(&id);
            }
            ReceiverEvent::Renegotiated(nw) => {
                imports.clear();
                w = *nw;
                path = best(&w);
                renderer = match Renderer::new(wi.device(), wi.queue(), &w) {
                    Ok(r) => r,
                    Err(why) => refuse(rx, &why),
                };
                announce(&w, path);
            }
            ReceiverEvent::End(g) => {
                println!("producer ended the stream: {:?}", g.reason);
                break;
            }
            ReceiverEvent::Frame(frame) => {
                seen += 1;
                let imp = &imports[&frame.buffer_id()];
                let draw = renderer.draw(wi.device(), imp);
                let idx = wi.submit_frame(imp, frame.buffer(), [draw])?;
                wi.wait(idx)?;
                if !frame.is_intact() {
                    return Err("the producer reclaimed a frame while it was being drawn".into());
                }
                last = Some(frame.seq());
                // `frame` drops here: the Release goes back to the producer.
            }
        }
    }
    let Some(seq) = last else {
        return Err("no frame received".into());
    };
    let rgba = renderer.read(&wi)?;
    write_png(&out, renderer.width, renderer.height, &rgba)?;
    println!(
        "rendered {seen} frames through {path} ({made} buffers imported); frame {seq} written to {out} ({}x{})",
        renderer.width, renderer.height
    );
    imports.clear();
    rx.close("done");
    Ok(())
}

/// Leave a stream this example cannot show, saying why (to the producer too), exit 4.
fn refuse(rx: Receiver, why: &str) -> ! {
    eprintln!("wgpu_receive: {why}");
    rx.close(why);
    std::process::exit(4);
}
