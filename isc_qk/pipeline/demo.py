"""`isc-qk demo`: a tiny DISC21-layout benchmark built offline, and a shortened pipeline on it.

Why: `isc-qk demo` must run on a fresh machine with no data and no internet. scikit-image and
scikit-learn bundle a couple of dozen real photos; cutting each one into a grid of disjoint
cells gives a few hundred distinct images, and giving every split (train / references /
distractors) its own cells keeps the splits free of shared content, as in DISC21. Queries are
edited with the same AugLy recipe as the training queries, but a different seed.

Layout written (same as DISC21 and ../shared/minidisc):
``train/T000000.jpg...``, ``references/R000000.jpg...``, ``queries/Q00000.jpg...``,
``ground_truth.csv`` (``query_id,reference_id``, empty reference for distractors).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..configs import AugmentConfig, DemoDataConfig, PipelineConfig
from ..formats import atomic_path, write_ground_truth, write_json

CELL = 112  # side of a grid cell in source-photo pixels: small enough for many cells per photo
OUT_SIZE = 160  # side of the written images


#: Photos whose cells all look alike (textures, star fields, fundus, coins, text): they make
#: good training negatives but impossible references (one gravel cell against nine others), so
#: they only ever go to train/.
TRAIN_ONLY = ("brick", "grass", "gravel", "hubble_deep_field", "retina", "moon", "coins", "cell", "text", "page")


def _source_photos() -> list[tuple[str, np.ndarray]]:
    """(name, RGB uint8) of every real photo bundled with scikit-image / scikit-learn / matplotlib."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    colour = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]
    grey = ["camera", "brick", "clock", "coins", "grass", "gravel", "moon", "text", "page", "cell"]
    photos = [(n, getattr(data, n)()) for n in colour]
    for n in grey:
        g = getattr(data, n)()
        photos.append((n, np.repeat(g[..., None], 3, axis=2)))
    photos += list(zip(("china", "flower"), load_sample_images().images))
    photos.append(("motorcycle", data.stereo_motorcycle()[0]))  # the left view only: the right one is the same scene
    try:  # matplotlib's sample photo (Grace Hopper), shipped in its wheel
        import matplotlib.cbook as cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as fh:
            photos.append(("grace_hopper", np.asarray(Image.open(fh).convert("RGB"))))
    except Exception:  # an older or trimmed matplotlib: the demo works without it
        pass
    return [(n, np.ascontiguousarray(p[..., :3]).astype(np.uint8)) for n, p in photos]


