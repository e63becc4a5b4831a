"""A tiny but real QK Iteration world for the stage tests (precompute / train / describe).

16 real-photo training images, 2 AugLy-edited copies each (the real `augment_folder`), a GIST
PCA fitted on the training images (8 dims so 16 images suffice), and an untrained QK model
with the 64-px `tiny` backbone. Everything is made on the fly; nothing from /work/shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from conftest import gist960, make_image_folder

N_KEYS = 16
COPIES = 2
DIM = 8
HIDDEN = 32


@dataclass
class World:
    root: Path
    keys: Path  # training images (keys)
    aug: Path  # edited copies (queries) + manifest.csv
    pca: Path
    model: Path  # untrained QK model (tiny backbone)
    key_ids: list[str]


def make_model(world_root: Path, pca: Path, name: str, residual_scale: float = 0.01, seed: int = 0) -> Path:
    from isc_qk.configs import ModelConfig
    from isc_qk.models.init import init_model

    cfg = ModelConfig(backbone="tiny", head_hidden=HIDDEN, dim=DIM, residual_scale=residual_scale, seed=seed)
    return init_model(pca, cfg, world_root / name)


def train_config(**kw):
    """A TrainConfig from flat keyword arguments (the loss settings go into its LossConfig)."""
    from isc_qk.configs import LossConfig, TrainConfig

    loss = {k: kw.pop(k) for k in ("tau", "m", "w_pos", "w_neg") if k in kw}
    return TrainConfig(loss=LossConfig(**loss), **kw)


def make_world(root: Path) -> World:
    from isc_qk.augment.runner import augment_folder
    from isc_qk.configs import AugmentConfig
    from isc_qk.vectors import fit_pca

    keys = root / "train"
    ids = make_image_folder(keys, N_KEYS, "T", seed=0, size=96)
    augment_folder(keys, root / "aug", AugmentConfig(seed=0, copies=COPIES), workers=1, progress=False)
    pca_path = root / "pca.npz"
    fit_pca(gist960(sorted(keys.glob("*.jpg"))), dim=DIM).save(pca_path)
    model = make_model(root, pca_path, "model0")
    return World(root, keys, root / "aug", pca_path, model, ids)
