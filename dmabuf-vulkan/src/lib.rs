//! Import video frames received with `dmabuf-core` into **your own** Vulkan device, with no CPU
//! copy.
//!
//! An [`Importer`] is built from the caller's `ash` instance, physical device and device (and
//! the device extensions they enabled; [`supported_extensions`] says which to enable), or from
//! an [`OwnedDevice`] for programs that have none. It probes once what the device can import
//! ([`Importer::caps`], for the `Hello`), and turns a received
//! [`FrameBuffer`] into an [`Imported`]: RAII Vulkan objects that free
//! themselves on drop.
//!
//! Import paths ([`ImportPath`]):
//! - `dmabuf-image`: each plane of a dma-buf as its own single-plane `VkImage` of whole texels
//!   (R8, R8G8, R8G8B8A8, R16, R16G16: see [`plane_images`]) with an explicit DRM-modifier
//!   layout (`VK_EXT_image_drm_format_modifier`). Multi-planar images with a modifier are not
//!   used: lavapipe refuses them, and per-plane images are the portable path on GPUs too.
//! - `dmabuf-buffer`: each dma-buf of the frame as a `VkBuffer`, for shaders that address bytes.
//! - `host-pointer`: each memfd mapping imported with `VK_EXT_external_memory_host`.
//! - `copy`: the last resort (and the honest comparison): a CPU `memcpy` into a staging buffer
//!   and a GPU copy into a device buffer, every frame ([`Imported::copy_in`],
//!   [`Imported::record_upload`]).
//!
//! Rules followed (wlroots `render/vulkan/texture.c`, FFmpeg `hwcontext_vulkan.c`, the Vulkan
//! spec's "External Memory" chapter): probe before importing; duplicate the fd and hand the
//! duplicate to Vulkan, which owns it only on success; dedicated allocations with the memory
//! type from `vkGetMemoryFdPropertiesKHR`; external images created `UNDEFINED`; queue-family
//! acquire from and release to `VK_QUEUE_FAMILY_FOREIGN_EXT` around every use of a dma-buf
//! ([`Imported::record_acquire`], [`Imported::record_release`]); implicit sync through the
//! dma-buf's exported sync file ([`Importer::implicit_sync`]). The caller keeps the frame (its
//! `FrameGuard`) until the GPU work reading it has finished.
//!
//! With the `wgpu` feature, module `wgpu` hands the planes to a wgpu device on the same
//! Vulkan device as `wgpu::Texture`s (zero copy for `dmabuf-image`, a GPU copy otherwise).
#![allow(unsafe_code)]
#![warn(missing_docs)]

mod cache;
pub use cache::ImportCache;

#[cfg(feature = "wgpu")]
pub mod wgpu;

use ash::vk;
use dmabuf_core::buffer::MemoryKind;
use dmabuf_core::format::{plane_geometry, PixelFormat, MOD_LINEAR};
use dmabuf_core::mapping::CpuMapping;
use dmabuf_core::proto::wire::Cap;
use dmabuf_core::FrameBuffer;
use std::cell::Cell;
use std::ffi::CStr;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};

/// What went wrong importing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No Vulkan loader on this system.
    #[error("no Vulkan loader ({0}); install libvulkan1 and a driver (mesa-vulkan-drivers)")]
    Loader(String),
    /// No device at all, or none with a compute queue.
    #[error("{0}")]
    NoDevice(String),
    /// The device lacks what this path needs (an extension, a format, a modifier).
    #[error("{0}")]
    Lacks(String),
    /// The buffer cannot be imported this way (its memory kind, its size's alignment …).
    #[error("{0}")]
    Unsupported(String),
    /// A Vulkan call failed.
    #[error("{call}: {result}")]
    Vk {
        /// The call, e.g. `vkAllocateMemory`.
        call: &'static str,
        /// What it returned.
        result: vk::Result,
    },
    /// Mapping a buffer for the CPU (host-pointer and copy paths) failed.
    #[error(transparent)]
    Map(#[from] dmabuf_core::mapping::MapError),
    /// A system call failed (duplicating an fd, exporting a sync file).
    #[error("{op}: {source}")]
    Sys {
        /// What was done.
        op: &'static str,
        /// The errno.
        source: nix::errno::Errno,
    },
}

fn vkerr(call: &'static str) -> impl FnOnce(vk::Result) -> Error {
    move |result| Error::Vk { call, result }
}

/// How frames reach the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImportPath {
    /// Each dma-buf plane as a single-plane image with an explicit DRM-modifier layout.
    DmabufImage,
    /// Each dma-buf as a storage buffer.
    DmabufBuffer,
    /// Each memfd mapping imported as host memory (`VK_EXT_external_memory_host`).
    HostPointer,
    /// A CPU copy into a staging buffer and a GPU copy, every frame.
    Copy,
}

