//! Getting at a received buffer's bytes. Today: a read-only CPU mapping of every fd (`cpu-map`);
//! the Vulkan import paths come with their own issue.

pub mod cpu;
pub mod vulkan;
