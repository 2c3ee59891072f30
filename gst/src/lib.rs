//! GStreamer elements over `dmabuf-core`: `dmabufpipesink` publishes a pipeline's raw video to
//! the pipe's consumers (proposing its shared buffers upstream, so an element that accepts
//! the pool writes frames straight into shared memory), and `dmabufpipesrc` plays any
//! producer's stream into a pipeline as `GstDmaBufMemory`/`GstFdMemory` buffers that wrap the
//! received descriptors, released back to the producer when GStreamer frees them.
//!
//! Built as `libgstdmabufpipe.so`: point `GST_PLUGIN_PATH` at the directory holding it (or
//! copy it into the system plugin directory) and `gst-inspect-1.0 dmabufpipe` lists both.

use gst::glib;

mod caps;
mod fdmem;
mod pool;
mod sink;
mod src;

/// The plugin's debug category (`GST_DEBUG=dmabufpipe:5`).
pub(crate) static CAT: std::sync::LazyLock<gst::DebugCategory> = std::sync::LazyLock::new(|| {
    gst::DebugCategory::new(
        "dmabufpipe",
        gst::DebugColorFlags::empty(),
        Some("dmabufpipesink / dmabufpipesrc"),
    )
});

fn plugin_init(plugin: &gst::Plugin) -> Result<(), glib::BoolError> {
    sink::register(plugin)?;
    src::register(plugin)?;
    Ok(())
}

gst::plugin_define!(
    dmabufpipe,
    env!("CARGO_PKG_DESCRIPTION"),
    plugin_init,
    concat!(env!("CARGO_PKG_VERSION"), "-", env!("COMMIT_ID")),
    "MIT/X11",
    env!("CARGO_PKG_NAME"),
    env!("CARGO_PKG_NAME"),
    "https://github.com/dmabuf-pipeline/dmabuf-pipeline",
    env!("BUILD_REL_DATE")
);
