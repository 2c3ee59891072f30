//! The consumer's GPU work on imported frames: the frame checksum and the RGBA conversion
//! (compute shaders reading the imported memory in place), and the window. The import itself
//! (paths, probing, RAII objects, queue-family ownership, implicit sync) is the
//! `dmabuf-vulkan` library's; this file allocates its shaders' descriptor sets for what the
//! library imported.
#![allow(unsafe_code)]

use anyhow::{anyhow, bail, Context as _, Result};
use ash::vk;
use dmabuf_core::format::{ColorModel, PixelFormat};
use dmabuf_core::proto::wire::{Cap, ColorInfo, Geometry};
use dmabuf_core::FrameBuffer;
use dmabuf_vulkan::{color_range, plane_images, Imported, Importer, OwnedDevice};
pub use dmabuf_vulkan::{Counters, ImportPath};

/// How long to wait for the GPU before calling it hung. Generous: lavapipe under QEMU/TCG on a
/// loaded machine (the real-kernel lane) needs seconds for a 1080p conversion.
const GPU_TIMEOUT_NS: u64 = 60_000_000_000;

/// The shaders' description of a format (yuv.wgsl): `flags` and the three packed component
/// descriptors.
fn format_words(pixel: PixelFormat, full_range: bool, swap_rb: bool) -> [u32; 4] {
    let s = pixel.sampling();
    let model = match s.model {
        ColorModel::Yuv => 0,
        ColorModel::Grey => 1,
        ColorModel::Rgb => 2,
    };
    let flags = model
        | u32::from(full_range) << 2
        | s.sample_bytes << 3
        | s.shift << 5
        | s.bits << 9
        | u32::from(swap_rb) << 13;
    let d = s.components.map(|c| {
        let info = pixel.planes()[c.plane as usize];
        c.plane
            | (info.hsub / 2) << 2
            | (info.vsub / 2) << 3
            | info.block_w << 4
            | info.block_bytes << 6
            | c.offset << 10
            | c.step << 14
    });
    [flags, d[0], d[1], d[2]]
}

fn push_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

struct Pipeline {
    layout: vk::PipelineLayout,
    set_layout: vk::DescriptorSetLayout,
    pipeline: vk::Pipeline,
    module: vk::ShaderModule,
}

/// One imported buffer and the descriptor sets the shaders read it through.
struct Slot {
    imp: Imported,
    /// One per plane (checksum).
    checksum_sets: Vec<vk::DescriptorSet>,
    convert_set: vk::DescriptorSet,
}

/// The Vulkan device, the importer, and everything shared by all imports.
pub struct Vulkan {
    /// The matrix last warned about as unconvertible (once per change).
    warned_matrix: Option<u8>,
    entry: ash::Entry,
    instance: ash::Instance,
    pdev: vk::PhysicalDevice,
    device: ash::Device,
    queue: vk::Queue,
    qf: u32,
    pub device_name: String,
    importer: Importer,
    checksum_buffer: Pipeline,
    checksum_image: Pipeline,
    convert_buffer: Pipeline,
    convert_image: Pipeline,
    desc_pool: vk::DescriptorPool,
    cmd_pool: vk::CommandPool,
    cmd: vk::CommandBuffer,
    fence: vk::Fence,
    out: (vk::Buffer, vk::DeviceMemory, *mut u32),
    rgba: Option<(vk::Buffer, vk::DeviceMemory, *const u8, u64)>,
    slots: Vec<Option<Slot>>,
    swap: Option<Swapchain>,
    /// Implicit sync: where the dma-buf's sync file is imported (temporarily) each frame.
    sync_sem: vk::Semaphore,
    /// Process CPU time (all threads) spent recording, submitting and waiting for command
    /// buffers (less the copy path's memcpy): the GPU's work and its driver, which lavapipe
    /// runs on this machine's CPU.
    gpu_cpu_ns: std::cell::Cell<u64>,
    /// Process CPU at `begin()`, and the memcpy time inside the current recording.
    gpu_t0: std::cell::Cell<u64>,
    copy_ns: std::cell::Cell<u64>,
    /// Declared last: destroyed after everything above was (see `Drop`).
    _dev: OwnedDevice,
}

/// A window's surface and swapchain.
struct Swapchain {
    surface_fn: ash::khr::surface::Instance,
    swap_fn: ash::khr::swapchain::Device,
    surface: vk::SurfaceKHR,
    swapchain: vk::SwapchainKHR,
    images: Vec<vk::Image>,
    bgra: bool,
    extent: vk::Extent2D,
    acquired: vk::Semaphore,
    copied: vk::Semaphore,
}