def _cells(photos: list[np.ndarray], per_photo: int) -> list[tuple[int, int, int]]:
    """(photo index, top, left) of up to `per_photo` full CELL x CELL grid cells of every photo."""
    out = []
    for k, p in enumerate(photos):
        h, w = p.shape[:2]
        grid = [(k, top, left) for top in range(0, h - CELL + 1, CELL) for left in range(0, w - CELL + 1, CELL)]
        step = max(1, -(-len(grid) // per_photo))
        out += grid[::step][:per_photo]
    return out


def _crop(photo: np.ndarray, cell: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A random sub-crop (70-100% of the cell), maybe mirrored, resized to OUT_SIZE."""
    from PIL import Image

    _, top, left = cell
    s = int(CELL * rng.uniform(0.7, 1.0))
    y = top + int(rng.integers(0, CELL - s + 1))
    x = left + int(rng.integers(0, CELL - s + 1))
    im = Image.fromarray(photo[y : y + s, x : x + s]).resize((OUT_SIZE, OUT_SIZE), Image.BILINEAR)
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(im)


def _save(arr: np.ndarray, path: Path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="JPEG", quality=90)


def _split_by_photo(cells: list[tuple[int, int, int]], names: list[str], cfg: DemoDataConfig,
                    rng: np.random.Generator):
    """Reference, distractor and training cells, each split made of WHOLE photos, so a training
    image never shows a scene of the references or the distractors (as in DISC21).

    References and distractors come from the photos with varied content, in a seeded order
    (distractors first), at most `PER_PHOTO` cells of each, spread over the photo; the
    `TRAIN_ONLY` photos and the photos left over are the training set, all their cells.
    """
    by_photo: dict[int, list] = {}
    for c in cells:
        by_photo.setdefault(c[0], []).append(c)
    varied = [k for k in sorted(by_photo) if names[k] not in TRAIN_ONLY]
    photos = [int(k) for k in rng.permutation(varied)]
    n_dis = max(1, -(-cfg.n_distractor_queries // QUERIES_PER_DISTRACTOR))
    out: dict[str, list] = {"dis": [], "refs": []}
    for name, want in (("dis", n_dis), ("refs", cfg.n_references)):
        while len(out[name]) < want:
            if not photos:
                raise RuntimeError(f"{len(varied)} varied photos cannot make this demo data set")
            out[name] += _spread(by_photo[photos.pop(0)])[:PER_PHOTO][: want - len(out[name])]
    train = [c for k in sorted(by_photo) if k in photos or names[k] in TRAIN_ONLY for c in by_photo[k]]
    return out["refs"], out["dis"], train


PER_PHOTO = 8  # reference / distractor cells per photo: few, so the references spread over many photos
QUERIES_PER_DISTRACTOR = 4


def _spread(cells: list) -> list:
    """A photo's cells reordered so that the first ones are far apart (every other, then the rest)."""
    return cells[::3] + cells[1::3] + cells[2::3]


def build_demo_dataset(out_dir: str | os.PathLike, cfg: DemoDataConfig = DemoDataConfig()) -> Path:
    """Write the demo benchmark to `out_dir` (skipped if a complete one is already there).

    References and distractors come from different photos than the training images; every
    reference is queried ``n_positive_queries / n_references`` times with different edits (the
    bundled photos are few, so positives come from several edited copies per reference).
    """
    from ..stages.artifact import Artifact

    out = Path(out_dir)
    if (out / "ground_truth.csv").is_file() and (out / "dataset.json").is_file():
        return out
    rng = np.random.default_rng(cfg.seed)
    named = _source_photos()
    names, photos = [n for n, _ in named], [p for _, p in named]
    ref_cells, dis_cells, train_cells = _split_by_photo(_cells(photos, cfg.max_cells_per_photo), names, cfg, rng)
    n_train = cfg.n_train or len(train_cells)
    n_queries = cfg.n_positive_queries + cfg.n_distractor_queries
    writes = ([out / "train" / f"T{i:06d}.jpg" for i in range(n_train)]
              + [out / "references" / f"R{i:06d}.jpg" for i in range(len(ref_cells))]
              + [out / "queries" / f"Q{i:05d}.jpg" for i in range(n_queries)]
              + [out / "ground_truth.csv", out / "dataset.json"])
    art = Artifact(out, "demo dataset", layout="folder", stage="demo_data")
    with art.open(cfg, writes=writes) as state:
        if not state.done:
            _write_demo_dataset(out, cfg, rng, photos, ref_cells, dis_cells, train_cells, n_train)
            art.finish({"train": n_train, "references": len(ref_cells), "queries": n_queries})
    return out


def _write_demo_dataset(out: Path, cfg: DemoDataConfig, rng: np.random.Generator, photos, ref_cells, dis_cells,
                        train_cells, n_train: int) -> None:
    from ..augment.runner import augment_folder

    for sub in ("train", "references", "queries"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):  # train cells are re-used with other sub-crops only when asked for more
        cell = train_cells[i % len(train_cells)]
        _save(_crop(photos[cell[0]], cell, rng), out / "train" / f"T{i:06d}.jpg")
    for i, cell in enumerate(ref_cells):
        _save(_crop(photos[cell[0]], cell, rng), out / "references" / f"R{i:06d}.jpg")

    # Query sources: copies of the references (each several times) and distractor crops,
    # interleaved in a seeded order, then edited with the augmentation recipe under its own seed.
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        src, edited = Path(tmp) / "src", Path(tmp) / "edited"
        src.mkdir()
        kinds = [("R", i % len(ref_cells)) for i in range(cfg.n_positive_queries)]
        kinds += [("D", i % len(dis_cells)) for i in range(cfg.n_distractor_queries)]
        rng.shuffle(kinds)
        gt: list[tuple[str, str | None]] = []
        for qi, (kind, j) in enumerate(kinds):
            qid = f"Q{qi:05d}"
            if kind == "R":
                shutil.copy(out / "references" / f"R{j:06d}.jpg", src / f"{qid}.jpg")
                gt.append((qid, f"R{j:06d}"))
            else:
                cell = dis_cells[j]
                _save(_crop(photos[cell[0]], cell, rng), src / f"{qid}.jpg")
                gt.append((qid, None))
        augment_folder(src, edited, AugmentConfig(seed=cfg.seed + 1000, copies=1), workers=1, progress=False)
        for qid, _ in gt:
            os.replace(edited / f"{qid}_a0.jpg", out / "queries" / f"{qid}.jpg")
    write_ground_truth(out / "ground_truth.csv", gt)
    write_json(out / "dataset.json", {"kind": "isc-qk demo dataset", "config": cfg.__dict__})


def demo_settings(quick: bool = False) -> tuple[DemoDataConfig, dict[str, PipelineConfig]]:
    """The demo's data and its pipelines (folder name -> settings); `quick` is what the tests run.

    The full demo fits in a few minutes on 2 CPU cores because its backbones never train: the
    ``demo`` recipe (EfficientNet-Lite0 frozen, heads trained on a whitened GIST residual against
    every key) and, where the SSCD wheel is installed, ``demo-sscd`` (`isc_qk.recipes`). The
    quick one is the ``quick`` recipe (the tiny random backbone, well under a minute).
    """
    from ..encoders import available
    from ..recipes import recipe

    if quick:
        data = DemoDataConfig(n_train=48, n_references=24, n_positive_queries=24, n_distractor_queries=12,
                              max_cells_per_photo=4)
        return data, {"pipeline": recipe("quick")}
    pipes = {"pipeline": recipe("demo")}
    if available("sscd"):
        pipes["pipeline_sscd"] = recipe("demo-sscd")
    return DemoDataConfig(), pipes


def run_demo(work: str | os.PathLike, data: str | os.PathLike | None = None, quick: bool = False,
             progress: bool = True):
    """Build the demo data (unless `data` is given), run its pipelines, and join their tables
    into WORK/results.{json,md,png} (each pipeline's own table stays in its folder)."""
    from ..formats.results import Results
    from .report import write_all
    from .schedule import run_pipeline

    from ..stages.artifact import Artifact, holds_stage_outputs

    data_cfg, pipes = demo_settings(quick)
    work = Path(work)
    art = Artifact(work, "demo", layout="folder", stage="demo")
    record = {"quick": quick, "data": None if data is None else str(Path(data).resolve())}
    # resumable once a part has its folder: each keeps its finished work (a re-run resumes there)
    with art.open(record, skip_done=False, writes=[work / f"results.{ext}" for ext in ("json", "md", "png")],
                  resumable=lambda: holds_stage_outputs(work)):
        data_dir = Path(data) if data is not None else build_demo_dataset(work / "data", data_cfg)
        joined = Results(work / "results.json")
        for name, cfg in pipes.items():
            for row in run_pipeline(data_dir, work / name, cfg, progress=progress).rows:
                joined.add(row)
        write_all(work, joined, f"The demo on `{data_dir}`: {', '.join(pipes)} (see each folder's results.md).")
        art.finish({"rows": len(joined.rows)})
    return joined
