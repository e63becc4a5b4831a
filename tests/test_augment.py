"""`isc-qk augment`: every recipe op works, determinism across workers and shards, resume, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isc_qk.augment import apply, ops, recipe, runner
from isc_qk.configs import AugmentConfig
from isc_qk.formats.images import list_images
from isc_qk.formats import read_manifest


@pytest.fixture(autouse=True, scope="module")
def _augly_shims():
    """Ops are called directly here, not through the runner that installs the shims."""
    from isc_qk.augment import shims

    shims.apply()


def _outputs(folder: Path) -> dict[str, bytes]:
    """Every JPEG plus the manifest, by name (what must be identical between runs)."""
    files = {p.name: p.read_bytes() for p in folder.glob("*.jpg")}
    files["manifest.csv"] = (folder / "manifest.csv").read_bytes()
    return files


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((192, 160))


@pytest.fixture
def ctx(image_folder) -> ops.Context:
    folder, _ = image_folder(3, size=96)
    return ops.Context(list_images(folder), max_side=512)


# --------------------------------------------------------------------------- the recipe
@pytest.mark.parametrize("op", recipe.RECIPE, ids=lambda op: op.name)
def test_every_recipe_op_runs_on_a_photo_and_changes_it(op, photo, ctx):
    ctx.source_id = "not-in-folder"
    rng = np.random.default_rng(1)
    params = {"op": op.name, **{k: spec.sample(rng, ctx) for k, spec in op.params.items()}}
    out = apply.apply_edits(photo, [params], ctx)[0]
    assert out.mode == "RGB" and min(out.size) >= recipe.MIN_SIDE
    if out.size == photo.size:
        diff = np.abs(np.asarray(out, dtype=int) - np.asarray(photo, dtype=int)).mean()
        assert diff > 1.0, f"{op.name} left the photo (almost) unchanged: mean diff {diff:.2f}"
    json.dumps(params)  # the recorded parameters go into the manifest as JSON


def test_recipe_table_documents_every_op():
    md = recipe.render_recipe_markdown()
    assert {op.family for op in recipe.RECIPE} == {"colour", "overlay", "pixel", "spatial", "composition"}
    for op in recipe.RECIPE:
        assert f"`{op.name}`" in md
        for name in op.params:
            assert f"`{name}`" in md
    assert abs(sum(recipe.N_EDITS_P.values()) - 1.0) < 1e-9


def test_sampling_is_deterministic_and_stays_in_the_ranges(ctx):
    seen_counts, distinct = set(), set()
    for i in range(60):
        sid = f"T{i:06d}"
        edits = recipe.sample_edits(3, sid, 0, ctx)
        assert edits == recipe.sample_edits(3, sid, 0, ctx)
        distinct.add(json.dumps(edits))
        seen_counts.add(len(edits))
        assert len({e["op"] for e in edits}) == len(edits)  # no op twice in one query
        families = [recipe.OPS[e["op"]].family for e in edits]
        assert families == sorted(families, key=lambda f: f == "composition")
        for e in edits:
            for name, spec in recipe.OPS[e["op"]].params.items():
                v = e[name]
                if isinstance(spec, (recipe.Uniform, recipe.LogUniform)):
                    assert spec.lo - 1e-3 <= v <= spec.hi + 1e-3
                elif isinstance(spec, recipe.IntRange):
                    assert spec.lo <= v <= spec.hi
                elif isinstance(spec, recipe.Choice):
                    assert v in spec.values()
                elif isinstance(spec, recipe.OtherImage):
                    assert v in ctx.ids and v != sid
    assert seen_counts == {1, 2, 3, 4}
    assert len(distinct) > 50
    assert recipe.sample_edits(3, "T000001", 0, ctx) != recipe.sample_edits(3, "T000001", 1, ctx)
    assert recipe.sample_edits(3, "T000001", 0, ctx) != recipe.sample_edits(4, "T000001", 0, ctx)


# --------------------------------------------------------------------------- the runner
def test_same_output_with_one_or_two_workers_and_manifest_replays(image_folder, tmp_path):
    folder, ids = image_folder(6, size=128)
    r1 = runner.augment_folder(folder, tmp_path / "w1", AugmentConfig(seed=5, copies=2), workers=1, progress=False)
    r2 = runner.augment_folder(folder, tmp_path / "w2", AugmentConfig(seed=5, copies=2), workers=2, progress=False)
    assert (r1.done, r2.done, r1.failed, r2.failed) == (12, 12, [], [])
    out1, out2 = _outputs(tmp_path / "w1"), _outputs(tmp_path / "w2")
    assert len(out1) == 13 and out1 == out2

    rows = read_manifest(tmp_path / "w1" / "manifest.csv")
    assert [r["query_id"] for r in rows] == sorted(f"{i}_a{c}" for i in ids for c in range(2))
    assert all(r["query_id"].startswith(r["source_id"] + "_a") for r in rows)
    # the manifest's parameters reproduce the written image exactly
    ctx = ops.Context(list_images(folder), max_side=512)
    row = rows[3]
    ctx.source_id = row["source_id"]
    src = ops.fit_long_side(Image.open(folder / f"{row['source_id']}.jpg").convert("RGB"), 512)
    replay = ops.fit_long_side(apply.apply_edits(src, json.loads(row["ops"]), ctx.at(row["source_id"]))[0], 512)
    replay.save(tmp_path / "replay.jpg", format="JPEG", quality=90)
    assert (tmp_path / "replay.jpg").read_bytes() == out1[f"{row['query_id']}.jpg"]


def test_resume_redoes_only_what_was_lost(image_folder, tmp_path):
    folder, ids = image_folder(5, size=112)
    out = tmp_path / "out"
    runner.augment_folder(folder, out, AugmentConfig(seed=1, copies=2), progress=False)
    reference = _outputs(out)
    # simulate a crash: two JPEGs lost, one row lost with its JPEG kept, last line half-written
    (out / "T000001_a0.jpg").unlink()
    (out / "T000003_a1.jpg").unlink()
    manifest = out / "manifest.csv"
    lines = manifest.read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if not ln.startswith("T000002_a0,")]
    kept[-1] = kept[-1][: len(kept[-1]) // 2]  # truncated mid-row, no newline (T000004_a1)
    manifest.write_text("".join(kept))
    (out / ".T000000_a0.jpg.stale.tmp").write_bytes(b"half")  # temp file of a killed worker
    untouched = out / "T000000_a1.jpg"
    before = untouched.stat().st_mtime_ns

    report = runner.augment_folder(folder, out, AugmentConfig(seed=1, copies=2), workers=2, progress=False)
    assert report.done == 4 and report.skipped_existing == 6 and report.failed == []
    assert _outputs(out) == reference
    assert untouched.stat().st_mtime_ns == before
    assert not list(out.glob(".*.tmp"))

    again = runner.augment_folder(folder, out, AugmentConfig(seed=1, copies=2), progress=False)
    assert (again.done, again.skipped_existing) == (0, 10)


def test_more_copies_extend_a_run_and_other_settings_are_refused(image_folder, tmp_path, run_cli):
    folder, _ = image_folder(3, size=96)
    out = tmp_path / "out"
    runner.augment_folder(folder, out, AugmentConfig(seed=2, copies=1), progress=False)
    first = (out / "T000000_a0.jpg").read_bytes()
    r = runner.augment_folder(folder, out, AugmentConfig(seed=2, copies=2), progress=False)
    assert (r.done, r.skipped_existing) == (3, 3)
    assert (out / "T000000_a0.jpg").read_bytes() == first
    res = run_cli("augment", folder, "--out", out, "--seed", "3", "--copies", "2", "-q")
    assert res.code == 2 and "seed" in res.err and "Traceback" not in res.err


def test_bad_files_are_reported_and_skipped(image_folder, tmp_path, run_cli):
    folder, ids = image_folder(3, size=96)
    (folder / "T900000.jpg").write_bytes(b"this is not a jpeg")
    (folder / "T900001.png").write_bytes(b"")
    good = Image.open(folder / "T000000.jpg")
    good.save(folder / "T900002.jpg")
    data = (folder / "T900002.jpg").read_bytes()
    (folder / "T900002.jpg").write_bytes(data[: len(data) // 3])  # truncated JPEG
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"

    res = run_cli("augment", folder, "--out", out, "-q")
    assert res.code == 0, res.err
    for bad in ("T900000.jpg", "T900001.png", "T900002.jpg"):
        assert bad in res.err
    assert "notes.txt" in res.err
    assert sorted(p.stem for p in out.glob("*.jpg")) == [f"{i}_a0" for i in ids]
    report = json.loads((out / "augment_report.json").read_text())
    assert len(report["failed"]) == 3 and report["done"] == 3 and report["ignored"] == ["notes.txt"]

    strict = run_cli("augment", folder, "--out", out, "--strict", "-q")
    assert strict.code == 2 and "--strict" in strict.err and "Traceback" not in strict.err

    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "X1.jpg").write_bytes(b"junk")
    (only_bad / "X2.png").write_bytes(b"")
    res = run_cli("augment", only_bad, "--out", tmp_path / "out2", "-q")
    assert res.code == 2 and "none of the 2 images" in res.err

    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli("augment", empty, "--out", tmp_path / "out3", "-q")
    assert res.code == 2 and "no .jpg" in res.err


def test_shards_merge_into_the_unsharded_result(image_folder, tmp_path, run_cli):
    folder, _ = image_folder(7, size=96)
    whole = tmp_path / "whole"
    sharded = tmp_path / "sharded"
    runner.augment_folder(folder, whole, AugmentConfig(seed=9, copies=2), progress=False)
    res = run_cli("augment", folder, "--out", sharded, "--seed", "9", "--copies", "2", "--shard", "0/3", "-q")
    assert res.code == 0, res.err
    res = run_cli("augment-merge", sharded)
    assert res.code == 2 and "shard(s) 1, 2 of 3 not finished yet" in res.err
    for i in (1, 2):
        res = run_cli("augment", folder, "--out", sharded, "--seed", "9", "--copies", "2", "--shard", f"{i}/3", "-q")
        assert res.code == 0, res.err
    res = run_cli("augment-merge", sharded)
    assert res.code == 0, res.err
    assert "14 rows" in res.out
    assert _outputs(sharded) == _outputs(whole)


def test_recipe_command_prints_the_table(run_cli):
    res = run_cli("augment-recipe")
    assert res.code == 0
    assert res.out == recipe.render_recipe_markdown()


def test_text_falls_back_to_pillows_basic_layout_engine():
    """A few font/character pairs make Pillow's raqm layout fail; the text op then uses BASIC."""
    from PIL import ImageFont

    from isc_qk.augment.ops import _basic_text_layout, text_fonts

    original = ImageFont.truetype
    font_path = text_fonts()[0]
    import os

    from augly import utils as augly_utils

    with _basic_text_layout():
        font = ImageFont.truetype(os.path.join(augly_utils.FONTS_DIR, font_path), 20)
        assert font.layout_engine == ImageFont.Layout.BASIC
    assert ImageFont.truetype is original
