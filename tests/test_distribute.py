"""tf.distribute training: the distributed step gives the single-device loss and weights.

The single-device reference runs train in this process. The distributed runs happen in
subprocesses: splitting the CPU into 2 logical devices must happen before TensorFlow
initialises, and this pytest process has long initialised it. Every run trains 2 steps from
the same tiny real QK world (tests/qk_world.py) and writes its losses and weights, which the
tests compare (rtol 1e-5): train-q with an uneven 4/3 split, train-k, in-batch negatives, and
(marked slow) two MultiWorkerMirroredStrategy worker processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from isc_qk.errors import UserError
from qk_world import make_model, make_world, train_config

PARTS = ("q_backbone", "q_head", "k_backbone", "k_head")


def _part(m, part: str):
    side, kind = part.split("_")
    return m.backbone(side) if kind == "backbone" else m.head(side)

#: Trains the cases of argv[1] (JSON) with strategy argv[2] and writes losses + weights under argv[3].
SCRIPT = r"""
import json, os, sys
from pathlib import Path
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from isc_qk.qk.distribute import logical_cpu_devices, make_strategy

cases, kind, out_root = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
if kind == "mirrored":
    logical_cpu_devices(2)
import tensorflow as tf

tf.config.experimental.enable_op_determinism()
from isc_qk.qk.train import train
from qk_world import train_config
from test_distribute import save_result

strategy = make_strategy(kind)
for case in cases:
    out = out_root / case["name"]
    rep = train(case["model"], case["keys"], case["queries"], out, train_config(**case["cfg"]), progress=False, strategy=strategy)
    save_result(out, rep)
