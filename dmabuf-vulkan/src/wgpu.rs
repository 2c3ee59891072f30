//! The imported planes as [`wgpu::Texture`]s, through wgpu's Vulkan HAL (feature `wgpu`).
//!
//! A [`WgpuImporter`] is an [`Importer`] on the raw Vulkan device under a wgpu
//! [`wgpu::Device`]. It is made either by [`WgpuImporter::new`] / [`WgpuImporter::open`], which
//! open the wgpu device themselves with the import extensions ([`supported_extensions`])
//! enabled (`wgpu::hal::vulkan::Adapter::open_with_callback`), or by
//! [`WgpuImporter::from_device`] for a device the application opened: then only the extensions
//! that device was opened with are used (a plain `request_device` enables none of them, and only
//! the `copy` path is left).
//!
//! [`WgpuImporter::import`] turns a received [`FrameBuffer`] into a [`WgpuImport`]: one
//! [`wgpu::Texture`] per plane, 2D, one mip level, in the format of its [`PlaneImage`]
//! (`R8Unorm`, `Rg8Unorm`, `Rgba8Unorm`, `R16Unorm`, `Rg16Unorm`; the 16-bit ones need
//! [`wgpu::Features::TEXTURE_FORMAT_16BIT_NORM`], which [`WgpuImporter::open`] requests when the
//! adapter has it). A texel holds the plane's samples as its memory block (NV12's chroma plane is
//! `Rg8Unorm`, Cb in `r` and Cr in `g`; P010's samples are 16-bit words with the 10 bits on top,
//! so `R16Unorm` reads `code * 64 / 65535`). Import once per buffer (on
//! `ReceiverEvent::BufferAdded`) and drop on removal, like an [`Imported`].
//!
//! How the pixels get into the textures depends on the [`ImportPath`]:
//! - `dmabuf-image`: **no copy**. The textures *are* the imported `VkImage`s
//!   (`wgpu::hal::vulkan::Device::texture_from_raw`); each keeps the import alive through its
//!   drop callback, so wgpu may destroy them late. They have only
//!   [`wgpu::TextureUsages::TEXTURE_BINDING`]: sample or load them, nothing else.
//! - `host-pointer` and `dmabuf-buffer`: the imported `VkBuffer`s are wrapped as
//!   [`wgpu::Buffer`]s (no CPU copy) and every frame is copied **on the GPU** into ordinary
//!   textures (`copy_buffer_to_texture`), because wgpu cannot make a texture of a buffer. Plane
//!   strides that are a multiple of 256 bytes (wgpu's `COPY_BYTES_PER_ROW_ALIGNMENT`; the
//!   producer's layouts are) take one copy per plane; other strides take one copy per row.
//! - `copy`: a CPU copy into a staging buffer ([`Imported::copy_in`]), then the same GPU copy.
//!
//! Each frame goes through [`WgpuImporter::submit_frame`], which puts around the caller's
//! command buffers what the path needs: the CPU copy, the GPU copies, and for dma-bufs the
//! queue-family ownership transfers (acquire from `VK_QUEUE_FAMILY_FOREIGN_EXT` before, release
//! to it after, recorded through `CommandEncoder::as_hal_mut` in command buffers of their own)
//! and the implicit-sync wait on the dma-buf's sync file (`wgpu::hal::vulkan::Queue::
//! add_wait_semaphore`). Then [`WgpuImporter::wait`] for that submission before dropping the
//! frame guard, so that the producer gets the buffer back only once the GPU is done with it.
//!
//! Threads: the import objects are not `Send`; use them on the thread that submits frames. The
//! implicit-sync wait is attached to the *next* submission on the queue, so no other thread may
//! submit on it between [`WgpuImporter::submit_frame`]'s parts (it submits them at once).
#![allow(unsafe_code)]

use crate::{
    plane_images, supported_extensions, Error, ImportPath, Imported, Importer, PlaneImage,
};
use ash::vk;
use dmabuf_core::format::PlaneLayout;
use dmabuf_core::FrameBuffer;
use std::ffi::CStr;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use wgpu::hal::api::Vulkan;

