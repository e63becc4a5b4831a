"""benchmarks/scale_rehearsal.py runs end to end (slow: a model, tables and two real training
processes; the figures themselves are the benchmark's, never asserted here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_rehearsal_writes_every_figure(tmp_path):
    pytest.importorskip("onnx")
    out = tmp_path / "r.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "scale_rehearsal.py"), "--keys", "96", "--steps", "3",
                        "--copies", "2", "--warmup", "1", "--backbone", "toy", "--tmp", str(tmp_path), "--json", str(out)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    for stage, rows in (("train-q", 96), ("train-k", 192)):
        s = res[stage]
        assert s["table_rows"] == rows and s["steps"] == 3
        for key in ("s_per_step", "floor_s", "peak_rss_gb", "projected_hours_1_pass", "projected_hours_10_passes"):
            assert s[key] > 0, key
        assert s["mining"].startswith("cached")
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # the work folder is gone
