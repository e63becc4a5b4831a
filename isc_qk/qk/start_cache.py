"""The residual-start vectors (e.g. GIST-PCA256) of a training stage's images, computed once.

A training step needs the start vector of every image in its batch; computing GIST (or SSCD)
for every batch of every epoch would cost as much as the backbone, or more. So a stage computes
them once into a float32 table under its output folder (``cache/<start>256-<what>``), through
the per-image runner (resumable, one error policy), and reuses it on a re-run. A cache made
from other images or another start is replaced, never mixed in.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..formats.feature_table import feature_table_paths, open_feature_table
from ..formats.images import ImageFile
from ..stages.artifact import Artifact, Input
from ..stages.rows import write_table
from ..stages.runner import fill_from_images
from ..starts.start import Start
from ..ui import ticker
from .forward import SideJob
from .inputs import InputPlan

KIND = "start-vector cache"
CHUNK = 256


def start_vectors(files: Sequence[ImageFile], start: Start, prefix: Path, workers: int,
                  progress: bool, what: str) -> tuple[np.ndarray, list[str], list[str]]:
    """Start vectors of `files` as float32 (rows, ids of the readable files, 'path: reason' of the others)."""
    art = Artifact(prefix, KIND, layout="prefix", stage="cache")
    encoder_fp, pca_fp = start.fingerprint_parts()
    record = {"dim": start.dim, "start": encoder_fp, "pca": pca_fp}
    inputs = [Input.of_images("images", Path(files[0].path).parent if files else prefix, files)]
    try:
        status = art.check_record(record, inputs)
    except UserError:  # a stale cache of other images or another PCA
        status = "other"
    if status != "same":  # this cache folder is the training run's own: start it over
        for p in prefix.parent.glob(prefix.name + ".*"):
            p.unlink() if p.is_file() else shutil.rmtree(p, ignore_errors=True)
    with art.open(record, inputs, writes=[feature_table_paths(prefix)[1]]) as state:
        if not state.done:
            job = SideJob(InputPlan(start=start), lambda b: b.starts, start.dim, "float32", CHUNK)
            with ticker(progress, len(files), f"start vectors of {what}") as tick:
                filled = fill_from_images(art, files, job, CHUNK, workers, tick)
            write_table(filled, [f.id for f in files], art.path, what)
            art.finish({"bad": filled.bad_list([f.path for f in files])})
        bad = art.report().get("bad", [])
    ids, x = open_feature_table(art.path)
    return np.asarray(x, dtype=np.float32), ids, bad
