"""Shared fixtures: the workspace's producer and consumer binaries as real processes on real
sockets, and temporary socket paths."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("DMABUF_BIN_DIR", ROOT / "target" / "debug"))
CLIP = ROOT / "samples" / "clip-1080p60.mp4"
CLIP_MD5 = ROOT / "samples" / "clip-1080p60.framemd5"


def binary(name: str) -> Path:
    p = BIN / name
    if not p.exists():
        pytest.fail(f"{p} is missing: build the workspace first (cargo build --workspace --bins)")
    return p


def wait_for_socket(path: Path, proc=None, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {path}")
        if path.exists():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                s.connect(str(path))
                return
            except OSError:
                pass
            finally:
                s.close()
        time.sleep(0.02)
    raise TimeoutError(f"nothing listened on {path} within {limit} s")


class Proc:
    """A child process with its output in a log file; killed (group) at teardown."""

    def __init__(self, args, log: Path, env=None):
        self.args = [str(a) for a in args]
        self.log = log
        self._f = open(log, "wb")
        self.p = subprocess.Popen(
            self.args, stdout=self._f, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait(self, limit: float = 60.0) -> int:
        try:
            return self.p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.args[0]} did not finish in {limit} s:\n{self.output()}")

    def kill(self, sig=9) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                pass
            self.p.wait(timeout=10)

    def output(self) -> str:
        self._f.flush()
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        self.kill()
        self._f.close()


@pytest.fixture
def procs(tmp_path):
    started = []

    def start(args, name="proc", env=None):
        p = Proc(args, tmp_path / f"{name}-{len(started)}.log", env=env)
        started.append(p)
        return p

    yield start
    for p in started:
        p.close()


@pytest.fixture
def sock(tmp_path):
    # Socket paths must stay under 108 bytes.
    d = Path(f"/tmp/dp-py-{os.getpid()}-{time.monotonic_ns()}")
    d.mkdir()
    yield d / "frames.sock"
    for f in d.iterdir():
        f.unlink()
    d.rmdir()


@pytest.fixture
def producer(procs, sock):
    """Start `producer --socket SOCK ARGS…` and wait until it listens."""

    def start(*args, socket_path=None):
        path = socket_path or sock
        p = procs([binary("producer"), "--socket", path, "--report-every", "60", *args], "producer")
        wait_for_socket(path, p.p)
        return p

    return start


def run_consumer(sock_path: Path, tmp_path: Path, *args, limit: float = 120.0) -> dict:
    """Run the Rust consumer to the end and return its --stats-json."""
    stats = tmp_path / f"consumer-{time.monotonic_ns()}.json"
    r = subprocess.run(
        [str(binary("consumer")), "--socket", str(sock_path), "--stats-json", str(stats), *map(str, args)],
        capture_output=True,
        timeout=limit,
    )
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode == 0, f"consumer exited {r.returncode}:\n{out}"
    return json.loads(stats.read_text())


def python_child(code: str, *args, env=None) -> list:
    """argv running `code` in this interpreter (the venv with the package)."""
    return [sys.executable, "-c", code, *map(str, args)]


def open_fds() -> dict:
    """This process's open descriptors and what they are."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the directory's own fd, closed meanwhile
    return fds


def require_device(test: str, path: str) -> None:
    """Skip loudly when a kernel device is missing (this host); fail instead inside the
    real-kernel lane (DMABUF_REQUIRE_HW=1), where it must exist."""
    if os.path.exists(path):
        return
    why = f"{path} does not exist on this kernel"
    if os.environ.get("DMABUF_REQUIRE_HW") == "1":
        pytest.fail(f"{test}: {why} (DMABUF_REQUIRE_HW=1: the real-kernel lane must have it)")
    line = f"SKIP {test}: {why}"
    print(line, file=sys.stderr)
    log = os.environ.get("DMABUF_SKIP_LOG")
    if log:
        with open(log, "a") as f:
            f.write(line + "\n")
    pytest.skip(why)
