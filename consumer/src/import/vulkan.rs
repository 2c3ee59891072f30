//! The Vulkan importer: received buffers become GPU resources with no CPU copy, imported once per
//! buffer id, and compute shaders read them in place (the frame checksum, the RGBA conversion).
//!
//! Import paths (chosen by probing, or forced with `--import`):
//! - `dmabuf-image`: the dma-buf as one single-plane image per plane (R8 / R8G8 / 4-byte texels)
//!   with `VK_EXT_image_drm_format_modifier` explicit layouts (offset, row pitch). Multi-planar
//!   images with a modifier are not used: lavapipe refuses them, and per-plane images are the
//!   portable path on real GPUs too.
//! - `dmabuf-buffer`: the dma-buf as a `VkBuffer` the shaders address byte by byte.
//! - `host-pointer`: a memfd's mapping imported with `VK_EXT_external_memory_host`.
//! - `copy`: the honest comparison: a CPU `memcpy` of the frame into a staging buffer and a GPU
//!   copy into a device buffer, every frame.
//!
//! Rules followed (wlroots `render/vulkan/texture.c`, FFmpeg `hwcontext_vulkan.c`): probe before
//! importing; dup the fd and hand the dup to Vulkan, which owns it only on success; dedicated
//! allocations with the memory type from `vkGetMemoryFdPropertiesKHR`; queue-family acquire from
//! and release to `VK_QUEUE_FAMILY_FOREIGN_EXT` around every use of a dma-buf; the buffer goes
//! back to the producer only after the GPU work on it has finished (we wait on a fence).
#![allow(unsafe_code)]

use anyhow::{anyhow, bail, Context as _, Result};
use ash::vk;
use dmabuf_core::buffer::MemoryKind;
use dmabuf_core::format::{plane_geometry, ColorModel, PixelFormat, MOD_LINEAR};
use dmabuf_core::mapping::CpuMapping;
use dmabuf_core::proto::wire::{Cap, ColorInfo, Geometry};
use dmabuf_core::FrameBuffer;
use std::ffi::CStr;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, IntoRawFd};

/// How long to wait for the GPU before calling it hung. Generous: lavapipe under QEMU/TCG on a
/// loaded machine (the real-kernel lane) needs seconds for a 1080p conversion.
const GPU_TIMEOUT_NS: u64 = 60_000_000_000;

/// How frames reach the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportPath {
    DmabufImage,
    DmabufBuffer,
    HostPointer,
    Copy,
}

impl ImportPath {
    pub fn name(self) -> &'static str {
        match self {
            ImportPath::DmabufImage => "dmabuf-image",
            ImportPath::DmabufBuffer => "dmabuf-buffer",
            ImportPath::HostPointer => "host-pointer",
            ImportPath::Copy => "copy",
        }
    }

    /// The memory kinds this path takes.
    pub fn memory(self) -> &'static [MemoryKind] {
        match self {
            ImportPath::DmabufImage | ImportPath::DmabufBuffer => &[MemoryKind::DmaBuf],
            ImportPath::HostPointer => &[MemoryKind::Memfd],
            ImportPath::Copy => &[MemoryKind::Memfd, MemoryKind::DmaBuf],
        }
    }
}

impl fmt::Display for ImportPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a plane is seen as an image.
#[derive(Debug, Clone, Copy)]
struct PlaneImage {
    format: vk::Format,
    /// Texels per row and rows.
    width: u32,
    height: u32,
    bytes_per_texel: u32,
    /// Bytes per channel: 1 (UNORM8) or 2 (UNORM16).
    sample_bytes: u32,
}

/// Each plane as an image of whole texels: the plane's memory block when it is 1, 2 or 4
/// samples (R8, R8G8, R8G8B8A8; R16, R16G16), else one sample per texel (packed 24-bit RGB as
/// R8, three texels a pixel). Shaders read channels by byte address, so the channel order of
/// the format does not matter.
fn plane_images(pixel: PixelFormat, width: u32, height: u32) -> Vec<PlaneImage> {
    let sb = pixel.sampling().sample_bytes;
    pixel
        .planes()
        .iter()
        .enumerate()
        .map(|(i, info)| {
            let (row_bytes, rows) = plane_geometry(pixel, i, width, height);
            let (format, bpt) = match (sb, info.block_bytes) {
                (1, 2) => (vk::Format::R8G8_UNORM, 2),
                (1, 4) => (vk::Format::R8G8B8A8_UNORM, 4),
                (1, _) => (vk::Format::R8_UNORM, 1),
                (_, 4) => (vk::Format::R16G16_UNORM, 4),
                _ => (vk::Format::R16_UNORM, 2),
            };
            PlaneImage {
                format,
                width: row_bytes / bpt,
                height: rows,
                bytes_per_texel: bpt,
                sample_bytes: sb,
            }
        })
        .collect()
}

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

/// Counters that prove the steady state allocates and imports nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// `vkAllocateMemory` calls (imports included).
    pub allocations: u64,
    /// Imports of external memory (dma-buf fds, host pointers).
    pub imports: u64,
    /// Submits that waited on a dma-buf's exported sync file (implicit sync).
    pub implicit_sync_waits: u64,
}

struct Pipeline {
    layout: vk::PipelineLayout,
    set_layout: vk::DescriptorSetLayout,
    pipeline: vk::Pipeline,
    module: vk::ShaderModule,
}

/// Copy path: one fd's staging buffer, its mapping and size, the CPU mapping of the fd, and
/// the device buffer the staging buffer is uploaded to.
struct Staging {
    buffer: vk::Buffer,
    ptr: *mut u8,
    size: u64,
    map: CpuMapping,
    dest: vk::Buffer,
}

/// One imported buffer and everything made for it.
struct Imported {
    path: ImportPath,
    buffers: Vec<vk::Buffer>,
    memories: Vec<vk::DeviceMemory>,
    images: Vec<vk::Image>,
    views: Vec<vk::ImageView>,
    /// What the checksum dispatches read: one set per plane.
    checksum_sets: Vec<vk::DescriptorSet>,
    convert_set: vk::DescriptorSet,
    /// The buffers the shaders read (buffer paths): one per fd of the frame.
    read_buffers: Vec<vk::Buffer>,
    /// Copy path, per fd: staging buffer, its mapping, size, the CPU mapping of the fd, and
    /// the device buffer it is uploaded to.
    staging: Vec<Staging>,
    /// Host-pointer path: the mappings Vulkan reads (must outlive the import).
    _host_maps: Vec<CpuMapping>,
    /// Images are still in their initial layout.
    fresh: bool,
}

