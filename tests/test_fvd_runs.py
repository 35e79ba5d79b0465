"""The metrics job (src/fvd/runs.py): activations saved, sharded and merged (src/fvd/activation_files.py), cd-fvd
statistics read without running code (src/fvd/cdfvd.py), the network's epsilon option, and fvd.py's new options,
checked against computations written here."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from src.clips import InputError
from src.fvd import Protocol
from src.fvd.activation_files import ActivationSet, load_activations, merge_activations, save_activations
from src.fvd.cdfvd import read_cdfvd
from src.fvd.metrics import frechet, kvd, mean_covariance
from tests.conftest import call_main

SGV = Protocol("stylegan-v", 16, seed=0)


def activation_set(acts: np.ndarray, role: str, protocol: Protocol = SGV, rows=None, shard=(1, 1),
                   weights: str = "abc") -> ActivationSet:
    """A set of len(acts) clips whose single trial takes them in order; `rows` keeps a shard's rows only."""
    rows = list(range(len(acts))) if rows is None else rows
    return ActivationSet(acts[rows], np.array(rows), protocol, weights, "set", role,
                         [[f"v{i}.mp4", [0, 1]] for i in rows], len(acts), [list(range(len(acts)))], shard)


def fvd_biased_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """stylegan-v's FVD, written out: 1/N covariances, the real part of scipy's sqrtm of S_b S_a."""
    import scipy.linalg

    ma, mb = a.mean(0), b.mean(0)
    sa, sb = (a - ma).T @ (a - ma) / len(a), (b - mb).T @ (b - mb) / len(b)
    return float(np.real(np.sum((ma - mb) ** 2) + np.trace(sa + sb - 2 * scipy.linalg.sqrtm(sb @ sa))))


# ---------------------------------------------------------------------------------------------- activation files


