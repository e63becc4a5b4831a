"""`isc-qk demo --quick` and `isc-qk pipeline`: the whole schedule on built-in data, resumable."""

from __future__ import annotations

import json

import numpy as np
import pytest

from isc_qk.configs import DemoDataConfig

from isc_qk.pipeline.demo import build_demo_dataset
from isc_qk.formats import read_ground_truth


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One quick demo (tiny backbone) shared by the tests of this module."""
    from isc_qk.pipeline.demo import run_demo

    work = tmp_path_factory.mktemp("demo")
    results = run_demo(work, quick=True, progress=False)
    return work, results


def test_demo_dataset_has_the_disc_layout(tmp_path):
    cfg = DemoDataConfig(n_train=20, n_references=10, n_positive_queries=4, n_distractor_queries=6)
    root = build_demo_dataset(tmp_path / "d", cfg)
    assert len(list((root / "train").glob("T*.jpg"))) == 20
    assert len(list((root / "references").glob("R*.jpg"))) == 10
    assert len(list((root / "queries").glob("Q*.jpg"))) == 10
    gt = read_ground_truth(root / "ground_truth.csv")
    assert len(gt.query_ids) == 10 and len(gt.pairs) == 4
    assert {r for _, r in gt.pairs} <= {f"R{i:06d}" for i in range(10)}


def test_demo_splits_are_whole_photos_and_references_are_varied():
    """No photo gives cells to two splits; texture-like photos never become references."""
    import numpy as np

    from isc_qk.pipeline.demo import PER_PHOTO, TRAIN_ONLY, _cells, _source_photos, _split_by_photo

    named = _source_photos()
    names = [n for n, _ in named]
    cfg = DemoDataConfig()
    refs, dis, train = _split_by_photo(_cells([p for _, p in named], cfg.max_cells_per_photo), names, cfg,
                                       np.random.default_rng(cfg.seed))
    photos = [{c[0] for c in split} for split in (refs, dis, train)]
    assert not (photos[0] & photos[1]) and not (photos[0] & photos[2]) and not (photos[1] & photos[2])
    assert not {names[k] for k in photos[0] | photos[1]} & set(TRAIN_ONLY)
    assert len(refs) == cfg.n_references and len(photos[0]) >= cfg.n_references // PER_PHOTO
    assert len(set(refs)) == len(refs) and len(set(train)) == len(train)
    assert cfg.n_positive_queries >= 200


def test_demo_writes_the_table_with_every_method(demo_run):
    work, results = demo_run
    out = work / "pipeline"
    rows = json.loads((out / "results.json").read_text())["rows"]
    keys = {(r["method"], r["phase"], r["normalization"]) for r in rows}
    for key in [("GIST-PCA256", "-", "none"), ("ImageNet features", "-", "none"), ("QK Iteration", "Q1", "none"),
                ("QK Iteration", "K1", "none"), ("in-batch negatives", "-", "none"), ("QK Iteration", "K1", "nes"),
                ("GIST-PCA256", "-", "nes")]:
        assert key in keys, key
    for r in rows:
        assert 0.0 <= r["micro_ap"] <= 1.0
    inbatch = next(r for r in rows if r["method"] == "in-batch negatives")
    qk_final = next(r for r in rows if r["method"] == "QK Iteration" and r["phase"] == "K1" and r["normalization"] == "none")
    assert inbatch["image_passes"] == qk_final["image_passes"] == 2  # same number of image passes
    assert "| QK Iteration | K1 | none |" in (out / "results.md").read_text()
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_rerun_resumes_without_redoing_finished_stages(demo_run):
    from isc_qk.pipeline.demo import run_demo

    work, _ = demo_run
    weights = sorted((work / "pipeline" / "models").rglob("*.weights.h5"))
    before = {p: p.stat().st_mtime_ns for p in weights}
    results = run_demo(work, quick=True, progress=False)
    assert {p: p.stat().st_mtime_ns for p in weights} == before
    assert len(results.rows) == len(json.loads((work / "pipeline" / "results.json").read_text())["rows"])


def test_changed_settings_are_refused(demo_run, run_cli):
    work, _ = demo_run
    res = run_cli("pipeline", "--data", work / "data", "--work", work / "pipeline", "--backbone", "tiny",
                  "--epochs-per-phase", "5", "--phases", "Q1,K1")
    assert res.code == 2
    assert "other settings" in res.err and "Traceback" not in res.err


def test_bad_data_folder_is_a_one_line_error(tmp_path, run_cli):
    res = run_cli("pipeline", "--data", tmp_path, "--work", tmp_path / "w")
    assert res.code == 2 and "not a DISC-layout folder" in res.err and "Traceback" not in res.err
    res = run_cli("pipeline", "--data", tmp_path, "--work", tmp_path / "w", "--phases", "Q1,Q2")
    assert res.code == 2 and "Traceback" not in res.err


def test_the_recipe_stage_by_stage_gives_the_pipelines_descriptors(demo_run, tmp_path, run_cli):
    """`isc-qk recipe quick` prints the stages `pipeline --recipe quick` runs, as commands; run one
    by one they give the same descriptors, bit for bit, after every phase."""
    import shlex

    from isc_qk.formats import read_descriptors
    from isc_qk.pipeline.commands import stage_commands

    work, _ = demo_run
    data, stages = work / "data", tmp_path / "stages"
    commands = [c for c in stage_commands("quick", str(data), str(stages)) if not c.startswith("#")]
    printed = run_cli("recipe", "quick", "--data", data, "--work", stages)
    assert printed.code == 0 and all(c in printed.out.replace("\n", " ") or c in printed.out for c in commands[:3])
    for command in commands:
        args = shlex.split(command)
        assert args[0] == "isc-qk"
        res = run_cli(*args[1:], "--no-progress") if args[1] in ("precompute", "train-q", "train-k", "describe") \
            else run_cli(*args[1:])
        assert res.code == 0, (command, res.err)
    for phase in ("Q1", "K1"):
        for name in ("queries", "references"):
            a = read_descriptors(work / "pipeline" / "desc" / phase / f"{name}.h5")
            b = read_descriptors(stages / "desc" / phase / f"{name}.h5")
            assert a.ids == b.ids
            np.testing.assert_array_equal(a.vectors, b.vectors)


def test_every_recipe_is_a_valid_pipeline_and_the_demo_reads_them():
    from isc_qk.configs import apply_settings
    from isc_qk.pipeline.demo import demo_settings
    from isc_qk.recipes import RECIPES, settings

    for name, r in RECIPES.items():
        cfg = r.config()
        cfg.validate()
        # every setting of a recipe is reachable with --set, by the names `isc-qk recipe` prints
        again = apply_settings(RECIPES["paper"].config(), [f"{k}={_text(v)}" for k, v in settings(name).items()])
        assert again == cfg, name
    _, pipes = demo_settings(quick=True)
    assert pipes == {"pipeline": RECIPES["quick"].config()}


def _text(v) -> str:
    return ",".join(v) if isinstance(v, list) else "none" if v is None else str(v)
