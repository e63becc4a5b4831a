"""A tiny DISC-layout benchmark with KNOWN edits, made on the fly (nothing from /work/shared).

12 real-photo references, 2 AugLy-edited copies of each as queries (the real `augment_folder`,
so its manifest.csv names every query's edits), 6 unedited distractor queries that are in
neither the references nor the manifest, and GIST-PCA descriptors (8-d, PCA fitted on 24
training images) of both sets; a second result (the raw 960-d GIST) to compare with; and a
synthetic "noisy oracle" result (random unit references, each positive query its reference plus
noise of growing size, distractors random) whose precision reaches 0.9, so that the operating
point and everything measured at it exist on data this small.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from conftest import make_image_folder

DIM = 8


@dataclass
class Disc:
    root: Path
    train: Path
    references: Path
    queries: Path
    manifest: Path
    gt: Path
    pca: Path
    q_h5: Path  # GIST-PCA 8-d
    r_h5: Path
    q_raw: Path  # GIST 960-d (a second result)
    r_raw: Path
    q_oracle: Path  # the noisy oracle (P90 reached)
    r_oracle: Path
    n_positives: int


def make_disc(root: Path) -> Disc:
    from isc_qk.augment.runner import augment_folder
    from isc_qk.configs import AugmentConfig, PCAFitConfig
    from isc_qk.formats import read_manifest, write_ground_truth
    from isc_qk.starts.stage import describe_start_set, fit_start_pca

    train, refs, queries = root / "train", root / "references", root / "queries"
    make_image_folder(train, 24, "T", seed=11, size=96)
    make_image_folder(refs, 12, "R", seed=12, size=96)
    augment_folder(refs, queries, AugmentConfig(seed=13, copies=2), workers=1, progress=False)
    distractors = root / "distractor_src"
    make_image_folder(distractors, 6, "D", seed=14, size=96)
    for p in sorted(distractors.glob("*.jpg")):
        shutil.copy(p, queries / p.name)
    rows = read_manifest(queries / "manifest.csv")
    gt = [(r["query_id"], r["source_id"]) for r in rows] + [(f"D{i:06d}", None) for i in range(6)]
    write_ground_truth(root / "ground_truth.csv", gt)
    pca = fit_start_pca("gist", train, root / "gist", PCAFitConfig(dim=DIM))
    for name, images in (("queries", queries), ("references", refs)):
        describe_start_set(pca, images, root / "gist" / f"{name}.h5", progress=False)
    g = root / "gist"
    q_oracle, r_oracle = write_oracle(root / "oracle", [(q, r) for q, r in gt], [f"R{i:06d}" for i in range(12)])
    return Disc(root, train, refs, queries, queries / "manifest.csv", root / "ground_truth.csv", pca,
                g / "queries.h5", g / "references.h5", g / "queries.gist960.h5", g / "references.gist960.h5",
                q_oracle, r_oracle, len(rows))


def write_oracle(folder: Path, gt: list[tuple[str, str | None]], ref_ids: list[str], dim: int = 16,
                 seed: int = 0) -> tuple[Path, Path]:
    """Random unit references; a positive query = its reference + Gaussian noise (sigma from 0.02
    to 0.6 across the positives), a distractor = a random unit vector."""
    import numpy as np

    from isc_qk.formats import Descriptors, write_descriptors

    rng = np.random.default_rng(seed)
    refs = rng.standard_normal((len(ref_ids), dim)).astype(np.float32)
    refs /= np.linalg.norm(refs, axis=1, keepdims=True)
    at = {r: i for i, r in enumerate(ref_ids)}
    positives = [q for q, r in gt if r]
    sigma = dict(zip(positives, rng.permutation(np.linspace(0.02, 0.6, len(positives)))))
    qs = []
    for q, r in gt:
        v = refs[at[r]] + sigma[q] * rng.standard_normal(dim) if r else rng.standard_normal(dim)
        qs.append(v / np.linalg.norm(v))
    folder.mkdir(parents=True, exist_ok=True)
    write_descriptors(folder / "queries.h5", Descriptors([q for q, _ in gt], np.array(qs, np.float32)))
    write_descriptors(folder / "references.h5", Descriptors(list(ref_ids), refs))
    return folder / "queries.h5", folder / "references.h5"
