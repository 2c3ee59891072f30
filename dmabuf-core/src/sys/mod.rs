//! The kernel interfaces, and the only `unsafe` code in this crate.
//!
//! One module per interface, each in two layers: the raw `#[repr(C)]` structs and ioctl numbers
//! exactly as the UAPI headers define them (with size asserts), then safe functions that take
//! [`BorrowedFd`](std::os::fd::BorrowedFd) and return [`OwnedFd`](std::os::fd::OwnedFd). Every
//! fd a call creates is wrapped into an `OwnedFd` on the line after the call.
#![allow(unsafe_code)]

pub mod dma_buf;
pub mod dma_heap;
pub mod drm;
pub mod futex;
pub mod mman;
pub mod scm;
pub mod udmabuf;