impl Vulkan {
    /// Open the first Vulkan device with a compute queue (hardware preferred over CPU devices)
    /// with every import extension it has, and build the shared pipelines.
    pub fn new(
        max_buffers: u32,
        display: Option<raw_window_handle::RawDisplayHandle>,
    ) -> Result<Self> {
        let inst_exts: &[*const std::ffi::c_char] = match display {
            Some(d) => ash_window::enumerate_required_extensions(d)
                .context("Vulkan surface extensions for this display")?,
            None => &[],
        };
        let swapchain: &[&'static std::ffi::CStr] = if display.is_some() {
            &[ash::khr::swapchain::NAME]
        } else {
            &[]
        };
        let dev = OwnedDevice::new(c"dmabuf-consumer", inst_exts, swapchain).map_err(|e| {
            anyhow!(
                "{e}{}",
                if display.is_some() {
                    " (a window needs VK_KHR_swapchain)"
                } else {
                    ""
                }
            )
        })?;
        let importer = dev.importer()?;
        let device = dev.device.clone();
        // SAFETY: a plain binary semaphore on a live device.
        let sync_sem =
            unsafe { device.create_semaphore(&vk::SemaphoreCreateInfo::default(), None) }?;

        let buf = vk::DescriptorType::STORAGE_BUFFER;
        let img = vk::DescriptorType::SAMPLED_IMAGE;
        let checksum_buffer = make_pipeline(&device, shaders::CHECKSUM_BUFFER, &[buf, buf])?;
        let checksum_image = make_pipeline(&device, shaders::CHECKSUM_IMAGE, &[img, buf])?;
        let convert_buffer =
            make_pipeline(&device, shaders::CONVERT_BUFFER, &[buf, buf, buf, buf])?;
        let convert_image = make_pipeline(&device, shaders::CONVERT_IMAGE, &[img, img, img, buf])?;

        let sets = max_buffers * 4 + 4;
        let sizes = [
            vk::DescriptorPoolSize::default()
                .ty(buf)
                .descriptor_count(sets * 4),
            vk::DescriptorPoolSize::default()
                .ty(img)
                .descriptor_count(sets * 3),
        ];
        // SAFETY: valid create-infos on a live device, here and for the command objects.
        let desc_pool = unsafe {
            device.create_descriptor_pool(
                &vk::DescriptorPoolCreateInfo::default()
                    .flags(vk::DescriptorPoolCreateFlags::FREE_DESCRIPTOR_SET)
                    .max_sets(sets)
                    .pool_sizes(&sizes),
                None,
            )
        }?;
        // SAFETY: as above.
        let cmd_pool = unsafe {
            device.create_command_pool(
                &vk::CommandPoolCreateInfo::default()
                    .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER)
                    .queue_family_index(dev.queue_family),
                None,
            )
        }?;
        // SAFETY: as above.
        let cmd = unsafe {
            device.allocate_command_buffers(
                &vk::CommandBufferAllocateInfo::default()
                    .command_pool(cmd_pool)
                    .level(vk::CommandBufferLevel::PRIMARY)
                    .command_buffer_count(1),
            )
        }?[0];
        // SAFETY: as above.
        let fence = unsafe { device.create_fence(&vk::FenceCreateInfo::default(), None) }?;
        let (b, m, p) = importer.host_buffer(
            4,
            vk::BufferUsageFlags::STORAGE_BUFFER | vk::BufferUsageFlags::TRANSFER_DST,
        )?;
        Ok(Vulkan {
            entry: dev.entry.clone(),
            instance: dev.instance.clone(),
            pdev: dev.physical_device,
            device,
            queue: dev.queue,
            qf: dev.queue_family,
            device_name: dev.name.clone(),
            importer,
            checksum_buffer,
            checksum_image,
            convert_buffer,
            convert_image,
            desc_pool,
            cmd_pool,
            cmd,
            fence,
            out: (b, m, p.cast()),
            rgba: None,
            warned_matrix: None,
            slots: (0..max_buffers).map(|_| None).collect(),
            swap: None,
            sync_sem,
            gpu_cpu_ns: std::cell::Cell::new(0),
            gpu_t0: std::cell::Cell::new(0),
            copy_ns: std::cell::Cell::new(0),
            _dev: dev,
        })
    }

    /// What the device cannot do for `path`, if anything.
    pub fn lacks(&self, path: ImportPath) -> Option<String> {
        self.importer.lacks(path)
    }

    /// The capability list for the handshake, for the import paths in `paths`.
    pub fn caps(&self, paths: &[ImportPath]) -> Vec<Cap> {
        self.importer.caps(paths)
    }

    /// Allocations and imports so far.
    pub fn counters(&self) -> Counters {
        self.importer.counters()
    }

    /// Import buffer `id` (once; later calls are no-ops) and make the shaders' descriptor
    /// sets for it.
    pub fn import(&mut self, id: u32, buf: &FrameBuffer, path: ImportPath) -> Result<()> {
        if self.slots.get(id as usize).is_some_and(|s| s.is_some()) {
            return Ok(());
        }
        if id as usize >= self.slots.len() {
            bail!("buffer id {id} beyond the pool size");
        }
        let imp = self.importer.import(buf, path)?;
        let mut slot = Slot {
            imp,
            checksum_sets: vec![],
            convert_set: vk::DescriptorSet::null(),
        };
        if let Err(e) = self.make_sets(&mut slot, buf) {
            self.free_sets(&slot);
            return Err(e);
        }
        self.slots[id as usize] = Some(slot);
        Ok(())
    }

    /// The checksum sets (one per plane) and the conversion set of an import.
    fn make_sets(&self, slot: &mut Slot, buf: &FrameBuffer) -> Result<()> {
        let n = buf.layout.planes.len();
        if slot.imp.path() == ImportPath::DmabufImage {
            for i in 0..n {
                let view = slot.imp.plane_view(i).context("a view per plane")?;
                let set = self.alloc_set(self.checksum_image.set_layout)?;
                slot.checksum_sets.push(set);
                self.write_image(set, 0, view);
                self.write_out(set, 1, self.out.0);
            }
            let set = self.alloc_set(self.convert_image.set_layout)?;
            slot.convert_set = set;
            for b in 0..3 {
                let view = slot.imp.plane_view(b).or(slot.imp.plane_view(0));
                self.write_image(set, b as u32, view.context("a view per plane")?);
            }
        } else {
            for i in 0..n {
                let set = self.alloc_set(self.checksum_buffer.set_layout)?;
                slot.checksum_sets.push(set);
                self.write_out(set, 0, slot.imp.plane_buffer(i).context("a buffer per fd")?);
                self.write_out(set, 1, self.out.0);
            }
            let set = self.alloc_set(self.convert_buffer.set_layout)?;
            slot.convert_set = set;
            // Bindings 0-2: each plane's buffer (plane 0's for unused ones).
            for b in 0..3 {
                let buffer = slot.imp.plane_buffer(b).or(slot.imp.plane_buffer(0));
                self.write_out(set, b as u32, buffer.context("a buffer per fd")?);
            }
        }
        Ok(())
    }

    fn free_sets(&self, slot: &Slot) {
        let sets: Vec<_> = slot
            .checksum_sets
            .iter()
            .copied()
            .chain((slot.convert_set != vk::DescriptorSet::null()).then_some(slot.convert_set))
            .collect();
        if !sets.is_empty() {
            // SAFETY: sets of our pool that no pending command uses (every submit is waited
            // for).
            let _ = unsafe { self.device.free_descriptor_sets(self.desc_pool, &sets) };
        }
    }

    /// Forget buffer `id` (the producer removed it).
    pub fn remove(&mut self, id: u32) {
        if let Some(slot) = self.slots.get_mut(id as usize).and_then(|s| s.take()) {
            self.free_sets(&slot);
            // The import frees itself (the device is idle: every submit is waited for).
        }
    }

    fn slot(&self, id: u32) -> Result<&Slot> {
        self.slots
            .get(id as usize)
            .and_then(|s| s.as_ref())
            .ok_or_else(|| anyhow!("buffer {id} was not imported"))
    }

    /// Before the shaders: the copy path's CPU copy and upload (timed apart from the GPU's
    /// work), and the acquire from the foreign queue family.
    fn record_in(&self, slot: &Slot) -> Result<()> {
        let t0 = dmabuf_core::time::metered_cpu_ns();
        slot.imp.copy_in()?;
        let spent = dmabuf_core::time::metered_cpu_ns().saturating_sub(t0);
        self.copy_ns.set(self.copy_ns.get() + spent);
        slot.imp.record_upload(self.cmd);
        slot.imp.record_acquire(self.cmd);
        Ok(())
    }

    fn alloc_set(&self, layout: vk::DescriptorSetLayout) -> Result<vk::DescriptorSet> {
        let layouts = [layout];
        // SAFETY: the pool was sized for every buffer's sets.
        Ok(unsafe {
            self.device.allocate_descriptor_sets(
                &vk::DescriptorSetAllocateInfo::default()
                    .descriptor_pool(self.desc_pool)
                    .set_layouts(&layouts),
            )
        }
        .context("allocating descriptor sets")?[0])
    }

    fn write_image(&self, set: vk::DescriptorSet, binding: u32, view: vk::ImageView) {
        let info = [vk::DescriptorImageInfo::default()
            .image_view(view)
            .image_layout(vk::ImageLayout::GENERAL)];
        let w = [vk::WriteDescriptorSet::default()
            .dst_set(set)
            .dst_binding(binding)
            .descriptor_type(vk::DescriptorType::SAMPLED_IMAGE)
            .image_info(&info)];
        // SAFETY: live set and view.
        unsafe { self.device.update_descriptor_sets(&w, &[]) };
    }

    fn write_out(&self, set: vk::DescriptorSet, binding: u32, buffer: vk::Buffer) {
        let info = [vk::DescriptorBufferInfo::default()
            .buffer(buffer)
            .range(vk::WHOLE_SIZE)];
        let w = [vk::WriteDescriptorSet::default()
            .dst_set(set)
            .dst_binding(binding)
            .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
            .buffer_info(&info)];
        // SAFETY: live set and buffer.
        unsafe { self.device.update_descriptor_sets(&w, &[]) };
    }

    fn begin(&self) -> Result<()> {
        self.gpu_t0.set(dmabuf_core::time::metered_cpu_ns());
        self.copy_ns.set(0);
        // SAFETY: the previous submit was waited for, so the command buffer and fence are idle.
        unsafe {
            self.device.reset_fences(&[self.fence])?;
            self.device
                .reset_command_buffer(self.cmd, vk::CommandBufferResetFlags::empty())?;
            self.device.begin_command_buffer(
                self.cmd,
                &vk::CommandBufferBeginInfo::default()
                    .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
            )?;
        }
        Ok(())
    }

    fn submit_and_wait(&self, wait_sync: bool) -> Result<()> {
        let cmds = [self.cmd];
        let waits = [self.sync_sem];
        let stages = [vk::PipelineStageFlags::ALL_COMMANDS];
        let mut submit = vk::SubmitInfo::default().command_buffers(&cmds);
        if wait_sync {
            submit = submit.wait_semaphores(&waits).wait_dst_stage_mask(&stages);
        }
        // SAFETY: a fully recorded command buffer; we wait for the fence before touching any
        // resource it uses again (so Release goes back only after the GPU is done).
        unsafe {
            self.device.end_command_buffer(self.cmd)?;
            self.device
                .queue_submit(self.queue, &[submit], self.fence)?;
            self.device
                .wait_for_fences(&[self.fence], true, GPU_TIMEOUT_NS)
                .context("waiting for the GPU (60 s)")?;
        }
        let spent = dmabuf_core::time::metered_cpu_ns()
            .saturating_sub(self.gpu_t0.get())
            .saturating_sub(self.copy_ns.get());
        self.gpu_cpu_ns.set(self.gpu_cpu_ns.get() + spent);
        Ok(())
    }

    /// Process CPU time spent in queue submits and fence waits so far (see `gpu_cpu_ns`).
    pub fn gpu_cpu_ns(&self) -> u64 {
        self.gpu_cpu_ns.get()
    }

    /// Record a global memory barrier: writes at `src` (stage, access) made visible to `dst`.
    fn memory_barrier(
        &self,
        src: (vk::PipelineStageFlags, vk::AccessFlags),
        dst: (vk::PipelineStageFlags, vk::AccessFlags),
    ) {
        let bar = [vk::MemoryBarrier::default()
            .src_access_mask(src.1)
            .dst_access_mask(dst.1)];
        // SAFETY: recording into our command buffer.
        unsafe {
            self.device.cmd_pipeline_barrier(
                self.cmd,
                src.0,
                dst.0,
                vk::DependencyFlags::empty(),
                &bar,
                &[],
                &[],
            )
        };
    }

    /// Socket-copy path: `fill` writes the frame into buffer `id`'s staging memory (e.g. reads
    /// it from a socket), then the GPU copies it into the device buffer; returns once the frame
    /// is GPU-visible (fence signalled).
    pub fn upload_with(
        &mut self,
        id: u32,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<()> {
        let slot = self
            .slots
            .get_mut(id as usize)
            .and_then(|s| s.as_mut())
            .ok_or_else(|| anyhow!("buffer {id} was not imported"))?;
        let path = slot.imp.path();
        let dst = slot.imp.staging_mut().ok_or_else(|| {
            anyhow!("upload_with needs the copy import path and one fd (buffer {id} is {path})")
        })?;
        fill(dst)?;
        self.begin()?;
        self.slot(id)?.imp.record_upload(self.cmd);
        self.submit_and_wait(false)
    }

    /// Make the frame in buffer `id` GPU-visible without computing anything: the copy path
    /// copies and uploads, the zero-copy paths acquire and release the memory.
    pub fn touch(&mut self, id: u32, buf: &FrameBuffer) -> Result<()> {
        let slot = self.slot(id)?;
        let path = slot.imp.path();
        self.begin()?;
        self.record_in(slot)?;
        slot.imp.record_release(self.cmd);
        let wait = self.importer.implicit_sync(buf, path, self.sync_sem)?;
        self.submit_and_wait(wait)
    }

    /// The frame checksum of buffer `id`, computed by the GPU over the imported memory.
    pub fn checksum(&mut self, id: u32, buf: &FrameBuffer) -> Result<u32> {
        let slot = self.slot(id)?;
        // SAFETY: `out.2` maps 4 host-coherent bytes the GPU is not using (idle).
        unsafe { self.out.2.write_volatile(0) };
        self.begin()?;
        self.record_in(slot)?;
        let f = buf.layout.format;
        let images = plane_images(f.pixel, f.width, f.height);
        for (i, p) in buf.layout.planes.iter().enumerate() {
            let (pipe, words) = if slot.imp.path() == ImportPath::DmabufImage {
                let pi = images[i];
                (
                    &self.checksum_image,
                    vec![
                        pi.width,
                        pi.height,
                        pi.bytes_per_texel,
                        pi.sample_bytes,
                        i as u32,
                    ],
                )
            } else {
                let offset = u32::try_from(p.offset).context("plane offset beyond 4 GiB")?;
                (
                    &self.checksum_buffer,
                    vec![offset, p.stride, p.row_bytes, p.rows, i as u32],
                )
            };
            self.dispatch(
                pipe,
                slot.checksum_sets[i],
                &words,
                [p.rows.div_ceil(64), 1, 1],
            );
        }
        slot.imp.record_release(self.cmd);
        self.host_barrier();
        let wait = self
            .importer
            .implicit_sync(buf, slot.imp.path(), self.sync_sem)?;
        self.submit_and_wait(wait)?;
        // SAFETY: the GPU finished (fence) and the memory is host-coherent.
        Ok(unsafe { self.out.2.read_volatile() })
    }

    /// Record one compute dispatch of `pipe` over descriptor `set` with `words` as push
    /// constants.
    fn dispatch(&self, pipe: &Pipeline, set: vk::DescriptorSet, words: &[u32], groups: [u32; 3]) {
        debug_assert!(
            words.len() * 4 <= 128,
            "push constants exceed the 128-byte range"
        );
        // SAFETY: recording into our command buffer with a pipeline, a set of its layout and a
        // push range inside the layout's 128 bytes.
        unsafe {
            self.device
                .cmd_bind_pipeline(self.cmd, vk::PipelineBindPoint::COMPUTE, pipe.pipeline);
            self.device.cmd_bind_descriptor_sets(
                self.cmd,
                vk::PipelineBindPoint::COMPUTE,
                pipe.layout,
                0,
                &[set],
                &[],
            );
            self.device.cmd_push_constants(
                self.cmd,
                pipe.layout,
                vk::ShaderStageFlags::COMPUTE,
                0,
                &push_bytes(words),
            );
            self.device
                .cmd_dispatch(self.cmd, groups[0], groups[1], groups[2]);
        }
    }

    fn host_barrier(&self) {
        self.memory_barrier(
            (
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::AccessFlags::SHADER_WRITE,
            ),
            (vk::PipelineStageFlags::HOST, vk::AccessFlags::HOST_READ),
        );
    }

    /// Convert buffer `id` to RGBA8 on the GPU (`width * height * 4` bytes, top row first).
    pub fn convert(
        &mut self,
        id: u32,
        buf: &FrameBuffer,
        color: ColorInfo,
        geometry: Geometry,
    ) -> Result<Vec<u8>> {
        let (ptr, bytes) = self.convert_into(id, buf, color, geometry, false)?;
        // SAFETY: the GPU finished writing `bytes` host-coherent bytes at `ptr`.
        Ok(unsafe { std::slice::from_raw_parts(ptr, bytes) }.to_vec())
    }

    /// Convert into the shared RGBA buffer (BGRA when `swap_rb`); returns where and how long.
    fn convert_into(
        &mut self,
        id: u32,
        buf: &FrameBuffer,
        color: ColorInfo,
        geometry: Geometry,
        swap_rb: bool,
    ) -> Result<(*const u8, usize)> {
        let f = buf.layout.format;
        // Upright and at its display aspect (see source_xy in the shaders).
        let ((out_w, out_h), scaled_w) = geometry.display_size(f.width, f.height);
        let bytes = u64::from(out_w) * u64::from(out_h) * 4;
        if self.rgba.as_ref().is_none_or(|r| r.3 < bytes) {
            if let Some((b, m, _, _)) = self.rgba.take() {
                // SAFETY: idle (every submit is waited for).
                unsafe {
                    self.device.destroy_buffer(b, None);
                    self.device.free_memory(m, None);
                }
            }
            let (b, m, p) = self.importer.host_buffer(
                bytes,
                vk::BufferUsageFlags::STORAGE_BUFFER | vk::BufferUsageFlags::TRANSFER_SRC,
            )?;
            self.rgba = Some((b, m, p, bytes));
        }
        let (rgba_buf, _, rgba_ptr, _) = *self.rgba.as_ref().expect("just made");
        // Kr, Kb of the stream's matrix (unspecified: BT.601 below 720 rows, else BT.709).
        // A matrix with no Kr/Kb (YCgCo, ICtCp …) is shown as BT.709, said once per stream
        // (statistics: colorimetry.converted_with).
        let (kr, kb) = match color.luma_coefficients(f.height) {
            Some((k, _)) => k,
            None if f.pixel.is_yuv() => {
                if self.warned_matrix != Some(color.matrix) {
                    tracing::warn!(
                        "no conversion for the {} matrix: snapshots and the window show it as \
                         BT.709 (wrong colours)",
                        color.matrix_name()
                    );
                    self.warned_matrix = Some(color.matrix);
                }
                (0.2126, 0.0722)
            }
            None => (0.0, 0.0),
        };
        let slot = self.slot(id)?;
        let pipe = if slot.imp.path() == ImportPath::DmabufImage {
            &self.convert_image
        } else {
            &self.convert_buffer
        };
        self.write_out(slot.convert_set, 3, rgba_buf);
        let [flags, c0, c1, c2] = format_words(f.pixel, color.range == 2, swap_rb);
        let mut words = vec![
            f.width,
            f.height,
            kr.to_bits(),
            kb.to_bits(),
            flags,
            c0,
            c1,
            c2,
        ];
        if slot.imp.path() == ImportPath::DmabufImage {
            let texel_bytes = plane_images(f.pixel, f.width, f.height)
                .iter()
                .enumerate()
                .map(|(i, pi)| pi.bytes_per_texel << (4 * i))
                .sum();
            words.push(texel_bytes);
        } else {
            for i in 0..3 {
                let p = buf.layout.planes.get(i).unwrap_or(&buf.layout.planes[0]);
                words.push(u32::try_from(p.offset).context("plane offset beyond 4 GiB")?);
                words.push(p.stride);
            }
        }
        words.extend([
            out_w,
            out_h,
            scaled_w,
            u32::from(geometry.rotation),
            geometry.mirror as u32,
        ]);
        self.begin()?;
        self.record_in(slot)?;
        self.dispatch(
            pipe,
            slot.convert_set,
            &words,
            [out_w.div_ceil(8), out_h.div_ceil(8), 1],
        );
        slot.imp.record_release(self.cmd);
        self.host_barrier();
        let wait = self
            .importer
            .implicit_sync(buf, slot.imp.path(), self.sync_sem)?;
        self.submit_and_wait(wait)?;
        Ok((rgba_ptr, bytes as usize))
    }

    /// Create a surface and swapchain for a window of the display given to [`Vulkan::new`].
    pub fn attach_window(
        &mut self,
        display: raw_window_handle::RawDisplayHandle,
        window: raw_window_handle::RawWindowHandle,
        width: u32,
        height: u32,
    ) -> Result<()> {
        let surface_fn = ash::khr::surface::Instance::new(&self.entry, &self.instance);
        let swap_fn = ash::khr::swapchain::Device::new(&self.instance, &self.device);
        // SAFETY: handles of a live window on the display the instance was created for.
        let surface = unsafe {
            ash_window::create_surface(&self.entry, &self.instance, display, window, None)
        }
        .context("creating the window's Vulkan surface")?;
        // SAFETY: queries on a live surface.
        let (supported, caps, formats, modes) = unsafe {
            (
                surface_fn.get_physical_device_surface_support(self.pdev, self.qf, surface)?,
                surface_fn.get_physical_device_surface_capabilities(self.pdev, surface)?,
                surface_fn.get_physical_device_surface_formats(self.pdev, surface)?,
                surface_fn.get_physical_device_surface_present_modes(self.pdev, surface)?,
            )
        };
        if !supported {
            bail!(
                "{}'s compute queue cannot present to this window",
                self.device_name
            );
        }
        let fmt = formats
            .iter()
            .find(|f| {
                f.format == vk::Format::B8G8R8A8_UNORM || f.format == vk::Format::R8G8B8A8_UNORM
            })
            .ok_or_else(|| anyhow!("the window offers no 8-bit UNORM RGBA/BGRA format"))?;
        if !caps
            .supported_usage_flags
            .contains(vk::ImageUsageFlags::TRANSFER_DST)
        {
            bail!("the window's swapchain images cannot be copied into");
        }
        let mode = [vk::PresentModeKHR::MAILBOX, vk::PresentModeKHR::IMMEDIATE]
            .into_iter()
            .find(|m| modes.contains(m))
            .unwrap_or(vk::PresentModeKHR::FIFO);
        let extent = if caps.current_extent.width == u32::MAX {
            vk::Extent2D { width, height }
        } else {
            caps.current_extent
        };
        let count = (caps.min_image_count + 1).min(if caps.max_image_count == 0 {
            u32::MAX
        } else {
            caps.max_image_count
        });
        let info = vk::SwapchainCreateInfoKHR::default()
            .surface(surface)
            .min_image_count(count)
            .image_format(fmt.format)
            .image_color_space(fmt.color_space)
            .image_extent(extent)
            .image_array_layers(1)
            .image_usage(vk::ImageUsageFlags::TRANSFER_DST)
            .image_sharing_mode(vk::SharingMode::EXCLUSIVE)
            .pre_transform(caps.current_transform)
            .composite_alpha(vk::CompositeAlphaFlagsKHR::OPAQUE)
            .present_mode(mode)
            .clipped(true);
        // SAFETY: parameters checked against the surface's capabilities above.
        let swapchain =
            unsafe { swap_fn.create_swapchain(&info, None) }.context("vkCreateSwapchainKHR")?;
        // SAFETY: a live swapchain; plain semaphores.
        let (images, acquired, copied) = unsafe {
            (
                swap_fn.get_swapchain_images(swapchain)?,
                self.device
                    .create_semaphore(&vk::SemaphoreCreateInfo::default(), None)?,
                self.device
                    .create_semaphore(&vk::SemaphoreCreateInfo::default(), None)?,
            )
        };
        tracing::info!(
            "window: {}x{} swapchain, {:?}, {:?}, {} images",
            extent.width,
            extent.height,
            fmt.format,
            mode,
            images.len()
        );
        self.swap = Some(Swapchain {
            surface_fn,
            swap_fn,
            surface,
            swapchain,
            images,
            bgra: fmt.format == vk::Format::B8G8R8A8_UNORM,
            extent,
            acquired,
            copied,
        });
        Ok(())
    }

    /// Show the frame in buffer `id` in the window: GPU conversion, then a copy into the next
    /// swapchain image and a present.
    pub fn present(
        &mut self,
        id: u32,
        buf: &FrameBuffer,
        color: ColorInfo,
        geometry: Geometry,
    ) -> Result<()> {
        let bgra = self.swap.as_ref().map(|s| s.bgra).unwrap_or(false);
        self.convert_into(id, buf, color, geometry, bgra)?;
        let f = buf.layout.format;
        let ((out_w, out_h), _) = geometry.display_size(f.width, f.height);
        let rgba = self.rgba.as_ref().expect("made by convert_into").0;
        let sw = self
            .swap
            .as_ref()
            .ok_or_else(|| anyhow!("no window attached"))?;
        // SAFETY: a live swapchain and an unsignalled semaphore.
        let index = match unsafe {
            sw.swap_fn.acquire_next_image(
                sw.swapchain,
                1_000_000_000,
                sw.acquired,
                vk::Fence::null(),
            )
        } {
            Ok((i, _)) => i,
            Err(vk::Result::ERROR_OUT_OF_DATE_KHR) => return Ok(()),
            Err(e) => bail!("vkAcquireNextImageKHR: {e}"),
        };
        let image = sw.images[index as usize];
        let to = |old, new, src_access, dst_access| {
            vk::ImageMemoryBarrier::default()
                .src_access_mask(src_access)
                .dst_access_mask(dst_access)
                .old_layout(old)
                .new_layout(new)
                .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
                .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
                .image(image)
                .subresource_range(color_range())
        };
        let region = [vk::BufferImageCopy::default()
            .buffer_row_length(out_w)
            .image_subresource(vk::ImageSubresourceLayers {
                aspect_mask: vk::ImageAspectFlags::COLOR,
                mip_level: 0,
                base_array_layer: 0,
                layer_count: 1,
            })
            .image_extent(vk::Extent3D {
                width: out_w.min(sw.extent.width),
                height: out_h.min(sw.extent.height),
                depth: 1,
            })];
        self.begin()?;
        let barrier = |src, dst, b: vk::ImageMemoryBarrier<'_>| {
            // SAFETY: recording a layout transition of the acquired swapchain image.
            unsafe {
                self.device.cmd_pipeline_barrier(
                    self.cmd,
                    src,
                    dst,
                    vk::DependencyFlags::empty(),
                    &[],
                    &[],
                    &[b],
                )
            }
        };
        barrier(
            vk::PipelineStageFlags::TOP_OF_PIPE,
            vk::PipelineStageFlags::TRANSFER,
            to(
                vk::ImageLayout::UNDEFINED,
                vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                vk::AccessFlags::empty(),
                vk::AccessFlags::TRANSFER_WRITE,
            ),
        );
        // SAFETY: a buffer-to-image copy inside both resources' bounds.
        unsafe {
            self.device.cmd_copy_buffer_to_image(
                self.cmd,
                rgba,
                image,
                vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                &region,
            )
        };
        barrier(
            vk::PipelineStageFlags::TRANSFER,
            vk::PipelineStageFlags::BOTTOM_OF_PIPE,
            to(
                vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                vk::ImageLayout::PRESENT_SRC_KHR,
                vk::AccessFlags::TRANSFER_WRITE,
                vk::AccessFlags::empty(),
            ),
        );
        // SAFETY: ending the command buffer we began above.
        unsafe {
            self.device.end_command_buffer(self.cmd)?;
        }
        let cmds = [self.cmd];
        let waits = [sw.acquired];
        let stages = [vk::PipelineStageFlags::TRANSFER];
        let signals = [sw.copied];
        // SAFETY: the semaphores belong to this swapchain's frame; we wait on the fence.
        unsafe {
            self.device.queue_submit(
                self.queue,
                &[vk::SubmitInfo::default()
                    .command_buffers(&cmds)
                    .wait_semaphores(&waits)
                    .wait_dst_stage_mask(&stages)
                    .signal_semaphores(&signals)],
                self.fence,
            )?;
            self.device
                .wait_for_fences(&[self.fence], true, GPU_TIMEOUT_NS)?;
        }
        let swapchains = [sw.swapchain];
        let indices = [index];
        // SAFETY: presenting the image we acquired and copied into.
        match unsafe {
            sw.swap_fn.queue_present(
                self.queue,
                &vk::PresentInfoKHR::default()
                    .wait_semaphores(&signals)
                    .swapchains(&swapchains)
                    .image_indices(&indices),
            )
        } {
            Ok(_) | Err(vk::Result::ERROR_OUT_OF_DATE_KHR) => Ok(()),
            Err(e) => bail!("vkQueuePresentKHR: {e}"),
        }
    }
}

