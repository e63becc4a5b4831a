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
MAX_CELLS_PER_PHOTO = 28  # keeps the two huge photos (retina, Hubble) from dominating


def _source_photos() -> list[np.ndarray]:
    """Every real photo bundled with scikit-image / scikit-learn, as RGB uint8."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    colour = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]
    grey = ["camera", "brick", "clock", "coins", "grass", "gravel", "moon", "text", "page", "cell"]
    photos = [getattr(data, n)() for n in colour]
    for n in grey:
        g = getattr(data, n)()
        photos.append(np.repeat(g[..., None], 3, axis=2))
    photos += list(load_sample_images().images)
    return [np.ascontiguousarray(p[..., :3]).astype(np.uint8) for p in photos]


def _cells(photos: list[np.ndarray]) -> list[tuple[int, int, int]]:
    """(photo index, top, left) of every full CELL x CELL grid cell of every photo."""
    out = []
    for k, p in enumerate(photos):
        h, w = p.shape[:2]
        grid = [(k, top, left) for top in range(0, h - CELL + 1, CELL) for left in range(0, w - CELL + 1, CELL)]
        step = max(1, -(-len(grid) // MAX_CELLS_PER_PHOTO))
        out += grid[::step][:MAX_CELLS_PER_PHOTO]
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


def build_demo_dataset(out_dir: str | os.PathLike, cfg: DemoDataConfig = DemoDataConfig()) -> Path:
    """Write the demo benchmark to `out_dir` (skipped if a complete one is already there)."""
    from ..augment.runner import augment_folder

    out = Path(out_dir)
    if (out / "ground_truth.csv").is_file() and (out / "dataset.json").is_file():
        return out
    rng = np.random.default_rng(cfg.seed)
    photos = _source_photos()
    cells = _cells(photos)
    order = rng.permutation(len(cells))
    n_unique = cfg.n_references + cfg.n_distractor_queries
    if len(cells) < n_unique + 20:
        raise RuntimeError(f"only {len(cells)} cells for {n_unique} unique images")
    ref_cells = [cells[i] for i in order[: cfg.n_references]]
    dis_cells = [cells[i] for i in order[cfg.n_references : n_unique]]
    train_cells = [cells[i] for i in order[n_unique:]]

    for sub in ("train", "references", "queries"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i in range(cfg.n_train):  # train cells are re-used with other sub-crops when few
        cell = train_cells[i % len(train_cells)]
        _save(_crop(photos[cell[0]], cell, rng), out / "train" / f"T{i:06d}.jpg")
    for i, cell in enumerate(ref_cells):
        _save(_crop(photos[cell[0]], cell, rng), out / "references" / f"R{i:06d}.jpg")

    # Query sources: copies of the first references (as-is) and distractor photos, interleaved
    # in a seeded order; then edited with the augmentation recipe under its own seed.
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        src, edited = Path(tmp) / "src", Path(tmp) / "edited"
        src.mkdir()
        pos_refs = rng.choice(cfg.n_references, cfg.n_positive_queries, replace=False)
        kinds = [("R", int(r)) for r in pos_refs] + [("D", i) for i in range(cfg.n_distractor_queries)]
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
    return out


def demo_settings(quick: bool = False) -> tuple[DemoDataConfig, PipelineConfig]:
    """The demo's data and pipeline settings; `quick` is the variant the test suite runs.

    The full demo is sized for <= 10 minutes on 2 CPU cores with EfficientNet-Lite0 (ImageNet
    weights converted offline); the quick one uses the tiny random backbone and a 32-d PCA so
    that the whole chain runs in well under a minute.
    """
    from dataclasses import replace

    base = PipelineConfig()
    if quick:
        data = DemoDataConfig(n_train=48, n_references=24, n_positive_queries=12, n_distractor_queries=12)
        pipe = replace(base, phases=["Q1", "K1"], epochs_per_phase=1.0, workers=1,
                       model=replace(base.model, backbone="tiny", backbone_weights=None, head_hidden=64, dim=32),
                       train=replace(base.train, batch_size=8, loss=replace(base.train.loss, m=4)),
                       augment=replace(base.augment, copies=2), pca=replace(base.pca, n_train=48, dim=32))
        return data, pipe
    pipe = replace(base, phases=["Q1", "K1", "Q2"], epochs_per_phase=4.0, augment=replace(base.augment, copies=3))
    return DemoDataConfig(), pipe


def run_demo(work: str | os.PathLike, data: str | os.PathLike | None = None, quick: bool = False,
             progress: bool = True):
    """Build the demo data (unless `data` is given) and run the shortened pipeline on it."""
    from .schedule import run_pipeline

    data_cfg, pipe_cfg = demo_settings(quick)
    work = Path(work)
    data_dir = Path(data) if data is not None else build_demo_dataset(work / "data", data_cfg)
    return run_pipeline(data_dir, work / "pipeline", pipe_cfg, progress=progress)
