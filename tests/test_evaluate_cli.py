"""`isc-qk submit` and `isc-qk evaluate-uap` end to end through the real CLI."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from isc_qk.evaluation.evaluate import evaluate
from isc_qk.formats import Descriptors, GroundTruth, read_submission, write_descriptors, write_ground_truth
from conftest import evaluate_predictions


def _data(tmp_path, nq=60, nb=200, d=16, n_pos=20, seed=0, noise=0.3):
    """Queries 0..n_pos-1 are noisy copies of references 0..n_pos-1; the rest are distractors."""
    rng = np.random.default_rng(seed)
    xb = rng.standard_normal((nb, d)).astype(np.float32)
    xq = rng.standard_normal((nq, d)).astype(np.float32)
    xq[:n_pos] = xb[:n_pos] + noise * rng.standard_normal((n_pos, d)).astype(np.float32)
    qids = [f"Q{i:05d}" for i in range(nq)]
    rids = [f"R{i:06d}" for i in range(nb)]
    write_descriptors(tmp_path / "q.h5", Descriptors(qids, xq))
    write_descriptors(tmp_path / "r.h5", Descriptors(rids, xb))
    # the GT lists the first half of the queries, as the public dev GT lists 25k of 50k
    rows = [(qids[i], rids[i] if i < n_pos else None) for i in range(nq // 2)]
    write_ground_truth(tmp_path / "gt.csv", rows)
    return qids, rids, xq, xb, rows


def _assert_clean_error(res, fragment=""):
    assert res.code == 2, (res.code, res.out, res.err)
    assert "Traceback" not in res.err + res.out
    lines = [line for line in res.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.err
    assert fragment.lower() in res.err.lower()


def test_evaluate_uap_table_json_and_plot(tmp_path, run_cli):
    _data(tmp_path)
    res = run_cli(
        "evaluate-uap", "--ground-truth", tmp_path / "gt.csv", "--query", tmp_path / "q.h5",
        "--reference", tmp_path / "r.h5", "--json", tmp_path / "m.json", "--plot", tmp_path / "pr.png",
    )
    assert res.code == 0, res.err
    for label in ("micro-AP", "recall@P90", "recall@rank1", "recall@rank10", "predictions kept", "positives"):
        assert label in res.out
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["n_queries_searched"] == 30 and data["max_results"] == 300
    assert data["n_predictions"] == 300 and data["n_positives"] == 20
    assert 0 < data["micro_ap"] <= 1
    assert (tmp_path / "pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "search_seconds" not in data  # without --timings the file depends on its inputs only


def test_timings_add_the_search_seconds(tmp_path, run_cli):
    _data(tmp_path)
    res = run_cli("evaluate-uap", "--ground-truth", tmp_path / "gt.csv", "--query", tmp_path / "q.h5",
                  "--reference", tmp_path / "r.h5", "--json", tmp_path / "m.json", "--timings")
    assert res.code == 0, res.err
    secs = json.loads((tmp_path / "m.json").read_text())["search_seconds"]
    assert secs["wall"] > 0 and secs["cpu"] >= 0


def test_json_null_when_p90_not_reached(tmp_path, run_cli):
    # pure noise: positives are not closer than distractors, precision never reaches 0.9
    _data(tmp_path, noise=50.0, seed=1)
    res = run_cli(
        "evaluate-uap", "--ground-truth", tmp_path / "gt.csv", "--query", tmp_path / "q.h5",
        "--reference", tmp_path / "r.h5", "--json", tmp_path / "m.json",
    )
    assert res.code == 0, res.err
    assert "not reached" in res.out
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["recall_at_p90"] is None and data["threshold_at_p90"] is None and data["p90_reached"] is False


def test_submit_then_evaluate_submission_gives_same_numbers(tmp_path, run_cli):
    _data(tmp_path)
    res = run_cli("submit", "--query", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "--out", tmp_path / "s.h5")
    assert res.code == 0, res.err
    with h5py.File(tmp_path / "s.h5") as f:
        assert sorted(f.keys()) == ["query", "query_ids", "reference", "reference_ids"]
    sub = read_submission(tmp_path / "s.h5")
    assert sub.query.ids == sorted(sub.query.ids)
    a = run_cli("evaluate-uap", "--ground-truth", tmp_path / "gt.csv", "--submission", tmp_path / "s.h5",
                "--json", tmp_path / "a.json", "--all-queries")
    b = run_cli("evaluate-uap", "--ground-truth", tmp_path / "gt.csv", "--query", tmp_path / "q.h5",
                "--reference", tmp_path / "r.h5", "--json", tmp_path / "b.json", "--all-queries")
    assert a.code == b.code == 0
    ja, jb = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "b.json").read_text())
    assert ja == jb and ja["n_queries_searched"] == 60 and ja["max_results"] == 600


def test_evaluate_agrees_with_scoring_brute_force_predictions(tmp_path):
    # independent path: brute-force distances in numpy, take the global top N, score with
    # evaluate_predictions on string ids. Dyadic values keep every distance exact.
    rng = np.random.default_rng(4)
    nq, nb, d = 80, 150, 8
    xb = (rng.integers(0, 9, (nb, d)) / 4.0).astype(np.float32)
    xq = (rng.integers(0, 9, (nq, d)) / 4.0).astype(np.float32)
    xq[:30] = xb[:30] + (rng.integers(-1, 2, (30, d)) / 4.0).astype(np.float32)
    qids, rids = [f"Q{i}" for i in range(nq)], [f"R{i}" for i in range(nb)]
    gt = GroundTruth(qids[:60], [(qids[i], rids[i]) for i in range(30)] + [("Q0", "R40")])
    res = evaluate(Descriptors(qids, xq), Descriptors(rids, xb), gt, max_results=400)
    dist = ((xq[:60, None].astype(np.float64) - xb[None]) ** 2).sum(-1)
    q, r = np.meshgrid(np.arange(60), np.arange(nb), indexing="ij")
    order = np.lexsort((r.ravel(), q.ravel(), dist.ravel()))[:400]
    m = evaluate_predictions(
        [qids[i] for i in q.ravel()[order]], [rids[j] for j in r.ravel()[order]], -dist.ravel()[order], gt.pairs
    )
    assert res.micro_ap == pytest.approx(m.micro_ap, abs=1e-12)
    assert res.recall_at_p90 == m.recall_at_p90 and res.threshold_at_p90 == m.threshold_at_p90
    assert res.recall_at_rank1 == m.recall_at_rank1 and res.recall_at_rank10 == m.recall_at_rank10


def test_knn_mode_and_max_results(tmp_path, run_cli):
    _data(tmp_path)
    common = ("--ground-truth", tmp_path / "gt.csv", "--query", tmp_path / "q.h5", "--reference", tmp_path / "r.h5")
    res = run_cli("evaluate-uap", *common, "--knn", "3", "--json", tmp_path / "k.json")
    assert res.code == 0, res.err
    assert json.loads((tmp_path / "k.json").read_text())["n_predictions"] == 90
    res = run_cli("evaluate-uap", *common, "--max-results", "7", "--json", tmp_path / "n.json")
    assert json.loads((tmp_path / "n.json").read_text())["n_predictions"] == 7
    _assert_clean_error(run_cli("evaluate-uap", *common, "--knn", "3", "--max-results", "5"), "exclusive")


def test_missing_gt_ids_warn_and_count_as_not_found(tmp_path, run_cli):
    _data(tmp_path)
    with open(tmp_path / "gt.csv", "a") as fh:
        fh.write("Q99999,R000001\nQ00001,R999999\n")
    res = run_cli("evaluate-uap", "--ground-truth", tmp_path / "gt.csv", "--query", tmp_path / "q.h5",
                  "--reference", tmp_path / "r.h5", "--json", tmp_path / "m.json")
    assert res.code == 0, res.err
    assert "warning" in res.err and "Q99999" in res.err and "R999999" in res.err
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["n_positives"] == 22 and len(data["warnings"]) == 2


@pytest.mark.parametrize(
    "setup,fragment",
    [
        (lambda p: (p / "q.h5").unlink(), "not found"),
        (lambda p: (p / "q.h5").write_text("hello"), "not an HDF5"),
        (lambda p: _h5(p / "q.h5", image_names=np.array([b"Q1"])), "missing dataset 'vectors'"),
        (lambda p: _h5(p / "q.h5", vectors=np.ones((2, 3), np.int32), image_names=np.array([b"Q1", b"Q2"])), "floating"),
        (lambda p: _h5(p / "q.h5", vectors=np.ones(3, np.float32), image_names=np.array([b"Q1"])), "2-D"),
        (lambda p: _h5(p / "q.h5", vectors=np.full((1, 16), np.nan, np.float32), image_names=np.array([b"Q00000"])), "NaN"),
        (lambda p: _h5(p / "q.h5", vectors=np.ones((2, 16), np.float32), image_names=np.array([b"Q1", b"Q1"])), "duplicate"),
        (lambda p: _h5(p / "q.h5", vectors=np.ones((2, 16), np.float32), image_names=np.array([b"X1", b"X2"])), "none of the"),
        (lambda p: _h5(p / "q.h5", vectors=np.ones((2, 8), np.float32), image_names=np.array([b"Q00000", b"Q00001"])), "dimension"),
        (lambda p: (p / "gt.csv").unlink(), "not found"),
        (lambda p: (p / "gt.csv").write_text("a,b\n"), "header"),
        (lambda p: (p / "gt.csv").write_bytes((p / "r.h5").read_bytes()), "gt.csv"),
        (lambda p: (p / "gt.csv").write_text("query_id,reference_id\nQ00000,\n"), "no matched pair"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(tmp_path, run_cli, setup, fragment):
    _data(tmp_path)
    setup(tmp_path)
    res = run_cli("evaluate-uap", "--ground-truth", tmp_path / "gt.csv", "--query", tmp_path / "q.h5",
                  "--reference", tmp_path / "r.h5")
    _assert_clean_error(res, fragment)


def _h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)


def test_bad_submission_and_option_combinations(tmp_path, run_cli):
    _data(tmp_path)
    gt = tmp_path / "gt.csv"
    _h5(tmp_path / "s.h5", query=np.ones((2, 4), np.float32), query_ids=np.array([b"Q1", b"Q2"]))
    _assert_clean_error(run_cli("evaluate-uap", "--ground-truth", gt, "--submission", tmp_path / "s.h5"), "reference")
    _assert_clean_error(
        run_cli("evaluate-uap", "--ground-truth", gt, "--submission", tmp_path / "s.h5", "--query", tmp_path / "q.h5"),
        "not both",
    )
    _assert_clean_error(run_cli("evaluate-uap", "--ground-truth", gt, "--query", tmp_path / "q.h5"), "--reference")


@pytest.mark.parametrize(
    "q,r,fragment",
    [
        (np.ones((2, 300), np.float32), np.ones((3, 300), np.float32), "256"),
        (np.ones((2, 8), np.float32), np.ones((3, 16), np.float32), "dimension"),
        (np.full((2, 8), np.inf, np.float32), np.ones((3, 8), np.float32), "NaN or inf"),
        (np.ones((0, 8), np.float32), np.ones((3, 8), np.float32), "empty"),
    ],
)
def test_submit_refuses_bad_descriptors(tmp_path, run_cli, q, r, fragment):
    _h5(tmp_path / "q.h5", vectors=q, image_names=np.array([f"Q{i}".encode() for i in range(len(q))], dtype="S"))
    _h5(tmp_path / "r.h5", vectors=r, image_names=np.array([f"R{i}".encode() for i in range(len(r))], dtype="S"))
    res = run_cli("submit", "--query", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "--out", tmp_path / "s.h5")
    _assert_clean_error(res, fragment)
    assert not (tmp_path / "s.h5").exists()


def test_submit_refuses_duplicate_ids(tmp_path, run_cli):
    _h5(tmp_path / "q.h5", vectors=np.ones((2, 8), np.float32), image_names=np.array([b"Q1", b"Q1"]))
    _h5(tmp_path / "r.h5", vectors=np.ones((2, 8), np.float32), image_names=np.array([b"R1", b"R2"]))
    res = run_cli("submit", "--query", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "--out", tmp_path / "s.h5")
    _assert_clean_error(res, "duplicate")