impl ImportPath {
    /// Every path, best first.
    pub const ALL: [ImportPath; 4] = [
        ImportPath::DmabufImage,
        ImportPath::DmabufBuffer,
        ImportPath::HostPointer,
        ImportPath::Copy,
    ];

    /// The name used on command lines and in statistics.
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

/// How one plane is seen as an image: a single-plane format of whole texels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneImage {
    /// The image format.
    pub format: vk::Format,
    /// Texels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// Bytes per texel: 1, 2 or 4.
    pub bytes_per_texel: u32,
    /// Bytes per channel: 1 (UNORM8) or 2 (UNORM16).
    pub sample_bytes: u32,
}

/// Each plane of `pixel` at `width` x `height` as an image of whole texels: the plane's memory
/// block when it is 1, 2 or 4 samples (R8, R8G8, R8G8B8A8; R16, R16G16), else one sample per
/// texel (packed 24-bit RGB as R8, three texels a pixel). A shader reads a sample by its byte
/// address in the row (`dmabuf_core::format::Sampling`), so the channel order of the format
/// does not matter; YUYV and XRGB are R8G8B8A8 images.
pub fn plane_images(pixel: PixelFormat, width: u32, height: u32) -> Vec<PlaneImage> {
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

/// What imported plane images may be used for: sampled (or loaded) by shaders, and copied
/// from (a readback, a blit into the caller's own images).
pub const IMAGE_USAGE: vk::ImageUsageFlags = vk::ImageUsageFlags::from_raw(
    vk::ImageUsageFlags::SAMPLED.as_raw() | vk::ImageUsageFlags::TRANSFER_SRC.as_raw(),
);

fn has_ext(exts: &[vk::ExtensionProperties], name: &CStr) -> bool {
    exts.iter().any(|e| e.extension_name_as_c_str() == Ok(name))
}

/// The device extensions the import paths use that `pdev` offers: enable these (with your
/// own) when you create the device you hand to [`Importer::new`].
/// `VK_KHR_external_memory_fd` + `VK_EXT_external_memory_dma_buf` (dma-buf import),
/// `VK_EXT_image_drm_format_modifier` (per-plane images with an explicit layout),
/// `VK_EXT_external_memory_host` (memfd host pointers), `VK_EXT_queue_family_foreign` and
/// `VK_KHR_external_semaphore_fd` (implicit sync).
pub fn supported_extensions(
    instance: &ash::Instance,
    pdev: vk::PhysicalDevice,
) -> Result<Vec<&'static CStr>, Error> {
    // SAFETY: a physical device of this instance; the query only reads.
    let exts = unsafe { instance.enumerate_device_extension_properties(pdev) }
        .map_err(vkerr("vkEnumerateDeviceExtensionProperties"))?;
    let mut out = Vec::new();
    let fd = has_ext(&exts, ash::khr::external_memory_fd::NAME);
    let dma = fd && has_ext(&exts, ash::ext::external_memory_dma_buf::NAME);
    if dma {
        out.push(ash::khr::external_memory_fd::NAME);
        out.push(ash::ext::external_memory_dma_buf::NAME);
        if has_ext(&exts, ash::ext::image_drm_format_modifier::NAME) {
            out.push(ash::ext::image_drm_format_modifier::NAME);
        }
        if has_ext(&exts, ash::khr::external_semaphore_fd::NAME) {
            out.push(ash::khr::external_semaphore_fd::NAME);
        }
    }
    for e in [
        ash::ext::external_memory_host::NAME,
        ash::ext::queue_family_foreign::NAME,
    ] {
        if has_ext(&exts, e) {
            out.push(e);
        }
    }
    Ok(out)
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

/// What the device can import, probed once; imports frames into it.
pub struct Importer {
    instance: ash::Instance,
    pdev: vk::PhysicalDevice,
    device: ash::Device,
    qf: u32,
    mem_props: vk::PhysicalDeviceMemoryProperties,
    device_name: String,
    has_dma_buf: bool,
    has_modifier: bool,
    has_host: bool,
    has_foreign: bool,
    fd_ext: Option<ash::khr::external_memory_fd::Device>,
    host_ext: Option<ash::ext::external_memory_host::Device>,
    sem_fd: Option<ash::khr::external_semaphore_fd::Device>,
    host_align: u64,
    counters: Cell<Counters>,
}

impl fmt::Debug for Importer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Importer")
            .field("device", &self.device_name)
            .field("dma_buf", &self.has_dma_buf)
            .field("modifier", &self.has_modifier)
            .field("host_pointer", &self.has_host)
            .finish()
    }
}

