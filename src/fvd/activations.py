"""FVD's embedding: the 400 pre-softmax logits of DeepMind's rgb_scratch I3D, averaged over time.

This is the reference's `RGB/inception_i3d/Mean` tensor: Mixed_5c, the (2, 7, 7) VALID average
pool, the 1x1x1 logits convolution with its bias, the mean over the remaining time steps (at
224x224 no space is left), which is the model's own head. The plain float32 model runs by default:
on the reference example it is within 1e-5 of a float64 evaluation, while the fp32 fast path
(batch norm folded, oneDNN's fused convolutions) strays up to 2e-5 from the plain model, more than
the 1e-5 FVD allows for it; it is there on request. TF32 convolutions and matmuls are switched off
on CUDA while the network runs (PyTorch allows TF32 convolutions by default, 10-bit mantissas).
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from src.device import pick_device
from src.fvd.protocol import MIN_FRAMES
from src.fvd.preprocess import resize_for
from src.fvd.resize import to_network_input

WEIGHTS = "rgb_scratch"  # the TF-Hub module deepmind/i3d-kinetics-400/1 holds these tensors, CRC32C for CRC32C
# Batch-norm epsilon of each network: the TF network's 1e-3; the PyTorch ports in the VideoGPT lineage (VideoGPT,
# TATS, DIGAN, cd-fvd: pytorch_i3d.py) run the same Kinetics-400 weights with PyTorch's default 1e-5.
NETWORKS = {"tf": 1e-3, "videogpt-eps": 1e-5}


def state_dict_sha256(model: torch.nn.Module) -> str:
    """sha256 over a model's tensors (names and float32 bytes, in name order): which weights ran."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            continue
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """CUDA convolutions and matmuls in true float32 (no TF32) inside the block; the settings are restored after."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class Embedding:
    """rgb_scratch on a device: (N, 3, T, 224, 224) in [-1, 1] -> (N, 400) logits averaged over time.

    precision None runs the plain float32 model; 'fp32' the fp32 fast path (optionally compiled). `network` picks
    the batch-norm epsilon (NETWORKS), `resize` the preprocessing (src/fvd/preprocess.py).
    """

    def __init__(self, device: str | torch.device | None = None, precision: str | None = None, compile: bool = False,
                 network: str = "tf", resize: str = "tf1"):
        from src.inference import guarded_fast_path
        from src.weights import i3d

        if precision not in (None, "fp32"):
            raise ValueError(f"precision {precision}: FVD is computed in float32 (the plain model, or the fp32 fast "
                             "path)")
        if network not in NETWORKS:
            raise ValueError(f"unknown network {network!r} (known: {', '.join(NETWORKS)})")
        model = i3d(WEIGHTS).eval()
        self.weights_sha256 = state_dict_sha256(model)
        self.network, self.resize = network, resize
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.eps = NETWORKS[network]
        self.device = device if isinstance(device, torch.device) else pick_device(device)
        if precision is None:
            self.model, self.path = model.to(self.device), "plain float32 model"
        else:
            self.model, self.path = guarded_fast_path(model, self.device, "fp32", compile)  # checked once here

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Time-averaged logits (N, 400), float32, of network-ready clips."""
        if x.shape[2] < MIN_FRAMES:
            raise ValueError(f"clips of {x.shape[2]} frames; FVD needs at least {MIN_FRAMES}")
        with full_float32():
            return self.model(x.to(self.device)).float()

    def prepare(self, clip: np.ndarray | torch.Tensor) -> torch.Tensor:
        """One (T, H, W, 3) clip in [0, 255] on this device, resized and scaled: (3, T, 224, 224)."""
        frames = torch.as_tensor(np.asarray(clip)).to(self.device)
        if self.resize == "tf1":
            return to_network_input(frames)
        return (2.0 * resize_for(self.resize, frames) / 255.0 - 1.0).permute(3, 0, 1, 2)


def batched_activations(clips: Iterable[np.ndarray], embedding: Embedding, batch: int = 8) -> Iterator[np.ndarray]:
    """Activations (n, 400) float32 batch by batch, over (T, H, W, 3) clips from any number of videos, in order.

    Clips of one length are stacked `batch` at a time; each is resized on its own (sizes may differ).
    """
    pending: list[torch.Tensor] = []
    for clip in clips:
        x = embedding.prepare(clip)
        if pending and pending[0].shape != x.shape:  # whole videos of different lengths: one batch per length
            yield embedding.logits(torch.stack(pending)).cpu().numpy()
            pending = []
        pending.append(x)
        if len(pending) == batch:
            yield embedding.logits(torch.stack(pending)).cpu().numpy()
            pending = []
    if pending:
        yield embedding.logits(torch.stack(pending)).cpu().numpy()


def video_activations(videos: np.ndarray | torch.Tensor | Sequence[np.ndarray], embedding: Embedding | None = None,
                      batch: int = 8) -> np.ndarray:
    """FVD activations (N, 400) float32 of N videos: an (N, T, H, W, 3) array or a list of (T, H, W, 3) clips,
    uint8 or float in [0, 255], each used whole."""
    embedding = embedding or Embedding()
    parts = list(batched_activations(iter(videos), embedding, batch))
    return np.concatenate(parts) if parts else np.zeros((0, 400), np.float32)
