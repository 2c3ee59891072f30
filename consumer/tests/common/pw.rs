//! A private PipeWire daemon for tests: `pipewire` and `wireplumber` in a private runtime
//! directory and D-Bus session (as a desktop session runs them).

use super::{eventually, producer_bin, Producer};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The daemon, then (once its socket is there) WirePlumber, in one shell.
const WITH_SESSION_MANAGER: &str = "pipewire & while [ ! -S \"$XDG_RUNTIME_DIR/pipewire-0\" ]; do sleep 0.05; done; wireplumber & wait";

/// A private PipeWire daemon with its session manager.
pub struct Daemon {
    session: Child,
    runtime: PathBuf,
    pub dir: PathBuf,
}

impl Daemon {
    pub fn start(name: &str) -> Daemon {
        let dir = std::env::temp_dir().join(format!("dmabuf-pw-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (runtime, home) = (dir.join("runtime"), dir.join("home"));
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(
            &runtime,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let mut cmd = Command::new("dbus-run-session");
        // WirePlumber gives up at once when the daemon's socket is not there yet.
        cmd.args(["--", "sh", "-c", WITH_SESSION_MANAGER])
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("PIPEWIRE_RUNTIME_DIR", &runtime)
            .env("HOME", &home)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let session = cmd
            .spawn()
            .expect("dbus-run-session (ci/setup.sh installs dbus, pipewire and wireplumber)");
        let d = Daemon {
            session,
            runtime,
            dir,
        };
        assert!(
            eventually(Duration::from_secs(15), || d
                .runtime
                .join("pipewire-0")
                .exists()),
            "pipewire did not start:\n{}",
            d.log()
        );
        // WirePlumber links streams: wait until it is connected to the daemon.
        assert!(
            eventually(Duration::from_secs(15), || d
                .dump()
                .iter()
                .any(|o| o["info"]["props"]["application.name"] == "WirePlumber")),
            "wireplumber did not connect:\n{}",
            d.log()
        );
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    pub fn env(&self, cmd: &mut Command) {
        cmd.env("XDG_RUNTIME_DIR", &self.runtime)
            .env("PIPEWIRE_RUNTIME_DIR", &self.runtime);
    }

    /// `pw-dump`: every object of the graph.
    pub fn dump(&self) -> Vec<serde_json::Value> {
        let mut cmd = Command::new("pw-dump");
        self.env(&mut cmd);
        let out = cmd.output().expect("pw-dump (pipewire-bin)");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// The node named `name`, and its ports, from `pw-dump`.
    pub fn node(&self, name: &str) -> Option<(serde_json::Value, Vec<serde_json::Value>)> {
        let all = self.dump();
        let node = all
            .iter()
            .find(|o| {
                o["type"] == "PipeWire:Interface:Node" && o["info"]["props"]["node.name"] == name
            })?
            .clone();
        let ports = all
            .into_iter()
            .filter(|o| {
                o["type"] == "PipeWire:Interface:Port"
                    && o["info"]["props"]["node.id"] == node["id"]
            })
            .collect();
        Some((node, ports))
    }

    /// Kill the daemon and its session manager.
    pub fn kill(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.session.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.session.wait();
    }

    pub fn producer(&self, socket: &Path, args: &[&str]) -> Producer {
        // SAFETY-free: the environment is the process's own; tests run in threads, so set it
        // on the child only.
        let mut child = Command::new(producer_bin());
        child.arg("--socket").arg(socket).args(args);
        self.env(&mut child);
        let child = child
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn producer");
        let mut p = Producer {
            child,
            socket: socket.to_path_buf(),
        };
        let t = Instant::now();
        while !socket.exists() {
            if !p.alive() || t.elapsed() > Duration::from_secs(30) {
                let _ = p.child.kill();
                let (_, err) = p.wait(Duration::from_secs(5));
                panic!("producer {args:?} did not start:\n{err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// `gst-launch-1.0 -q ARGS` against this daemon, bounded by `limit`.
    pub fn gst(&self, args: &[&str], limit: Duration) -> Output {
        let mut cmd = Command::new("timeout");
        cmd.arg(limit.as_secs().to_string())
            .arg("gst-launch-1.0")
            .arg("-q")
            .args(args);
        self.env(&mut cmd);
        cmd.output().expect("gst-launch-1.0 (gstreamer1.0-tools)")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
