"""`--tensorboard DIR` on train-q / train-k / pipeline: event files that hold the per-step
scalars (loss parts, positive and mined-negative distances, lr), read back with TensorBoard's
own reader, and agreeing with losses.csv."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from qk_world import make_model, make_world

TAGS = {"loss/total", "loss/pos", "loss/neg", "distance/pos_mean", "distance/neg_mean", "distance/neg_min", "lr"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from isc_qk.qk.precompute import precompute

    w = make_world(tmp_path_factory.mktemp("qk_tb"))
    w.fast = make_model(w.root, w.pca, "model_fast", residual_scale=1.0)
    precompute(w.fast, "k", w.keys, w.root / "kfeats", batch=16, progress=False)
    precompute(w.fast, "q", w.aug, w.root / "qfeats", batch=16, progress=False)
    return w


def scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] of every event file under `logdir` (TensorBoard's reader)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["tensors"]:  # tf.summary (TF2) writes scalars as tensors
        out[tag] = [(e.step, float(np.asarray(__import__("tensorflow").make_ndarray(e.tensor_proto))))
                    for e in acc.Tensors(tag)]
    return out


def _losses_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


COMMON = ["--batch", "8", "--m", "2", "--steps", "4", "--workers", "1", "--no-progress", "--lr", "1e-3",
          "--warmup", "0.5"]


def test_train_q_and_train_k_write_the_scalars_of_every_step(world, tmp_path, run_cli):
    for side, keys, queries in (("q", world.root / "kfeats", world.aug), ("k", world.keys, world.root / "qfeats")):
        tb = tmp_path / f"tb-{side}"
        r = run_cli(f"train-{side}", "--model", world.fast, "--keys", keys, "--queries", queries,
                    "--out", tmp_path / side, "--tensorboard", tb, *COMMON)
        assert r.code == 0, r.err
        assert list(tb.glob("events.out.tfevents.*")), "no event file"
        got = scalars(tb)
        assert TAGS <= set(got), set(got)
        rows = _losses_csv(tmp_path / side / "losses.csv")
        assert [s for s, _ in got["loss/total"]] == [1, 2, 3, 4]
        for (step, v), row in zip(got["loss/total"], rows):
            assert v == pytest.approx(float(row["loss"]), rel=1e-5)
        for (_, v), row in zip(got["distance/neg_min"], rows):
            assert v == pytest.approx(float(row["d2_neg_min"]), rel=1e-5)
        lrs = [v for _, v in got["lr"]]
        # warm-up over half of the 4 steps: 0 at the first step, rising, then cosine decay
        assert lrs[0] == 0.0 and lrs[1] > 0 and lrs[2] == pytest.approx(1e-3, rel=1e-5) and lrs[3] < lrs[2]


def test_tensorboard_folder_is_checked_like_an_output(world, tmp_path, run_cli):
    inside = world.aug / "tb"
    r = run_cli("train-q", "--model", world.fast, "--keys", world.root / "kfeats", "--queries", world.aug,
                "--out", tmp_path / "q", "--tensorboard", inside, *COMMON)
    assert r.code == 2 and "--tensorboard" in r.err and not inside.exists()
    a_file = tmp_path / "file.txt"
    a_file.write_text("mine")
    r = run_cli("train-q", "--model", world.fast, "--keys", world.root / "kfeats", "--queries", world.aug,
                "--out", tmp_path / "q2", "--tensorboard", a_file, *COMMON)
    assert r.code == 2 and "folder" in r.err and a_file.read_text() == "mine"


def test_pipeline_writes_one_folder_per_training_run(tmp_path, run_cli):
    from dataclasses import replace

    from isc_qk.pipeline.demo import build_demo_dataset, demo_settings
    from isc_qk.pipeline.schedule import run_pipeline

    data_cfg, pipes = demo_settings(quick=True)  # tiny backbone, 32-d PCA on 48 training images
    data = build_demo_dataset(tmp_path / "data", data_cfg)
    cfg = replace(pipes["pipeline"], phases=["Q1", "K1"], baselines=[], normalizations=[])
    run_pipeline(data, tmp_path / "work", cfg, progress=False, tensorboard=tmp_path / "tb")
    for phase in ("Q1", "K1"):
        got = scalars(tmp_path / "tb" / phase)
        assert TAGS <= set(got)
        n_steps = len(_losses_csv(tmp_path / "work" / "models" / phase / "losses.csv"))
        assert len(got["loss/total"]) == n_steps >= 1
    # the command's option reaches the pipeline: a log folder inside the data is refused up front
    r = run_cli("pipeline", "--data", data, "--work", tmp_path / "work2", "--tensorboard", data / "tb")
    assert r.code == 2 and "--tensorboard" in r.err and not (data / "tb").exists()
