"""`isc-qk match` and the calibration it reads: the evaluate-uap JSON holds the PR curve, the
threshold read at any precision is the evaluation's own operating point, the pairs written are
exactly the top k plus every pair above the threshold (checked against brute force), decisions
on the calibration data reproduce its precision, images are described with the model's query
side (or a PCA), and bad input is one line that destroys nothing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from disc_world import make_disc


@pytest.fixture(scope="module")
def disc(tmp_path_factory):
    return make_disc(tmp_path_factory.mktemp("disc"))


@pytest.fixture(scope="module")
def calibration(disc, tmp_path_factory):
    """evaluate-uap --json of the oracle result (its precision reaches 0.9)."""
    from isc_qk.cli import main

    path = tmp_path_factory.mktemp("cal") / "eval.json"
    with pytest.raises(SystemExit) as e:
        main(["evaluate-uap", "--ground-truth", str(disc.gt), "--query", str(disc.q_oracle), "--reference",
              str(disc.r_oracle), "--json", str(path)])
    assert e.value.code == 0
    return path


def _all_pairs(qh5, rh5):
    """Brute force: every (query, reference) pair with the exact score, and its rank per query."""
    from isc_qk.evaluation.search import exact_distances
    from isc_qk.formats import read_descriptors

    q, r = read_descriptors(qh5), read_descriptors(rh5)
    qi, ri = np.repeat(np.arange(len(q.ids)), len(r.ids)), np.tile(np.arange(len(r.ids)), len(q.ids))
    d = exact_distances(q.vectors, r.vectors, qi, ri)
    frame = pd.DataFrame({"query_id": np.array(q.ids)[qi], "reference_id": np.array(r.ids)[ri],
                          "score": -d.astype(np.float64), "ri": ri})
    frame = frame.sort_values(["query_id", "score", "ri"], ascending=[True, False, True])
    frame["rank"] = frame.groupby("query_id").cumcount() + 1
    return frame


def test_the_json_curve_gives_the_evaluations_operating_point_at_any_precision(disc, calibration):
    from isc_qk.evaluation.evaluate import evaluate
    from isc_qk.evaluation.metrics import operating_point
    from isc_qk.formats import read_descriptors, read_ground_truth
    from isc_qk.matching.calibration import threshold_from_metrics

    data = json.loads(calibration.read_text())
    curve = data["pr_curve"]
    assert len(curve["recall"]) == data["n_true_positives"]
    res = evaluate(read_descriptors(disc.q_oracle), read_descriptors(disc.r_oracle), read_ground_truth(disc.gt))
    for p in (0.5, 0.75, 0.9, 0.95, 1.0):
        want = operating_point(res.precisions, res.recalls, res.thresholds, p)
        got = operating_point(*(np.array(curve[k]) for k in ("precision", "recall", "threshold")), p)
        assert got == want
        if want[0] is not None:
            t = threshold_from_metrics(calibration, p)
            assert (t.source["recall"], t.score) == want and t.source["precision"] >= p
    assert (data["recall_at_p90"], data["threshold_at_p90"]) == operating_point(
        *(np.array(curve[k]) for k in ("precision", "recall", "threshold")), 0.9)


def test_match_writes_the_top_k_and_every_pair_above_the_threshold(disc, calibration, tmp_path, run_cli):
    out = tmp_path / "m.csv"
    r = run_cli("match", "--query", disc.q_oracle, "--reference", disc.r_oracle, "--calibration", calibration,
                "--precision", "0.9", "--top-k", "2", "--out", out)
    assert r.code == 0, r.err
    got = pd.read_csv(out)
    assert list(got.columns[:3]) == ["query_id", "reference_id", "score"]
    meta = json.loads((tmp_path / "m.csv.json").read_text())
    t = meta["threshold"]
    src = meta["threshold_source"]
    assert src["kind"] == "calibration" and src["file"] == str(calibration) and src["precision_requested"] == 0.9
    assert t == json.loads(calibration.read_text())["threshold_at_p90"]
    brute = _all_pairs(disc.q_oracle, disc.r_oracle)
    want = brute[(brute["rank"] <= 2) | (brute["score"] >= t)]
    assert len(got) == len(want)
    merged = got.merge(want, on=["query_id", "reference_id"], suffixes=("", "_bf"))
    assert len(merged) == len(want)
    assert (merged["score"] == merged["score_bf"]).all() and (merged["rank"] == merged["rank_bf"]).all()
    assert ((merged["decision"] == "match") == (merged["score"] >= t)).all()
    # on the calibration data itself, the decisions have the calibration's precision exactly
    truth = set(map(tuple, pd.read_csv(disc.gt, keep_default_na=False).values.tolist()))
    decided = got[got["decision"] == "match"]
    correct = sum((q, r) in truth for q, r in zip(decided["query_id"], decided["reference_id"]))
    assert correct / len(decided) == pytest.approx(src["precision"])
    assert correct / sum(1 for _, r in truth if r) == pytest.approx(src["recall"])


def test_match_with_a_threshold_or_none(disc, tmp_path, run_cli):
    out = tmp_path / "m.csv"
    r = run_cli("match", "--query", disc.q_oracle, "--reference", disc.r_oracle, "--threshold", "-0.5", "--top-k", "0",
                "--out", out)
    assert r.code == 0, r.err
    got = pd.read_csv(out)
    brute = _all_pairs(disc.q_oracle, disc.r_oracle)
    assert len(got) == int((brute["score"] >= -0.5).sum()) and (got["decision"] == "match").all()
    assert json.loads((tmp_path / "m.csv.json").read_text())["threshold_source"] == {"kind": "given"}
    r = run_cli("match", "--query", disc.q_oracle, "--reference", disc.r_oracle, "--top-k", "3", "--out", out)
    assert r.code == 0, r.err
    got = pd.read_csv(out, keep_default_na=False)
    assert len(got) == 30 * 3 and (got["decision"] == "").all()


def test_match_describes_new_images_with_the_query_side(disc, tmp_path, run_cli):
    """--images with --model: the query side's descriptors (kept beside the CSV) matched against
    references described by the same model's key side; --pca: the frozen descriptor."""
    from qk_world import make_model

    model = make_model(tmp_path, disc.pca, "model")
    refs = tmp_path / "refs.h5"
    r = run_cli("describe", "--model", model, "--side", "k", "--images", disc.references, "--out", refs, "--no-progress")
    assert r.code == 0, r.err
    out = tmp_path / "m.csv"
    r = run_cli("match", "--images", disc.queries, "--model", model, "--reference", refs, "--top-k", "1",
                "--threshold", "-0.3", "--out", out, "--no-progress")
    assert r.code == 0, r.err
    kept = tmp_path / "m.queries.h5"
    assert kept.is_file()
    r2 = run_cli("describe", "--model", model, "--side", "q", "--images", disc.queries, "--out", tmp_path / "q.h5",
                 "--no-progress")
    assert r2.code == 0
    from isc_qk.formats import read_descriptors

    a, b = read_descriptors(kept), read_descriptors(tmp_path / "q.h5")
    assert a.ids == b.ids and np.array_equal(a.vectors, b.vectors)
    direct = tmp_path / "d.csv"
    assert run_cli("match", "--query", tmp_path / "q.h5", "--reference", refs, "--top-k", "1", "--threshold", "-0.3",
                   "--out", direct).code == 0
    assert pd.read_csv(out).equals(pd.read_csv(direct))
    # references described by another model are refused
    other = make_model(tmp_path, disc.pca, "other", seed=5)
    r = run_cli("match", "--images", disc.queries, "--model", other, "--reference", refs, "--top-k", "1",
                "--out", tmp_path / "o.csv", "--no-progress")
    assert r.code == 2 and "another model" in r.err
    # a frozen descriptor's PCA (the GIST-PCA baseline) describes images the same way as gist-pca
    r = run_cli("match", "--images", disc.queries, "--pca", disc.pca, "--reference", disc.r_h5, "--top-k", "1",
                "--out", tmp_path / "g.csv", "--no-progress")
    assert r.code == 0, r.err
    g = read_descriptors(tmp_path / "g.queries.h5")
    ref = read_descriptors(disc.q_h5)
    assert g.ids == ref.ids and np.allclose(g.vectors, ref.vectors)