def test_shards_merge_into_the_whole_set_and_bad_sets_of_shards_are_refused(tmp_path: Path) -> None:
    acts = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    parts = [activation_set(acts, "real", rows=[0, 3, 6], shard=(1, 2)),
             activation_set(acts, "real", rows=[1, 2, 4, 5], shard=(2, 2))]
    for i, part in enumerate(parts):
        save_activations(part, tmp_path / f"s{i}.npz")
    loaded = [load_activations(tmp_path / f"s{i}.npz") for i in range(2)]
    merged = merge_activations(loaded[::-1], ["s1.npz", "s0.npz"])
    np.testing.assert_array_equal(merged.trial(0), acts)  # every clip back in the set's order
    with pytest.raises(InputError, match=r"shard 1/2 holds 3 of the set's 7 clips; give every shard's file"):
        loaded[0].trial(0)
    with pytest.raises(InputError, match=r"s0.npz, s0b.npz: shard 1/2 given twice"):
        merge_activations([loaded[0], loaded[0]], ["s0.npz", "s0b.npz"])
    overlap = activation_set(acts, "real", rows=[1, 2, 3, 4, 5], shard=(2, 2))
    with pytest.raises(InputError, match="shards overlap"):
        merge_activations([loaded[0], overlap], ["a", "b"])
    other = activation_set(acts, "real", Protocol("tats", 16, seed=0), rows=[1, 2, 4, 5], shard=(2, 2))
    with pytest.raises(InputError, match=r"^b: activations of another protocol than a \(name tats vs stylegan-v"):
        merge_activations([loaded[0], other], ["a", "b"])
    three = activation_set(acts, "real", rows=[1, 2], shard=(2, 3))
    with pytest.raises(InputError, match="b: shard count differs"):
        merge_activations([loaded[0], three], ["a", "b"])
    with np.load(tmp_path / "s0.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["activations", "clip_index", "fvd_activations"]


def test_cli_recomputes_metrics_from_activations_files_without_the_network(tmp_path: Path, monkeypatch, capsys
                                                                           ) -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((9, 6)).astype(np.float32), (rng.standard_normal((8, 6)) + 0.5).astype(np.float32)
    save_activations(activation_set(a, "real", rows=[0, 2, 4, 6, 8], shard=(1, 2)), tmp_path / "a1.npz")
    save_activations(activation_set(a, "real", rows=[1, 3, 5, 7], shard=(2, 2)), tmp_path / "a2.npz")
    save_activations(activation_set(b, "generated"), tmp_path / "b.npz")
    monkeypatch.setattr("src.fvd.activations.Embedding.__init__", None)  # the network is never built
    shards = f"{tmp_path / 'a1.npz'},{tmp_path / 'a2.npz'}"
    code, out, err = call_main("fvd.py", [shards, str(tmp_path / "b.npz"), "--protocol", "stylegan-v", "--metrics",
                                          "fvd,kvd", "--json", "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    assert result["fvd"] == pytest.approx(fvd_biased_scipy(a64, b64), rel=1e-9)
    assert result["kvd"] == pytest.approx(kvd(a64, b64), rel=1e-12)
    assert (result["n_a"], result["n_b"], result["covariance"], result["sqrtm"]) == (9, 8, "biased", "scipy")
    assert result["tf32"] is False and "unbiased MMD^2" in result["definitions"]["kvd"]
    # refused in one line: a missing shard, the sets' roles swapped, another protocol
    for args, message in (([str(tmp_path / "a1.npz"), str(tmp_path / "b.npz"), "--protocol", "stylegan-v"],
                           r"a1.npz: 5 of the set's 9 clips \(missing shard\(s\) 2/2\)"),
                          ([str(tmp_path / "b.npz"), shards, "--protocol", "stylegan-v"],
                           r"b.npz: activations of the generated set given as the real one"),
                          ([shards, str(tmp_path / "b.npz"), "--protocol", "tats"],
                           r"activations computed under another protocol \(name stylegan-v vs tats")):
        code, out, err = call_main("fvd.py", args, monkeypatch, capsys)
        assert code == 1 and err.count("\n") == 1 and out == "", err
        assert __import__("re").search(message, err), err


# ---------------------------------------------------------------------------------------------- cd-fvd statistics


class Evil:
    def __reduce__(self):
        import os

        return os.system, ("echo unpickled",)


def test_cdfvd_statistics_are_sums_over_n_and_need_allow_mixed(tmp_path: Path, monkeypatch, capsys) -> None:
    rng = np.random.default_rng(2)
    x, b = rng.standard_normal((10, 6)), rng.standard_normal((8, 6)).astype(np.float32)
    with open(tmp_path / "ref.pkl", "wb") as f:
        pickle.dump({"raw_mean": x.sum(0), "raw_cov": x.T @ x, "num_items": 10}, f)
    stats = read_cdfvd(tmp_path / "ref.pkl")
    mean, biased = mean_covariance(x, "biased")
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(stats.covariance, biased, atol=1e-12)
    assert stats.n == 10
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"raw_mean": Evil()}, f)
    with pytest.raises(InputError, match=r"evil.pkl: refused to unpickle global (posix|os|nt)\.system"):
        read_cdfvd(tmp_path / "evil.pkl")
    with open(tmp_path / "list.pkl", "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(InputError, match=r"list.pkl: not cd-fvd statistics"):
        read_cdfvd(tmp_path / "list.pkl")
    save_activations(activation_set(b, "generated", Protocol("tf", 16)), tmp_path / "b.npz")
    args = [str(tmp_path / "ref.pkl"), str(tmp_path / "b.npz"), "--json", "--quiet"]
    code, out, err = call_main("fvd.py", args, monkeypatch, capsys)
    assert code == 1 and err.count("\n") == 1 and "ref.pkl: statistics made by cd-fvd" in err \
        and "--allow-mixed-protocols" in err
    code, out, err = call_main("fvd.py", args + ["--allow-mixed-protocols"], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    expected = frechet(mean, biased, *mean_covariance(b, "unbiased"))  # tf: TF-GAN's root, b's n - 1
    assert result["fvd"] == pytest.approx(expected, rel=1e-9) and "cd-fvd" in result["mixed"][0]


# ---------------------------------------------------------------------------------------------- the command


@pytest.mark.parametrize("args, message", [
    (["--subsample", "2"], r"--subsample \(the frame step within a clip\) applies to the sampled protocols"),
    (["--trials", "2"], r"--trials: protocol tf takes fixed clips"),
    (["--protocol", "stylegan-v", "--clips-per-video", "2"], r"protocol stylegan-v picks its own clips"),
    (["--shard", "1/2"], r"--shard 1/2 computes one set's activations"),
    (["--shard", "3/2"], r"--shard 3/2: need 1 <= i <= n"),
    (["--metrics", "fvd,is"], r"unknown is"),
    (["--protocol", "stylegan-v", "--save-stats", "x.npz"], r"--save-stats: protocol stylegan-v samples clips"),
])
def test_cli_option_errors_are_one_line(tmp_path: Path, monkeypatch, capsys, args: list, message: str) -> None:
    np.save(tmp_path / "v.npy", np.zeros((2, 16, 8, 8, 3), np.uint8))
    code, out, err = call_main("fvd.py", [str(tmp_path / "v.npy"), str(tmp_path / "v.npy"), *args], monkeypatch,
                               capsys)
    assert code != 0 and out == "" and err.count("\n") <= 2, err
    assert __import__("re").search(message, err), err


def test_cli_protocol_list(monkeypatch, capsys) -> None:
    code, out, err = call_main("fvd.py", ["--protocol", "list"], monkeypatch, capsys)
    assert code == 0 and "stylegan-v:" in out and "confirmed in source: universome/stylegan-v" in out


@pytest.mark.slow
def test_cli_sampled_protocol_end_to_end_with_trials_activations_and_slurm_shards(tmp_path: Path, monkeypatch,
                                                                                  capsys, caplog) -> None:
    """stylegan-v on numbered videos: the metrics, then the same from saved activations, from Slurm shards."""
    frames = np.arange(10, dtype=np.uint8)[:, None, None, None] * 20  # frame t is 20 t everywhere
    videos = np.broadcast_to(frames, (10, 16, 16, 3))
    real = np.stack([videos + 3 * i for i in range(4)]).astype(np.uint8)
    np.save(tmp_path / "real.npy", real)
    np.save(tmp_path / "gen.npy", real[:, ::-1].copy())
    common = ["--protocol", "stylegan-v", "--frames", "9", "--trials", "2", "--metrics", "fvd,kvd,precision,recall",
              "--json", "--quiet", "--workers", "0"]
    saved = [str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]
    code, out, err = call_main("fvd.py", [str(tmp_path / "real.npy"), str(tmp_path / "gen.npy"), *common,
                                          "--save-activations", *saved], monkeypatch, capsys)
    assert code == 0, err
    direct = json.loads(out)
    assert caplog.text.count("fewer than protocol stylegan-v's N = 2048: the set is used whole") == 2
    assert direct["seeds"] == [0, 1] and set(direct) >= {"fvd_std", "kvd_std", "precision_std", "recall_std"}
    assert direct["network"] == "tf" and direct["frames"] == 9
    a = load_activations(saved[0])
    # the real clips are 9 frames at offset 0 or 1 of 10 ([0, L - n*s + s - 1]); the generated ones from frame 0
    assert all(c[1] in ([*range(o, o + 9)] for o in range(2)) for c in a.clips)
    assert all(c[1] == list(range(9)) for c in load_activations(saved[1]).clips)
    code, out, err = call_main("fvd.py", [*saved, *common], monkeypatch, capsys)
    assert code == 0, err
    again = json.loads(out)
    assert {k: again[k] for k in ("fvd", "kvd", "precision", "recall", "fvd_std")} == \
        {k: direct[k] for k in ("fvd", "kvd", "precision", "recall", "fvd_std")}
    for task in ("0", "1"):  # Slurm array tasks 0 and 1 of 2: shards 1/2 and 2/2
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", task)
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
        code, out, err = call_main("fvd.py", [str(tmp_path / "real.npy"), *common, "--save-activations",
                                              str(tmp_path / f"a{task}.npz")], monkeypatch, capsys)
        assert code == 0, err
        assert json.loads(out)["shard"] == f"{int(task) + 1}/2"
    shards = f"{tmp_path / 'a1.npz'},{tmp_path / 'a0.npz'}"  # inside an array task, a comparison is whole
    code, out, err = call_main("fvd.py", [shards, saved[1], *common], monkeypatch, capsys)
    assert code == 0, err
    merged = json.loads(out)
    for name in ("fvd", "kvd", "precision", "recall"):
        assert merged[name] == pytest.approx(direct[name], rel=1e-6)


@pytest.mark.slow
def test_videogpt_eps_network_is_the_same_weights_with_epsilon_1e_5() -> None:
    import torch

    from src.fvd import Embedding

    tf, eps = Embedding("cpu"), Embedding("cpu", network="videogpt-eps")
    assert tf.weights_sha256 == eps.weights_sha256
    norms = [m for m in eps.model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert len(norms) > 50 and {m.eps for m in norms} == {1e-5}
    assert {m.eps for m in tf.model.modules() if isinstance(m, torch.nn.BatchNorm3d)} == {1e-3}


@pytest.mark.slow
def test_tf_protocol_through_the_metrics_job_is_the_reference_number(tmp_path: Path, monkeypatch, capsys) -> None:
    """--protocol tf with KVD runs src/fvd/runs.py's job: its FVD is still the reference example's 133.908."""
    np.save(tmp_path / "zeros.npy", np.zeros((2, 15, 64, 64, 3), np.uint8))
    np.save(tmp_path / "ones.npy", np.full((2, 15, 64, 64, 3), 255, np.uint8))
    saved = [str(tmp_path / "a.npz"), str(tmp_path / "b.npz")]
    code, out, err = call_main("fvd.py", [str(tmp_path / "zeros.npy"), str(tmp_path / "ones.npy"), "--frames", "all",
                                          "--metrics", "fvd,kvd", "--json", "--quiet", "--workers", "0",
                                          "--save-activations", *saved], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["fvd"] == pytest.approx(133.908, abs=0.01)
    assert (result["protocol"], result["covariance"], result["sqrtm"], result["network"]) == \
        ("tf", "unbiased", "tf-gan", "tf")
    x, y = (load_activations(p).trial(0).astype(np.float64) for p in saved)
    d = x.shape[1]
    # identical videos: every kernel value within a set is one number, so MMD^2 = k(x,x) + k(y,y) - 2 k(x,y)
    expected = (x[0] @ x[0] / d + 1) ** 3 + (y[0] @ y[0] / d + 1) ** 3 - 2 * (x[0] @ y[0] / d + 1) ** 3
    assert result["kvd"] == pytest.approx(expected, rel=1e-6)
