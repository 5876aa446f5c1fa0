"""The images docker-compose.yml and the Dockerfile name: pulled when a registry answers, else local stand-ins.

A stand-in carries the public image's name, is built from Debian's packages and PyPI only (scripts/standins/),
and says what it is in the label STAND_IN_LABEL. Where a registry answers, a stand-in is replaced by the real
image; an image present without that label (pulled earlier) is used as it is. The Debian mirror and pip's index
and trust come from this machine's own configuration at run time: the repository names no host.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from compose_engine import ensure_packages

STANDINS_DIR = Path(__file__).resolve().parent / "standins"
STAND_IN_LABEL = "org.statuscache.stand-in"
# The base every stand-in starts from; bookworm is the Debian whose Python is 3.11.
DEBIAN_BASE = "statuscache-standin/debian:bookworm"
DEBIAN_SUITE = "bookworm"
PULL_SECONDS = 30


class ImageError(RuntimeError):
    """An image could be neither pulled nor built."""


# --- what the files name ------------------------------------------------------------------------------------


def dockerfile_bases(path: Path) -> list[str]:
    """The images the Dockerfile's stages start FROM (its ARG defaults resolved), not its own stages."""
    defaults: dict[str, str] = {}
    stages: set[str] = set()
    bases: list[str] = []
    for line in path.read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].upper() == "ARG" and "=" in words[1]:
            name, _, value = words[1].partition("=")
            defaults.setdefault(name, value)
        elif len(words) >= 2 and words[0].upper() == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults.get(m[1] or m[2], ""), words[1])
            if image not in stages and image not in bases:
                bases.append(image)
            if len(words) == 4 and words[2].upper() == "AS":
                stages.add(words[3])
    return bases


def compose_images(path: Path) -> list[str]:
    """The `image:` of every service that is not built from the Dockerfile."""
    services = yaml.safe_load(path.read_text())["services"]
    return [str(service["image"]) for service in services.values() if "image" in service and "build" not in service]


# --- this machine's configuration ----------------------------------------------------------------------------


def _apt_source_lines() -> list[tuple[str, list[str]]]:
    """(URI, suites) of every `deb` source, one-line (.list) or deb822 (.sources) format."""
    found: list[tuple[str, list[str]]] = []
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in (path for path in files if path.is_file()):
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for paragraph in re.split(r"\n\s*\n", text):
                fields = dict(
                    (key.strip().lower(), value.strip())
                    for key, _, value in (line.partition(":") for line in paragraph.splitlines())
                    if value and not key.startswith("#")
                )
                if "deb" in fields.get("types", "").split():
                    found += [(uri, fields.get("suites", "").split()) for uri in fields.get("uris", "").split()]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", "", line.split("#")[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    found.append((words[1], [words[2]]))
    return found


def debian_mirror() -> str:
    """The mirror this machine's apt takes Debian's bookworm packages from."""
    for uri, suites in _apt_source_lines():
        if DEBIAN_SUITE in suites:
            return uri
    raise ImageError(f"no apt source on this machine serves Debian {DEBIAN_SUITE}: cannot build the stand-ins")


@dataclass(frozen=True)
class PipConfig:
    """pip's package index (empty: pip's default) and the file it trusts for TLS (None: its own bundle)."""

    index_url: str
    cert: Path | None


def pip_config(env: Mapping[str, str] = os.environ) -> PipConfig:
    """This machine's pip configuration: the environment first, then pip's configuration files."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    ).stdout
    configured: dict[str, str] = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        configured.setdefault(key.rpartition(".")[2], value.strip().strip("'\""))
    index_url = env.get("PIP_INDEX_URL") or configured.get("index-url", "")
    cert = env.get("PIP_CERT") or configured.get("cert", "")
    # A local (file://) index is of no use inside a build; an http(s) one is passed on.
    if urlsplit(index_url).scheme not in {"http", "https"}:
        index_url = ""
    return PipConfig(index_url=index_url, cert=Path(cert) if cert and Path(cert).is_file() else None)


# --- the engine's images -----------------------------------------------------------------------------------


def _docker(
    *args: str, timeout: float | None = None, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False, env=env)


def stand_in_label(image: str) -> str | None:
    """The image's stand-in label; "" for an image present without one (a real one); None when absent."""
    done = _docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{STAND_IN_LABEL}"}}}}', image)
    if done.returncode != 0:
        return None
    label = done.stdout.strip()
    return "" if label in {"", "<no value>"} else label