/// What went wrong making a wgpu device or handing frames to it.
#[derive(Debug, thiserror::Error)]
pub enum WgpuError {
    /// Importing into Vulkan failed (see [`Error`]).
    #[error(transparent)]
    Import(#[from] Error),
    /// wgpu found no Vulkan adapter.
    #[error("wgpu found no Vulkan adapter (is a Vulkan driver installed? lavapipe: mesa-vulkan-drivers)")]
    NoAdapter,
    /// The adapter or device is not on wgpu's Vulkan backend.
    #[error("the wgpu {0} is not on the Vulkan backend")]
    NotVulkan(&'static str),
    /// The device lacks something a plane needs (a texture format feature, …).
    #[error("{0}")]
    Lacks(String),
    /// The frame's layout cannot be copied into textures by wgpu.
    #[error("{0}")]
    Unsupported(String),
    /// Opening the device failed.
    #[error("opening the wgpu device: {0}")]
    Open(String),
    /// Waiting for the GPU failed or timed out.
    #[error("waiting for the GPU: {0}")]
    Poll(#[from] wgpu::PollError),
}

/// The wgpu format of a plane image's Vulkan format.
pub fn texture_format(format: vk::Format) -> Option<wgpu::TextureFormat> {
    Some(match format {
        vk::Format::R8_UNORM => wgpu::TextureFormat::R8Unorm,
        vk::Format::R8G8_UNORM => wgpu::TextureFormat::Rg8Unorm,
        vk::Format::R8G8B8A8_UNORM => wgpu::TextureFormat::Rgba8Unorm,
        vk::Format::R16_UNORM => wgpu::TextureFormat::R16Unorm,
        vk::Format::R16G16_UNORM => wgpu::TextureFormat::Rg16Unorm,
        _ => return None,
    })
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    // wgpu's native futures are ready when created; poll until they are.
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// A wgpu device on the Vulkan backend with an [`Importer`] on the same raw device.
pub struct WgpuImporter {
    importer: Importer,
    raw: ash::Device,
    /// For the implicit-sync wait (one frame at a time).
    semaphore: vk::Semaphore,
    enabled: Vec<&'static CStr>,
    adapter: Option<wgpu::Adapter>,
    device: wgpu::Device,
    queue: wgpu::Queue,
    // Last: the instance outlives the device (wgpu keeps it alive anyway).
    instance: Option<wgpu::Instance>,
}

impl fmt::Debug for WgpuImporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WgpuImporter")
            .field("importer", &self.importer)
            .finish()
    }
}

impl WgpuImporter {
    /// A wgpu instance on the Vulkan backend only, its best adapter (hardware before CPU
    /// devices), and a device opened on it by [`WgpuImporter::open`].
    ///
    /// Errors: [`WgpuError::NoAdapter`], and those of [`WgpuImporter::open`].
    pub fn new() -> Result<Self, WgpuError> {
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = wgpu::Backends::VULKAN;
        let instance = wgpu::Instance::new(desc);
        let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 3,
            wgpu::DeviceType::Other => 4,
        };
        let adapter = block_on(instance.enumerate_adapters(wgpu::Backends::VULKAN))
            .into_iter()
            .min_by_key(rank)
            .ok_or(WgpuError::NoAdapter)?;
        let mut me = Self::open(&adapter)?;
        me.adapter = Some(adapter);
        me.instance = Some(instance);
        Ok(me)
    }

    /// Open a device on `adapter` (a Vulkan one) with the import extensions it offers enabled
    /// besides wgpu's own, and [`wgpu::Features::TEXTURE_FORMAT_16BIT_NORM`] when it has it
    /// (P010 and other 16-bit formats need it); the adapter's limits.
    ///
    /// Errors: [`WgpuError::NotVulkan`], [`WgpuError::Open`] (the driver refused the device).
    pub fn open(adapter: &wgpu::Adapter) -> Result<Self, WgpuError> {
        let mut features = wgpu::Features::empty();
        if adapter
            .features()
            .contains(wgpu::Features::TEXTURE_FORMAT_16BIT_NORM)
        {
            features |= wgpu::Features::TEXTURE_FORMAT_16BIT_NORM;
        }
        let limits = adapter.limits();
        let hints = wgpu::MemoryHints::Performance;
        let open = {
            // SAFETY: the guard is only used to open a device (`open_with_callback`'s rules:
            // the callback only adds extensions the physical device reports, removes nothing).
            let hal =
                unsafe { adapter.as_hal::<Vulkan>() }.ok_or(WgpuError::NotVulkan("adapter"))?;
            let exts = supported_extensions(
                hal.shared_instance().raw_instance(),
                hal.raw_physical_device(),
            )?;
            let add = move |args: wgpu::hal::vulkan::CreateDeviceCallbackArgs<'_, '_, '_>| {
                for e in exts {
                    if !args.extensions.contains(&e) {
                        args.extensions.push(e);
                    }
                }
            };
            // SAFETY: features within the adapter's, its own limits; see the callback above.
            unsafe { hal.open_with_callback(features, &limits, &hints, Some(Box::new(add))) }
                .map_err(|e| WgpuError::Open(e.to_string()))?
        };
        let desc = wgpu::DeviceDescriptor {
            label: Some("dmabuf-vulkan"),
            required_features: features,
            required_limits: limits,
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: hints,
            trace: wgpu::Trace::Off,
        };
        // SAFETY: the HAL device was opened from this adapter with these features.
        let (device, queue) = unsafe { adapter.create_device_from_hal(open, &desc) }
            .map_err(|e| WgpuError::Open(e.to_string()))?;
        let mut me = Self::from_device(&device, &queue)?;
        me.adapter = Some(adapter.clone());
        Ok(me)
    }

