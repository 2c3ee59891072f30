//! `--window`: a winit window (X11) driven from the consumer's own loop with `pump_app_events`,
//! so frames keep coming from the socket while the window handles its events. The Vulkan side
//! (surface, swapchain, present) lives in `import::vulkan`.

use anyhow::{bail, Context as _, Result};
use raw_window_handle::{HasDisplayHandle, HasWindowHandle, RawDisplayHandle, RawWindowHandle};
use std::time::{Duration, Instant};
use winit::application::ApplicationHandler;
use winit::dpi::PhysicalSize;
use winit::event::{ElementState, KeyEvent, WindowEvent};
use winit::event_loop::{ActiveEventLoop, EventLoop};
use winit::keyboard::{Key, NamedKey};
use winit::platform::pump_events::{EventLoopExtPumpEvents, PumpStatus};
use winit::window::{Window, WindowId};

#[derive(Default)]
struct App {
    want: Option<(u32, u32, String)>,
    window: Option<Window>,
    error: Option<String>,
    closed: bool,
}

impl ApplicationHandler for App {
    fn resumed(&mut self, el: &ActiveEventLoop) {
        if self.window.is_some() {
            return;
        }
        if let Some((w, h, title)) = &self.want {
            let attrs = Window::default_attributes()
                .with_title(title.clone())
                .with_inner_size(PhysicalSize::new(*w, *h))
                .with_resizable(false);
            match el.create_window(attrs) {
                Ok(win) => self.window = Some(win),
                Err(e) => self.error = Some(e.to_string()),
            }
        }
    }

    fn window_event(&mut self, _el: &ActiveEventLoop, _id: WindowId, event: WindowEvent) {
        match event {
            WindowEvent::CloseRequested | WindowEvent::Destroyed => self.closed = true,
            WindowEvent::KeyboardInput {
                event:
                    KeyEvent {
                        logical_key,
                        state: ElementState::Pressed,
                        ..
                    },
                ..
            } if logical_key == Key::Named(NamedKey::Escape)
                || logical_key == Key::Character("q".into()) =>
            {
                self.closed = true
            }
            _ => {}
        }
    }
}

/// The window and its event loop.
pub struct Viewer {
    event_loop: EventLoop<()>,
    app: App,
}

impl Viewer {
    /// Connect to the display (X11; `DISPLAY` must be set).
    pub fn new() -> Result<Self> {
        if std::env::var_os("DISPLAY").is_none() {
            bail!(
                "--window needs an X11 display and DISPLAY is not set \
                 (headless: run under Xvfb, e.g. `xvfb-run -a consumer --window …`)"
            );
        }
        let event_loop = EventLoop::new().context("connecting to the X11 display")?;
        Ok(Self {
            event_loop,
            app: App::default(),
        })
    }

    pub fn display(&self) -> Result<RawDisplayHandle> {
        Ok(self.event_loop.display_handle()?.as_raw())
    }

    /// Open a `width`x`height` window and wait until it exists.
    pub fn open(&mut self, width: u32, height: u32, title: &str) -> Result<RawWindowHandle> {
        self.app.want = Some((width, height, title.to_string()));
        let t = Instant::now();
        while self.app.window.is_none() {
            if let Some(e) = &self.app.error {
                bail!("creating the window: {e}");
            }
            if t.elapsed() > Duration::from_secs(10) {
                bail!("the window did not appear within 10 s");
            }
            self.pump_for(Duration::from_millis(10));
        }
        // Let the window be mapped before the first present.
        self.pump_for(Duration::from_millis(50));
        let win = self.app.window.as_ref().expect("just checked");
        Ok(win.window_handle()?.as_raw())
    }

    fn pump_for(&mut self, d: Duration) -> bool {
        matches!(
            self.event_loop.pump_app_events(Some(d), &mut self.app),
            PumpStatus::Continue
        ) && !self.app.closed
    }

    /// Handle pending window events; `false` once the user closed the window.
    pub fn pump(&mut self) -> bool {
        self.pump_for(Duration::ZERO)
    }

    /// Keep the window (showing the last frame) for `d`, or until it is closed.
    pub fn hold(&mut self, d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d && self.pump_for(Duration::from_millis(20)) {}
    }
}