def _pull(image: str) -> bool:
    try:
        return _docker("pull", image, timeout=PULL_SECONDS).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _build(image: str, *, dockerfile: str, args: Mapping[str, str], pip: PipConfig, env: Mapping[str, str]) -> None:
    with tempfile.TemporaryDirectory(prefix="statuscache-standin-") as context:
        shutil.copytree(STANDINS_DIR, context, dirs_exist_ok=True)
        # The file this machine's pip trusts (its TLS may pass through a proxy with its own authority).
        trust = Path(context, "pip-cert.pem")
        trust.write_bytes(pip.cert.read_bytes() if pip.cert else b"")
        build_args = [f"--build-arg={name}={value}" for name, value in args.items()]
        done = _docker("build", "-t", image, "-f", str(Path(context, dockerfile)), *build_args, context, env=env)
    if done.returncode != 0:
        raise ImageError(f"building the stand-in {image} failed:\n{(done.stdout + done.stderr)[-3000:]}")


def _debian_base() -> None:
    """A minimal Debian bookworm from this machine's mirror (debootstrap), imported as DEBIAN_BASE once."""
    if stand_in_label(DEBIAN_BASE) is not None:
        return
    ensure_packages(("debootstrap", "debootstrap"))
    mirror = debian_mirror()
    print(f"compose-test: debootstrap {DEBIAN_SUITE} (minbase) from this machine's apt mirror", flush=True)
    with tempfile.TemporaryDirectory(prefix="statuscache-rootfs-") as folder:
        rootfs = Path(folder, "rootfs")
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs), mirror],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ImageError(f"debootstrap failed:\n{(done.stdout + done.stderr)[-3000:]}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            [
                "docker", "import",
                "--change", f'LABEL {STAND_IN_LABEL}="Debian {DEBIAN_SUITE} minbase, the base of the stand-ins"',
                "--change", 'CMD ["bash"]',
                "-", DEBIAN_BASE,
            ],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
        tar.wait()
    if imported.returncode != 0 or tar.returncode != 0:
        raise ImageError(f"docker import of the Debian base failed: {imported.stderr[-2000:]}")


def _recipe(image: str, *, python_image: str, pip: PipConfig) -> tuple[str, dict[str, str]]:
    """The stand-in's Dockerfile (in scripts/standins) and build arguments for a public image's name."""
    repository, _, tag = image.partition(":")
    common = {"STANDS_IN_FOR": image}
    if repository == "python":
        if not tag.startswith("3.11"):
            raise ImageError(f"no stand-in for {image}: Debian {DEBIAN_SUITE}'s Python is 3.11")
        return "python.Dockerfile", common | {"BASE": DEBIAN_BASE, "PIP_INDEX_URL": pip.index_url}
    if repository == "postgres":
        return "postgres.Dockerfile", common | {"BASE": DEBIAN_BASE}
    if repository == "motoserver/moto":
        return "moto.Dockerfile", common | {"BASE": python_image, "MOTO_VERSION": tag}
    raise ImageError(f"no stand-in for {image}: pull it, or add a recipe in {STANDINS_DIR}")


def ensure_images(images: list[str], *, python_image: str, env: Mapping[str, str]) -> dict[str, str]:
    """Make every image present; how each was had ("present", "pulled", "stand-in (built or cached)").

    The Python image comes first: the moto stand-in is built on it. The first failed pull stands for the
    registry: after it, stand-ins are built without trying to pull the rest.
    """
    ordered = sorted(images, key=lambda image: image != python_image)
    how: dict[str, str] = {}
    registry: bool | None = None
    pip: PipConfig | None = None
    for image in ordered:
        label = stand_in_label(image)
        if label == "":
            how[image] = "present"
            continue
        if registry is not False:
            registry = _pull(image)
            if registry:
                how[image] = "pulled"
                continue
            print(f"compose-test: {image} cannot be pulled (no registry answers): using a local stand-in", flush=True)
        pip = pip or pip_config()
        _debian_base()
        dockerfile, args = _recipe(image, python_image=python_image, pip=pip)
        _build(image, dockerfile=dockerfile, args=args, pip=pip, env=env)
        how[image] = "stand-in: " + (stand_in_label(image) or "").removeprefix(f"{image}: ")
    return how