    /// An importer for a device the application opened on wgpu's Vulkan backend. Only the
    /// import extensions it was opened with are used: to have them, open it with
    /// `wgpu::hal::vulkan::Adapter::open_with_callback` adding [`supported_extensions`] (as
    /// [`WgpuImporter::open`] does), else only [`ImportPath::Copy`] is possible.
    ///
    /// Errors: [`WgpuError::NotVulkan`], a failed `vkCreateSemaphore`.
    pub fn from_device(device: &wgpu::Device, queue: &wgpu::Queue) -> Result<Self, WgpuError> {
        let (importer, raw, enabled) = {
            // SAFETY: the guard is used to read handles; nothing is destroyed through it.
            let hal = unsafe { device.as_hal::<Vulkan>() }.ok_or(WgpuError::NotVulkan("device"))?;
            let enabled = hal.enabled_device_extensions().to_vec();
            let raw = hal.raw_device().clone();
            let importer = Importer::new(
                hal.shared_instance().raw_instance(),
                hal.raw_physical_device(),
                &raw,
                hal.queue_family_index(),
                &enabled,
            )?;
            (importer, raw, enabled)
        };
        // SAFETY: a valid create-info on the live device; destroyed in `drop`.
        let semaphore = unsafe { raw.create_semaphore(&vk::SemaphoreCreateInfo::default(), None) }
            .map_err(|result| Error::Vk {
                call: "vkCreateSemaphore",
                result,
            })?;
        Ok(Self {
            importer,
            raw,
            semaphore,
            enabled,
            adapter: None,
            device: device.clone(),
            queue: queue.clone(),
            instance: None,
        })
    }

