"""`isc-qk init-model`: the starting model folder (pretrained backbones, residual heads).

A stage output like every other (`stages.artifact`): the folder's record
(``init_model_config.json``) holds the ModelConfig and the fingerprint of the start PCA it was
made from, so a re-run with the same settings and PCA is a no-op, and one with other settings or
another PCA is refused rather than silently keeping (or overwriting) the old model.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..configs import ModelConfig
from ..errors import UserError
from ..formats.pca import PCAModel, config_path, npz_path
from ..stages import fingerprint
from ..stages.artifact import Artifact, Input
from ..starts.start import pca_file_name
from .qk_model import QKModel, check_model_config, model_files

KIND = "qk-model"


def init_model(pca_path: str | os.PathLike, cfg: ModelConfig, out_dir: str | os.PathLike) -> Path:
    """Create the starting QK model folder; untrained, it reproduces the start descriptor."""
    out, pca_path = Path(out_dir), npz_path(pca_path)
    check_model_config(cfg)
    pca = PCAModel.load(pca_path)  # before anything is written: a damaged PCA is a one-line error
    if pca.dim != cfg.dim:
        raise UserError(f"{pca_path}: the PCA has {pca.dim} dimensions, the model needs {cfg.dim}")
    files = [pca_path] + ([config_path(pca_path)] if config_path(pca_path).is_file() else [])
    art = Artifact(out, KIND, layout="folder", stage="init_model")
    # every file of the model folder is declared: without this stage's record, one that exists
    # is not ours and the run is refused (a model or a user's file already there)
    writes = model_files(out, cfg) + [config_path(out / pca_file_name(cfg.residual))]
    with art.open(cfg, [Input("--pca", pca_path, fingerprint.of_files(files))], writes=writes) as state:
        if not state.done:
            QKModel.create(cfg, pca, str(pca_path)).save(out)
            art.finish({"model": str(out)})
    return out
