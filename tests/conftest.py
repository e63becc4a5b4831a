"""Shared fixtures: run the real CLI in-process and small real images made on the fly."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys):
    """Call `isc_qk.cli.main(args)` and return its exit code and captured output."""
    from isc_qk.cli import main

    def _run(*args: str | os.PathLike) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return _run


def _photos() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.hubble_deep_field()]


def make_image_folder(folder: Path, n: int, prefix: str = "T", seed: int = 0, size: int = 96) -> list[str]:
    """Write n distinct real-photo crops as JPEGs named PREFIX000000.jpg..., return the ids."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    photos = _photos()
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(n):
        p = photos[i % len(photos)]
        h, w = p.shape[:2]
        ch, cw = int(h * rng.uniform(0.3, 0.6)), int(w * rng.uniform(0.3, 0.6))
        y, x = rng.integers(0, h - ch), rng.integers(0, w - cw)
        crop = Image.fromarray(np.ascontiguousarray(p[y : y + ch, x : x + cw])).resize((size, size))
        name = f"{prefix}{i:06d}"
        crop.save(folder / f"{name}.jpg", quality=90)
        ids.append(name)
    return ids


def gist960(paths) -> np.ndarray:
    """The L2-normalised 960-d GIST of image files, as the stages compute it (the gist encoder)."""
    from isc_qk.encoders import create
    from isc_qk.formats.images import load_rgb

    enc = create("gist")
    return enc.encode([enc.decode(load_rgb(p)) for p in paths])


@pytest.fixture
def image_folder(tmp_path):
    """Factory: image_folder(n, prefix) -> (folder, ids)."""

    def _make(n: int = 8, prefix: str = "T", seed: int = 0, size: int = 96):
        folder = tmp_path / f"{prefix}_images_{seed}"
        return folder, make_image_folder(folder, n, prefix, seed, size)

    return _make


def evaluate_predictions(pred_query, pred_ref, scores, gt_pairs):
    """Hand-made string predictions (higher score = more similar) -> `metrics_from_arrays`, the
    function `evaluate` runs: an independent way to score a list of pairs in tests."""
    from isc_qk.evaluation.metrics import metrics_from_arrays

    where = {(q, r): i for i, (q, r) in enumerate(zip(pred_query, pred_ref))}
    match_index = np.array([where.get(p, -1) for p in gt_pairs], dtype=np.int64)
    is_pos = np.zeros(len(scores), dtype=bool)
    is_pos[match_index[match_index >= 0]] = True
    q_codes = np.unique(np.asarray(pred_query, dtype=object), return_inverse=True)[1]
    return metrics_from_arrays(q_codes, np.asarray(scores, np.float64), is_pos, match_index, len(gt_pairs))