    /// The Vulkan importer (for [`Importer::caps`] in the `Hello`, [`Importer::best_path`]).
    pub fn importer(&self) -> &Importer {
        &self.importer
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The wgpu queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The adapter, when this importer opened the device.
    pub fn adapter(&self) -> Option<&wgpu::Adapter> {
        self.adapter.as_ref()
    }

    /// The Vulkan device extensions the device was opened with.
    pub fn enabled_extensions(&self) -> &[&'static CStr] {
        &self.enabled
    }

    /// Import `buf` by `path` and make its plane textures (see the module documentation for
    /// what each path gives). Once per buffer.
    ///
    /// Errors: those of [`Importer::import`]; [`WgpuError::Lacks`] for a plane format the
    /// device cannot take (16-bit planes without `TEXTURE_FORMAT_16BIT_NORM`);
    /// [`WgpuError::Unsupported`] for a plane offset or stride that is not a whole number of
    /// texels.
    pub fn import(&self, buf: &FrameBuffer, path: ImportPath) -> Result<WgpuImport, WgpuError> {
        let f = buf.layout.format;
        let planes = plane_images(f.pixel, f.width, f.height);
        let mut formats = Vec::with_capacity(planes.len());
        for (i, pi) in planes.iter().enumerate() {
            let tf = texture_format(pi.format).ok_or_else(|| {
                WgpuError::Unsupported(format!("plane {i}: no wgpu format for {:?}", pi.format))
            })?;
            let need = tf.required_features();
            if !self.device.features().contains(need) {
                return Err(WgpuError::Lacks(format!(
                    "plane {i} of {} is {tf:?}: the wgpu device lacks {need:?}",
                    f.pixel
                )));
            }
            formats.push(tf);
        }
        if path != ImportPath::DmabufImage {
            for (i, (pl, pi)) in buf.layout.planes.iter().zip(&planes).enumerate() {
                let t = u64::from(pi.bytes_per_texel);
                if pl.offset % t != 0 || u64::from(pl.stride) % t != 0 {
                    return Err(WgpuError::Unsupported(format!(
                        "plane {i}: offset {} and stride {} must be multiples of its {t}-byte texels for a GPU copy",
                        pl.offset, pl.stride
                    )));
                }
            }
        }
        let imported = self.importer.import(buf, path)?;
        let keep = Arc::new(KeepAlive {
            imported,
            _device: self.device.clone(),
        });
        let mut textures = Vec::with_capacity(planes.len());
        let mut sources = Vec::new();
        if path == ImportPath::DmabufImage {
            // SAFETY: the guard is used to wrap images of this device; nothing is destroyed.
            let hal =
                unsafe { self.device.as_hal::<Vulkan>() }.ok_or(WgpuError::NotVulkan("device"))?;
            for (i, (pi, &tf)) in planes.iter().zip(&formats).enumerate() {
                let image = keep.imported.images[i];
                let size = wgpu::Extent3d {
                    width: pi.width,
                    height: pi.height,
                    depth_or_array_layers: 1,
                };
                let hal_desc = wgpu::hal::TextureDescriptor {
                    label: Some("dmabuf plane"),
                    size,
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: tf,
                    usage: wgpu::TextureUses::RESOURCE,
                    memory_flags: wgpu::hal::MemoryFlags::empty(),
                    view_formats: vec![],
                };
                let hold = keep.clone();
                // SAFETY: `image` is a live single-plane 2D image of this device with this
                // format, extent, one level and layer, SAMPLED usage (plus TRANSFER_SRC),
                // created without MUTABLE_FORMAT (no view formats); the drop callback keeps the
                // import (image and memory) alive until wgpu is done with the texture, and the
                // memory is the import's (External: wgpu frees nothing).
                let hal_tex = unsafe {
                    hal.texture_from_raw(
                        image,
                        &hal_desc,
                        Some(Box::new(move || drop(hold))),
                        wgpu::hal::vulkan::TextureMemory::External,
                    )
                };
                let desc = wgpu::TextureDescriptor {
                    label: Some("dmabuf plane"),
                    size,
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: tf,
                    usage: wgpu::TextureUsages::TEXTURE_BINDING,
                    view_formats: &[],
                };
                // SAFETY: made from this device, as `desc` says. Its contents are the dma-buf's
                // (initialised by the producer). Its tracked state is RESOURCE
                // (SHADER_READ_ONLY_OPTIMAL): the layout the acquire in `submit_frame` leaves
                // it in before any wgpu work reads it; with TEXTURE_BINDING only, wgpu never
                // moves it to another layout, so the release can name that layout.
                textures.push(unsafe {
                    self.device.create_texture_from_hal::<Vulkan>(
                        hal_tex,
                        &desc,
                        wgpu::TextureUses::RESOURCE,
                    )
                });
            }
        } else {
            let imp = &keep.imported;
            for k in 0..buf.fds.len() {
                let vkbuf = if path == ImportPath::Copy {
                    imp.staging[k].buffer
                } else {
                    imp.read_buffers[k]
                };
                let hold = keep.clone();
                // SAFETY: the buffer belongs to the import, which the callback keeps alive
                // until wgpu drops the wrapper; wgpu neither destroys nor maps it.
                let hal_buf = unsafe {
                    wgpu::hal::vulkan::Buffer::from_raw_externally_owned(
                        vkbuf,
                        Box::new(move || drop(hold)),
                    )
                };
                let desc = wgpu::BufferDescriptor {
                    label: Some("dmabuf fd"),
                    size: buf.fd_sizes[k],
                    usage: wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                };
                // SAFETY: made on this device with at least `fd_sizes[k]` bytes and TRANSFER_SRC
                // usage; its contents are the frame's (initialised).
                sources
                    .push(unsafe { self.device.create_buffer_from_hal::<Vulkan>(hal_buf, &desc) });
            }
            for (pi, &tf) in planes.iter().zip(&formats) {
                textures.push(self.device.create_texture(&wgpu::TextureDescriptor {
                    label: Some("frame plane"),
                    size: wgpu::Extent3d {
                        width: pi.width,
                        height: pi.height,
                        depth_or_array_layers: 1,
                    },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: tf,
                    usage: wgpu::TextureUsages::TEXTURE_BINDING
                        | wgpu::TextureUsages::COPY_DST
                        | wgpu::TextureUsages::COPY_SRC,
                    view_formats: &[],
                }));
            }
        }
        Ok(WgpuImport {
            path,
            planes,
            layout: buf.layout.planes.clone(),
            plane_fds: buf.plane_fds.clone(),
            textures,
            sources,
            keep,
            _not_send: PhantomData,
        })
    }

    /// Submit one frame: before `work` (the caller's command buffers reading
    /// [`WgpuImport::textures`]), the CPU copy (`copy` path), the dma-buf acquire and the GPU
    /// copies into the textures (buffer paths), with the submission waiting on the dma-buf's
    /// pending writers (implicit sync); after `work`, the release back to the foreign queue
    /// family. All in one `Queue::submit`; its index, for [`WgpuImporter::wait`].
    ///
    /// `buf` is the frame's buffer, the one `imp` was imported from. Keep the frame guard until
    /// [`WgpuImporter::wait`] returns.
    pub fn submit_frame(
        &self,
        imp: &WgpuImport,
        buf: &FrameBuffer,
        work: impl IntoIterator<Item = wgpu::CommandBuffer>,
    ) -> Result<wgpu::SubmissionIndex, WgpuError> {
        let imported = &imp.keep.imported;
        imported.copy_in()?; // the copy path's CPU copy; nothing on the others
        let mut cmds = Vec::new();
        if matches!(imp.path, ImportPath::DmabufImage | ImportPath::DmabufBuffer) {
            cmds.push(self.ownership(imp, true)?);
        }
        if imp.path != ImportPath::DmabufImage {
            cmds.push(self.copies(imp));
        }
        cmds.extend(work);
        if matches!(imp.path, ImportPath::DmabufImage | ImportPath::DmabufBuffer) {
            cmds.push(self.ownership(imp, false)?);
        }
        if self.importer.implicit_sync(buf, imp.path, self.semaphore)? {
            // SAFETY: the guard is used to stage a wait on our own semaphore, which the
            // submission just below consumes.
            let q =
                unsafe { self.queue.as_hal::<Vulkan>() }.ok_or(WgpuError::NotVulkan("queue"))?;
            q.add_wait_semaphore(self.semaphore, None, vk::PipelineStageFlags::ALL_COMMANDS);
        }
        Ok(self.queue.submit(cmds))
    }

    /// Wait (up to 10 s) until submission `index` has finished on the GPU: then the frame's
    /// guard may be dropped and its buffer reused by the producer.
    pub fn wait(&self, index: wgpu::SubmissionIndex) -> Result<(), WgpuError> {
        self.device.poll(wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: Some(Duration::from_secs(10)),
        })?;
        Ok(())
    }

