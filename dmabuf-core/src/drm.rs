//! What this machine's DRM devices offer for explicit synchronisation: whether each makes
//! timeline syncobjs (`DRM_CAP_SYNCOBJ_TIMELINE`), which PipeWire's explicit sync
//! (`SPA_META_SyncTimeline`) needs. Without such a device, buffers are shared with implicit
//! sync (the dma-buf's own fences), which every path here uses.

use crate::sys::drm;
use std::os::fd::AsFd;
use std::path::PathBuf;

/// One DRM device node and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrmNode {
    /// `/dev/dri/renderD128`, `/dev/dri/card0`, …
    pub path: PathBuf,
    /// The driver's name (`vgem`, `i915`, …), or why the node could not be asked.
    pub driver: Result<String, String>,
    /// It makes syncobjs (`DRM_CAP_SYNCOBJ`).
    pub syncobj: bool,
    /// It makes timeline syncobjs (`DRM_CAP_SYNCOBJ_TIMELINE`).
    pub timeline: bool,
}

/// Every node under `/dev/dri` (render nodes first), asked in turn; empty without `/dev/dri`.
pub fn nodes() -> Vec<DrmNode> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir("/dev/dri")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("renderD") || n.starts_with("card"))
                })
                .collect()
        })
        .unwrap_or_default();
    paths.sort_by_key(|p| (!p.to_string_lossy().contains("renderD"), p.clone()));
    paths.into_iter().map(ask).collect()
}

fn ask(path: PathBuf) -> DrmNode {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            return DrmNode {
                path,
                driver: Err(e.to_string()),
                syncobj: false,
                timeline: false,
            }
        }
    };
    let cap = |c| drm::get_cap(file.as_fd(), c).is_ok_and(|v| v != 0);
    DrmNode {
        driver: drm::driver_name(file.as_fd()).map_err(|e| e.to_string()),
        syncobj: cap(drm::DRM_CAP_SYNCOBJ),
        timeline: cap(drm::DRM_CAP_SYNCOBJ_TIMELINE),
        path,
    }
}

/// One line on explicit sync for logs: the first device with timeline syncobjs, or why there
/// is none (each device's driver and answer).
pub fn explicit_sync_summary(nodes: &[DrmNode]) -> String {
    if let Some(n) = nodes.iter().find(|n| n.timeline) {
        return format!(
            "{} ({}) makes timeline syncobjs",
            n.path.display(),
            n.driver.as_deref().unwrap_or("?")
        );
    }
    if nodes.is_empty() {
        return "no DRM device (/dev/dri) to make timeline syncobjs: implicit sync".into();
    }
    let each: Vec<String> = nodes
        .iter()
        .map(|n| match &n.driver {
            Ok(d) => format!(
                "{} {d}: {}",
                n.path.display(),
                if n.syncobj {
                    "binary syncobjs only"
                } else {
                    "no syncobjs"
                }
            ),
            Err(e) => format!("{}: {e}", n.path.display()),
        })
        .collect();
    format!(
        "no DRM device makes timeline syncobjs ({}): implicit sync",
        each.join("; ")
    )
}
