"""`isc-qk init-model`: the starting model folder (pretrained backbones, residual heads)."""

from __future__ import annotations

import os
from pathlib import Path

from ..configs import ModelConfig, diff, to_dict
from ..errors import UserError
from ..formats.atomic import read_json
from ..formats.pca import PCAModel
from ..stages import guard
from ..starts.registry import StartDescriptor
from ..stages.lock import exclusive
from .qk_model import CONFIG_FILE, QKModel


def init_model(pca_path: str | os.PathLike, cfg: ModelConfig, out_dir: str | os.PathLike) -> Path:
    """Create the starting QK model folder; untrained, it reproduces the start descriptor.

    A folder that already holds a model with the same ModelConfig is kept (idempotent);
    one with another config is refused rather than overwritten.
    """
    out, pca_path = Path(out_dir), Path(pca_path)
    guard.check_paths({"--out": out}, {"--pca": pca_path}, {"--out": True})
    cfg.validate()
    pca = PCAModel.load(pca_path)  # before anything is written: a damaged PCA is a one-line error
    if pca.dim != cfg.dim:
        raise UserError(f"{pca_path}: the PCA has {pca.dim} dimensions, the model needs {cfg.dim}")
    StartDescriptor(cfg.residual).check_pca(pca, str(pca_path))
    out.mkdir(parents=True, exist_ok=True)
    with exclusive(out / ".init-model.lock", str(out)):
        if (out / CONFIG_FILE).is_file():
            old = read_json(out / CONFIG_FILE).get("config", {})
            changes = diff({k: v for k, v in old.items() if k != "spec"}, to_dict(cfg))
            if changes:
                raise UserError(f"{out}: holds a model with other settings ({'; '.join(changes[:4])}); choose another --out")
            QKModel.load(out)  # complete and readable, else UserError
            return out
        QKModel.create(cfg, pca).save(out)
    return out
