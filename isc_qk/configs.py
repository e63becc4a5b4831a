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

The defaults here are the paper's. The measured recipes (the CPU-budget GIST recipe, the SSCD
recipe, the demo's) are whole `PipelineConfig`s declared once in `isc_qk.recipes`; every
command takes one with ``--recipe`` and any single setting with ``--set section.name=value``
(`apply_settings`), so every setting of every recipe is reachable stage by stage.

This is the bottom layer: validating a config checks values only (ranges, choices); whether a
backbone or start NAME exists is the encoder registry's business (`encoders.parse`), checked
by the stages before any work, so validating never loads a model.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
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


def from_dict(cls: type[C], data: Any, where: str = "") -> C:
    """Rebuild a config from `to_dict` output; unknown keys are ignored (older/newer files).

    `data` comes from a file, so its type and every value's type are checked (UserError naming
    `where`, the file): a record that is a list, a ``null`` config or ``"dim": "256"`` is a
    damaged file, not a crash.
    """
    what = where or cls.__name__
    if not isinstance(data, dict):
        raise UserError(f"{what}: settings must be a JSON object, got {_json_type(data)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            continue
        v = data[f.name]
        sub = hints.get(f.name)
        if dataclasses.is_dataclass(sub):
            v = from_dict(sub, v, f"{what} ({f.name})")  # type: ignore[arg-type]
        elif not _fits(v, sub):
            raise UserError(f"{what}: setting {f.name!r} has the wrong type ({_json_type(v)}: {v!r:.40})")
        kwargs[f.name] = v
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs  # type: ignore[arg-type]
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{what}: missing setting(s) {', '.join(missing)}")
    return cls(**kwargs)


def _json_type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _fits(v: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's type hint (int, float, str, bool, X | None, list[X])."""
    if hint is None or hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(v, h) for h in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(v, list) and all(_fits(x, item) for x in v)
    if hint is type(None):
        return v is None
    if hint is bool:
        return isinstance(v, bool)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if hint is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if isinstance(hint, type):
        return isinstance(v, hint)
    return True


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


# Every numeric setting has a range, checked before any work (a seed of -1, 1e11 hidden units or
# 1e308 epochs must be one line, not a traceback or an hour of work). The bounds are wide: the
# paper's values and every recipe sit far inside them.
MAX_SEED = 2**32 - 1  # numpy and TensorFlow both take 32-bit seeds
MAX_STEPS = 10**9  # a billion optimiser steps: years on any machine
MAX_EPOCHS = 1e6
MAX_COUNT = 10**6  # hard negatives per row, neighbours, copies per image...
MAX_DIM = 65536  # descriptor / PCA / hidden widths
MIN_TAU, MAX_TAU = 1e-4, 1e4  # P = exp(-d2/tau): below 1e-4 the gradient 1/tau overflows in float32 steps
MAX_LR = 1.0  # Adam moves each weight by ~lr per step: > 1 only destroys the weights
MAX_WEIGHT = 1e4  # loss weights w_pos, w_neg, nes beta


def apply_settings(cfg: C, assignments: list[str], section: str = "") -> C:
    """`cfg` with ``--set name=value`` assignments applied (a new object; `cfg` is untouched).

    Names are the dotted paths of `PipelineConfig` (``train.loss.tau``, ``model.head_hidden``):
    the same names as in every saved record, so a setting can be copied from one. A command whose
    config is one section of it (`train-q`: ``train``) takes the names under that section.
    Values are parsed by the field's type: numbers, ``true``/``false``, ``none`` for optional
    fields, comma-separated lists.
    """
    cfg = copy.deepcopy(cfg)
    for text in assignments:
        name, sep, value = text.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UserError(f"--set {text!r}: expected NAME=VALUE, e.g. --set train.loss.tau=2")
        path = name.split(".")
        if section:
            if path[0] != section:
                raise UserError(f"--set {name}: this command takes {section}.* settings only")
            path = path[1:]
        target = cfg
        for i, part in enumerate(path):
            fields = {f.name: f for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target) else {}
            if part not in fields:
                where = ".".join(([section] if section else []) + path[:i]) or "the config"
                choices = ", ".join(sorted(fields)) or "none"
                raise UserError(f"--set {name}: {where} has no setting {part!r} (it has: {choices})")
            if i < len(path) - 1:
                target = getattr(target, part)
                continue
            hint = typing.get_type_hints(type(target))[part]
            if dataclasses.is_dataclass(hint):
                raise UserError(f"--set {name}: a group of settings; set one of its fields ({name}.NAME=VALUE)")
            setattr(target, part, _parse_value(value.strip(), hint, name))
    return cfg


def _parse_value(text: str, hint: Any, name: str) -> Any:
    """`text` as a value of type `hint` (int, float, bool, str, X | None, list[str])."""
    args = typing.get_args(hint)
    if type(None) in args:
        if text.lower() in ("none", "null", ""):
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    try:
        if origin is list:
            return [_parse_value(x.strip(), args[0] if args else str, name) for x in text.split(",") if x.strip()]
        if hint is bool:
            low = text.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError(text)
        if hint is int:
            return int(text)
        if hint is float:
            return float(text)
        return str(text)
    except ValueError:
        kind = getattr(hint, "__name__", str(hint))
        raise UserError(f"--set {name}={text}: not a valid {kind}") from None


def _positive(name: str, v: float) -> None:
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        raise UserError(f"--{name} must be a finite number > 0, got {v}")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _positive(name: str, v: float, hi: float | None = None) -> None:
    if not (_number(v) and math.isfinite(v) and v > 0) or (hi is not None and v > hi):
        raise UserError(f"--{name} must be a finite number > 0{f' and <= {hi:g}' if hi is not None else ''}, got {v}")


def _at_least(name: str, v: int, lo: int, hi: int | None = None) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        raise UserError(f"--{name} must be an integer >= {lo}{f' and <= {hi:,}' if hi is not None else ''}, got {v}")


def _between(name: str, v: float, lo: float, hi: float) -> None:
    if not (_number(v) and math.isfinite(v) and lo <= v <= hi):
        raise UserError(f"--{name} must be a number in [{lo:g}, {hi:g}], got {v}")


def _finite(name: str, v: float, bound: float = 1e6) -> None:
    if not (_number(v) and math.isfinite(v) and abs(v) <= bound):
        raise UserError(f"--{name} must be a finite number within +-{bound:g}, got {v}")


def _seed(v: int, name: str = "seed") -> None:
    _at_least(name, v, 0, MAX_SEED)


def max_workers() -> int:
    """Most decoding threads / worker processes a command may ask for on this machine."""
    return max(16, 8 * (os.cpu_count() or 1))


def check_workers(workers: int, option: str = "--workers") -> None:
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise UserError(f"{option} must be an integer >= 1, got {workers}")
    if workers > max_workers():
        raise UserError(f"{option} {workers}: this machine has {os.cpu_count()} CPUs; use at most {max_workers()}")


# =========================================================================== the QK method
@dataclass
class LossConfig:
    """The QK loss, paper eq. 1-4; defaults are the paper's (tau 0.07, M 10, w_pos 1, w_neg 3)."""

    tau: float = 0.07  # temperature of P = exp(-d2 / tau)
    m: int = 10  # hard negatives per batch row: the B*M hardest of B x T are used
    w_pos: float = 1.0
    w_neg: float = 3.0

    def validate(self) -> None:
        _between("tau", self.tau, MIN_TAU, MAX_TAU)
        _at_least("m", self.m, 1, MAX_COUNT)
        for name in ("w_pos", "w_neg"):
            _between(name.replace("_", "-"), getattr(self, name), 0, MAX_WEIGHT)
        if self.w_pos == 0 and self.w_neg == 0:
            raise UserError("--w-pos and --w-neg are both 0: the loss would be 0 and nothing would train")


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

    def validate(self) -> None:
        for name in ("backbone", "residual"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise UserError(f"--{name} must be a name such as efficientnet-lite0, gist or sscd")
        _at_least("head-hidden", self.head_hidden, 0, MAX_DIM)
        _at_least("dim", self.dim, 1, MAX_DIM)
        _finite("residual-scale", self.residual_scale)
        _seed(self.seed)
        if not isinstance(self.backbone_weights, (str, type(None))):
            raise UserError(f"--backbone-weights must be a name or a file, got {self.backbone_weights!r}")

    def head_bytes(self, feature_dim: int) -> int:
        """Memory of the two heads with gradients and Adam's slots, for a backbone of this width."""
        width = feature_dim + self.dim  # head input
        params = 2 * (width * self.head_hidden + self.head_hidden * self.dim + width * self.dim)
        return 4 * 4 * params


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
        _positive("lr", self.lr, MAX_LR)
        _positive("epochs", self.epochs, MAX_EPOCHS)
        for name in ("batch_size", "checkpoint_every", "chunk"):
            _at_least(name.replace("_", "-").replace("batch-size", "batch"), getattr(self, name), 1, MAX_STEPS)
        _seed(self.seed)
        check_workers(self.workers)
        if self.steps is not None:
            _at_least("steps", self.steps, 1, MAX_STEPS)
        if not (math.isfinite(self.lr_alpha) and 0 <= self.lr_alpha <= 1):
            raise UserError(f"--lr-alpha must be in [0, 1], got {self.lr_alpha}")
        if not (isinstance(self.warmup, (int, float)) and math.isfinite(self.warmup) and 0 <= self.warmup < 1):
            raise UserError(f"--warmup must be a fraction in [0, 1), got {self.warmup}")
        if self.table_device not in TABLE_DEVICES:
            raise UserError(f"--table-device must be one of {', '.join(TABLE_DEVICES)}, not {self.table_device!r}")
        if self.first_pass not in FIRST_PASSES:
            raise UserError(f"--first-pass must be one of {', '.join(FIRST_PASSES)}, not {self.first_pass!r}")


# =========================================================================== data stages
#: Edits never leave an image smaller than this on its short side (tiny crops break the text and
#: meme edits); also the smallest --max-side.
MIN_SIDE = 32


@dataclass
class AugmentConfig:
    """The training queries: `copies` AugLy-edited copies per image (README recipe table)."""

    seed: int = 0
    copies: int = 1
    max_side: int = 512
    jpeg_quality: int = 90

    def validate(self) -> None:
        _at_least("copies", self.copies, 1, 1000)
        _seed(self.seed)
        _at_least("max-side", self.max_side, MIN_SIDE, MAX_DIM)
        if not isinstance(self.jpeg_quality, int) or not 1 <= self.jpeg_quality <= 100:
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
            _at_least("n-train", self.n_train, 1, 10**9)
        _at_least("dim", self.dim, 1, MAX_DIM)
        _seed(self.seed)
        if not isinstance(self.whiten, bool):
            raise UserError(f"--whiten must be true or false, got {self.whiten!r}")


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
            _at_least("k", self.k, 1, MAX_COUNT)
            if not isinstance(self.dba_k, int) or isinstance(self.dba_k, bool) or not 0 <= self.dba_k <= MAX_COUNT:
                raise UserError(f"--dba-k must be 0 (off) or a positive integer <= {MAX_COUNT:,}, got {self.dba_k}")
            _between("beta", self.beta, 0, MAX_WEIGHT)
            _between("dba-alpha", self.dba_alpha, 0, 100)


# =========================================================================== the schedule
PHASE_NAMES = ("Q1", "K1", "Q2", "K2", "Q3", "K3", "Q4", "K4", "Q5", "K5")
BASELINES = ("gist", "imagenet", "sscd", "inbatch")  # sscd: only where the SSCD wheel is installed
PIPELINE_NORMALIZATIONS = ("nes", "whiten")

@dataclass
class PipelineConfig:
    """The whole schedule: gist-pca, augment, init-model, then Q1, K1, Q2... with baselines."""

    phases: list[str] = field(default_factory=lambda: ["Q1", "K1", "Q2", "K2", "Q3"])
    epochs_per_phase: float = 1.0  # image passes per phase (training queries seen / training images)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
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
        _positive("epochs-per-phase", self.epochs_per_phase, MAX_EPOCHS)
        check_workers(self.workers)
        self.model.validate()
        self.train.validate()
        self.augment.validate()
        self.pca.validate()

    def phase_train(self, side: str, negatives: str = "table", passes: float | None = None) -> TrainConfig:
        """The TrainConfig of one phase; `passes` (default `epochs_per_phase`) = training queries
        seen / number of training images.

        train-q iterates over the augmented queries (`augment.copies` per image), train-k and the
        in-batch model over the training images, so their epochs give the same image count.
        """
        passes = passes or self.epochs_per_phase
        epochs = passes / self.augment.copies if (side == "q" and negatives == "table") else passes
        return dataclasses.replace(self.train, side=side, negatives=negatives, epochs=epochs, workers=self.workers)

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
    max_cells_per_photo: int = 40  # keeps the two huge photos (retina, Hubble) from dominating
    seed: int = 0