impl Importer {
    /// An importer for the caller's device: `instance`, the `pdev` it was made from, the
    /// `device`, the queue family the imports will be used on, and the device extensions that
    /// were enabled (only those are used; [`supported_extensions`] lists what to enable).
    ///
    /// The handles are cloned (ash's function tables); the caller keeps the device alive
    /// longer than the importer and every [`Imported`].
    pub fn new(
        instance: &ash::Instance,
        pdev: vk::PhysicalDevice,
        device: &ash::Device,
        queue_family: u32,
        enabled: &[&CStr],
    ) -> Result<Self, Error> {
        let on = |e: &CStr| enabled.contains(&e);
        // SAFETY: queries on a live instance and one of its physical devices.
        let props = unsafe { instance.get_physical_device_properties(pdev) };
        let device_name = props
            .device_name_as_c_str()
            .unwrap_or(c"?")
            .to_string_lossy()
            .into_owned();
        let has_dma_buf =
            on(ash::khr::external_memory_fd::NAME) && on(ash::ext::external_memory_dma_buf::NAME);
        let has_modifier = has_dma_buf && on(ash::ext::image_drm_format_modifier::NAME);
        let has_host = on(ash::ext::external_memory_host::NAME);
        let has_foreign = on(ash::ext::queue_family_foreign::NAME);
        let has_sync_fd = has_dma_buf && on(ash::khr::external_semaphore_fd::NAME) && {
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
        let imp = Importer {
            fd_ext: has_dma_buf
                .then(|| ash::khr::external_memory_fd::Device::new(instance, device)),
            host_ext: has_host
                .then(|| ash::ext::external_memory_host::Device::new(instance, device)),
            sem_fd: has_sync_fd
                .then(|| ash::khr::external_semaphore_fd::Device::new(instance, device)),
            instance: instance.clone(),
            pdev,
            device: device.clone(),
            qf: queue_family,
            mem_props,
            device_name,
            has_dma_buf,
            has_modifier,
            has_host,
            has_foreign,
            host_align,
            counters: Cell::new(Counters::default()),
        };
        tracing::info!(
            "Vulkan device {}: dma-buf import {}, DRM modifiers {}, host-pointer import {} (alignment {}), foreign queue {}, sync-file semaphores {}",
            imp.device_name,
            imp.has_dma_buf,
            imp.has_modifier,
            imp.has_host,
            imp.host_align,
            imp.has_foreign,
            imp.sem_fd.is_some()
        );
        Ok(imp)
    }

    /// The device's name.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    /// Allocations and imports made so far.
    pub fn counters(&self) -> Counters {
        self.counters.get()
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        let mut c = self.counters.get();
        f(&mut c);
        self.counters.set(c);
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
                        && m.drm_format_modifier_tiling_features.contains(
                            vk::FormatFeatureFlags::SAMPLED_IMAGE
                                | vk::FormatFeatureFlags::TRANSFER_SRC,
                        )
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

    /// The capability list for the `Hello` (every fourcc × modifier × memory kind) for the
    /// import paths in `paths` the device has.
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
                let mods = if path == ImportPath::DmabufImage {
                    self.image_modifiers(pixel)
                } else {
                    vec![MOD_LINEAR]
                };
                for m in mods {
                    for &k in path.memory() {
                        add(pixel.fourcc(), m, k);
                    }
                }
            }
        }
        caps
    }

    /// The best path for a stream in `pixel`/`modifier`/`memory`: dmabuf-image, dmabuf-buffer,
    /// host-pointer, then copy.
    pub fn best_path(&self, pixel: PixelFormat, modifier: u64, memory: MemoryKind) -> ImportPath {
        ImportPath::ALL
            .into_iter()
            .find(|&p| {
                self.caps(&[p]).iter().any(|c| {
                    c.fourcc == pixel.fourcc()
                        && c.modifier == modifier
                        && c.memory_mask & memory.bit() != 0
                })
            })
            .unwrap_or(ImportPath::Copy)
    }

    fn memory_type(&self, bits: u32, want: vk::MemoryPropertyFlags) -> Result<u32, Error> {
        (0..self.mem_props.memory_type_count)
            .find(|&i| {
                bits & (1 << i) != 0
                    && self.mem_props.memory_types[i as usize]
                        .property_flags
                        .contains(want)
            })
            .ok_or_else(|| Error::Lacks(format!("no memory type in {bits:#x} with {want:?}")))
    }

    fn allocate(&self, info: &vk::MemoryAllocateInfo) -> Result<vk::DeviceMemory, vk::Result> {
        // SAFETY: callers build `info` with a valid type index and import chain.
        let m = unsafe { self.device.allocate_memory(info, None) }?;
        self.count(|c| c.allocations += 1);
        Ok(m)
    }

    /// A host-visible, coherent buffer of `size` bytes, mapped (for staging, or the caller's
    /// own output buffers).
    pub fn host_buffer(
        &self,
        size: u64,
        usage: vk::BufferUsageFlags,
    ) -> Result<(vk::Buffer, vk::DeviceMemory, *mut u8), Error> {
        // SAFETY: valid create-info on a live device.
        let buf = unsafe {
            self.device.create_buffer(
                &vk::BufferCreateInfo::default().size(size).usage(usage),
                None,
            )
        }
        .map_err(vkerr("vkCreateBuffer"))?;
        // SAFETY: `buf` was just created.
        let req = unsafe { self.device.get_buffer_memory_requirements(buf) };
        let done = (|| {
            let mt = self.memory_type(
                req.memory_type_bits,
                vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT,
            )?;
            let mem = self
                .allocate(
                    &vk::MemoryAllocateInfo::default()
                        .allocation_size(req.size)
                        .memory_type_index(mt),
                )
                .map_err(vkerr("vkAllocateMemory"))?;
            // SAFETY: binding fresh memory of the required size to a fresh buffer, then
            // mapping it.
            let ptr = unsafe {
                self.device
                    .bind_buffer_memory(buf, mem, 0)
                    .map_err(vkerr("vkBindBufferMemory"))?;
                self.device
                    .map_memory(mem, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
                    .map_err(vkerr("vkMapMemory"))?
            };
            Ok((mem, ptr.cast()))
        })();
        match done {
            Ok((mem, ptr)) => Ok((buf, mem, ptr)),
            Err(e) => {
                // SAFETY: unused buffer.
                unsafe { self.device.destroy_buffer(buf, None) };
                Err(e)
            }
        }
    }

    fn buffer_for(
        &self,
        size: u64,
        handle: Option<vk::ExternalMemoryHandleTypeFlags>,
    ) -> Result<vk::Buffer, Error> {
        let mut ext =
            vk::ExternalMemoryBufferCreateInfo::default().handle_types(handle.unwrap_or_default());
        let mut info = vk::BufferCreateInfo::default().size(size).usage(
            vk::BufferUsageFlags::STORAGE_BUFFER
                | vk::BufferUsageFlags::TRANSFER_SRC
                | vk::BufferUsageFlags::TRANSFER_DST,
        );
        if handle.is_some() {
            info = info.push_next(&mut ext);
        }
        // SAFETY: valid create-info (VUID-VkBufferCreateInfo-pNext: external handle type
        // chained only for imports).
        unsafe { self.device.create_buffer(&info, None) }.map_err(vkerr("vkCreateBuffer"))
    }

    /// Import a dma-buf fd as dedicated memory for a buffer or image; the fd is duplicated and
    /// the duplicate belongs to Vulkan only if the import succeeds.
    fn import_fd(
        &self,
        fd: BorrowedFd<'_>,
        req: vk::MemoryRequirements,
        dedicated: vk::MemoryDedicatedAllocateInfo<'_>,
    ) -> Result<vk::DeviceMemory, Error> {
        let fd_ext = self.fd_ext.as_ref().ok_or_else(|| {
            Error::Lacks(self.lacks(ImportPath::DmabufBuffer).unwrap_or_default())
        })?;
        let dup =
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(0)).map_err(|source| {
                Error::Sys {
                    op: "dup of the dma-buf fd",
                    source,
                }
            })?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        let ht = vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT;
        let mut fdp = vk::MemoryFdPropertiesKHR::default();
        // SAFETY: a live dma-buf fd and a valid output struct.
        unsafe { fd_ext.get_memory_fd_properties(ht, dup.as_raw_fd(), &mut fdp) }.map_err(|e| {
            Error::Unsupported(format!(
                "vkGetMemoryFdPropertiesKHR: {e} (the driver cannot import this dma-buf)"
            ))
        })?;
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
        let mem = self
            .allocate(&info)
            .map_err(vkerr("vkAllocateMemory (importing the dma-buf)"))?;
        // Vulkan owns the descriptor now (VUID-VkImportMemoryFdInfoKHR-fd-00666).
        let _ = dup.into_raw_fd();
        self.count(|c| c.imports += 1);
        Ok(mem)
    }

    /// Import `buf` for `path`: RAII objects that free themselves on drop. Checks that the
    /// path takes the buffer's memory kind and that the device has what the path needs.
    pub fn import(&self, buf: &FrameBuffer, path: ImportPath) -> Result<Imported, Error> {
        if let Some(why) = self.lacks(path) {
            return Err(Error::Lacks(why));
        }
        if !path.memory().contains(&buf.memory) {
            return Err(Error::Unsupported(format!(
                "{path} cannot take {} buffers",
                buf.memory
            )));
        }
        let mut imp = Imported {
            device: self.device.clone(),
            path,
            has_foreign: self.has_foreign,
            qf: self.qf,
            buffers: vec![],
            memories: vec![],
            images: vec![],
            views: vec![],
            read_buffers: vec![],
            plane_fds: buf.plane_fds.clone(),
            plane_images: vec![],
            staging: vec![],
            host_maps: vec![],
            fresh: Cell::new(path == ImportPath::DmabufImage),
        };
        let result = match path {
            ImportPath::DmabufImage => self.import_images(buf, &mut imp),
            _ => (0..buf.fds.len()).try_for_each(|k| match path {
                ImportPath::DmabufBuffer => self.import_dmabuf_buffer(buf, k, &mut imp),
                ImportPath::HostPointer => self.import_host_pointer(buf, k, &mut imp),
                _ => self.import_copy(buf, k, &mut imp),
            }),
        };
        // On error, `imp` frees what was made so far as it drops.
        result.map(|()| imp)
    }

    fn import_dmabuf_buffer(
        &self,
        buf: &FrameBuffer,
        k: usize,
        imp: &mut Imported,
    ) -> Result<(), Error> {
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
        unsafe { self.device.bind_buffer_memory(vkbuf, mem, 0) }
            .map_err(vkerr("vkBindBufferMemory"))?;
        imp.read_buffers.push(vkbuf);
        Ok(())
    }

    fn import_host_pointer(
        &self,
        buf: &FrameBuffer,
        k: usize,
        imp: &mut Imported,
    ) -> Result<(), Error> {
        let size = buf.fd_sizes[k];
        if !size.is_multiple_of(self.host_align) {
            return Err(Error::Unsupported(format!(
                "host-pointer import needs a size that is a multiple of {} bytes; the buffer has {size}",
                self.host_align
            )));
        }
        let map = CpuMapping::new(buf.fds[k].clone(), size, false, buf.memory)?;
        let host_ext = self
            .host_ext
            .as_ref()
            .ok_or_else(|| Error::Lacks(self.lacks(ImportPath::HostPointer).unwrap_or_default()))?;
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
        .map_err(vkerr("vkGetMemoryHostPointerPropertiesEXT"))?;
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
            .map_err(vkerr("vkAllocateMemory (host-pointer import)"))?;
        imp.memories.push(mem);
        self.count(|c| c.imports += 1);
        // SAFETY: memory imported for this buffer's size.
        unsafe { self.device.bind_buffer_memory(vkbuf, mem, 0) }
            .map_err(vkerr("vkBindBufferMemory"))?;
        imp.read_buffers.push(vkbuf);
        imp.host_maps.push(map);
        Ok(())
    }

    fn import_copy(&self, buf: &FrameBuffer, k: usize, imp: &mut Imported) -> Result<(), Error> {
        let size = buf.fd_sizes[k];
        let map = CpuMapping::new(buf.fds[k].clone(), size, false, buf.memory)?;
        let (staging, smem, sptr) = self.host_buffer(
            size,
            vk::BufferUsageFlags::STORAGE_BUFFER | vk::BufferUsageFlags::TRANSFER_SRC,
        )?;
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
        let dmem = self
            .allocate(
                &vk::MemoryAllocateInfo::default()
                    .allocation_size(req.size)
                    .memory_type_index(mt),
            )
            .map_err(vkerr("vkAllocateMemory"))?;
        imp.memories.push(dmem);
        // SAFETY: fresh memory of the required size.
        unsafe { self.device.bind_buffer_memory(dev_buf, dmem, 0) }
            .map_err(vkerr("vkBindBufferMemory"))?;
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

    fn import_images(&self, buf: &FrameBuffer, imp: &mut Imported) -> Result<(), Error> {
        let f = buf.layout.format;
        let planes = plane_images(f.pixel, f.width, f.height);
        for (i, ((fd_index, layout), pi)) in buf.planes().zip(&planes).enumerate() {
            self.probe_image(pi, f.modifier)
                .map_err(|e| Error::Lacks(format!("plane {i} as {:?}: {e}", pi.format)))?;
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
                .usage(IMAGE_USAGE)
                .sharing_mode(vk::SharingMode::EXCLUSIVE)
                .initial_layout(vk::ImageLayout::UNDEFINED)
                .push_next(&mut explicit)
                .push_next(&mut ext);
            // SAFETY: probed just above with the same format, usage, tiling and modifier.
            let image = unsafe { self.device.create_image(&info, None) }
                .map_err(vkerr("vkCreateImage (a dma-buf plane)"))?;
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
            unsafe { self.device.bind_image_memory(image, mem, 0) }
                .map_err(vkerr("vkBindImageMemory"))?;
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
            }
            .map_err(vkerr("vkCreateImageView"))?;
            imp.views.push(view);
        }
        imp.plane_images = planes;
        Ok(())
    }

    /// VUID-VkImageCreateInfo-pNext-00990 and friends: ask before creating.
    fn probe_image(&self, pi: &PlaneImage, modifier: u64) -> Result<(), String> {
        let mut mod_info = vk::PhysicalDeviceImageDrmFormatModifierInfoEXT::default()
            .drm_format_modifier(modifier)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        let mut ext_info = vk::PhysicalDeviceExternalImageFormatInfo::default()
            .handle_type(vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT);
        let info = vk::PhysicalDeviceImageFormatInfo2::default()
            .format(pi.format)
            .ty(vk::ImageType::TYPE_2D)
            .tiling(vk::ImageTiling::DRM_FORMAT_MODIFIER_EXT)
            .usage(IMAGE_USAGE)
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
            format!(
                "{} cannot sample {:?} with modifier {modifier:#x} from a dma-buf: {e}",
                self.device_name, pi.format
            )
        })?;
        let max = props.image_format_properties.max_extent;
        let feats = ext_props
            .external_memory_properties
            .external_memory_features;
        if !feats.contains(vk::ExternalMemoryFeatureFlags::IMPORTABLE) {
            return Err(format!(
                "{} cannot import {:?} dma-bufs",
                self.device_name, pi.format
            ));
        }
        if pi.width > max.width || pi.height > max.height {
            return Err(format!(
                "{}x{} exceeds the device's {}x{} for {:?}",
                pi.width, pi.height, max.width, max.height, pi.format
            ));
        }
        Ok(())
    }

    /// Implicit sync for a dma-buf about to be read: export its pending writers as a sync file
    /// (`DMA_BUF_IOCTL_EXPORT_SYNC_FILE`) and import it, temporarily, into `semaphore` for the
    /// next submit to wait on. `Ok(true)` when the submit must wait on `semaphore`; `false`
    /// when there is nothing to wait on that way (not a dma-buf path, no sync-file support:
    /// then the implicit fences are the driver's business, or buffers with several fds, which
    /// are waited for on the CPU here).
    pub fn implicit_sync(
        &self,
        buf: &FrameBuffer,
        path: ImportPath,
        semaphore: vk::Semaphore,
    ) -> Result<bool, Error> {
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
                    tracing::debug!(
                        "DMA_BUF_IOCTL_EXPORT_SYNC_FILE failed ({e}); no implicit sync"
                    );
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
                nix::poll::poll(&mut p, nix::poll::PollTimeout::from(10_000u16)).map_err(
                    |source| Error::Sys {
                        op: "waiting for a dma-buf's writers",
                        source,
                    },
                )?;
            }
            return Ok(false);
        }
        let Some(file) = files.pop() else {
            return Ok(false);
        };
        let info = vk::ImportSemaphoreFdInfoKHR::default()
            .semaphore(semaphore)
            .flags(vk::SemaphoreImportFlags::TEMPORARY)
            .handle_type(vk::ExternalSemaphoreHandleTypeFlags::SYNC_FD)
            .fd(file.as_raw_fd());
        // SAFETY: the caller's semaphore is not in use; on success Vulkan owns the sync file
        // (VUID-VkImportSemaphoreFdInfoKHR-handleType-01143), on failure we still own and
        // close it.
        unsafe { sem_fd.import_semaphore_fd(&info) }.map_err(vkerr("vkImportSemaphoreFdKHR"))?;
        let _ = file.into_raw_fd();
        self.count(|c| c.implicit_sync_waits += 1);
        Ok(true)
    }
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