"""


def save_result(out: Path, rep) -> None:
    """Losses, replicas and the trained weights of the run in `out` (read back by `_result`)."""
    from isc_qk.models.qk_model import QKModel

    np.savez(out / "weights.npz", **_weights(QKModel.load(out)))
    (out / "result.json").write_text(json.dumps({"losses": rep.losses, "replicas": rep.replicas}))


def _weights(model) -> dict[str, np.ndarray]:
    return {f"{p}{i}": w.numpy() for p in PARTS for i, w in enumerate(_part(model, p).weights)}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import tensorflow as tf

    from isc_qk.models.qk_model import QKModel
    from isc_qk.qk.precompute import precompute
    from isc_qk.qk.train import train

    tf.config.experimental.enable_op_determinism()
    w = make_world(tmp_path_factory.mktemp("qk_dist"))
    w.fast = make_model(w.root, w.pca, "model_fast", residual_scale=1.0)  # a large head share: big gradients
    precompute(w.fast, "k", w.keys, w.root / "kfeats", batch=16, progress=False)
    precompute(w.fast, "q", w.aug, w.root / "qfeats", batch=16, progress=False)
    w.start = _weights(QKModel.load(w.fast))
    # the single-device reference runs, in this process (one CPU device, default strategy)
    w.single = w.root / "single"
    for case in _cases(w):
        out = w.single / case["name"]
        save_result(out, train(case["model"], case["keys"], case["queries"], out, train_config(**case["cfg"]), progress=False))
    return w


def _cases(w) -> list[dict]:
    base = dict(m=2, lr=1e-3, steps=2, workers=1, checkpoint_every=1000)
    return [
        # 7 rows over 2 replicas: an uneven 4/3 split
        {"name": "train-q", "model": str(w.fast), "keys": str(w.root / "kfeats"), "queries": str(w.aug),
         "cfg": {**base, "side": "q", "batch_size": 7}},
        {"name": "train-k", "model": str(w.fast), "keys": str(w.keys), "queries": str(w.root / "qfeats"),
         "cfg": {**base, "side": "k", "batch_size": 8}},
        {"name": "in-batch", "model": str(w.fast), "keys": str(w.keys), "queries": str(w.aug),
         "cfg": {**base, "side": "q", "negatives": "batch", "batch_size": 8}},
        # the other head frozen: mining against its cached descriptors (qk.mining), the uneven split again
        {"name": "train-q-cached", "model": str(w.fast), "keys": str(w.root / "kfeats"), "queries": str(w.aug),
         "cfg": {**base, "side": "q", "batch_size": 7, "train_other_head": False}},
        {"name": "train-k-cached", "model": str(w.fast), "keys": str(w.keys), "queries": str(w.root / "qfeats"),
         "cfg": {**base, "side": "k", "batch_size": 8, "train_other_head": False}},
    ]


def _env() -> dict:
    here = Path(__file__).resolve().parent  # the script imports save_result from this file
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), str(here), os.environ.get("PYTHONPATH", "")])}


def _result(folder: Path) -> tuple[list[float], int, dict]:
    res = json.loads((folder / "result.json").read_text())
    with np.load(folder / "weights.npz") as z:
        return res["losses"], res["replicas"], {k: z[k] for k in z.files}


def _assert_same_training(w, name: str, dist: Path, replicas: int) -> None:
    losses1, n1, w1 = _result(w.single / name)
    losses2, n2, w2 = _result(dist)
    assert (n1, n2) == (1, replicas)
    np.testing.assert_allclose(losses2, losses1, rtol=1e-5)
    assert losses1[1] != losses1[0]  # the first update changed the model
    assert w1.keys() == w2.keys() == w.start.keys()
    for k in w1:
        np.testing.assert_allclose(w2[k], w1[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # the steps really updated weights: this does not compare two untouched models
    assert any(not np.array_equal(w1[k], w.start[k]) for k in w1)


def test_mirrored_on_two_cpu_devices_matches_single_device_step(world, tmp_path):
    cases = _cases(world)
    r = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cases), "mirrored", str(tmp_path)],
                       capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    for case in cases:
        _assert_same_training(world, case["name"], tmp_path / case["name"], 2)


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_match_single_device_step(world, tmp_path):
    """MultiWorkerMirroredStrategy with 2 real worker processes talking over gRPC on localhost
    (slow: two more TensorFlow processes; run with -m slow)."""
    case = _cases(world)[0]
    workers = [f"localhost:{p}" for p in _free_ports(2)]
    procs = []
    for i in range(2):
        conf = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
        # each worker writes its own output folder (as on machines without a shared disk)
        procs.append(subprocess.Popen(
            [sys.executable, "-c", SCRIPT, json.dumps([case]), "multiworker", str(tmp_path / f"w{i}")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**_env(), "TF_CONFIG": json.dumps(conf)},
        ))
    try:
        errs = [p.communicate(timeout=300)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], errs[0][-2000:] + errs[1][-2000:]
    for i in range(2):
        _assert_same_training(world, case["name"], tmp_path / f"w{i}" / case["name"], 2)


def test_cli_distribute_option(world, tmp_path, run_cli):
    # this process has one CPU device: a 1-replica MirroredStrategy, through the distributed step
    out = tmp_path / "cli"
    res = run_cli("train-q", "--model", str(world.fast), "--keys", str(world.root / "kfeats"), "--queries", str(world.aug),
                  "--out", str(out), "--batch", "8", "--m", "2", "--steps", "2", "--workers", "1", "--no-progress",
                  "--distribute", "mirrored")
    assert res.code == 0, res.err
    assert "replicas" in res.out
    rep = json.loads((out / "train_report.json").read_text())
    assert rep["replicas"] == 1 and rep["steps"] == 2 and np.isfinite(rep["last_loss"])
    bad = run_cli("train-q", "--model", str(world.fast), "--keys", str(world.root / "kfeats"), "--queries", str(world.aug),
                  "--out", str(tmp_path / "bad"), "--distribute", "tpu")
    assert bad.code == 2 and "--distribute must be one of default, mirrored, multiworker" in bad.err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    "tf_config, message",
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("{not json", "TF_CONFIG is not valid JSON"),
        ('{"task": {"type": "worker", "index": 0}}', 'TF_CONFIG must have "cluster"'),
        ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}', "is not one of the cluster"),
    ],
)
def test_multiworker_needs_a_valid_tf_config(monkeypatch, tf_config, message):
    from isc_qk.qk.distribute import make_strategy

    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(UserError, match=message):
        make_strategy("multiworker")


def test_strategy_kinds_and_late_logical_devices(world):
    import tensorflow as tf

    from isc_qk.qk.distribute import is_default, logical_cpu_devices, make_strategy

    with pytest.raises(UserError, match="--distribute must be one of"):
        make_strategy("parameter-server")
    assert is_default(make_strategy("default"))
    mirrored = make_strategy("mirrored")
    assert not is_default(mirrored) and mirrored.num_replicas_in_sync == len(tf.config.list_logical_devices("CPU"))
    # the world fixture has run TensorFlow in this process: too late to split the CPU
    n = len(tf.config.list_logical_devices("CPU"))
    assert logical_cpu_devices(n) == [d.name for d in tf.config.list_logical_devices("CPU")]  # unchanged: fine
    with pytest.raises(UserError, match="already initialised"):
        logical_cpu_devices(n + 1)


@pytest.mark.parametrize("rows, replicas", [(8, 2), (7, 2), (5, 3), (3, 3), (1000, 7)])
def test_replica_slices_cover_the_batch_in_order(rows, replicas):
    from isc_qk.qk.distribute import replica_slices

    s = replica_slices(rows, replicas)
    assert len(s) == replicas and s[0][0] == 0 and s[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(s, s[1:]))
    sizes = [e - b for b, e in s]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
