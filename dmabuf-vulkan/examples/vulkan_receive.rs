//! The whole receiver on a Vulkan device: connect with the device's capabilities, import each
//! buffer once (per-plane images for dma-bufs, host pointers for memfds, or copies), and for
//! every frame acquire it from the producer's side, read it on the GPU, release it, and hand
//! the buffer back by dropping the frame guard. The GPU work here is a readback of each plane's
//! first row, compared with what the CPU sees in the same memory: the proof that the import
//! shows the producer's bytes.
//!
//! ```sh
//! producer --socket /tmp/frames.sock &
//! cargo run -p dmabuf-vulkan --example vulkan_receive -- /tmp/frames.sock 120
//! ```

#![allow(unsafe_code)] // Vulkan calls, each block with its SAFETY line.

use ash::vk;
use dmabuf_core::mapping::CpuMapping;
use dmabuf_core::receiver::{Receiver, ReceiverEvent};
use dmabuf_vulkan::{ImportCache, ImportPath, Imported, OwnedDevice};
use std::time::Duration;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let sock = args
        .next()
        .unwrap_or_else(|| "/tmp/dmabuf-frames.sock".into());
    let frames: u64 = args.next().map_or(Ok(100), |n| n.parse())?;

    // A device of our own (an application passes its own to `Importer::new`).
    let dev = OwnedDevice::new(c"vulkan_receive", &[], &[])?;
    let importer = dev.importer()?;
    let rx = Receiver::connect(
        &sock,
        importer.caps(&ImportPath::ALL),
        Duration::from_secs(5),
    )?;
    let w = rx.welcome();
    let mut path = importer.best_path(w.pixel, w.modifier, w.memory);
    println!(
        "stream: {} {}x{} in {}, imported by {path} on {}",
        w.pixel, w.width, w.height, w.memory, dev.name
    );

    let d = &dev.device;
    // SAFETY: valid create-infos on a live device.
    let (pool, cmd, fence, sem) = unsafe {
        let pool = d.create_command_pool(
            &vk::CommandPoolCreateInfo::default()
                .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER)
                .queue_family_index(dev.queue_family),
            None,
        )?;
        let cmd = d.allocate_command_buffers(
            &vk::CommandBufferAllocateInfo::default()
                .command_pool(pool)
                .command_buffer_count(1),
        )?[0];
        let fence = d.create_fence(&vk::FenceCreateInfo::default(), None)?;
        let sem = d.create_semaphore(&vk::SemaphoreCreateInfo::default(), None)?;
        (pool, cmd, fence, sem)
    };
    // Where the GPU writes what it read: 64 KiB, host-visible.
    let (readback, rb_mem, rb_ptr) =
        importer.host_buffer(1 << 16, vk::BufferUsageFlags::TRANSFER_DST)?;

    // Each buffer imported once (with the CPU's view of the same memory, for the comparison),
    // dropped when the producer removes it or renegotiates.
    let mut imports: ImportCache<(Imported, Vec<CpuMapping>)> = ImportCache::new();
    let (mut seen, mut good, mut bad) = (0u64, 0u64, 0u64);
    while seen < frames {
        let event = rx.next_event(Some(Duration::from_secs(30)))?;
        if let ReceiverEvent::Renegotiated(w) = &event {
            path = importer.best_path(w.pixel, w.modifier, w.memory);
        }
        imports.update(
            &rx,
            &event,
            |buf| -> Result<_, Box<dyn std::error::Error>> {
                let imp = importer.import(buf, path)?;
                let maps = buf
                    .fds
                    .iter()
                    .zip(&buf.fd_sizes)
                    .map(|(fd, &n)| CpuMapping::new(fd.clone(), n, false, buf.memory))
                    .collect::<Result<_, _>>()?;
                Ok((imp, maps))
            },
        )?;
        match event {
            ReceiverEvent::End(g) => {
                println!("producer ended the stream: {:?}", g.reason);
                break;
            }
            ReceiverEvent::Frame(frame) => {
                seen += 1;
                let (imp, maps) = imports
                    .get(frame.buffer_id())
                    .ok_or("a frame in a buffer that was never added")?;
                let buf = frame.buffer();
                imp.copy_in()?; // the copy path's CPU copy; nothing on the zero-copy paths
                                // SAFETY: the previous submit was waited for: the fence and buffer are idle.
                unsafe {
                    d.reset_fences(&[fence])?;
                    d.begin_command_buffer(cmd, &vk::CommandBufferBeginInfo::default())?;
                }
                imp.record_upload(cmd);
                imp.record_acquire(cmd);
                // Read each plane's first row on the GPU, back to back in `readback`.
                let mut at = 0u64;
                let mut want = Vec::new();
                for (i, (k, pl)) in buf.planes().enumerate() {
                    let n = u64::from(pl.row_bytes);
                    if at + n > 1 << 16 {
                        return Err("rows wider than this example's 64 KiB readback".into());
                    }
                    // SAFETY: recording copies from live imports into a buffer big enough
                    // (64 KiB holds every plane's first row of the example's streams).
                    unsafe {
                        match (imp.plane_buffer(i), imp.plane_image(i)) {
                            (Some(src), _) => d.cmd_copy_buffer(
                                cmd,
                                src,
                                readback,
                                &[vk::BufferCopy::default()
                                    .src_offset(pl.offset)
                                    .dst_offset(at)
                                    .size(n)],
                            ),
                            (None, Some(image)) => d.cmd_copy_image_to_buffer(
                                cmd,
                                image,
                                vk::ImageLayout::GENERAL,
                                readback,
                                &[vk::BufferImageCopy::default()
                                    .buffer_offset(at)
                                    .image_subresource(vk::ImageSubresourceLayers {
                                        aspect_mask: vk::ImageAspectFlags::COLOR,
                                        mip_level: 0,
                                        base_array_layer: 0,
                                        layer_count: 1,
                                    })
                                    .image_extent(vk::Extent3D {
                                        width: imp.plane_images()[i].width,
                                        height: 1,
                                        depth: 1,
                                    })],
                            ),
                            _ => unreachable!("every import has a buffer or an image per plane"),
                        }
                    }
                    let cpu = maps[k].read()?;
                    want.extend_from_slice(&cpu[pl.offset as usize..(pl.offset + n) as usize]);
                    at += n;
                }
                imp.record_release(cmd);
                let wait = importer.implicit_sync(buf, imp.path(), sem)?;
                // SAFETY: recording, submitting and waiting on our own objects.
                unsafe {
                    d.cmd_pipeline_barrier(
                        cmd,
                        vk::PipelineStageFlags::TRANSFER,
                        vk::PipelineStageFlags::HOST,
                        vk::DependencyFlags::empty(),
                        &[vk::MemoryBarrier::default()
                            .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
                            .dst_access_mask(vk::AccessFlags::HOST_READ)],
                        &[],
                        &[],
                    );
                    d.end_command_buffer(cmd)?;
                    let cmds = [cmd];
                    let waits = [sem];
                    let stages = [vk::PipelineStageFlags::ALL_COMMANDS];
                    let mut submit = vk::SubmitInfo::default().command_buffers(&cmds);
                    if wait {
                        submit = submit.wait_semaphores(&waits).wait_dst_stage_mask(&stages);
                    }
                    d.queue_submit(dev.queue, &[submit], fence)?;
                    d.wait_for_fences(&[fence], true, 10_000_000_000)?;
                }
                // SAFETY: the GPU finished (fence); the memory is host-coherent and mapped.
                let got = unsafe { std::slice::from_raw_parts(rb_ptr, at as usize) };
                // Used, then checked: a frame the producer reclaimed meanwhile does not count.
                if got == &want[..] && frame.is_intact() {
                    good += 1;
                } else {
                    bad += 1;
                }
                // `frame` drops here: the Release goes back to the producer.
            }
            // Buffers and renegotiations: the cache followed them above.
            _ => {}
        }
    }
    println!("received {seen} frames through {path}: {good} matched, {bad} differed");
    imports.clear();
    // SAFETY: idle device; each object destroyed once.
    unsafe {
        d.device_wait_idle()?;
        d.destroy_buffer(readback, None);
        d.free_memory(rb_mem, None);
        d.destroy_semaphore(sem, None);
        d.destroy_fence(fence, None);
        d.destroy_command_pool(pool, None);
    }
    rx.close("done");
    if bad > 0 {
        std::process::exit(3);
    }
    Ok(())
}
