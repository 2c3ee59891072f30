//! `cpu-map`: each buffer's fds mapped read-only once, reads bracketed with
//! `DMA_BUF_IOCTL_SYNC` on dma-bufs. No copy: the checksum reads the producer's memory.

use anyhow::{Context as _, Result};
use dmabuf_core::format::plane_checksum;
use dmabuf_core::mapping::CpuMapping;
use dmabuf_core::FrameBuffer;

/// One received buffer, mapped.
pub struct MappedBuffer {
    maps: Vec<CpuMapping>,
}

impl MappedBuffer {
    pub fn new(buf: &FrameBuffer) -> Result<Self> {
        let maps = buf
            .fds
            .iter()
            .zip(&buf.fd_sizes)
            .map(|(fd, &size)| CpuMapping::new(fd.clone(), size, false, buf.memory))
            .collect::<Result<Vec<_>, _>>()
            .context("mapping a received buffer")?;
        Ok(Self { maps })
    }

    /// The frame checksum (see `dmabuf_core::format::frame_checksum`) of what is in the buffer.
    pub fn checksum(&self, buf: &FrameBuffer) -> Result<u32> {
        let mut total = 0u32;
        for (i, (fd_index, plane)) in buf.planes().enumerate() {
            let access = self.maps[fd_index].read()?;
            let sum = plane_checksum(i as u32, &access, plane)
                .context("plane lies outside its mapping")?;
            total = total.wrapping_add(sum);
        }
        Ok(total)
    }

    /// Every plane's rows without padding, appended to `out` (for `--dump-raw`).
    pub fn append_packed(&self, buf: &FrameBuffer, out: &mut Vec<u8>) -> Result<()> {
        for (fd_index, p) in buf.planes() {
            let access = self.maps[fd_index].read()?;
            for y in 0..u64::from(p.rows) {
                let start = (p.offset + y * u64::from(p.stride)) as usize;
                let row = access
                    .get(start..start + p.row_bytes as usize)
                    .context("plane lies outside its mapping")?;
                out.extend_from_slice(row);
            }
        }
        Ok(())
    }
}