/// One imported frame buffer: the Vulkan objects made for it, freed on drop (the device must
/// be idle for them: wait for the GPU work that uses them first).
pub struct Imported {
    device: ash::Device,
    path: ImportPath,
    has_foreign: bool,
    qf: u32,
    buffers: Vec<vk::Buffer>,
    memories: Vec<vk::DeviceMemory>,
    images: Vec<vk::Image>,
    views: Vec<vk::ImageView>,
    /// The buffers shaders read (buffer paths): one per fd of the frame.
    read_buffers: Vec<vk::Buffer>,
    /// For each plane, the index of its fd.
    plane_fds: Vec<usize>,
    plane_images: Vec<PlaneImage>,
    staging: Vec<Staging>,
    /// Host-pointer path: the mappings Vulkan reads (must outlive the import).
    host_maps: Vec<CpuMapping>,
    /// Images are still in their initial layout.
    fresh: Cell<bool>,
}

impl fmt::Debug for Imported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imported")
            .field("path", &self.path)
            .field("buffers", &self.read_buffers.len())
            .field("images", &self.images.len())
            .finish()
    }
}

impl Imported {
    /// How it was imported.
    pub fn path(&self) -> ImportPath {
        self.path
    }

    /// Buffer paths: the `VkBuffer` holding plane `i` (planes sharing an fd share it; the
    /// plane's offset and stride are those of the frame's layout). `None` on the image path.
    pub fn plane_buffer(&self, i: usize) -> Option<vk::Buffer> {
        self.read_buffers.get(*self.plane_fds.get(i)?).copied()
    }