    /// The GPU copies of each plane from the wrapped buffers into the textures.
    fn copies(&self, imp: &WgpuImport) -> wgpu::CommandBuffer {
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("frame planes: buffer to texture"),
            });
        for (i, (pl, pi)) in imp.layout.iter().zip(&imp.planes).enumerate() {
            let src = &imp.sources[imp.plane_fds[i]];
            let dst = wgpu::TexelCopyTextureInfo {
                texture: &imp.textures[i],
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            };
            if pl.stride % wgpu::COPY_BYTES_PER_ROW_ALIGNMENT == 0 {
                enc.copy_buffer_to_texture(
                    wgpu::TexelCopyBufferInfo {
                        buffer: src,
                        layout: wgpu::TexelCopyBufferLayout {
                            offset: pl.offset,
                            bytes_per_row: Some(pl.stride),
                            rows_per_image: Some(pi.height),
                        },
                    },
                    dst,
                    wgpu::Extent3d {
                        width: pi.width,
                        height: pi.height,
                        depth_or_array_layers: 1,
                    },
                );
            } else {
                // wgpu takes only 256-byte-aligned row pitches: one single-row copy per row.
                for r in 0..pi.height {
                    enc.copy_buffer_to_texture(
                        wgpu::TexelCopyBufferInfo {
                            buffer: src,
                            layout: wgpu::TexelCopyBufferLayout {
                                offset: pl.offset + u64::from(r) * u64::from(pl.stride),
                                bytes_per_row: None,
                                rows_per_image: None,
                            },
                        },
                        wgpu::TexelCopyTextureInfo {
                            origin: wgpu::Origin3d { x: 0, y: r, z: 0 },
                            ..dst
                        },
                        wgpu::Extent3d {
                            width: pi.width,
                            height: 1,
                            depth_or_array_layers: 1,
                        },
                    );
                }
            }
        }
        enc.finish()
    }

    /// The acquire from (or release to) the foreign queue family, in a command buffer of its
    /// own, recorded with raw Vulkan through `as_hal_mut`.
    fn ownership(&self, imp: &WgpuImport, acquire: bool) -> Result<wgpu::CommandBuffer, WgpuError> {
        let imported = &imp.keep.imported;
        let foreign = if imported.has_foreign {
            vk::QUEUE_FAMILY_FOREIGN_EXT
        } else {
            vk::QUEUE_FAMILY_EXTERNAL
        };
        let qf = imported.qf;
        let (src_q, dst_q) = if acquire {
            (foreign, qf)
        } else {
            (qf, foreign)
        };
        // Reads only: nothing to make available. Acquire before every later command in
        // submission order (wgpu's copies and passes); release after every earlier one.
        let (src_stage, dst_stage, dst_access) = if acquire {
            (
                vk::PipelineStageFlags::TOP_OF_PIPE,
                vk::PipelineStageFlags::ALL_COMMANDS,
                vk::AccessFlags::MEMORY_READ,
            )
        } else {
            (
                vk::PipelineStageFlags::ALL_COMMANDS,
                vk::PipelineStageFlags::BOTTOM_OF_PIPE,
                vk::AccessFlags::empty(),
            )
        };
        let buffers: Vec<_> = if imp.path == ImportPath::DmabufBuffer {
            imported
                .read_buffers
                .iter()
                .map(|&b| {
                    vk::BufferMemoryBarrier::default()
                        .dst_access_mask(dst_access)
                        .src_queue_family_index(src_q)
                        .dst_queue_family_index(dst_q)
                        .buffer(b)
                        .offset(0)
                        .size(vk::WHOLE_SIZE)
                })
                .collect()
        } else {
            vec![]
        };
        // wlroots' layouts: acquired into SHADER_READ_ONLY_OPTIMAL (from UNDEFINED the first
        // time: external images are created so), released in GENERAL.
        let (old, new) = if acquire {
            let old = if imported.fresh.get() {
                vk::ImageLayout::UNDEFINED
            } else {
                vk::ImageLayout::GENERAL
            };
            (old, vk::ImageLayout::SHADER_READ_ONLY_OPTIMAL)
        } else {
            (
                vk::ImageLayout::SHADER_READ_ONLY_OPTIMAL,
                vk::ImageLayout::GENERAL,
            )
        };
        let images: Vec<_> = if imp.path == ImportPath::DmabufImage {
            imported
                .images
                .iter()
                .map(|&image| {
                    vk::ImageMemoryBarrier::default()
                        .dst_access_mask(dst_access)
                        .old_layout(old)
                        .new_layout(new)
                        .src_queue_family_index(src_q)
                        .dst_queue_family_index(dst_q)
                        .image(image)
                        .subresource_range(crate::color_range())
                })
                .collect()
        } else {
            vec![]
        };
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some(if acquire {
                    "dma-buf acquire"
                } else {
                    "dma-buf release"
                }),
            });
        // SAFETY: the closure records one barrier into the open raw command buffer wgpu gives
        // (not ending it, not touching the wgpu encoder meanwhile); the images and buffers are
        // the import's, alive.
        let recorded = unsafe {
            enc.as_hal_mut::<Vulkan, _, _>(|e| {
                let e = e?;
                self.raw.cmd_pipeline_barrier(
                    e.raw_handle(),
                    src_stage,
                    dst_stage,
                    vk::DependencyFlags::empty(),
                    &[],
                    &buffers,
                    &images,
                );
                Some(())
            })
        };
        recorded.ok_or(WgpuError::NotVulkan("command encoder"))?;
        if acquire {
            imported.fresh.set(false);
        }
        Ok(enc.finish())
    }
}

