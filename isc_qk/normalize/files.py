"""The file-level normalisation stages: `normalize-fit` (training descriptors -> artifact folder)
and `normalize` (a fitted normaliser applied to one per-set descriptor file).

Both are idempotent: a re-run with the same settings and inputs is a no-op; a fit into a folder
made with other settings is refused (normalised files downstream were made with it); an input
that changed content at the same path is recomputed, since these outputs are cheap and fully
determined by their inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..configs import NormConfig
from ..errors import UserError
from ..formats.descriptors import count_rows, read_descriptors, write_descriptors
from ..stages import fingerprint
from ..stages.artifact import Artifact, Input
from .normalizer import Normalizer, fit_normalizer


@dataclass
class FitResult:
    out_dir: Path
    method: str
    n_train: int
    input_dim: int
    output_dim: int
    skipped: bool  # True when the folder already held this fit of these training files


@dataclass
class NormalizeResult:
    out_path: Path
    n: int
    input_dim: int
    output_dim: int
    method: str
    skipped: bool  # True when the output was already up to date


def _existing(paths: list[Path]) -> list[Path]:
    for p in paths:
        if not p.is_file():
            raise UserError(f"{p}: file not found")
    return paths


def fit_normalizer_files(train_paths: str | os.PathLike | list[str | os.PathLike], cfg: NormConfig,
                         out_dir: str | os.PathLike) -> FitResult:
    """`isc-qk normalize-fit`: read training descriptors, fit, save the artifact folder."""
    cfg.validate()
    out_dir = Path(out_dir)
    paths = _existing([Path(train_paths)] if isinstance(train_paths, (str, os.PathLike)) else [Path(p) for p in train_paths])
    inputs = [Input(f"--train {i}" if len(paths) > 1 else "--train", p, fingerprint.of_file(p)) for i, p in enumerate(paths)]
    from ..formats.normalizer import NORM_FILE
    from .normalizer import CONFIG_FILE

    art = Artifact(out_dir, "normalizer", layout="folder", stage="normalize_fit")
    with art.open(cfg, inputs, replace_stale=True, writes=[out_dir / NORM_FILE, out_dir / CONFIG_FILE]) as state:
        if state.done:
            norm = Normalizer.load(out_dir)
            return FitResult(out_dir, cfg.method, norm.n_train, norm.input_dim, norm.output_dim, True)
        norm = fit_normalizer(read_descriptors(paths), cfg, show_progress=True)
        norm.save(out_dir)
        art.finish({"n_train": norm.n_train, "input_dim": norm.input_dim, "output_dim": norm.output_dim})
    return FitResult(out_dir, cfg.method, norm.n_train, norm.input_dim, norm.output_dim, False)


def normalize_file(norm_dir: str | os.PathLike, in_path: str | os.PathLike, out_path: str | os.PathLike) -> NormalizeResult:
    """`isc-qk normalize`: apply a fitted normaliser to one per-set descriptor file."""
    from ..formats.normalizer import NORM_FILE

    norm_dir, in_path, out_path = Path(norm_dir), Path(in_path), Path(out_path)
    norm = Normalizer.load(norm_dir)
    _existing([in_path])
    inputs = [Input("--norm", norm_dir / NORM_FILE, fingerprint.of_file(norm_dir / NORM_FILE)),
              Input("--in", in_path, fingerprint.of_file(in_path))]
    art = Artifact(out_path, "normalized descriptors", layout="file", stage="normalize")
    with art.open(norm.cfg, inputs, check={"--norm": norm_dir}, replace_stale=True) as state:
        n = count_rows(out_path) if state.done else None
        if n is not None:
            return NormalizeResult(out_path, n, norm.input_dim, norm.output_dim, norm.cfg.method, True)
        desc = read_descriptors(in_path)
        write_descriptors(out_path, norm.apply_descriptors(desc, show_progress=True))
        art.finish({"n": len(desc.ids)})
    return NormalizeResult(out_path, len(desc.ids), norm.input_dim, norm.output_dim, norm.cfg.method, False)