/// The Vulkan device and everything shared by all imports.
pub struct Vulkan {
    /// The matrix last warned about as unconvertible (once per change).
    warned_matrix: Option<u8>,
    entry: ash::Entry,
    instance: ash::Instance,
    pdev: vk::PhysicalDevice,
    device: ash::Device,
    queue: vk::Queue,
    qf: u32,
    mem_props: vk::PhysicalDeviceMemoryProperties,
    pub device_name: String,
    has_dma_buf: bool,
    has_modifier: bool,
    has_host: bool,
    has_foreign: bool,
    fd_ext: Option<ash::khr::external_memory_fd::Device>,
    host_ext: Option<ash::ext::external_memory_host::Device>,
    host_align: u64,
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
    imported: Vec<Option<Imported>>,
    swap: Option<Swapchain>,
    /// Implicit sync: where the dma-buf's sync file is imported (temporarily) each frame.
    sem_fd: Option<ash::khr::external_semaphore_fd::Device>,
    sync_sem: vk::Semaphore,
    pub counters: Counters,
    /// Process CPU time (all threads) spent recording, submitting and waiting for command
    /// buffers (less the copy path's memcpy): the GPU's work and its driver, which lavapipe
    /// runs on this machine's CPU.
    gpu_cpu_ns: std::cell::Cell<u64>,
    /// Process CPU at `begin()`, and the memcpy time inside the current recording.
    gpu_t0: std::cell::Cell<u64>,
    copy_ns: std::cell::Cell<u64>,
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

fn has_ext(exts: &[vk::ExtensionProperties], name: &CStr) -> bool {
    exts.iter().any(|e| e.extension_name_as_c_str() == Ok(name))
}

impl Vulkan {
    /// Open the first Vulkan device with a compute queue (hardware preferred over CPU devices)
    /// and build the shared pipelines.
    pub fn new(
        max_buffers: u32,
        display: Option<raw_window_handle::RawDisplayHandle>,
    ) -> Result<Self> {
        // SAFETY: loading the system Vulkan loader; no Vulkan object exists yet.
        let entry = unsafe { ash::Entry::load() }.map_err(|e| {
            anyhow!("no Vulkan loader ({e}); install libvulkan1 and a driver (mesa-vulkan-drivers)")
        })?;
        let app = vk::ApplicationInfo::default()
            .application_name(c"dmabuf-consumer")
            .api_version(vk::API_VERSION_1_1);
        let inst_exts: &[*const std::ffi::c_char] = match display {
            Some(d) => ash_window::enumerate_required_extensions(d)
                .context("Vulkan surface extensions for this display")?,
            None => &[],
        };
        // SAFETY: a valid create-info; the extensions are the ones ash-window needs for the
        // display (none without a window).
        let instance = unsafe {
            entry.create_instance(
                &vk::InstanceCreateInfo::default()
                    .application_info(&app)
                    .enabled_extension_names(inst_exts),
                None,
            )
        }
        .context("vkCreateInstance (is a Vulkan driver installed?)")?;
        // SAFETY: `instance` is live; every query below only reads.
        let pdevs = unsafe { instance.enumerate_physical_devices() }?;
        if pdevs.is_empty() {
            bail!("no Vulkan driver found a device (install mesa-vulkan-drivers for lavapipe)");
        }
        let rank = |p: vk::PhysicalDevice| {
            // SAFETY: a device handle from enumerate_physical_devices.
            match unsafe { instance.get_physical_device_properties(p) }.device_type {
                vk::PhysicalDeviceType::DISCRETE_GPU => 0,
                vk::PhysicalDeviceType::INTEGRATED_GPU => 1,
                vk::PhysicalDeviceType::VIRTUAL_GPU => 2,
                _ => 3,
            }
        };
        let pdev = *pdevs.iter().min_by_key(|&&p| rank(p)).expect("not empty");
        // SAFETY: as above.
        let props = unsafe { instance.get_physical_device_properties(pdev) };
        let device_name = props
            .device_name_as_c_str()
            .unwrap_or(c"?")
            .to_string_lossy()
            .into_owned();
        // SAFETY: as above.
        let exts = unsafe { instance.enumerate_device_extension_properties(pdev) }?;
        let has_fd = has_ext(&exts, ash::khr::external_memory_fd::NAME);
        let has_dma_buf = has_fd && has_ext(&exts, ash::ext::external_memory_dma_buf::NAME);
        let has_modifier = has_dma_buf && has_ext(&exts, ash::ext::image_drm_format_modifier::NAME);
        let has_host = has_ext(&exts, ash::ext::external_memory_host::NAME);
        let has_foreign = has_ext(&exts, ash::ext::queue_family_foreign::NAME);
        // Implicit sync: a dma-buf's fences exported as a sync file become a semaphore wait.
        let has_sync_fd = has_dma_buf && has_ext(&exts, ash::khr::external_semaphore_fd::NAME) && {
            let info = vk::PhysicalDeviceExternalSemaphoreInfo::default()
                .handle_type(vk::ExternalSemaphoreHandleTypeFlags::SYNC_FD);
            let mut props = vk::ExternalSemaphoreProperties::default();
            // SAFETY: valid input and output structs.
            unsafe {
                instance.get_physical_device_external_semaphore_properties(pdev, &info, &mut props)
            };
            props
                .external_semaphore_features
                .contains(vk::ExternalSemaphoreFeatureFlags::IMPORTABLE)
        };
        // SAFETY: as above.
        let qf = unsafe { instance.get_physical_device_queue_family_properties(pdev) }
            .iter()
            .position(|q| q.queue_flags.contains(vk::QueueFlags::COMPUTE))
            .ok_or_else(|| anyhow!("{device_name} has no compute queue"))? as u32;
        let mut names = Vec::new();
        if has_dma_buf {
            names.push(ash::khr::external_memory_fd::NAME.as_ptr());
            names.push(ash::ext::external_memory_dma_buf::NAME.as_ptr());
        }
        if has_modifier {
            names.push(ash::ext::image_drm_format_modifier::NAME.as_ptr());
        }
        if has_host {
            names.push(ash::ext::external_memory_host::NAME.as_ptr());
        }
        if has_foreign {
            names.push(ash::ext::queue_family_foreign::NAME.as_ptr());
        }
        if has_sync_fd {
            names.push(ash::khr::external_semaphore_fd::NAME.as_ptr());
        }
        if display.is_some() {
            if !has_ext(&exts, ash::khr::swapchain::NAME) {
                bail!("{device_name} cannot present to a window (no VK_KHR_swapchain)");
            }
            names.push(ash::khr::swapchain::NAME.as_ptr());
        }
        let prio = [1.0f32];
        let qci = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(qf)
            .queue_priorities(&prio)];
        // SAFETY: every extension named was reported by the device; the queue family exists.
        let device = unsafe {
            instance.create_device(
                pdev,
                &vk::DeviceCreateInfo::default()
                    .queue_create_infos(&qci)
                    .enabled_extension_names(&names),
                None,
            )
        }
        .context("vkCreateDevice")?;
        // SAFETY: queue 0 of a family we created the device with.
        let queue = unsafe { device.get_device_queue(qf, 0) };
        // SAFETY: as above.
        let mem_props = unsafe { instance.get_physical_device_memory_properties(pdev) };
        let host_align = if has_host {
            let mut hp = vk::PhysicalDeviceExternalMemoryHostPropertiesEXT::default();
            let mut p2 = vk::PhysicalDeviceProperties2::default().push_next(&mut hp);
            // SAFETY: a valid chain of output structs.
            unsafe { instance.get_physical_device_properties2(pdev, &mut p2) };
            hp.min_imported_host_pointer_alignment
        } else {
            4096
        };
        let fd_ext =
            has_dma_buf.then(|| ash::khr::external_memory_fd::Device::new(&instance, &device));
        let host_ext =
            has_host.then(|| ash::ext::external_memory_host::Device::new(&instance, &device));
        let sem_fd =
            has_sync_fd.then(|| ash::khr::external_semaphore_fd::Device::new(&instance, &device));
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
                    .queue_family_index(qf),
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
        let mut vk = Vulkan {
            entry,
            instance,
            pdev,
            device,
            queue,
            qf,
            mem_props,
            device_name,
            has_dma_buf,
            has_modifier,
            has_host,
            has_foreign,
            fd_ext,
            host_ext,
            host_align,
            checksum_buffer,
            checksum_image,
            convert_buffer,
            convert_image,
            desc_pool,
            cmd_pool,
            cmd,
            fence,
            out: (
                vk::Buffer::null(),
                vk::DeviceMemory::null(),
                std::ptr::null_mut(),
            ),
            rgba: None,
            warned_matrix: None,
            imported: (0..max_buffers).map(|_| None).collect(),
            swap: None,
            sem_fd,
            sync_sem,
            counters: Counters::default(),
            gpu_cpu_ns: std::cell::Cell::new(0),
            gpu_t0: std::cell::Cell::new(0),
            copy_ns: std::cell::Cell::new(0),
        };
        let (b, m, p) = vk.host_buffer(4, vk::BufferUsageFlags::TRANSFER_DST)?;
        vk.out = (b, m, p.cast());
        tracing::info!(
            "Vulkan device {}: dma-buf import {}, DRM modifiers {}, host-pointer import {} (alignment {}), foreign queue {}, sync-file semaphores {}",
            vk.device_name,
            vk.has_dma_buf,
            vk.has_modifier,
            vk.has_host,
            vk.host_align,
            vk.has_foreign,
            vk.sem_fd.is_some()
        );
        Ok(vk)
    }