    /// Image path: plane `i`'s image view (in `GENERAL` layout once acquired).
    pub fn plane_view(&self, i: usize) -> Option<vk::ImageView> {
        self.views.get(i).copied()
    }

    /// Image path: plane `i`'s image.
    pub fn plane_image(&self, i: usize) -> Option<vk::Image> {
        self.images.get(i).copied()
    }

    /// Image path: how each plane is seen as an image.
    pub fn plane_images(&self) -> &[PlaneImage] {
        &self.plane_images
    }

    /// Copy path: copy the frame from its fds into the staging buffers (the CPU copy of this
    /// path); record [`Imported::record_upload`] after. No-op on the other paths.
    pub fn copy_in(&self) -> Result<(), Error> {
        for st in &self.staging {
            let src = st.map.read()?;
            // SAFETY: `ptr` maps `size` bytes of host-visible memory and nothing else refers to
            // it while the GPU is not using it (the caller waits for its submits).
            let dst = unsafe { std::slice::from_raw_parts_mut(st.ptr, st.size as usize) };
            dst.copy_from_slice(&src[..st.size as usize]);
        }
        Ok(())
    }

    /// Copy path: the staging memory of a single-fd buffer, to fill from elsewhere (a byte
    /// stream) instead of [`Imported::copy_in`]. The GPU must not be using it.
    pub fn staging_mut(&mut self) -> Option<&mut [u8]> {
        let [st] = &self.staging[..] else {
            return None;
        };
        // SAFETY: `ptr` maps `size` bytes of host-visible memory; the exclusive borrow of
        // `self` keeps other users away, and the caller keeps the GPU away.
        Some(unsafe { std::slice::from_raw_parts_mut(st.ptr, st.size as usize) })
    }

