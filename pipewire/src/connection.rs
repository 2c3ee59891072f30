//! A connection to the PipeWire daemon on the calling thread (its main loop, context and
//! core), shared by the node, the input stream and the listing.

use crate::Error;
use pipewire as pw;

/// The daemon, as seen from this thread. Drop it to disconnect.
pub(crate) struct Connection {
    pub mainloop: pw::main_loop::MainLoopRc,
    pub core: pw::core::CoreRc,
    _context: pw::context::ContextRc,
    _lost: pw::core::Listener,
}

/// Connect (`$PIPEWIRE_REMOTE`, else `pipewire-0` in `$PIPEWIRE_RUNTIME_DIR` or
/// `$XDG_RUNTIME_DIR`). When the connection fails later (the daemon died), `lost` is called
/// with the reason and the main loop quits.
pub(crate) fn connect(lost: impl Fn(String) + 'static) -> Result<Connection, Error> {
    pw::init();
    let mainloop =
        pw::main_loop::MainLoopRc::new(None).map_err(|e| Error::Node(format!("main loop: {e}")))?;
    let context = pw::context::ContextRc::new(&mainloop, None)
        .map_err(|e| Error::Node(format!("context: {e}")))?;
    let core = context.connect_rc(None).map_err(|e| {
        Error::NoDaemon(format!(
            "cannot connect to the PipeWire daemon ({e}); is it running, with XDG_RUNTIME_DIR \
             (or PIPEWIRE_REMOTE) pointing at its socket?"
        ))
    })?;
    let ml = mainloop.downgrade();
    let listener = core
        .add_listener_local()
        .error(move |id, _seq, res, message| {
            if id == pw::core::PW_ID_CORE {
                lost(format!(
                    "PipeWire daemon connection lost: {message} ({})",
                    std::io::Error::from_raw_os_error(-res)
                ));
                if let Some(ml) = ml.upgrade() {
                    ml.quit();
                }
            }
        })
        .register();
    Ok(Connection {
        mainloop,
        core,
        _context: context,
        _lost: listener,
    })
}