    /// What the device cannot do for `path`, if anything.
    pub fn lacks(&self, path: ImportPath) -> Option<String> {
        let name = &self.device_name;
        match path {
            ImportPath::DmabufImage if !self.has_modifier => Some(format!(
                "{name} lacks {} (needed to import a dma-buf image with an explicit layout)",
                if self.has_dma_buf {
                    "VK_EXT_image_drm_format_modifier"
                } else {
                    "VK_EXT_external_memory_dma_buf"
                }
            )),
            ImportPath::DmabufBuffer if !self.has_dma_buf => Some(format!(
                "{name} lacks VK_EXT_external_memory_dma_buf/VK_KHR_external_memory_fd"
            )),
            ImportPath::HostPointer if !self.has_host => {
                Some(format!("{name} lacks VK_EXT_external_memory_host"))
            }
            _ => None,
        }
    }

    /// DRM modifiers with which every plane of `pixel` can be imported and sampled as an image.
    fn image_modifiers(&self, pixel: PixelFormat) -> Vec<u64> {
        let mut common: Option<Vec<u64>> = None;
        for p in plane_images(pixel, 2, 2) {
            let mut list = vk::DrmFormatModifierPropertiesListEXT::default();
            let mut props = vk::FormatProperties2::default().push_next(&mut list);
            // SAFETY: a valid output chain; first call only counts.
            unsafe {
                self.instance
                    .get_physical_device_format_properties2(self.pdev, p.format, &mut props)
            };
            let n = list.drm_format_modifier_count as usize;
            let mut mods = vec![vk::DrmFormatModifierPropertiesEXT::default(); n];
            let mut list = vk::DrmFormatModifierPropertiesListEXT::default()
                .drm_format_modifier_properties(&mut mods);
            let mut props = vk::FormatProperties2::default().push_next(&mut list);
            // SAFETY: the array holds the count the first call reported.
            unsafe {
                self.instance
                    .get_physical_device_format_properties2(self.pdev, p.format, &mut props)
            };
            let ok: Vec<u64> = mods
                .iter()
                .filter(|m| {
                    m.drm_format_modifier_plane_count == 1
                        && m.drm_format_modifier_tiling_features
                            .contains(vk::FormatFeatureFlags::SAMPLED_IMAGE)
                })
                .map(|m| m.drm_format_modifier)
                .collect();
            common = Some(match common {
                None => ok,
                Some(c) => c.into_iter().filter(|m| ok.contains(m)).collect(),
            });
        }
        common.unwrap_or_default()
    }

    /// The capability list for the handshake, for the import paths in `paths`.
    pub fn caps(&self, paths: &[ImportPath]) -> Vec<Cap> {
        let mut caps: Vec<Cap> = Vec::new();
        let mut add = |fourcc: u32, modifier: u64, kind: MemoryKind| {
            if let Some(c) = caps
                .iter_mut()
                .find(|c| c.fourcc == fourcc && c.modifier == modifier)
            {
                c.memory_mask |= kind.bit();
            } else {
                caps.push(Cap {
                    fourcc,
                    memory_mask: kind.bit(),
                    modifier,
                });
            }
        };
        for &path in paths {
            if self.lacks(path).is_some() {
                continue;
            }
            for pixel in PixelFormat::ALL {
                let fourcc = pixel.fourcc();
                let mods = if path == ImportPath::DmabufImage {
                    self.image_modifiers(pixel)
                } else {
                    vec![MOD_LINEAR]
                };
                for m in mods {
                    for &k in path.memory() {
                        add(fourcc, m, k);
                    }
                }
            }
        }
        caps
    }