    /// Copy path: record the GPU copy from the staging buffers into the device buffers and a
    /// barrier making it visible to compute shaders. No-op on the other paths.
    pub fn record_upload(&self, cmd: vk::CommandBuffer) {
        for st in &self.staging {
            let region = [vk::BufferCopy::default().size(st.size)];
            // SAFETY: recording into the caller's command buffer; both buffers are live.
            unsafe {
                self.device
                    .cmd_copy_buffer(cmd, st.buffer, st.dest, &region)
            };
        }
        if !self.staging.is_empty() {
            let bar = [vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                .dst_access_mask(vk::AccessFlags::SHADER_READ)];
            // SAFETY: recording a global barrier.
            unsafe {
                self.device.cmd_pipeline_barrier(
                    cmd,
                    vk::PipelineStageFlags::TRANSFER,
                    vk::PipelineStageFlags::COMPUTE_SHADER,
                    vk::DependencyFlags::empty(),
                    &bar,
                    &[],
                    &[],
                )
            };
        }
    }

    /// Record the acquire from the foreign queue family (dma-buf paths: the producer's device
    /// wrote the memory) before compute shaders read it. No-op on the host paths.
    pub fn record_acquire(&self, cmd: vk::CommandBuffer) {
        self.ownership(cmd, true);
        self.fresh.set(false);
    }

