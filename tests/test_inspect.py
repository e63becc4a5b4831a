"""`isc-qk inspect`: the report's content agrees with the evaluation, the per-edit metrics with
an evaluation of the subset, the probed ranks with brute force; only shown images get a
thumbnail; the output folder never takes a file it did not write; bad input is one line.
(The page in a real browser: tests/test_inspect_browser.py.)"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from disc_world import make_disc


@pytest.fixture(scope="module")
def disc(tmp_path_factory):
    return make_disc(tmp_path_factory.mktemp("disc"))


def _args(d, out, *extra):
    return ["inspect", "--ground-truth", d.gt, "--query", d.q_oracle, "--reference", d.r_oracle,
            "--query-images", d.queries, "--reference-images", d.references, "--out", out, *extra]


def _compare(d):
    return ["--name", "oracle", "--compare-query", d.q_h5, "--compare-reference", d.r_h5, "--compare-name", "gist"]


def _evaluate(qh5, rh5, gt_path, **kw):
    from isc_qk.evaluation.evaluate import evaluate
    from isc_qk.formats import read_descriptors, read_ground_truth

    q, r, gt = read_descriptors(qh5), read_descriptors(rh5), read_ground_truth(gt_path)
    return q, r, gt, evaluate(q, r, gt, **kw)


def test_report_agrees_with_the_evaluation(disc, tmp_path, run_cli):
    out = tmp_path / "rep"
    r = run_cli(*_args(disc, out, "--manifest", disc.manifest, "--show", "5", *_compare(disc)))
    assert r.code == 0, r.err
    for name in ("index.html", "inspect.json", "pr.png"):
        assert (out / name).is_file()
    data = json.loads((out / "inspect.json").read_text())
    q, ref, gt, res = _evaluate(disc.q_oracle, disc.r_oracle, disc.gt)
    a = data["summary"][0]
    assert a["name"] == "oracle" and a["micro_ap"] == res.micro_ap and a["recall_at_p90"] == res.recall_at_p90
    assert res.threshold_at_p90 is not None, "the oracle reaches precision 0.9 (the world is built so)"
    # the false positives: the first wrong pairs of the list, best first
    pairs = res.pairs
    truth = set(gt.pairs)
    wrong = [(q.ids[i], ref.ids[j], -float(dd)) for i, j, dd in zip(pairs.query, pairs.reference, pairs.distance)
             if (q.ids[i], ref.ids[j]) not in truth][:5]
    shown = data["false_positives"]["oracle"]
    assert [(e["query"], e["reference"]) for e in shown] == [(a_, b_) for a_, b_, _ in wrong]
    for e, (_, _, s) in zip(shown, wrong):
        assert e["score"] == pytest.approx(s) and e["above_p90"] == (s >= res.threshold_at_p90)
        assert e["distractor"] == all(qq != e["query"] for qq, _ in gt.pairs)
    # the missed copies: exactly the positives not retrieved at or above the threshold
    kept = {(q.ids[i], ref.ids[j]): -float(dd) for i, j, dd in zip(pairs.query, pairs.reference, pairs.distance)}
    missed = {p for p in gt.pairs if kept.get(p, -np.inf) < res.threshold_at_p90}
    m = data["missed"]["oracle"]
    assert m["count"] == len(missed) and {(e["query"], e["reference"]) for e in m["all"]} == missed
    assert a["n_positives"] - len(missed) == sum(1 for p in gt.pairs if kept.get(p, -np.inf) >= res.threshold_at_p90)
    # hardest first, and what is shown above a miss is ranked above it
    scores = [e["score"] for e in m["shown"]]
    assert scores == sorted(scores)
    for e in m["shown"]:
        assert all(x["rank"] < e["rank"] for x in e["above"]) and len(e["above"]) <= 3
    # with a manifest, each shown query carries its edits
    import csv

    ops = {row["query_id"]: [x["op"] for x in json.loads(row["ops"])] for row in csv.DictReader(open(disc.manifest))}
    for e in shown + m["shown"]:
        assert e["edits"] == ops.get(e["query"], [])
    # thumbnails: one per shown image, small, and nothing else under thumbs/
    files = {str(p.relative_to(out)) for p in (out / "thumbs").rglob("*") if p.is_file()}
    assert files == set(data["thumbnails"])
    shown_ids = {e["query"] for e in shown} | {e["reference"] for e in shown}
    assert {f"q/{i}" for i in {e["query"] for e in shown}} <= set(data["images"])
    assert len(data["images"]) < 30 + 12 and len(shown_ids) > 0
    from PIL import Image

    for f in files:
        with Image.open(out / f) as im:
            assert max(im.size) <= 160


def test_comparison_splits_the_positives(disc, tmp_path, run_cli):
    out = tmp_path / "rep"
    assert run_cli(*_args(disc, out, *_compare(disc))).code == 0
    data = json.loads((out / "inspect.json").read_text())
    comp = data["comparison"]
    n = data["summary"][0]["n_positives"]
    found_a = n - data["missed"]["oracle"]["count"]
    found_b = n - data["missed"]["gist"]["count"]
    assert comp["both"] + comp["a_only"]["count"] == found_a
    assert comp["both"] + comp["b_only"]["count"] == found_b
    assert comp["both"] + comp["a_only"]["count"] + comp["b_only"]["count"] + comp["neither"] == n
    assert comp["a_only"]["count"] > 0  # the oracle finds copies GIST does not
    for e in comp["a_only"]["rows"]:
        assert e["winner"]["rank"] is not None and e["loser"]["score"] is not None


def test_per_edit_metrics_equal_an_evaluation_of_the_subset(disc, tmp_path, run_cli):
    """With every pair kept, a group's sub-list IS the full list of its queries: its micro-AP
    and recall@P90 must equal `evaluate` on those queries alone."""
    from isc_qk.formats import GroundTruth

    n_all = 30 * 12
    out = tmp_path / "rep"
    r = run_cli(*_args(disc, out, "--manifest", disc.manifest, "--max-results", str(n_all)))
    assert r.code == 0, r.err
    fam = json.loads((out / "inspect.json").read_text())["families"]
    q, ref, gt, full = _evaluate(disc.q_oracle, disc.r_oracle, disc.gt, max_results=n_all)
    manifest = {row["query_id"]: json.loads(row["ops"]) for row in __import__("csv").DictReader(open(disc.manifest))}
    from isc_qk.augment.recipe import OPS

    checked = 0
    for row in fam["family"] + fam["op"]:
        name = row["group"]
        if name == "(not in the manifest)":
            assert row["queries"] == 6 and row["positives"] == 0
            continue
        members = [qq for qq, ops in manifest.items()
                   if any(e["op"] == name or OPS[e["op"]].family == name for e in ops)]
        assert row["queries"] == len(members)
        sub = GroundTruth(members, [p for p in gt.pairs if p[0] in set(members)])
        from isc_qk.evaluation.evaluate import evaluate

        res = evaluate(q, ref, sub, max_results=len(members) * 12)
        got = row["runs"][0]
        assert got["micro_ap"] == pytest.approx(res.micro_ap, abs=1e-12)
        assert got["recall_at_p90"] == res.recall_at_p90
        kept = {(q.ids[i], ref.ids[j]): -float(dd) for i, j, dd in zip(full.pairs.query, full.pairs.reference,
                                                                       full.pairs.distance)}
        found = np.mean([kept.get(p, -np.inf) >= full.threshold_at_p90 for p in sub.pairs])
        assert got["found_at_global_p90"] == pytest.approx(found)
        checked += 1
    assert checked >= 8  # the 5 families' and several edits' rows


def test_probe_ranks_and_neighbours_equal_brute_force():
    from isc_qk.evaluation.search import exact_distances
    from isc_qk.inspection.probe import probe

    rng = np.random.default_rng(3)
    xb = rng.standard_normal((3000, 24)).astype(np.float32)
    xb[1000] = xb[7]  # an exact tie
    xq = rng.standard_normal((50, 24)).astype(np.float32)
    xq[3] = xb[7] + 1e-4
    targets = {3: [7, 1000, 5], 10: [0, 2999], 20: []}
    got = probe(xq, xb, targets, k=4)
    for qrow, refs in targets.items():
        d = exact_distances(xq, xb, np.full(len(xb), qrow), np.arange(len(xb)))
        order = np.lexsort((np.arange(len(xb)), d))
        rank = np.empty(len(xb), np.int64)
        rank[order] = np.arange(1, len(xb) + 1)
        for r in refs:
            assert got.ranks[(qrow, r)] == rank[r]
            assert got.distances[(qrow, r)] == d[r]
        assert [r for r, _ in got.nearest[qrow]] == order[:4].tolist()


def test_output_folder_is_never_someone_elses(disc, tmp_path, run_cli):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    r = run_cli(*_args(disc, theirs))
    assert r.code == 2 and "did not write" in r.err and r.err.count("\n") == 1
    assert sorted(p.name for p in theirs.iterdir()) == ["notes.txt"]
    # inside an input
    r = run_cli(*_args(disc, disc.queries / "rep"))
    assert r.code == 2 and "inside the input" in r.err and not (disc.queries / "rep").exists()
    # a file
    r = run_cli(*_args(disc, disc.gt))
    assert r.code == 2
    # its own earlier report is replaced; a file the user added is kept; thumbnails no longer shown go
    out = tmp_path / "rep"
    assert run_cli(*_args(disc, out, "--show", "8")).code == 0
    first = set(json.loads((out / "inspect.json").read_text())["thumbnails"])
    (out / "my-notes.txt").write_text("keep me")
    (out / "thumbs" / "q" / "mine.jpg").write_bytes(b"not listed by the tool")
    assert run_cli(*_args(disc, out, "--show", "1", "--neighbours", "0")).code == 0
    second = set(json.loads((out / "inspect.json").read_text())["thumbnails"])
    assert second < first
    for rel in first - second:
        assert not (out / rel).exists()
    for rel in second:
        assert (out / rel).is_file()
    assert (out / "my-notes.txt").read_text() == "keep me"
    assert (out / "thumbs" / "q" / "mine.jpg").is_file()


def test_a_missing_image_gets_the_placeholder(disc, tmp_path, run_cli):
    refs = tmp_path / "refs"
    shutil.copytree(disc.references, refs)
    out = tmp_path / "rep"
    args = _args(disc, out)
    args[args.index(disc.references)] = refs
    assert run_cli(*args).code == 0
    data = json.loads((out / "inspect.json").read_text())
    victim = data["false_positives"]["oracle"][0]["reference"]
    (refs / f"{victim}.jpg").unlink()
    r = run_cli(*args)
    assert r.code == 0, r.err
    data = json.loads((out / "inspect.json").read_text())
    assert data["images"][f"r/{victim}"] == "thumbs/missing.png" and (out / "thumbs" / "missing.png").is_file()
    assert any(victim in f for f in data["failures"]) and "could not be shown" in r.err


@pytest.mark.parametrize("change, message", [
    (lambda a, d: a + ["--compare-query", d.q_h5], "--compare-reference"),
    (lambda a, d: [x if x != d.references else d.root / "nope" for x in a], "not found"),
    (lambda a, d: a + ["--show", "0"], "--show"),
    (lambda a, d: a + ["--manifest", d.gt], "header"),
    (lambda a, d: a + ["--compare-query", d.q_raw, "--compare-reference", d.r_raw, "--name", "x", "--compare-name", "x"],
     "both results"),
])
def test_bad_input_is_one_line(disc, tmp_path, run_cli, change, message):
    out = tmp_path / "rep"
    r = run_cli(*change(_args(disc, out), disc))
    assert r.code == 2 and message in r.err and r.err.startswith("error:"), r.err
    assert "Traceback" not in r.err and not out.exists()