    fn memory_type(&self, bits: u32, want: vk::MemoryPropertyFlags) -> Result<u32> {
        (0..self.mem_props.memory_type_count)
            .find(|&i| {
                bits & (1 << i) != 0
                    && self.mem_props.memory_types[i as usize]
                        .property_flags
                        .contains(want)
            })
            .ok_or_else(|| anyhow!("no memory type in {bits:#x} with {want:?}"))
    }

    fn allocate(&mut self, info: &vk::MemoryAllocateInfo) -> Result<vk::DeviceMemory, vk::Result> {
        // SAFETY: callers build `info` with a valid type index and import chain.
        let m = unsafe { self.device.allocate_memory(info, None) }?;
        self.counters.allocations += 1;
        Ok(m)
    }

    /// A host-visible, coherent buffer of `size` bytes, mapped.
    fn host_buffer(
        &mut self,
        size: u64,
        extra: vk::BufferUsageFlags,
    ) -> Result<(vk::Buffer, vk::DeviceMemory, *mut u8)> {
        // SAFETY: valid create-info on a live device.
        let buf = unsafe {
            self.device.create_buffer(
                &vk::BufferCreateInfo::default()
                    .size(size)
                    .usage(vk::BufferUsageFlags::STORAGE_BUFFER | extra),
                None,
            )
        }?;
        // SAFETY: `buf` was just created.
        let req = unsafe { self.device.get_buffer_memory_requirements(buf) };
        let mt = self.memory_type(
            req.memory_type_bits,
            vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT,
        )?;
        let mem = self.allocate(
            &vk::MemoryAllocateInfo::default()
                .allocation_size(req.size)
                .memory_type_index(mt),
        )?;
        // SAFETY: binding fresh memory of the required size to a fresh buffer, then mapping it.
        let ptr = unsafe {
            self.device.bind_buffer_memory(buf, mem, 0)?;
            self.device
                .map_memory(mem, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())?
        };
        Ok((buf, mem, ptr.cast()))
    }

    /// Import buffer `id` (once; later calls are no-ops).
    pub fn import(&mut self, id: u32, buf: &FrameBuffer, path: ImportPath) -> Result<()> {
        if self.imported.get(id as usize).is_some_and(|i| i.is_some()) {
            return Ok(());
        }
        if let Some(why) = self.lacks(path) {
            bail!("--import {path}: {why}");
        }
        if !path.memory().contains(&buf.memory) {
            bail!("--import {path} cannot take {} buffers", buf.memory);
        }
        let imp = match path {
            ImportPath::DmabufImage => self.import_dmabuf_image(buf)?,
            _ => self.import_buffers(buf, path)?,
        };
        let slot = self
            .imported
            .get_mut(id as usize)
            .ok_or_else(|| anyhow!("buffer id {id} beyond the pool size"))?;
        *slot = Some(imp);
        Ok(())
    }

    fn buffer_for(
        &self,
        size: u64,
        handle: Option<vk::ExternalMemoryHandleTypeFlags>,
    ) -> Result<vk::Buffer> {
        let mut ext =
            vk::ExternalMemoryBufferCreateInfo::default().handle_types(handle.unwrap_or_default());
        let mut info = vk::BufferCreateInfo::default()
            .size(size)
            .usage(vk::BufferUsageFlags::STORAGE_BUFFER | vk::BufferUsageFlags::TRANSFER_DST);
        if handle.is_some() {
            info = info.push_next(&mut ext);
        }
        // SAFETY: valid create-info (VUID-VkBufferCreateInfo-pNext: external handle type chained
        // only for imports).
        Ok(unsafe { self.device.create_buffer(&info, None) }?)
    }