def test_old_json_and_unreachable_precision(disc, calibration, tmp_path, run_cli):
    old = tmp_path / "old.json"
    data = json.loads(calibration.read_text())
    data.pop("pr_curve")
    old.write_text(json.dumps(data))
    common = ["--query", disc.q_oracle, "--reference", disc.r_oracle, "--out", tmp_path / "m.csv"]
    assert run_cli("match", *common, "--calibration", old).code == 0  # the P90 point serves p = 0.9
    r = run_cli("match", *common, "--calibration", old, "--precision", "0.8")
    assert r.code == 2 and "re-run" in r.err
    gist_cal = tmp_path / "gist.json"
    assert run_cli("evaluate-uap", "--ground-truth", disc.gt, "--query", disc.q_h5, "--reference", disc.r_h5,
                   "--json", gist_cal).code == 0
    if json.loads(gist_cal.read_text())["p90_reached"]:
        pytest.skip("GIST reached precision 0.9 on this tiny world")
    r = run_cli("match", "--query", disc.q_h5, "--reference", disc.r_h5, "--out", tmp_path / "g.csv",
                "--calibration", gist_cal)
    assert r.code == 2 and "never reached" in r.err


@pytest.mark.parametrize("extra, message", [
    (["--threshold", "-1", "--calibration", "CAL"], "not both"),
    (["--threshold", "0.5"], "above 0"),
    (["--top-k", "0"], "--top-k 0"),
    (["--calibration", "CAL", "--precision", "1.5"], "--precision"),
    (["--calibration", "GT"], "not valid JSON"),
    (["--model", "GT"], "--model / --pca"),
])
def test_bad_input_is_one_line(disc, calibration, tmp_path, run_cli, extra, message):
    extra = [calibration if x == "CAL" else disc.gt if x == "GT" else x for x in extra]
    out = tmp_path / "m.csv"
    r = run_cli("match", "--query", disc.q_oracle, "--reference", disc.r_oracle, "--out", out, *extra)
    assert r.code == 2 and message in r.err and r.err.startswith("error:"), r.err
    assert not out.exists()


