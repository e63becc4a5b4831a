"""Every setting of every stage, as composed dataclasses: each default is declared once, here.

The commands read their defaults from these classes (`default`), the stage functions take
these objects, and every artifact saves the one that made it beside itself (`to_dict`), so a
run can be reproduced and a re-run with other settings into the same output is refused
(`diff`). The pipeline composes them::

    PipelineConfig
      model: ModelConfig           backbone, residual head
      train: TrainConfig           one phase's optimisation (side and epochs set per phase)
        loss: LossConfig           the QK loss (paper eq. 1-4)
      augment: AugmentConfig       the training queries
      pca: PCAFitConfig           the PCA fits of the frozen descriptors (GIST, SSCD)

Two sets of defaults exist on purpose: the paper's (`LossConfig`, `ModelConfig`,
`TrainConfig`, used by the single-stage commands) and the CPU-budget recipe measured on
../shared/minidisc (`CPU_RECIPE_*`, used by `pipeline` and `demo`; README "Choosing the
settings").
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import UserError

C = TypeVar("C")


# =========================================================================== helpers
def to_dict(cfg: Any) -> dict:
    """A config (nested dataclasses) as a JSON-ready dict; Paths become strings."""
    d = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return {k: _plain(v) for k, v in d.items()}


def _plain(v: Any) -> Any:
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def from_dict(cls: type[C], data: dict) -> C:
    """Rebuild a config from `to_dict` output; unknown keys are ignored (older/newer files)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        v = data[f.name]
        sub = hints.get(f.name)
        if dataclasses.is_dataclass(sub) and isinstance(v, dict):
            v = from_dict(sub, v)  # type: ignore[arg-type]
        kwargs[f.name] = v
    return cls(**kwargs)


def default(cls: type, name: str) -> Any:
    """The declared default of field `name` (for CLI option defaults)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                return f.default_factory()  # type: ignore[misc]
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def flat(d: dict, prefix: str = "") -> dict:
    """{"train": {"loss": {"tau": 1}}} -> {"train.loss.tau": 1} (for readable differences)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out


def diff(old: dict, new: dict, ignore: tuple[str, ...] = (), defaults: dict | None = None) -> list[str]:
    """'name: old -> new' for every setting that differs (dotted names for nested ones).

    With `defaults` (a config's default settings), a setting missing from `old` whose new value
    is its default is no difference: a record written before the setting existed was made
    with the behaviour that the default keeps.
    """
    a, b = flat(old), flat(new)
    dflt = flat(defaults) if defaults is not None else {}
    skip = lambda k: any(k == i or k.startswith(i + ".") for i in ignore)  # noqa: E731
    added = lambda k: k not in a and k in dflt and b.get(k) == dflt[k]  # noqa: E731
    keys = sorted(k for k in set(a) | set(b) if not skip(k) and a.get(k) != b.get(k) and not added(k))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys]


def _positive(name: str, v: float) -> None:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise UserError(f"--{name} must be a finite number > 0, got {v}")


def _at_least(name: str, v: int, lo: int) -> None:
    if not isinstance(v, int) or v < lo:
        raise UserError(f"--{name} must be an integer >= {lo}, got {v}")


def _finite(name: str, v: float) -> None:
    if not (isinstance(v, (int, float)) and math.isfinite(v)):
        raise UserError(f"--{name} must be a finite number, got {v}")