    /// Import a dma-buf fd as dedicated memory for `buffer` or `image`; the fd is duplicated and
    /// the duplicate belongs to Vulkan only if the import succeeds.
    fn import_fd(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        req: vk::MemoryRequirements,
        dedicated: vk::MemoryDedicatedAllocateInfo<'_>,
    ) -> Result<vk::DeviceMemory> {
        let fd_ext = self.fd_ext.as_ref().expect("checked by lacks()");
        let dup = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(0))
            .context("dup of the dma-buf fd")?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
        let dup = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(dup) };
        let ht = vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT;
        let mut fdp = vk::MemoryFdPropertiesKHR::default();
        // SAFETY: a live dma-buf fd and a valid output struct.
        unsafe { fd_ext.get_memory_fd_properties(ht, dup.as_raw_fd(), &mut fdp) }
            .context("vkGetMemoryFdPropertiesKHR (the driver cannot import this dma-buf)")?;
        let mt = self.memory_type(
            req.memory_type_bits & fdp.memory_type_bits,
            vk::MemoryPropertyFlags::empty(),
        )?;
        let mut dedicated = dedicated;
        let mut import = vk::ImportMemoryFdInfoKHR::default()
            .handle_type(ht)
            .fd(dup.as_raw_fd());
        let info = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(mt)
            .push_next(&mut import)
            .push_next(&mut dedicated);
        match self.allocate(&info) {
            Ok(mem) => {
                // Vulkan owns the descriptor now (VUID-VkImportMemoryFdInfoKHR-fd-00666).
                let _ = dup.into_raw_fd();
                self.counters.imports += 1;
                Ok(mem)
            }
            Err(e) => Err(anyhow!("importing the dma-buf (vkAllocateMemory): {e}")),
        }
    }

    /// Import a frame for a buffer path: each of its fds becomes one storage buffer (a frame
    /// may carry one fd per plane), and each plane's shaders read the buffer of its fd.
    fn import_buffers(&mut self, buf: &FrameBuffer, path: ImportPath) -> Result<Imported> {
        let mut imp = Imported {
            path,
            buffers: vec![],
            memories: vec![],
            images: vec![],
            views: vec![],
            checksum_sets: vec![],
            convert_set: vk::DescriptorSet::null(),
            read_buffers: vec![],
            staging: vec![],
            _host_maps: vec![],
            fresh: false,
        };
        let result = (|| -> Result<()> {
            for k in 0..buf.fds.len() {
                match path {
                    ImportPath::DmabufBuffer => self.import_dmabuf_buffer(buf, k, &mut imp),
                    ImportPath::HostPointer => self.import_host_pointer(buf, k, &mut imp),
                    _ => self.import_copy(buf, k, &mut imp),
                }
                .with_context(|| format!("fd {k} of {}", buf.fds.len()))?;
            }
            let out = [vk::DescriptorBufferInfo::default()
                .buffer(self.out.0)
                .range(vk::WHOLE_SIZE)];
            let convert = self.alloc_set(self.convert_buffer.set_layout)?;
            imp.convert_set = convert;
            let fd_of: Vec<usize> = buf.planes().map(|(k, _)| k).collect();
            for &k in &fd_of {
                let set = self.alloc_set(self.checksum_buffer.set_layout)?;
                imp.checksum_sets.push(set);
                let src = [vk::DescriptorBufferInfo::default()
                    .buffer(imp.read_buffers[k])
                    .range(vk::WHOLE_SIZE)];
                let writes = [
                    vk::WriteDescriptorSet::default()
                        .dst_set(set)
                        .dst_binding(0)
                        .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                        .buffer_info(&src),
                    vk::WriteDescriptorSet::default()
                        .dst_set(set)
                        .dst_binding(1)
                        .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                        .buffer_info(&out),
                ];
                // SAFETY: sets and buffers are live.
                unsafe { self.device.update_descriptor_sets(&writes, &[]) };
            }
            // Bindings 0-2 of the conversion: each plane's buffer (plane 0's for unused ones).
            for b in 0..3u32 {
                let k = fd_of.get(b as usize).copied().unwrap_or(fd_of[0]);
                let src = [vk::DescriptorBufferInfo::default()
                    .buffer(imp.read_buffers[k])
                    .range(vk::WHOLE_SIZE)];
                let w = [vk::WriteDescriptorSet::default()
                    .dst_set(convert)
                    .dst_binding(b)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .buffer_info(&src)];
                // SAFETY: live set and buffer.
                unsafe { self.device.update_descriptor_sets(&w, &[]) };
            }
            Ok(())
        })();
        if let Err(e) = result {
            self.destroy(imp);
            return Err(e);
        }
        Ok(imp)
    }

    fn import_dmabuf_buffer(
        &mut self,
        buf: &FrameBuffer,
        k: usize,
        imp: &mut Imported,
    ) -> Result<()> {
        let size = buf.fd_sizes[k];
        let vkbuf = self.buffer_for(size, Some(vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT))?;
        imp.buffers.push(vkbuf);
        // SAFETY: `vkbuf` is live.
        let req = unsafe { self.device.get_buffer_memory_requirements(vkbuf) };
        let mem = self.import_fd(
            buf.fds[k].as_fd(),
            req,
            vk::MemoryDedicatedAllocateInfo::default().buffer(vkbuf),
        )?;
        imp.memories.push(mem);
        // SAFETY: dedicated memory for this buffer.
        unsafe { self.device.bind_buffer_memory(vkbuf, mem, 0) }?;
        imp.read_buffers.push(vkbuf);
        Ok(())
    }

    fn import_host_pointer(
        &mut self,
        buf: &FrameBuffer,
        k: usize,
        imp: &mut Imported,
    ) -> Result<()> {
        let size = buf.fd_sizes[k];
        if size % self.host_align != 0 {
            bail!(
                "host-pointer import needs a size that is a multiple of {} bytes; the buffer has {size}",
                self.host_align
            );
        }
        let map = CpuMapping::new(buf.fds[k].clone(), size, false, buf.memory)?;
        let host_ext = self.host_ext.as_ref().expect("checked by lacks()");
        let ht = vk::ExternalMemoryHandleTypeFlags::HOST_ALLOCATION_EXT;
        let mut hp = vk::MemoryHostPointerPropertiesEXT::default();
        // SAFETY: ash 0.38 has no wrapper for this; the pointer is a live mapping of `size`
        // bytes, aligned to a page (mmap), and `hp` is a valid output struct.
        unsafe {
            (host_ext.fp().get_memory_host_pointer_properties_ext)(
                self.device.handle(),
                ht,
                map.as_ptr().cast(),
                &mut hp,
            )
        }
        .result()
        .context("vkGetMemoryHostPointerPropertiesEXT")?;
        let vkbuf = self.buffer_for(size, Some(ht))?;
        imp.buffers.push(vkbuf);
        // SAFETY: `vkbuf` is live.
        let req = unsafe { self.device.get_buffer_memory_requirements(vkbuf) };
        let mt = self.memory_type(
            req.memory_type_bits & hp.memory_type_bits,
            vk::MemoryPropertyFlags::empty(),
        )?;
        let mut import = vk::ImportMemoryHostPointerInfoEXT::default()
            .handle_type(ht)
            .host_pointer(map.as_ptr() as *mut _);
        let info = vk::MemoryAllocateInfo::default()
            .allocation_size(size)
            .memory_type_index(mt)
            .push_next(&mut import);
        let mem = self
            .allocate(&info)
            .map_err(|e| anyhow!("host-pointer import (vkAllocateMemory): {e}"))?;
        imp.memories.push(mem);
        self.counters.imports += 1;
        // SAFETY: memory imported for this buffer's size.
        unsafe { self.device.bind_buffer_memory(vkbuf, mem, 0) }?;
        imp.read_buffers.push(vkbuf);
        imp._host_maps.push(map);
        Ok(())
    }

    fn import_copy(&mut self, buf: &FrameBuffer, k: usize, imp: &mut Imported) -> Result<()> {
        let size = buf.fd_sizes[k];
        let map = CpuMapping::new(buf.fds[k].clone(), size, false, buf.memory)?;
        let (staging, smem, sptr) = self.host_buffer(size, vk::BufferUsageFlags::TRANSFER_SRC)?;
        imp.buffers.push(staging);
        imp.memories.push(smem);
        let dev_buf = self.buffer_for(size, None)?;
        imp.buffers.push(dev_buf);
        // SAFETY: `dev_buf` is live.
        let req = unsafe { self.device.get_buffer_memory_requirements(dev_buf) };
        let mt = self
            .memory_type(req.memory_type_bits, vk::MemoryPropertyFlags::DEVICE_LOCAL)
            .or_else(|_| {
                self.memory_type(req.memory_type_bits, vk::MemoryPropertyFlags::empty())
            })?;
        let dmem = self.allocate(
            &vk::MemoryAllocateInfo::default()
                .allocation_size(req.size)
                .memory_type_index(mt),
        )?;
        imp.memories.push(dmem);
        // SAFETY: fresh memory of the required size.
        unsafe { self.device.bind_buffer_memory(dev_buf, dmem, 0) }?;
        imp.read_buffers.push(dev_buf);
        imp.staging.push(Staging {
            buffer: staging,
            ptr: sptr,
            size,
            map,
            dest: dev_buf,
        });
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

    fn import_dmabuf_image(&mut self, buf: &FrameBuffer) -> Result<Imported> {
        let f = buf.layout.format;
        let planes = plane_images(f.pixel, f.width, f.height);
        let mut imp = Imported {
            path: ImportPath::DmabufImage,
            buffers: vec![],
            memories: vec![],
            images: vec![],
            views: vec![],
            checksum_sets: vec![],
            convert_set: vk::DescriptorSet::null(),
            read_buffers: vec![],
            staging: vec![],
            _host_maps: vec![],
            fresh: true,
        };
        let result = (|| -> Result<()> {
            for (i, ((fd_index, layout), pi)) in buf.planes().zip(&planes).enumerate() {
                self.probe_image(pi, f.modifier)
                    .with_context(|| format!("plane {i} as {:?}", pi.format))?;
                let plane_layout = [vk::SubresourceLayout {
                    offset: layout.offset,
                    size: 0,
                    row_pitch: u64::from(layout.stride),
                    array_pitch: 0,
                    depth_pitch: 0,
                }];
                // VUID-VkImageDrmFormatModifierExplicitCreateInfoEXT-size-02267: size is 0.
                let mut explicit = vk::ImageDrmFormatModifierExplicitCreateInfoEXT::default()
                    .drm_format_modifier(f.modifier)
                    .plane_layouts(&plane_layout);
                let mut ext = vk::ExternalMemoryImageCreateInfo::default()
                    .handle_types(vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT);
                let info = vk::ImageCreateInfo::default()
                    .image_type(vk::ImageType::TYPE_2D)
                    .format(pi.format)
                    .extent(vk::Extent3D {
                        width: pi.width,
                        height: pi.height,
                        depth: 1,
                    })
                    .mip_levels(1)
                    .array_layers(1)
                    .samples(vk::SampleCountFlags::TYPE_1)
                    .tiling(vk::ImageTiling::DRM_FORMAT_MODIFIER_EXT)
                    .usage(vk::ImageUsageFlags::SAMPLED)
                    .sharing_mode(vk::SharingMode::EXCLUSIVE)
                    .initial_layout(vk::ImageLayout::UNDEFINED)
                    .push_next(&mut explicit)
                    .push_next(&mut ext);
                // SAFETY: probed just above with the same format, usage, tiling and modifier.
                let image = unsafe { self.device.create_image(&info, None) }
                    .context("vkCreateImage for the dma-buf plane")?;
                imp.images.push(image);
                // SAFETY: `image` is live.
                let req = unsafe { self.device.get_image_memory_requirements(image) };
                let mem = self.import_fd(
                    buf.fds[fd_index].as_fd(),
                    req,
                    vk::MemoryDedicatedAllocateInfo::default().image(image),
                )?;
                imp.memories.push(mem);
                // SAFETY: dedicated memory for this image.
                unsafe { self.device.bind_image_memory(image, mem, 0) }?;
                // SAFETY: a view of the whole single-plane colour image.
                let view = unsafe {
                    self.device.create_image_view(
                        &vk::ImageViewCreateInfo::default()
                            .image(image)
                            .view_type(vk::ImageViewType::TYPE_2D)
                            .format(pi.format)
                            .subresource_range(color_range()),
                        None,
                    )
                }?;
                imp.views.push(view);
            }
            // Descriptor sets: one per plane for the checksum, one for the conversion.
            for &view in &imp.views.clone() {
                let set = self.alloc_set(self.checksum_image.set_layout)?;
                self.write_image(set, 0, view);
                self.write_out(set, 1, self.out.0);
                imp.checksum_sets.push(set);
            }
            let set = self.alloc_set(self.convert_image.set_layout)?;
            for b in 0..3 {
                let view = imp.views.get(b).copied().unwrap_or(imp.views[0]);
                self.write_image(set, b as u32, view);
            }
            imp.convert_set = set;
            Ok(())
        })();
        if let Err(e) = result {
            self.destroy(imp);
            return Err(e);
        }
        Ok(imp)
    }

    /// VUID-VkImageCreateInfo-pNext-00990 and friends: ask before creating.
    fn probe_image(&self, pi: &PlaneImage, modifier: u64) -> Result<()> {
        let mut mod_info = vk::PhysicalDeviceImageDrmFormatModifierInfoEXT::default()
            .drm_format_modifier(modifier)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        let mut ext_info = vk::PhysicalDeviceExternalImageFormatInfo::default()
            .handle_type(vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT);
        let info = vk::PhysicalDeviceImageFormatInfo2::default()
            .format(pi.format)
            .ty(vk::ImageType::TYPE_2D)
            .tiling(vk::ImageTiling::DRM_FORMAT_MODIFIER_EXT)
            .usage(vk::ImageUsageFlags::SAMPLED)
            .push_next(&mut mod_info)
            .push_next(&mut ext_info);
        let mut ext_props = vk::ExternalImageFormatProperties::default();
        let mut props = vk::ImageFormatProperties2::default().push_next(&mut ext_props);
        // SAFETY: valid input and output chains.
        unsafe {
            self.instance
                .get_physical_device_image_format_properties2(self.pdev, &info, &mut props)
        }
        .map_err(|e| {
            anyhow!(
                "{} cannot sample {:?} with modifier {modifier:#x} from a dma-buf: {e}",
                self.device_name,
                pi.format
            )
        })?;
        let max = props.image_format_properties.max_extent;
        let feats = ext_props
            .external_memory_properties
            .external_memory_features;
        if !feats.contains(vk::ExternalMemoryFeatureFlags::IMPORTABLE) {
            bail!(
                "{} cannot import {:?} dma-bufs",
                self.device_name,
                pi.format
            );
        }
        if pi.width > max.width || pi.height > max.height {
            bail!(
                "{}x{} exceeds the device's {}x{} for {:?}",
                pi.width,
                pi.height,
                max.width,
                max.height,
                pi.format
            );
        }
        Ok(())
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

    /// Forget buffer `id` (the producer removed it).
    pub fn remove(&mut self, id: u32) {
        if let Some(imp) = self.imported.get_mut(id as usize).and_then(|s| s.take()) {
            self.destroy(imp);
        }
    }

    fn destroy(&self, imp: Imported) {
        // SAFETY: the device is idle for these objects (every submit is waited for) and each
        // handle is destroyed once.
        unsafe {
            let sets: Vec<_> = imp
                .checksum_sets
                .iter()
                .copied()
                .chain((imp.convert_set != vk::DescriptorSet::null()).then_some(imp.convert_set))
                .collect();
            if !sets.is_empty() {
                let _ = self.device.free_descriptor_sets(self.desc_pool, &sets);
            }
            for v in imp.views {
                self.device.destroy_image_view(v, None);
            }
            for i in imp.images {
                self.device.destroy_image(i, None);
            }
            for b in imp.buffers {
                self.device.destroy_buffer(b, None);
            }
            for m in imp.memories {
                self.device.free_memory(m, None);
            }
        }
    }

    /// Ownership barriers around the GPU's use of an imported buffer.
    fn ownership(&self, imp: &Imported, acquire: bool) {
        let foreign = if self.has_foreign {
            vk::QUEUE_FAMILY_FOREIGN_EXT
        } else {
            vk::QUEUE_FAMILY_EXTERNAL
        };
        let (src_q, dst_q) = if acquire {
            (foreign, self.qf)
        } else {
            (self.qf, foreign)
        };
        let (src_stage, dst_stage) = if acquire {
            (
                vk::PipelineStageFlags::TOP_OF_PIPE,
                vk::PipelineStageFlags::COMPUTE_SHADER,
            )
        } else {
            (
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::PipelineStageFlags::BOTTOM_OF_PIPE,
            )
        };
        let access = if acquire {
            (vk::AccessFlags::empty(), vk::AccessFlags::SHADER_READ)
        } else {
            (vk::AccessFlags::SHADER_READ, vk::AccessFlags::empty())
        };
        match imp.path {
            ImportPath::DmabufBuffer => {
                let b: Vec<_> = imp
                    .read_buffers
                    .iter()
                    .map(|&buffer| {
                        vk::BufferMemoryBarrier::default()
                            .src_access_mask(access.0)
                            .dst_access_mask(access.1)
                            .src_queue_family_index(src_q)
                            .dst_queue_family_index(dst_q)
                            .buffer(buffer)
                            .offset(0)
                            .size(vk::WHOLE_SIZE)
                    })
                    .collect();
                // SAFETY: recording into our command buffer; the buffer is live.
                unsafe {
                    self.device.cmd_pipeline_barrier(
                        self.cmd,
                        src_stage,
                        dst_stage,
                        vk::DependencyFlags::empty(),
                        &[],
                        &b,
                        &[],
                    )
                };
            }
            ImportPath::DmabufImage => {
                // External-memory images must be created UNDEFINED
                // (VUID-VkImageCreateInfo-pNext-01443); the first acquire leaves that layout.
                let old = if acquire && imp.fresh {
                    vk::ImageLayout::UNDEFINED
                } else {
                    vk::ImageLayout::GENERAL
                };
                let bars: Vec<_> = imp
                    .images
                    .iter()
                    .map(|&image| {
                        vk::ImageMemoryBarrier::default()
                            .src_access_mask(access.0)
                            .dst_access_mask(access.1)
                            .old_layout(old)
                            .new_layout(vk::ImageLayout::GENERAL)
                            .src_queue_family_index(src_q)
                            .dst_queue_family_index(dst_q)
                            .image(image)
                            .subresource_range(color_range())
                    })
                    .collect();
                // SAFETY: recording into our command buffer; the images are live.
                unsafe {
                    self.device.cmd_pipeline_barrier(
                        self.cmd,
                        src_stage,
                        dst_stage,
                        vk::DependencyFlags::empty(),
                        &[],
                        &[],
                        &bars,
                    )
                };
            }
            ImportPath::HostPointer | ImportPath::Copy => {}
        }
    }

    fn begin(&self) -> Result<()> {
        self.gpu_t0.set(dmabuf_core::time::process_cpu_ns());
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

    /// Implicit sync for a dma-buf about to be read: export its pending writers as a sync file
    /// (`DMA_BUF_IOCTL_EXPORT_SYNC_FILE`) and import it, temporarily, into `sync_sem` for the
    /// submit to wait on. Buffers with several fds wait on the CPU (`poll`) instead.
    fn implicit_wait(&mut self, path: ImportPath, buf: &FrameBuffer) -> Result<bool> {
        if !matches!(path, ImportPath::DmabufImage | ImportPath::DmabufBuffer) {
            return Ok(false);
        }
        let Some(sem_fd) = self.sem_fd.as_ref() else {
            return Ok(false);
        };
        let mut files = Vec::with_capacity(buf.fds.len());
        for fd in &buf.fds {
            match dmabuf_core::sys::dma_buf::export_sync_file(
                fd.as_fd(),
                dmabuf_core::sys::dma_buf::SyncAccess::Read,
            ) {
                Ok(f) => files.push(f),
                Err(e) => {
                    tracing::warn!(
                        "DMA_BUF_IOCTL_EXPORT_SYNC_FILE failed ({e}); no implicit sync from here on"
                    );
                    self.sem_fd = None;
                    return Ok(false);
                }
            }
        }
        if files.len() > 1 {
            for f in &files {
                let mut p = [nix::poll::PollFd::new(
                    f.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                nix::poll::poll(&mut p, nix::poll::PollTimeout::from(10_000u16))
                    .context("waiting for a dma-buf's writers")?;
            }
            return Ok(false);
        }
        let file = files.pop().expect("one fd");
        let info = vk::ImportSemaphoreFdInfoKHR::default()
            .semaphore(self.sync_sem)
            .flags(vk::SemaphoreImportFlags::TEMPORARY)
            .handle_type(vk::ExternalSemaphoreHandleTypeFlags::SYNC_FD)
            .fd(file.as_raw_fd());
        // SAFETY: the semaphore is not in use (every submit is waited for); on success Vulkan
        // owns the sync file (VUID-VkImportSemaphoreFdInfoKHR-handleType-01143), on failure we
        // still own and close it.
        unsafe { sem_fd.import_semaphore_fd(&info) }.context("vkImportSemaphoreFdKHR")?;
        let _ = file.into_raw_fd();
        self.counters.implicit_sync_waits += 1;
        Ok(true)
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
        let spent = dmabuf_core::time::process_cpu_ns()
            .saturating_sub(self.gpu_t0.get())
            .saturating_sub(self.copy_ns.get());
        self.gpu_cpu_ns.set(self.gpu_cpu_ns.get() + spent);
        Ok(())
    }

    /// Process CPU time spent in queue submits and fence waits so far (see `gpu_cpu_ns`).
    pub fn gpu_cpu_ns(&self) -> u64 {
        self.gpu_cpu_ns.get()
    }

    /// Copy path: the CPU copy of the frame into the staging buffer and its upload.
    fn record_copy(&self, imp: &Imported) -> Result<()> {
        for st in &imp.staging {
            let t0 = dmabuf_core::time::process_cpu_ns();
            let src = st.map.read()?;
            // SAFETY: `ptr` maps `size` bytes of host-visible memory and nothing else refers to
            // it while the fence is unsignalled.
            let dst = unsafe { std::slice::from_raw_parts_mut(st.ptr, st.size as usize) };
            dst.copy_from_slice(&src[..st.size as usize]);
            drop(src);
            let spent = dmabuf_core::time::process_cpu_ns().saturating_sub(t0);
            self.copy_ns.set(self.copy_ns.get() + spent);
        }
        self.record_upload(imp);
        Ok(())
    }

    /// Copy path: the GPU copy from the staging buffer into the device buffer.
    fn record_upload(&self, imp: &Imported) {
        for st in &imp.staging {
            let region = [vk::BufferCopy::default().size(st.size)];
            // SAFETY: recording into our command buffer; both buffers are live and `size` fits.
            unsafe {
                self.device
                    .cmd_copy_buffer(self.cmd, st.buffer, st.dest, &region)
            };
            self.memory_barrier(
                (
                    vk::PipelineStageFlags::TRANSFER,
                    vk::AccessFlags::TRANSFER_WRITE,
                ),
                (
                    vk::PipelineStageFlags::COMPUTE_SHADER,
                    vk::AccessFlags::SHADER_READ,
                ),
            );
        }
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
        let imp = self.imported[id as usize]
            .as_ref()
            .ok_or_else(|| anyhow!("buffer {id} was not imported"))?;
        let [st] = &imp.staging[..] else {
            bail!(
                "upload_with needs the copy import path and one fd (buffer {id} is {}, {} staging buffers)",
                imp.path,
                imp.staging.len()
            );
        };
        // SAFETY: `ptr` maps `size` bytes of host-visible memory; the previous submit was
        // waited for, so the GPU does not read it now, and the slice dies before the submit.
        let dst = unsafe { std::slice::from_raw_parts_mut(st.ptr, st.size as usize) };
        fill(dst)?;
        self.begin()?;
        self.record_upload(imp);
        self.submit_and_wait(false)
    }

    /// Make the frame in buffer `id` GPU-visible without computing anything: the copy path
    /// copies and uploads, the zero-copy paths acquire and release the memory.
    pub fn touch(&mut self, id: u32, buf: &FrameBuffer) -> Result<()> {
        let imp = self.imported[id as usize]
            .as_ref()
            .ok_or_else(|| anyhow!("buffer {id} was not imported"))?;
        let path = imp.path;
        self.begin()?;
        self.record_copy(imp)?;
        self.ownership(imp, true);
        self.ownership(imp, false);
        let wait = self.implicit_wait(path, buf)?;
        self.submit_and_wait(wait)?;
        if let Some(imp) = self.imported[id as usize].as_mut() {
            imp.fresh = false;
        }
        Ok(())
    }

    /// The frame checksum of buffer `id`, computed by the GPU over the imported memory.
    pub fn checksum(&mut self, id: u32, buf: &FrameBuffer) -> Result<u32> {
        let imp = self.imported[id as usize]
            .as_ref()
            .ok_or_else(|| anyhow!("buffer {id} was not imported"))?;
        // SAFETY: `out.2` maps 4 host-coherent bytes the GPU is not using (idle).
        unsafe { self.out.2.write_volatile(0) };
        self.begin()?;
        self.record_copy(imp)?;
        self.ownership(imp, true);
        let f = buf.layout.format;
        let images = plane_images(f.pixel, f.width, f.height);
        for (i, p) in buf.layout.planes.iter().enumerate() {
            let (pipe, words) = if imp.path == ImportPath::DmabufImage {
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
            let set = imp.checksum_sets[i];
            self.dispatch(pipe, set, &words, [p.rows.div_ceil(64), 1, 1]);
        }
        self.ownership(imp, false);
        self.host_barrier();
        let path = imp.path;
        let wait = self.implicit_wait(path, buf)?;
        self.submit_and_wait(wait)?;
        if let Some(imp) = self.imported[id as usize].as_mut() {
            imp.fresh = false;
        }
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
            let (b, m, p) = self.host_buffer(bytes, vk::BufferUsageFlags::TRANSFER_SRC)?;
            self.rgba = Some((b, m, p, bytes));
        }
        let (rgba_buf, _, rgba_ptr, _) = *self.rgba.as_ref().expect("just made");
        let imp = self.imported[id as usize]
            .as_ref()
            .ok_or_else(|| anyhow!("buffer {id} was not imported"))?;
        let pipe = if imp.path == ImportPath::DmabufImage {
            &self.convert_image
        } else {
            &self.convert_buffer
        };
        self.write_out(imp.convert_set, 3, rgba_buf);
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
        if imp.path == ImportPath::DmabufImage {
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
        self.record_copy(imp)?;
        self.ownership(imp, true);
        self.dispatch(
            pipe,
            imp.convert_set,
            &words,
            [out_w.div_ceil(8), out_h.div_ceil(8), 1],
        );
        self.ownership(imp, false);
        self.host_barrier();
        let path = imp.path;
        let wait = self.implicit_wait(path, buf)?;
        self.submit_and_wait(wait)?;
        if let Some(imp) = self.imported[id as usize].as_mut() {
            imp.fresh = false;
        }
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

fn color_range() -> vk::ImageSubresourceRange {
    vk::ImageSubresourceRange {
        aspect_mask: vk::ImageAspectFlags::COLOR,
        base_mip_level: 0,
        level_count: 1,
        base_array_layer: 0,
        layer_count: 1,
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
        // SAFETY: wait for idle, then destroy every object once, children before parents.
        unsafe {
            let _ = self.device.device_wait_idle();
            let all: Vec<Imported> = self.imported.iter_mut().filter_map(|s| s.take()).collect();
            for imp in all {
                self.destroy(imp);
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
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}