def test_outputs_never_replace_what_match_did_not_write(disc, tmp_path, run_cli):
    theirs = tmp_path / "results.csv"
    theirs.write_text("a,b\n1,2\n")
    r = run_cli("match", "--query", disc.q_oracle, "--reference", disc.r_oracle, "--out", theirs)
    assert r.code == 2 and "not a match CSV" in r.err and theirs.read_text() == "a,b\n1,2\n"
    r = run_cli("match", "--query", disc.q_oracle, "--reference", disc.r_oracle, "--out", disc.r_oracle)
    assert r.code == 2 and "destroy the input" in r.err
    side = tmp_path / "m.csv.json"
    side.write_text('{"mine": 1}')
    r = run_cli("match", "--query", disc.q_oracle, "--reference", disc.r_oracle, "--out", tmp_path / "m.csv")
    assert r.code == 2 and side.read_text() == '{"mine": 1}' and not (tmp_path / "m.csv").exists()
    # its own earlier output is replaced
    out = tmp_path / "ok.csv"
    assert run_cli("match", "--query", disc.q_oracle, "--reference", disc.r_oracle, "--out", out, "--top-k", "1").code == 0
    assert run_cli("match", "--query", disc.q_oracle, "--reference", disc.r_oracle, "--out", out, "--top-k", "2").code == 0
    assert len(pd.read_csv(out)) == 60


@pytest.mark.parametrize("method", ["int8", "fp32", "faiss"])
@pytest.mark.parametrize("k, quantile", [(0, 0.01), (1, None), (4, 0.002), (7, 0.0)])
def test_nearest_and_within_is_exact(monkeypatch, method, k, quantile):
    """The k nearest (ties by reference row) and every pair within the threshold, against brute
    force; with a sample smaller than the references, so the k-th-neighbour bound is a real bound."""
    from isc_qk.evaluation import search
    from isc_qk.evaluation.search import exact_distances, nearest_and_within

    monkeypatch.setattr(search, "SAMPLE_REFERENCES", 300)
    monkeypatch.setattr(search, "NEAREST_BATCH", 64)
    rng = np.random.default_rng(k)
    xb = rng.standard_normal((2000, 24)).astype(np.float32)
    xq = rng.standard_normal((150, 24)).astype(np.float32)
    xb[11] = xb[10]  # exact ties
    xb[12] = xb[10]
    xq[0] = xb[10]
    xq[1] = xb[500] + 1e-3 * rng.standard_normal(24).astype(np.float32)
    qi, ri = np.repeat(np.arange(150), 2000), np.tile(np.arange(2000), 150)
    d = exact_distances(xq, xb, qi, ri)
    order = np.lexsort((ri, d, qi))
    rank = np.tile(np.arange(2000), 150)  # rank of the sorted position within its query
    theta = None if quantile is None else float(np.quantile(d, quantile))
    keep = (rank < k) | ((d[order] <= theta) if theta is not None else False)
    want = list(zip(qi[order][keep].tolist(), ri[order][keep].tolist(), d[order][keep].tolist()))
    got = nearest_and_within(xq, xb, k, theta, method=method)
    assert list(zip(got.query.tolist(), got.reference.tolist(), got.distance.tolist())) == want