# =========================================================================== the QK method
@dataclass
class LossConfig:
    """The QK loss, paper eq. 1-4; defaults are the paper's (tau 0.07, M 10, w_pos 1, w_neg 3)."""

    tau: float = 0.07  # temperature of P = exp(-d2 / tau)
    m: int = 10  # hard negatives per batch row: the B*M hardest of B x T are used
    w_pos: float = 1.0
    w_neg: float = 3.0

    def validate(self) -> None:
        _positive("tau", self.tau)
        _at_least("m", self.m, 1)
        for name in ("w_pos", "w_neg"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise UserError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")


@dataclass
class ModelConfig:
    """Architecture of the Q and K models, saved in the model folder's config.json."""

    # efficientnet-lite0/1/2, efficientnet-b3, tiny, keras:PATH (trainable); sscd, sscd-distilled,
    # onnx:PATH (frozen: never trained, precomputed)
    backbone: str = "efficientnet-lite0"
    backbone_weights: str | None = "imagenet"  # "imagenet", None (random init) or a weights file
    residual: str = "gist"  # the start descriptor: gist, sscd, sscd-distilled, onnx:PATH (`starts`)
    head_hidden: int = 1024  # 0: a linear head (zero-initialised: the untrained model is the start)
    dim: int = 256  # descriptor dimension == the residual start's PCA dimension
    residual_scale: float = 0.01  # descriptor = residual_scale * head(...) + start (paper fig. 5)
    # False: the paper's head. True: the FFN's output layer starts at zero and a zero-initialised
    # linear shortcut runs beside it, so the model starts exactly at the residual start and can
    # first learn a linear map of the backbone features (README, "Choosing the settings").
    head_shortcut: bool = False
    # L2-normalise the descriptor: keeps distances in [0, 4] whatever the head does (for unit
    # starts such as SSCD-PCA256, an untrained model is still exactly the start)
    output_l2: bool = False
    # never train the backbone (ONNX ones never are): both sides are precomputed once and only the
    # heads train - minutes instead of hours on a CPU (README, "Choosing the settings")
    freeze_backbone: bool = False
    seed: int = 0

    def validate(self, folder=None) -> None:
        from .models.backbones import backbone_spec
        from .starts.registry import StartDescriptor

        backbone_spec(self.backbone, folder)
        StartDescriptor(self.residual)
        _at_least("head-hidden", self.head_hidden, 0)
        _at_least("dim", self.dim, 1)
        _finite("residual-scale", self.residual_scale)


NEGATIVES = ("table", "batch")
TABLE_DEVICES = ("auto", "device", "host")  # where qk.mining keeps a cached table (--table-device)
FIRST_PASSES = ("auto", "int8", "none")  # qk.first_pass (--first-pass)


@dataclass
class TrainConfig:
    """One training stage (train-q, train-k, or the in-batch comparison); paper defaults."""

    side: str = "q"  # whose backbone trains: "q" (train-q) or "k" (train-k)
    negatives: str = "table"  # "table": QK Iteration; "batch": SimCLR-style in-batch negatives
    loss: LossConfig = field(default_factory=LossConfig)
    batch_size: int = 32
    lr: float = 1e-4
    lr_alpha: float = 0.5  # cosine decay to lr * alpha over the run
    # fraction of the steps over which the lr rises linearly from 0: Adam's first steps move
    # every weight by ~lr whatever the gradient, which throws a zero-initialised head on wide
    # features far from its start (the dip below the start after a few steps)
    warmup: float = 0.0
    epochs: float = 1.0
    steps: int | None = None  # overrides epochs when set
    checkpoint_every: int = 500
    seed: int = 0  # data order
    # False: a phase trains only its own side (train-q: Q backbone + Q head); the paper (True)
    # also moves the other side's head through the selected rows
    train_other_head: bool = True
    chunk: int = 8192  # table rows per head pass while mining negatives (qk.loss.DEFAULT_CHUNK)
    workers: int = 2  # image-decoding threads
    # where the cached descriptors of a frozen other side live while mining (qk.mining):
    # "auto" resident on the model's device when they fit, "device" always, "host" streamed
    table_device: str = "auto"
    # the cached path's exact reduced-precision first pass (qk.first_pass): "auto" int8 on a CPU
    # with int8 dot products for tables of >= 262,144 rows (measured to win there), "int8", "none"
    first_pass: str = "auto"

    def validate(self) -> None:
        if self.side not in ("q", "k"):
            raise UserError(f"side must be q or k, not {self.side!r}")
        if self.negatives not in NEGATIVES:
            raise UserError(f"--negatives must be 'table' or 'batch', not {self.negatives!r}")
        self.loss.validate()
        _positive("lr", self.lr)
        _positive("epochs", self.epochs)
        for name in ("batch_size", "checkpoint_every", "chunk", "workers"):
            _at_least(name.replace("_", "-").replace("batch-size", "batch"), getattr(self, name), 1)
        if self.steps is not None:
            _at_least("steps", self.steps, 1)
        if not (math.isfinite(self.lr_alpha) and 0 <= self.lr_alpha <= 1):
            raise UserError(f"--lr-alpha must be in [0, 1], got {self.lr_alpha}")
        if not (isinstance(self.warmup, (int, float)) and math.isfinite(self.warmup) and 0 <= self.warmup < 1):
            raise UserError(f"--warmup must be a fraction in [0, 1), got {self.warmup}")
        if self.table_device not in TABLE_DEVICES:
            raise UserError(f"--table-device must be one of {', '.join(TABLE_DEVICES)}, not {self.table_device!r}")
        if self.first_pass not in FIRST_PASSES:
            raise UserError(f"--first-pass must be one of {', '.join(FIRST_PASSES)}, not {self.first_pass!r}")


# =========================================================================== data stages
@dataclass
class AugmentConfig:
    """The training queries: `copies` AugLy-edited copies per image (README recipe table)."""

    seed: int = 0
    copies: int = 1
    max_side: int = 512
    jpeg_quality: int = 90

    def validate(self) -> None:
        from .augment.recipe import MIN_SIDE

        _at_least("copies", self.copies, 1)
        _at_least("seed", self.seed, 0)
        _at_least("max-side", self.max_side, MIN_SIDE)
        if not 1 <= self.jpeg_quality <= 100:
            raise UserError(f"--quality must be in 1..100, got {self.jpeg_quality}")


@dataclass
class PCAFitConfig:
    """The PCA-256 of a frozen descriptor (GIST, SSCD...): fitted on a seeded sample of
    TRAINING images only."""

    n_train: int | None = 10000  # None: every training image
    seed: int = 0
    dim: int = 256
    # divide each component by its training standard deviation, then L2 (`formats.pca`): the
    # start is then as good as the baseline whitened after the fact (the demo: few images)
    whiten: bool = False

    def validate(self) -> None:
        if self.n_train is not None:
            _at_least("n-train", self.n_train, 1)
        _at_least("dim", self.dim, 1)


NORM_METHODS = ("nes", "whiten", "none")


@dataclass
class NormConfig:
    """Score normalisation fitted on training descriptors (normalize/normalizer.py)."""

    method: str = "nes"  # nes | whiten | none
    k: int = 10  # nes: training neighbours averaged per vector
    beta: float = 0.35  # nes: weight of the subtracted neighbour mean
    dba_k: int = 0  # nes: DBA neighbours for the training descriptors, 0 = no DBA
    dim: int = 256  # largest output dimension (<= 256 for the descriptor track)
    dba_alpha: float = 3.0  # nes: DBA weights are similarity ** dba_alpha (1st place: 3)

    def validate(self) -> None:
        from .formats.submission import MAX_SUBMISSION_DIM

        if self.method not in NORM_METHODS:
            raise UserError(f"unknown normalisation method {self.method!r} (choose from {', '.join(NORM_METHODS)})")
        if not (isinstance(self.dim, int) and 1 <= self.dim <= MAX_SUBMISSION_DIM):
            raise UserError(f"--dim must be between 1 and {MAX_SUBMISSION_DIM}, got {self.dim}")
        if self.method == "nes":
            _at_least("k", self.k, 1)
            if not isinstance(self.dba_k, int) or self.dba_k < 0:
                raise UserError(f"--dba-k must be 0 (off) or positive, got {self.dba_k}")
            if not (math.isfinite(self.beta) and self.beta >= 0):
                raise UserError(f"--beta must be a finite number >= 0, got {self.beta}")
            _finite("dba-alpha", self.dba_alpha)


# =========================================================================== the schedule
PHASE_NAMES = ("Q1", "K1", "Q2", "K2", "Q3", "K3", "Q4", "K4", "Q5", "K5")
BASELINES = ("gist", "imagenet", "sscd", "inbatch")  # sscd: only where the SSCD wheel is installed
PIPELINE_NORMALIZATIONS = ("nes", "whiten")

#: The CPU-budget recipe (README, "Choosing the settings"): the paper's loss and schedule with
#: tau 0.5 instead of 0.07 (GIST-PCA distances are ~0.2, where tau 0.07 makes the loss prefer
#: shrinking everything over ranking) and the zero-initialised head shortcut at full scale,
#: which learns ~3x faster from the GIST start; 5 fresh augmented copies per training image.
CPU_RECIPE_MODEL = dict(residual_scale=1.0, head_shortcut=True)
CPU_RECIPE_LOSS = dict(tau=0.5)
CPU_RECIPE_COPIES = 5

#: The SSCD recipe (README, "Choosing the settings"): SSCD frozen on both sides (both tables
#: precomputed once, images resized to 288 x 288: faster and better than the shorter side at
#: 288 on our benchmarks), linear heads on the SSCD-PCA256 residual with L2-normalised output,
#: tau 2 (unit-vector distances: tau <= 0.5 over-fits the training edits), each phase training
#: only its own head, 8 fresh augmented copies per training image, 4 phases of 10 image passes.
SSCD_RECIPE_MODEL = dict(backbone="sscd@sq288", backbone_weights=None, residual="sscd@sq288", head_hidden=0,
                         residual_scale=1.0, output_l2=True)
SSCD_RECIPE_LOSS = dict(tau=2.0)
SSCD_RECIPE_TRAIN = dict(train_other_head=False)
SSCD_RECIPE_COPIES = 8
SSCD_RECIPE_EPOCHS = 10.0
SSCD_RECIPE_PHASES = ["Q1", "K1", "Q2", "K2"]


@dataclass
class PipelineConfig:
    """The whole schedule: gist-pca, augment, init-model, then Q1, K1, Q2... with baselines."""

    phases: list[str] = field(default_factory=lambda: ["Q1", "K1", "Q2", "K2", "Q3"])
    epochs_per_phase: float = 2.0  # training queries per phase / number of training images
    model: ModelConfig = field(default_factory=lambda: ModelConfig(**CPU_RECIPE_MODEL))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(loss=LossConfig(**CPU_RECIPE_LOSS)))
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(copies=CPU_RECIPE_COPIES))
    pca: PCAFitConfig = field(default_factory=PCAFitConfig)
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    normalizations: list[str] = field(default_factory=lambda: ["nes"])
    workers: int = 2

    def validate(self) -> None:
        for p in self.phases:
            if p not in PHASE_NAMES:
                raise UserError(f"--phases: unknown phase {p!r} (use Q1,K1,Q2,...)")
        expected = list(PHASE_NAMES[: len(self.phases)])
        if self.phases != expected:
            raise UserError(f"--phases must alternate from Q1: {','.join(expected)}")
        bad = set(self.baselines) - set(BASELINES)
        if bad:
            raise UserError(f"--baselines: unknown {sorted(bad)} (choose from {', '.join(BASELINES)})")
        bad = set(self.normalizations) - set(PIPELINE_NORMALIZATIONS)
        if bad:
            raise UserError(f"--normalize: unknown {sorted(bad)} (choose from {', '.join(PIPELINE_NORMALIZATIONS)})")
        _positive("epochs-per-phase", self.epochs_per_phase)
        _at_least("workers", self.workers, 1)
        self.model.validate()
        self.train.validate()
        self.augment.validate()
        self.pca.validate()

    @classmethod
    def recipe(cls, name: str) -> "PipelineConfig":
        """A named, measured recipe (README "Choosing the settings"): `gist` (EfficientNet-Lite0
        on the GIST residual, the paper's architecture on a CPU budget) or `sscd` (frozen SSCD
        on both sides, heads on the SSCD-PCA256 residual); `auto` = sscd where it is installed."""
        if name == "auto":
            from .models.onnx_model import available

            name = "sscd" if available("sscd") else "gist"
        if name == "gist":
            return cls()
        if name == "sscd":
            return cls(model=ModelConfig(**SSCD_RECIPE_MODEL), train=TrainConfig(loss=LossConfig(**SSCD_RECIPE_LOSS),
                                                                                 **SSCD_RECIPE_TRAIN),
                       augment=AugmentConfig(copies=SSCD_RECIPE_COPIES), epochs_per_phase=SSCD_RECIPE_EPOCHS,
                       phases=list(SSCD_RECIPE_PHASES), baselines=["gist", "sscd", "inbatch"])
        raise UserError(f"unknown recipe {name!r}; choose auto, gist or sscd")

    def with_seed(self, seed: int) -> "PipelineConfig":
        """The same schedule with every stage seeded by `seed` (`--seed`)."""
        r = dataclasses.replace
        return r(self, model=r(self.model, seed=seed), train=r(self.train, seed=seed),
                 augment=r(self.augment, seed=seed), pca=r(self.pca, seed=seed))


@dataclass
class DemoDataConfig:
    """The built-in demo benchmark (pipeline/demo.py): cells of the photos bundled with
    scikit-image, scikit-learn and matplotlib, each split made of whole photos."""

    n_train: int = 0  # 0: every training cell once
    n_references: int = 48  # 6 varied photos x 8 cells
    n_positive_queries: int = 240  # 5 edited copies per reference: >= 200 positives
    n_distractor_queries: int = 60  # 15 cells of 2 other photos, each edited 4 times
    max_cells_per_photo: int = 40
    seed: int = 0
