"""The images of make test-compose: the official ones where a registry answers, local stand-ins
built from Debian where none does (debootstrap, docker import, then standins/*.Dockerfile), and the
project's own image (the Dockerfile) on top of the Airflow one."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.compose.engine import ComposeTestError, docker

PROJECT_DIR = Path(__file__).resolve().parents[2]
STANDINS = Path(__file__).with_name("standins")
DEBIAN_IMAGE = "fraud-standin/debian:bookworm"
# What the stand-ins need from Debian: Python with venv for Airflow, PostgreSQL, Redis, an init.
DEBIAN_PACKAGES = ("python3", "python3-venv", "curl", "ca-certificates", "postgresql", "redis-server", "tini")
# The machine's CA bundle: outgoing TLS may be re-signed, and pip in a build must trust it.
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PULL_TIMEOUT_SECONDS = 120
BUILD_TIMEOUT_SECONDS = 1800


@dataclass(frozen=True)
class Images:
    airflow_base: str  # the Dockerfile's AIRFLOW_BASE_IMAGE
    postgres: str
    redis: str
    standins: bool


def official_images() -> Images:
    """The images docker-compose.yaml and the Dockerfile name."""
    services = yaml.safe_load((PROJECT_DIR / "docker-compose.yaml").read_text())["services"]
    dockerfile = (PROJECT_DIR / "Dockerfile").read_text()
    base = re.search(r"^ARG AIRFLOW_BASE_IMAGE=(\S+)$", dockerfile, flags=re.MULTILINE)
    if base is None:
        raise ComposeTestError("Dockerfile: no ARG AIRFLOW_BASE_IMAGE=<image> line to take the base image from")
    return Images(base.group(1), services["postgres"]["image"], services["redis"]["image"], standins=False)


def airflow_version() -> str:
    found = re.search(r"^apache-airflow==(\S+)$", (PROJECT_DIR / "requirements.txt").read_text(), re.MULTILINE)
    if found is None:
        raise ComposeTestError("requirements.txt: no apache-airflow==<version> line")
    return found.group(1)


def pullable(environment: dict[str, str], images: Images) -> bool:
    """True when the engine can pull the official images (then pulled); False when no registry answers."""
    for image in (images.postgres, images.redis, images.airflow_base):
        try:
            pulled = docker(environment, "pull", "--quiet", image, timeout=PULL_TIMEOUT_SECONDS * 5, check=False)
        except ComposeTestError:
            return False
        if pulled.returncode != 0:
            return False
    return True


def _exists(environment: dict[str, str], image: str) -> bool:
    return docker(environment, "image", "inspect", image, check=False).returncode == 0


def _debian_image(environment: dict[str, str], work: Path) -> None:
    """Debian bookworm (minbase with DEBIAN_PACKAGES) as an image, from debootstrap and docker import."""
    if _exists(environment, DEBIAN_IMAGE):
        return
    if shutil.which("debootstrap") is None:
        done = subprocess.run(["apt-get", "install", "-y", "-qq", "debootstrap"], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, env={**environment, "DEBIAN_FRONTEND": "noninteractive"})
        if done.returncode != 0:
            raise ComposeTestError("debootstrap is missing and apt-get install debootstrap failed: install it by hand.")
    work.mkdir(parents=True, exist_ok=True)
    rootfs = work / "rootfs"
    log = work / "debootstrap.log"
    started = time.monotonic()
    with log.open("wb") as output:
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", "bookworm", str(rootfs)],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        last = (log.read_text(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise ComposeTestError(f"debootstrap of Debian bookworm failed ({last}); see {log}.")
    shutil.copyfile(CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
    shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(["docker", "import", "-", DEBIAN_IMAGE], stdin=tar.stdout, env=environment,
                              capture_output=True, text=True)
    tar.wait()
    shutil.rmtree(rootfs, ignore_errors=True)
    print(f"images: {DEBIAN_IMAGE} (debootstrap, docker import) made in {time.monotonic() - started:.1f} s", flush=True)
    if tar.returncode != 0 or imported.returncode != 0:
        raise ComposeTestError(f"docker import of the Debian root file system failed: {imported.stderr.strip()}")


def build(environment: dict[str, str], tag: str, context: Path, dockerfile: Path, **arguments: str) -> None:
    """docker build with host networking (the only networking here); its log printed on failure."""
    command = ["docker", "build", "--force-rm", "--network", "host", "--tag", tag, "--file", str(dockerfile)]
    for name, value in arguments.items():
        command += ["--build-arg", f"{name}={value}"]
    started = time.monotonic()
    done = subprocess.run([*command, str(context)], env=environment, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=BUILD_TIMEOUT_SECONDS)
    print(f"images: {tag} built in {time.monotonic() - started:.1f} s", flush=True)
    if done.returncode != 0:
        print(done.stdout[-5000:], done.stderr[-5000:], sep="\n", flush=True)
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ComposeTestError(f"docker build of {tag} ({dockerfile.name}) failed: {last}")


def standin_images(environment: dict[str, str], work: Path) -> Images:
    """Build (or reuse, on an engine that has them) the stand-ins of the official images."""
    version = airflow_version()
    images = Images(f"fraud-standin/airflow:{version}", "fraud-standin/postgres:15", "fraud-standin/redis:7", True)
    _debian_image(environment, work)
    context = work / "standins"
    shutil.copytree(STANDINS, context, dirs_exist_ok=True)
    shutil.copyfile(PROJECT_DIR / "constraints.txt", context / "constraints.txt")
    build(environment, images.postgres, context, context / "postgres.Dockerfile")
    build(environment, images.redis, context, context / "redis.Dockerfile")
    build(environment, images.airflow_base, context, context / "airflow.Dockerfile", AIRFLOW_VERSION=version)
    return images


def project_image(environment: dict[str, str], tag: str, images: Images) -> None:
    """The project's Dockerfile, as docker compose builds it, on the Airflow image in use."""
    build(environment, tag, PROJECT_DIR, PROJECT_DIR / "Dockerfile", AIRFLOW_BASE_IMAGE=images.airflow_base)
