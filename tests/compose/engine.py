"""The Docker engine of make test-compose: the one that runs, or one it installs and starts itself
(as root, no systemd: dockerd with its own data and exec roots under a work folder, no bridge, no
iptables), and stops by its PID file, leaving nothing behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_SECONDS = 120
STOP_TIMEOUT_SECONDS = 60
DOCKER_INFO_TIMEOUT_SECONDS = 30


class ComposeTestError(Exception):
    """What is wrong and what to do, in one line."""


@dataclass
class Engine:
    environment: dict[str, str]  # DOCKER_HOST for docker and compose
    work: Path | None = None  # set when this run started the engine: its data, sockets, log, PID file

    @property
    def started_here(self) -> bool:
        return self.work is not None


def docker(environment: dict[str, str], *arguments: str, timeout: float = 600,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    """A docker CLI command; its output captured, a failure raised with its last line of error."""
    try:
        done = subprocess.run(
            ["docker", *arguments], env=environment, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ComposeTestError(f"docker {' '.join(arguments[:2])} took more than {timeout:.0f} s") from None
    if check and done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ComposeTestError(f"docker {' '.join(arguments[:2])} failed: {last}")
    return done


def answers(environment: dict[str, str]) -> bool:
    try:
        return docker(environment, "info", "--format", "{{.ServerVersion}}", timeout=DOCKER_INFO_TIMEOUT_SECONDS,
                      check=False).returncode == 0
    except ComposeTestError:
        return False


def _dockerd() -> str:
    """dockerd's path, installing Debian's docker.io first when it is missing (root only)."""
    found = shutil.which("dockerd")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ComposeTestError(
            "No Docker engine answers (docker info) and none can be installed here (needs root and apt-get): "
            "start Docker, or point DOCKER_HOST at a running engine, then run make test-compose again."
        )
    print("Installing Debian's docker.io (dockerd)...", flush=True)
    quiet = {"env": {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, "stdin": subprocess.DEVNULL,
             "capture_output": True, "text": True}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "docker.io"]):
        done = subprocess.run(command, **quiet)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ComposeTestError(f"{' '.join(command)} failed ({last}): install docker.io by hand, or start Docker.")
    return shutil.which("dockerd") or "/usr/bin/dockerd"


def start(work: Path, dockerd: str | None = None) -> Engine:
    """Start a private dockerd under work/ and wait until it answers; on failure stop it and say why."""
    if os.geteuid() != 0:
        raise ComposeTestError(
            "No Docker engine answers (docker info) and starting one needs root: start Docker, or point "
            "DOCKER_HOST at a running engine, then run make test-compose again."
        )
    dockerd = dockerd or _dockerd()
    work.mkdir(parents=True, exist_ok=True)
    socket = work / "docker.sock"
    engine = Engine({**os.environ, "DOCKER_HOST": f"unix://{socket}"}, work)
    log = work / "dockerd.log"
    with log.open("ab") as output:
        process = subprocess.Popen(
            [
                dockerd, "--host", f"unix://{socket}", "--data-root", str(work / "data"),
                "--exec-root", str(work / "exec"), "--pidfile", str(work / "dockerd.pid"),
                # Host networking only: a bridge would give containers private-range addresses.
                "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
                "--userland-proxy=false",
            ],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not answers(engine.environment):
        if process.poll() is not None or time.monotonic() > deadline:
            lines = log.read_text(errors="replace").strip().splitlines() or ["no output"]
            if process.poll() is None:
                process.terminate()
            stop(engine)
            reason = "exited" if process.returncode is not None else f"did not answer in {START_TIMEOUT_SECONDS} s"
            raise ComposeTestError(
                f"The Docker engine {reason} ({lines[-1][:200]}): check {dockerd} (dockerd --version), "
                "or start Docker yourself, then run make test-compose again."
            )
        time.sleep(0.5)
    return engine


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dockerd's parent has not reaped it yet) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def stop(engine: Engine) -> None:
    """Stop the dockerd this run started (by its PID file; it is not this process's child once it
    daemonizes containerd), unmount what it left mounted and remove its work folder."""
    if engine.work is None:
        return
    pid = _pid(engine.work / "dockerd.pid")
    if pid is not None and _alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.2)
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{engine.work}/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
    shutil.rmtree(engine.work, ignore_errors=True)