fn make_pipeline(
    device: &ash::Device,
    spv: &[u8],
    bindings: &[vk::DescriptorType],
) -> Result<Pipeline> {
    let code = ash::util::read_spv(&mut std::io::Cursor::new(spv))?;
    let b: Vec<_> = bindings
        .iter()
        .enumerate()
        .map(|(i, &ty)| {
            vk::DescriptorSetLayoutBinding::default()
                .binding(i as u32)
                .descriptor_type(ty)
                .descriptor_count(1)
                .stage_flags(vk::ShaderStageFlags::COMPUTE)
        })
        .collect();
    // SAFETY: valid create-infos on a live device; the SPIR-V was validated by naga at build.
    unsafe {
        let set_layout = device.create_descriptor_set_layout(
            &vk::DescriptorSetLayoutCreateInfo::default().bindings(&b),
            None,
        )?;
        // 128 bytes: the least every Vulkan device offers (maxPushConstantsSize).
        let ranges = [vk::PushConstantRange::default()
            .stage_flags(vk::ShaderStageFlags::COMPUTE)
            .size(128)];
        let sets = [set_layout];
        let layout = device.create_pipeline_layout(
            &vk::PipelineLayoutCreateInfo::default()
                .set_layouts(&sets)
                .push_constant_ranges(&ranges),
            None,
        )?;
        let module = device
            .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&code), None)?;
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(module)
            .name(c"main");
        let pipeline = device
            .create_compute_pipelines(
                vk::PipelineCache::null(),
                &[vk::ComputePipelineCreateInfo::default()
                    .stage(stage)
                    .layout(layout)],
                None,
            )
            .map_err(|(_, e)| anyhow!("vkCreateComputePipelines: {e}"))?[0];
        Ok(Pipeline {
            layout,
            set_layout,
            pipeline,
            module,
        })
    }
}

