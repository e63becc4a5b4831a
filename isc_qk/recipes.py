"""The measured recipes, declared once: each is the paper's defaults (`configs`) plus a few
changes, and `pipeline`, `demo`, every stage command (``--recipe NAME``) and the README read them
from here (`isc-qk recipe` prints them and the stage-by-stage commands they mean).

* ``paper``: the paper's settings (tau 0.07, FFN head at 0.01, Adam 1e-4, 5 phases of 1 pass).
* ``gist``: the paper's architecture on a CPU budget (EfficientNet-Lite0 on the GIST residual,
  tau 0.5, a zero-initialised head shortcut at full scale, 5 copies, 2 passes a phase); README
  "Choosing the settings: what was measured on ../shared/minidisc".
* ``sscd``: SSCD frozen on both sides at 288 x 288, linear heads on the SSCD-PCA256 residual
  with L2 output, tau 2, each phase training only its own head, 8 copies, 4 phases of 10
  passes; README "Choosing the SSCD settings".
* ``demo``, ``demo-sscd``: the built-in demo's (whitened 64-d starts, warm-up, 10 copies, 20
  passes); ``quick``: the tiny random backbone for smoke tests (`isc-qk demo --quick`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .configs import PipelineConfig, flat, to_dict
from .errors import UserError


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    base: str | None = None  # the recipe it changes (None: the paper's defaults)
    changes: dict[str, Any] = field(default_factory=dict)  # PipelineConfig dotted name -> value
    needs: str | None = None  # an encoder that must be installed (`encoders.available`)

    def config(self) -> PipelineConfig:
        cfg = RECIPES[self.base].config() if self.base else PipelineConfig()
        for name, value in self.changes.items():
            cfg = _set(cfg, name.split("."), value)
        return cfg


def _set(obj: Any, path: list[str], value: Any) -> Any:
    if not dataclasses.is_dataclass(obj) or path[0] not in {f.name for f in dataclasses.fields(obj)}:
        raise KeyError(".".join(path))  # a typo in this file: a bug, caught by its test
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _set(getattr(obj, path[0]), path[1:], value)})


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("paper", "the paper's settings: tau 0.07, FFN head (1024) at 0.01 on the GIST residual, Adam 1e-4"),
    Recipe("gist", "EfficientNet-Lite0 on the GIST residual, on a CPU budget", "paper", {
        # tau 0.07 makes the loss prefer shrinking everything over ranking at GIST-PCA distances
        # (~0.2); the zero-initialised shortcut at full scale learns ~3x faster from the start
        "model.residual_scale": 1.0, "model.head_shortcut": True, "train.loss.tau": 0.5,
        "augment.copies": 5, "epochs_per_phase": 2.0,
    }),
    Recipe("sscd", "SSCD frozen on both sides (288x288), linear heads on the SSCD-PCA256 residual", "paper", {
        "model.backbone": "sscd@sq288", "model.backbone_weights": None, "model.residual": "sscd@sq288",
        "model.head_hidden": 0, "model.residual_scale": 1.0, "model.output_l2": True,
        # unit-vector distances: tau <= 0.5 over-fits the training edits
        "train.loss.tau": 2.0, "train.train_other_head": False,
        "augment.copies": 8, "epochs_per_phase": 10.0, "phases": ["Q1", "K1", "Q2", "K2"],
        "baselines": ["gist", "sscd", "inbatch"],
    }, needs="sscd"),
    Recipe("demo", "the demo: frozen Lite0, whitened GIST-PCA64 start, linear heads with L2 output", "gist", {
        "phases": ["Q1", "K1", "Q2", "K2"], "epochs_per_phase": 20.0, "normalizations": ["nes"],
        "model.freeze_backbone": True, "model.dim": 64, "model.head_hidden": 0, "model.output_l2": True,
        "train.lr": 1e-4, "train.warmup": 0.1, "train.train_other_head": False,
        "augment.copies": 10, "pca.dim": 64, "pca.whiten": True,
    }),
    Recipe("demo-sscd", "the demo's SSCD pipeline: the sscd recipe from a whitened SSCD-PCA64 start", "sscd", {
        "baselines": ["inbatch"], "normalizations": ["nes"], "epochs_per_phase": 20.0, "model.dim": 64,
        "pca.dim": 64, "pca.whiten": True, "train.warmup": 0.1, "augment.copies": 10,
    }, needs="sscd"),
    Recipe("quick", "a smoke test: the tiny random backbone, 32-d whitened GIST start, Q1 K1 of one pass", "gist", {
        "phases": ["Q1", "K1"], "epochs_per_phase": 1.0, "workers": 1,
        "model.backbone": "tiny", "model.backbone_weights": None, "model.head_hidden": 64, "model.dim": 32,
        "train.batch_size": 8, "train.loss.m": 4, "augment.copies": 2,
        "pca.n_train": 48, "pca.dim": 32, "pca.whiten": True,
    }),
)}

AUTO = "auto"  # sscd where it is installed, else gist


def resolve(name: str) -> Recipe:
    """The recipe called `name` (``auto``: sscd where the SSCD wheel is installed, else gist)."""
    from .encoders import available

    if name == AUTO:
        name = "sscd" if available("sscd") else "gist"
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose {AUTO} or one of: {', '.join(RECIPES)}")
    r = RECIPES[name]
    if r.needs is not None and not available(r.needs):
        from .encoders.onnx import SSCD_INSTALL

        raise UserError(f"recipe {name} needs {r.needs}, which is not installed here: {SSCD_INSTALL}")
    return r


def recipe(name: str) -> PipelineConfig:
    """The whole PipelineConfig of recipe `name` (a fresh object)."""
    return resolve(name).config()


def settings(name: str) -> dict[str, Any]:
    """Every setting of a recipe by dotted name (what `isc-qk recipe` prints)."""
    return flat(to_dict(RECIPES[name].config()))