    /// Record the release back to the foreign queue family after the shaders read it.
    pub fn record_release(&self, cmd: vk::CommandBuffer) {
        self.ownership(cmd, false);
    }

    fn ownership(&self, cmd: vk::CommandBuffer, acquire: bool) {
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
        match self.path {
            ImportPath::DmabufBuffer => {
                let b: Vec<_> = self
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
                // SAFETY: recording into the caller's command buffer; the buffers are live.
                unsafe {
                    self.device.cmd_pipeline_barrier(
                        cmd,
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
                // External-memory images are created UNDEFINED
                // (VUID-VkImageCreateInfo-pNext-01443); the first acquire leaves that layout.
                let old = if acquire && self.fresh.get() {
                    vk::ImageLayout::UNDEFINED
                } else {
                    vk::ImageLayout::GENERAL
                };
                let bars: Vec<_> = self
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
                // SAFETY: recording into the caller's command buffer; the images are live.
                unsafe {
                    self.device.cmd_pipeline_barrier(
                        cmd,
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
}

impl Drop for Imported {
    fn drop(&mut self) {
        // SAFETY: the owner waited for the GPU work using these objects (documented on the
        // type); each handle is destroyed once, views before images, objects before memory.
        unsafe {
            for v in self.views.drain(..) {
                self.device.destroy_image_view(v, None);
            }
            for i in self.images.drain(..) {
                self.device.destroy_image(i, None);
            }
            for b in self.buffers.drain(..) {
                self.device.destroy_buffer(b, None);
            }
            for m in self.memories.drain(..) {
                self.device.free_memory(m, None);
            }
        }
        // The host mappings go after the memory that imported them.
        self.staging.clear();
        self.host_maps.clear();
    }
}

/// The whole colour subresource of a single-plane, single-level image.
pub fn color_range() -> vk::ImageSubresourceRange {
    vk::ImageSubresourceRange {
        aspect_mask: vk::ImageAspectFlags::COLOR,
        base_mip_level: 0,
        level_count: 1,
        base_array_layer: 0,
        layer_count: 1,
    }
}

/// A Vulkan instance and device of our own, for programs that have none: the first device with
/// a compute queue (hardware preferred over CPU devices), with every import extension it
/// offers enabled ([`supported_extensions`]) plus `extra_device_extensions`.
pub struct OwnedDevice {
    /// The loader.
    pub entry: ash::Entry,
    /// The instance.
    pub instance: ash::Instance,
    /// The physical device chosen.
    pub physical_device: vk::PhysicalDevice,
    /// The device.
    pub device: ash::Device,
    /// Queue 0 of `queue_family`.
    pub queue: vk::Queue,
    /// A queue family with compute.
    pub queue_family: u32,
    /// The device extensions enabled.
    pub enabled: Vec<&'static CStr>,
    /// The device's name.
    pub name: String,
}

impl fmt::Debug for OwnedDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnedDevice")
            .field("name", &self.name)
            .finish()
    }
}

impl OwnedDevice {
    /// Create the instance (with `instance_extensions`, e.g. a window system's surface
    /// extensions) and the device (with the import extensions it has, plus
    /// `extra_device_extensions`, each required).
    pub fn new(
        app_name: &CStr,
        instance_extensions: &[*const std::ffi::c_char],
        extra_device_extensions: &[&'static CStr],
    ) -> Result<Self, Error> {
        // SAFETY: loading the system Vulkan loader; no Vulkan object exists yet.
        let entry = unsafe { ash::Entry::load() }.map_err(|e| Error::Loader(e.to_string()))?;
        let app = vk::ApplicationInfo::default()
            .application_name(app_name)
            .api_version(vk::API_VERSION_1_1);
        // SAFETY: a valid create-info.
        let instance = unsafe {
            entry.create_instance(
                &vk::InstanceCreateInfo::default()
                    .application_info(&app)
                    .enabled_extension_names(instance_extensions),
                None,
            )
        }
        .map_err(|e| {
            Error::NoDevice(format!(
                "vkCreateInstance: {e} (is a Vulkan driver installed?)"
            ))
        })?;
        match Self::with_instance(entry, instance.clone(), extra_device_extensions) {
            Ok(d) => Ok(d),
            Err(e) => {
                // SAFETY: nothing was made from the instance.
                unsafe { instance.destroy_instance(None) };
                Err(e)
            }
        }
    }

    fn with_instance(
        entry: ash::Entry,
        instance: ash::Instance,
        extra: &[&'static CStr],
    ) -> Result<Self, Error> {
        // SAFETY: `instance` is live; the queries only read.
        let pdevs = unsafe { instance.enumerate_physical_devices() }
            .map_err(vkerr("vkEnumeratePhysicalDevices"))?;
        let rank = |p: vk::PhysicalDevice| {
            // SAFETY: a device handle from enumerate_physical_devices.
            match unsafe { instance.get_physical_device_properties(p) }.device_type {
                vk::PhysicalDeviceType::DISCRETE_GPU => 0,
                vk::PhysicalDeviceType::INTEGRATED_GPU => 1,
                vk::PhysicalDeviceType::VIRTUAL_GPU => 2,
                _ => 3,
            }
        };
        let pdev = *pdevs.iter().min_by_key(|&&p| rank(p)).ok_or_else(|| {
            Error::NoDevice(
                "no Vulkan driver found a device (install mesa-vulkan-drivers for lavapipe)".into(),
            )
        })?;
        // SAFETY: as above.
        let name = unsafe { instance.get_physical_device_properties(pdev) }
            .device_name_as_c_str()
            .unwrap_or(c"?")
            .to_string_lossy()
            .into_owned();
        // SAFETY: as above.
        let exts = unsafe { instance.enumerate_device_extension_properties(pdev) }
            .map_err(vkerr("vkEnumerateDeviceExtensionProperties"))?;
        for e in extra {
            if !has_ext(&exts, e) {
                return Err(Error::Lacks(format!(
                    "{name} lacks {}",
                    e.to_string_lossy()
                )));
            }
        }
        // SAFETY: as above.
        let qf = unsafe { instance.get_physical_device_queue_family_properties(pdev) }
            .iter()
            .position(|q| q.queue_flags.contains(vk::QueueFlags::COMPUTE))
            .ok_or_else(|| Error::NoDevice(format!("{name} has no compute queue")))?
            as u32;
        let mut enabled = supported_extensions(&instance, pdev)?;
        enabled.extend_from_slice(extra);
        let names: Vec<_> = enabled.iter().map(|e| e.as_ptr()).collect();
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
        .map_err(vkerr("vkCreateDevice"))?;
        // SAFETY: queue 0 of a family we created the device with.
        let queue = unsafe { device.get_device_queue(qf, 0) };
        Ok(Self {
            entry,
            instance,
            physical_device: pdev,
            device,
            queue,
            queue_family: qf,
            enabled,
            name,
        })
    }

    /// An [`Importer`] for this device.
    pub fn importer(&self) -> Result<Importer, Error> {
        Importer::new(
            &self.instance,
            self.physical_device,
            &self.device,
            self.queue_family,
            &self.enabled,
        )
    }
}

impl Drop for OwnedDevice {
    fn drop(&mut self) {
        // SAFETY: everything made from the device was destroyed by its owners first (the
        // documented order); then the device, then the instance.
        unsafe {
            let _ = self.device.device_wait_idle();
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}