impl Drop for Vulkan {
    fn drop(&mut self) {
        // SAFETY: wait for idle, then destroy every object of ours once, children before
        // parents; the imports free themselves; the device and instance go with `dev`, after.
        unsafe {
            let _ = self.device.device_wait_idle();
            for slot in self.slots.iter_mut().filter_map(|s| s.take()) {
                drop(slot);
            }
            if let Some((b, m, _, _)) = self.rgba.take() {
                self.device.destroy_buffer(b, None);
                self.device.free_memory(m, None);
            }
            if let Some(sw) = self.swap.take() {
                sw.swap_fn.destroy_swapchain(sw.swapchain, None);
                self.device.destroy_semaphore(sw.acquired, None);
                self.device.destroy_semaphore(sw.copied, None);
                sw.surface_fn.destroy_surface(sw.surface, None);
            }
            self.device.destroy_buffer(self.out.0, None);
            self.device.free_memory(self.out.1, None);
            self.device.destroy_fence(self.fence, None);
            self.device.destroy_semaphore(self.sync_sem, None);
            self.device.destroy_command_pool(self.cmd_pool, None);
            self.device.destroy_descriptor_pool(self.desc_pool, None);
            for p in [
                &self.checksum_buffer,
                &self.checksum_image,
                &self.convert_buffer,
                &self.convert_image,
            ] {
                self.device.destroy_pipeline(p.pipeline, None);
                self.device.destroy_shader_module(p.module, None);
                self.device.destroy_pipeline_layout(p.layout, None);
                self.device
                    .destroy_descriptor_set_layout(p.set_layout, None);
            }
        }
    }
}