impl Drop for WgpuImporter {
    fn drop(&mut self) {
        // SAFETY: our semaphore; the device is idle for it once the queue is (each frame was
        // waited for, and this waits for the rest).
        unsafe {
            let _ = self.raw.device_wait_idle();
            self.raw.destroy_semaphore(self.semaphore, None);
        }
    }
}

/// The import, kept alive by the [`WgpuImport`] and by the drop callbacks of the wgpu objects
/// wrapping its images and buffers, and the wgpu device it belongs to (dropped after it).
struct KeepAlive {
    imported: Imported,
    _device: wgpu::Device,
}

// SAFETY: wgpu's drop callbacks must be `Send + Sync`; they only hold an `Arc<KeepAlive>` and
// drop it. The contents are used through `&` only by `WgpuImport`, which is neither `Send` nor
// `Sync`, so on one thread at a time; the last owner drops it, on whatever thread, with
// exclusive access (freeing Vulkan objects, which any thread may do, and unmapping).
unsafe impl Send for KeepAlive {}
// SAFETY: as above: no shared access from two threads ever reaches `imported`.
unsafe impl Sync for KeepAlive {}

/// One frame buffer imported for wgpu: a texture per plane (see the module documentation).
///
/// Drop it when its buffer is removed, after waiting for the GPU work that used it (the wgpu
/// objects it made may live on inside wgpu; they keep the import alive until wgpu frees them).
pub struct WgpuImport {
    path: ImportPath,
    planes: Vec<PlaneImage>,
    layout: Vec<PlaneLayout>,
    plane_fds: Vec<usize>,
    textures: Vec<wgpu::Texture>,
    /// Buffer paths: one wrapped buffer per fd.
    sources: Vec<wgpu::Buffer>,
    keep: Arc<KeepAlive>,
    _not_send: PhantomData<*const ()>,
}

impl fmt::Debug for WgpuImport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WgpuImport")
            .field("path", &self.path)
            .field("planes", &self.planes.len())
            .finish()
    }
}

impl WgpuImport {
    /// How it was imported: [`ImportPath::DmabufImage`] means the textures are the dma-buf
    /// itself; the other paths copy into them on the GPU each frame.
    pub fn path(&self) -> ImportPath {
        self.path
    }

    /// Plane `i`'s texture, `PlaneImage::width` x `height` texels of its format; its contents
    /// are the frame's for work submitted through [`WgpuImporter::submit_frame`].
    pub fn textures(&self) -> &[wgpu::Texture] {
        &self.textures
    }

    /// How each plane is seen as a texture (format, texels, bytes per texel and sample).
    pub fn plane_images(&self) -> &[PlaneImage] {
        &self.planes
    }

    /// Whether the planes reach the textures with no copy at all (the `dmabuf-image` path).
    pub fn zero_copy(&self) -> bool {
        self.path == ImportPath::DmabufImage
    }

    /// The Vulkan import underneath.
    pub fn imported(&self) -> &Imported {
        &self.keep.imported
    }
}
