//! DRM device queries: `DRM_IOCTL_VERSION` (the driver's name) and `DRM_IOCTL_GET_CAP`
//! (whether the device makes syncobjs, and timeline syncobjs, the objects explicit sync such as
//! PipeWire's `SPA_META_SyncTimeline` passes between processes).
//!
//! UAPI: `include/uapi/drm/drm.h`.

use nix::errno::Errno;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `struct drm_get_cap`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct DrmGetCap {
    /// `DRM_CAP_*`.
    pub capability: u64,
    /// The answer.
    pub value: u64,
}
const _: () = assert!(std::mem::size_of::<DrmGetCap>() == 16);

/// `struct drm_version` (the strings are written into buffers the caller gives).
#[repr(C)]
#[derive(Debug)]
pub struct DrmVersion {
    /// Major, minor and patch level of the driver.
    pub version_major: i32,
    /// Minor.
    pub version_minor: i32,
    /// Patch level.
    pub version_patchlevel: i32,
    /// In: the name buffer's length; out: the name's.
    pub name_len: usize,
    /// The name buffer.
    pub name: *mut u8,
    /// In/out: the date buffer's length.
    pub date_len: usize,
    /// The date buffer.
    pub date: *mut u8,
    /// In/out: the description buffer's length.
    pub desc_len: usize,
    /// The description buffer.
    pub desc: *mut u8,
}
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<DrmVersion>() == 64);

/// `DRM_CAP_SYNCOBJ`: the device makes syncobjs.
pub const DRM_CAP_SYNCOBJ: u64 = 0x13;
/// `DRM_CAP_SYNCOBJ_TIMELINE`: the device makes timeline syncobjs.
pub const DRM_CAP_SYNCOBJ_TIMELINE: u64 = 0x14;

nix::ioctl_readwrite!(
    /// `DRM_IOCTL_VERSION`.
    drm_ioctl_version,
    b'd',
    0x00,
    DrmVersion
);
nix::ioctl_readwrite!(
    /// `DRM_IOCTL_GET_CAP`.
    drm_ioctl_get_cap,
    b'd',
    0x0c,
    DrmGetCap
);

/// The value of capability `cap` of the DRM device open as `dev`.
pub fn get_cap(dev: BorrowedFd<'_>, cap: u64) -> Result<u64, Errno> {
    let mut data = DrmGetCap {
        capability: cap,
        value: 0,
    };
    // SAFETY: `dev` is live for the call; `data` is a valid, writable struct of the size the
    // ioctl number encodes.
    unsafe { drm_ioctl_get_cap(dev.as_raw_fd(), &mut data) }?;
    Ok(data.value)
}

/// The name of the driver of the DRM device open as `dev` (`vgem`, `i915`, `amdgpu`, …).
pub fn driver_name(dev: BorrowedFd<'_>) -> Result<String, Errno> {
    let mut name = [0u8; 64];
    let mut v = DrmVersion {
        version_major: 0,
        version_minor: 0,
        version_patchlevel: 0,
        name_len: name.len(),
        name: name.as_mut_ptr(),
        date_len: 0,
        date: std::ptr::null_mut(),
        desc_len: 0,
        desc: std::ptr::null_mut(),
    };
    // SAFETY: `dev` is live for the call; `v` is a valid struct whose name buffer is `name_len`
    // writable bytes that outlive the call, and whose other buffers are empty (the kernel
    // copies at most the given length into each and writes the full lengths back).
    unsafe { drm_ioctl_version(dev.as_raw_fd(), &mut v) }?;
    let n = v.name_len.min(name.len());
    Ok(String::from_utf8_lossy(&name[..n]).into_owned())
}
