//! [`video_nodes`]: the video nodes a PipeWire daemon has (`pw-dump`'s view, filtered), for a
//! `--list-devices`.

use crate::Error;
use pipewire as pw;
use std::cell::RefCell;
use std::rc::Rc;

/// A video node of the PipeWire graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoNode {
    /// Object id (changes between daemon runs).
    pub id: u32,
    /// `object.serial` (never reused while the daemon runs).
    pub serial: Option<String>,
    /// `node.name`: what a client names as its target.
    pub name: String,
    /// `node.description`: what a desktop shows.
    pub description: Option<String>,
    /// `media.class`: `Video/Source`, `Stream/Output/Video` …
    pub media_class: String,
}

/// Every node whose `media.class` says video, in the order the daemon lists them.
///
/// Errors: [`Error::NoDaemon`] when no daemon answers.
pub fn video_nodes() -> Result<Vec<VideoNode>, Error> {
    let conn = crate::connection::connect(|_| {})?;
    let (mainloop, core) = (&conn.mainloop, &conn.core);
    let registry = core
        .get_registry_rc()
        .map_err(|e| Error::Node(format!("registry: {e}")))?;
    let nodes = Rc::new(RefCell::new(Vec::new()));
    let _globals = registry
        .add_listener_local()
        .global({
            let nodes = nodes.clone();
            move |g| {
                if g.type_ != pw::types::ObjectType::Node {
                    return;
                }
                let Some(props) = g.props else { return };
                let class = props.get("media.class").unwrap_or_default();
                if !class.contains("Video") {
                    return;
                }
                let mut nodes = nodes.borrow_mut();
                if nodes.iter().any(|n: &VideoNode| n.id == g.id) {
                    return;
                }
                nodes.push(VideoNode {
                    id: g.id,
                    serial: props.get("object.serial").map(str::to_string),
                    name: props.get("node.name").unwrap_or_default().to_string(),
                    description: props.get("node.description").map(str::to_string),
                    media_class: class.to_string(),
                });
            }
        })
        .register();
    // Every global is announced before the answer to a sync.
    let pending = core
        .sync(0)
        .map_err(|e| Error::Node(format!("sync: {e}")))?;
    let _done = core
        .add_listener_local()
        .done({
            let ml = mainloop.downgrade();
            move |id, seq| {
                if id == pw::core::PW_ID_CORE && seq == pending {
                    if let Some(ml) = ml.upgrade() {
                        ml.quit();
                    }
                }
            }
        })
        .register();
    // A daemon that accepted the connection but does not answer: give up after 5 s.
    let timer = mainloop.loop_().add_timer({
        let ml = mainloop.downgrade();
        move |_| {
            if let Some(ml) = ml.upgrade() {
                ml.quit();
            }
        }
    });
    timer.update_timer(Some(std::time::Duration::from_secs(5)), None);
    mainloop.run();
    let found = nodes.borrow().clone();
    Ok(found)
}
