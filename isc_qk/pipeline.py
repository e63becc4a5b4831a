"""The whole QK schedule in one call, by calling the same stage functions as the commands.

    gist-pca -> augment -> init-model -> [precompute K -> train-q | precompute Q -> train-k]...

on a DISC-layout folder (``train/``, ``references/``, ``queries/``, ``ground_truth.csv``).
After every phase the queries are described with Q and the references with K, evaluated, and a
row is appended to the results table next to the baselines on the same data: GIST-PCA256,
off-the-shelf ImageNet backbone features (pooled, L2, PCA-256 fitted on train, L2), and the
in-batch-negatives model trained for the same number of image passes. Score-normalised rows
(`isc_qk.normalize`) are added for the baselines and the final QK model.

Every stage is resumable and skipped when its artifact is complete (each stage function checks
its own saved config), so re-running after a crash continues where it stopped; a changed
setting that invalidates an artifact is reported by that stage, never silently reused.

Work folder::

    WORK/pipeline_config.json     the settings (a different run into the same folder is refused)
    WORK/gist/                    pca.npz + GIST-PCA256 descriptors of train/references/queries
    WORK/aug/                     augmented training queries + manifest.csv
    WORK/models/start, Q1, K1...  model folders (start = ImageNet backbones + GIST residual)
    WORK/feats/                   float16 feature tables (frozen side of each phase)
    WORK/desc/<run>/              per-set descriptors of each evaluated model
    WORK/results.{json,md,png}    the table
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import check_config, save_config
from .errors import UserError
from .evaluate import evaluate, load_ground_truth
from .io import Descriptors, read_descriptors, write_descriptors
from .progress import console
from .report import Results, ResultRow, curve_of, write_all

QK, GIST, IMAGENET, INBATCH = "QK Iteration", "GIST-PCA256", "ImageNet features", "in-batch negatives"
PHASE_NAMES = ("Q1", "K1", "Q2", "K2", "Q3", "K3", "Q4", "K4", "Q5", "K5")


@dataclass
class PipelineConfig:
    phases: list[str] = field(default_factory=lambda: ["Q1", "K1", "Q2", "K2", "Q3"])
    backbone: str = "efficientnet-lite0"
    backbone_weights: str | None = "imagenet"
    # The defaults below are the CPU-budget recipe measured on ../shared/minidisc (README,
    # "Choosing the settings"): the paper's loss and schedule with tau 0.5 instead of 0.07 (GIST-PCA
    # distances are ~0.2, where tau 0.07 makes the loss prefer shrinking everything over ranking)
    # and the zero-initialised head shortcut, which learns ~3x faster from the GIST start.
    head_hidden: int = 1024
    residual_scale: float = 1.0
    head_shortcut: bool = True
    dim: int = 256  # GIST-PCA dimension == descriptor dimension
    epochs_per_phase: float = 2.0  # an epoch = as many training queries as there are training images
    batch_size: int = 32
    lr: float = 1e-4
    lr_alpha: float = 0.5
    tau: float = 0.5
    m: int = 10
    w_pos: float = 1.0
    w_neg: float = 3.0
    copies: int = 5  # augmented copies per training image (fresh edits for every pass)
    seed: int = 0
    n_pca_train: int = 10000
    baselines: list[str] = field(default_factory=lambda: ["gist", "imagenet", "inbatch"])
    normalizations: list[str] = field(default_factory=lambda: ["nes"])
    workers: int = 2

    def validate(self) -> None:
        for p in self.phases:
            if p not in PHASE_NAMES:
                raise UserError(f"--phases: unknown phase {p!r} (use Q1,K1,Q2,...)")
        expected = list(PHASE_NAMES[: len(self.phases)])
        if self.phases != expected:
            raise UserError(f"--phases must alternate from Q1: {','.join(expected)}")
        bad = set(self.baselines) - {"gist", "imagenet", "inbatch"}
        if bad:
            raise UserError(f"--baselines: unknown {sorted(bad)} (choose from gist, imagenet, inbatch)")
        bad = set(self.normalizations) - {"nes", "whiten"}
        if bad:
            raise UserError(f"--normalize: unknown {sorted(bad)} (choose from nes, whiten)")
        if self.epochs_per_phase <= 0:
            raise UserError("--epochs-per-phase must be > 0")


@dataclass
class Data:
    """A DISC-layout folder, checked up front so a typo fails in a second, not after an hour."""

    root: Path

    def __post_init__(self) -> None:
        for sub in ("train", "references", "queries"):
            if not (self.root / sub).is_dir():
                raise UserError(f"{self.root}: not a DISC-layout folder (missing {sub}/)")
        if not self.gt_path.is_file():
            raise UserError(f"{self.root}: missing ground_truth.csv")

    train = property(lambda self: self.root / "train")
    references = property(lambda self: self.root / "references")
    queries = property(lambda self: self.root / "queries")
    gt_path = property(lambda self: self.root / "ground_truth.csv")


class Pipeline:
    def __init__(self, data: str | os.PathLike, work: str | os.PathLike, cfg: PipelineConfig, progress: bool = True):
        cfg.validate()
        self.data, self.work, self.cfg, self.progress = Data(Path(data)), Path(work), cfg, progress
        self.work.mkdir(parents=True, exist_ok=True)
        check_config(self.work / "pipeline_config.json", cfg, "pipeline", ignore=("baselines", "normalizations"))
        save_config(self.work / "pipeline_config.json", cfg, "pipeline")
        self.gt = load_ground_truth(self.data.gt_path)
        self.results = Results(self.work / "results.json")

    # ------------------------------------------------------------------ helpers
    def _say(self, msg: str) -> None:
        console.print(f"[bold cyan]pipeline[/] {msg}")

    def _evaluate(self, method: str, phase: str, q: Descriptors, r: Descriptors, passes: float, t0: float,
                  normalization: str = "none") -> ResultRow:
        res = evaluate(q, r, self.gt)
        row = ResultRow(method, phase, normalization, res.micro_ap, res.recall_at_p90, res.recall_at_rank1,
                        passes, round(time.time() - t0, 1), curve_of(res))
        self.results.add(row)
        write_all(self.work, self.results, self._header())
        p90 = "not reached" if res.recall_at_p90 is None else f"{res.recall_at_p90:.4f}"
        self._say(f"{method} {phase} {normalization}: micro-AP {res.micro_ap:.4f}, R@P90 {p90}")
        return row

    def _header(self) -> str:
        c = self.cfg
        return (f"Data: `{self.data.root}`; backbone {c.backbone}; {c.epochs_per_phase:g} epoch(s) per phase; "
                f"batch {c.batch_size}; lr {c.lr:g}; tau {c.tau:g}; M {c.m}; seed {c.seed}.")

    def _train_cfg(self, side: str, negatives: str = "table", passes: float | None = None):
        """A stage's TrainConfig; `passes` = training queries to see / number of training images.

        train-q iterates over the augmented queries (copies per image), train-k and the in-batch
        model over the training images, so their epochs are converted to the same image count.
        """
        from .train import TrainConfig

        c = self.cfg
        passes = passes or c.epochs_per_phase
        epochs = passes / c.copies if (side == "q" and negatives == "table") else passes
        return TrainConfig(side=side, negatives=negatives, tau=c.tau, m=c.m, w_pos=c.w_pos, w_neg=c.w_neg,
                           batch_size=c.batch_size, lr=c.lr, lr_alpha=c.lr_alpha, epochs=epochs, seed=c.seed,
                           workers=c.workers)

    # ------------------------------------------------------------------ stages
    def gist(self) -> Path:
        from .gist_stage import describe_gist_set, fit_gist_pca

        pca = fit_gist_pca(self.data.train, self.work / "gist", n_train=self.cfg.n_pca_train, seed=self.cfg.seed,
                           dim=self.cfg.dim, workers=self.cfg.workers)
        for name in ("references", "queries"):
            describe_gist_set(pca, getattr(self.data, name), self.work / "gist" / f"{name}.h5",
                              workers=self.cfg.workers, progress=self.progress)
        return pca

    def augment(self) -> Path:
        from .augment import augment_folder

        out = self.work / "aug"
        augment_folder(self.data.train, out, seed=self.cfg.seed, copies=self.cfg.copies, workers=self.cfg.workers,
                       progress=self.progress)
        return out

    def start_model(self, pca: Path) -> Path:
        from .model import ModelConfig
        from .train import init_model

        c = self.cfg
        mc = ModelConfig(backbone=c.backbone, backbone_weights=c.backbone_weights, head_hidden=c.head_hidden,
                         residual_scale=c.residual_scale, head_shortcut=c.head_shortcut, dim=c.dim, seed=c.seed)
        return init_model(pca, mc, self.work / "models" / "start")

    def table(self, model: Path, side: str, images: Path) -> Path:
        """Feature table of `images` by `model`'s `side` backbone, shared by every stage that needs it."""
        from .precompute import precompute

        prefix = self.work / "feats" / f"{model.name}.{side}.{images.name}"
        precompute(model, side, images, prefix, workers=self.cfg.workers, progress=self.progress)
        return prefix

    def describe_pair(self, model: Path, run: str) -> tuple[Descriptors, Descriptors]:
        from .describe import describe

        out = self.work / "desc" / run
        describe(model, "q", self.data.queries, out / "queries.h5", workers=self.cfg.workers, progress=self.progress)
        describe(model, "k", self.data.references, out / "references.h5", workers=self.cfg.workers,
                 progress=self.progress)
        return read_descriptors(out / "queries.h5"), read_descriptors(out / "references.h5")

    def train_descriptors(self, model: Path, run: str) -> Descriptors:
        """K-side descriptors of the training images: the statistics for score normalisation."""
        from .describe import describe

        out = self.work / "desc" / run / "train.h5"
        describe(model, "k", self.data.train, out, workers=self.cfg.workers, progress=self.progress)
        return read_descriptors(out)

    # ------------------------------------------------------------------ baselines
    def gist_baseline(self) -> None:
        from .gist_stage import describe_gist_set

        t0 = time.time()
        g = self.work / "gist"
        q, r = read_descriptors(g / "queries.h5"), read_descriptors(g / "references.h5")
        if not self.results.get(GIST, "-"):
            self._evaluate(GIST, "-", q, r, 0, t0)
        if self.cfg.normalizations:
            describe_gist_set(g / "pca.npz", self.data.train, g / "train.h5", workers=self.cfg.workers,
                              progress=self.progress)
            self._normalized_rows(GIST, "-", read_descriptors(g / "train.h5"), q, r)

    def imagenet_baseline(self, start: Path) -> None:
        """Pooled ImageNet features (the start model's K backbone), L2, PCA-256 fitted on train, L2."""
        from sklearn.decomposition import PCA

        from .backbones import backbone_spec
        from .io import open_feature_table

        t0 = time.time()
        fdim = backbone_spec(self.cfg.backbone).feature_dim
        sets = {}
        for name, images in (("train", self.data.train), ("references", self.data.references),
                             ("queries", self.data.queries)):
            ids, x = open_feature_table(self.table(start, "k", images))
            sets[name] = (ids, _l2(np.asarray(x[:, :fdim], dtype=np.float32)))
        dim = min(self.cfg.dim, fdim, len(sets["train"][0]))
        pca = PCA(n_components=dim, whiten=False, svd_solver="full", random_state=0).fit(sets["train"][1])
        desc = {n: Descriptors(ids, _l2(pca.transform(x).astype(np.float32))) for n, (ids, x) in sets.items()}
        out = self.work / "desc" / "imagenet"
        for n, d in desc.items():
            write_descriptors(out / f"{n}.h5", d)
        if not self.results.get(IMAGENET, "-"):
            self._evaluate(IMAGENET, "-", desc["queries"], desc["references"], 0, t0)
        self._normalized_rows(IMAGENET, "-", desc["train"], desc["queries"], desc["references"])

    def inbatch_baseline(self, start: Path, aug: Path) -> None:
        from .train import train

        passes = self.cfg.epochs_per_phase * len(self.cfg.phases)
        if self.results.get(INBATCH, "-"):
            return
        t0 = time.time()
        out = self.work / "models" / "inbatch"
        train(start, self.data.train, aug, out, self._train_cfg("q", "batch", passes=passes), progress=self.progress)
        q, r = self.describe_pair(out, "inbatch")
        self._evaluate(INBATCH, "-", q, r, passes, t0)

    def _normalized_rows(self, method: str, phase: str, train: Descriptors, q: Descriptors, r: Descriptors,
                         passes: float = 0.0) -> None:
        from .normalize import NormConfig, fit_normalizer

        for m in self.cfg.normalizations:
            if self.results.get(method, phase, m):
                continue
            t0 = time.time()
            norm = fit_normalizer(train, NormConfig(method=m, dim=min(self.cfg.dim, train.dim)))
            self._evaluate(method, phase, norm.apply_descriptors(q), norm.apply_descriptors(r), passes, t0, m)

    # ------------------------------------------------------------------ the schedule
    def run(self) -> Results:
        c = self.cfg
        self._say(f"data {self.data.root}, work {self.work}")
        pca = self.gist()
        if "gist" in c.baselines:
            self.gist_baseline()
        aug = self.augment()
        current = self.start_model(pca)
        if "imagenet" in c.baselines:
            self.imagenet_baseline(current)
        passes = 0.0
        for phase in c.phases:
            t0 = time.time()
            out = self.work / "models" / phase
            from .train import train

            if phase.startswith("Q"):  # keys: frozen K backbone features of the training images
                keys = self.table(current, "k", self.data.train)
                train(current, keys, aug, out, self._train_cfg("q"), progress=self.progress)
            else:  # queries: frozen Q backbone features of the augmented images
                queries = self.table(current, "q", aug)
                train(current, self.data.train, queries, out, self._train_cfg("k"), progress=self.progress)
            current, passes = out, passes + c.epochs_per_phase
            if not self.results.get(QK, phase):
                q, r = self.describe_pair(current, phase)
                self._evaluate(QK, phase, q, r, passes, t0)
        if c.normalizations and c.phases:
            final = c.phases[-1]
            q, r = self.describe_pair(current, final)
            self._normalized_rows(QK, final, self.train_descriptors(current, final), q, r, passes)
        if "inbatch" in c.baselines:
            self.inbatch_baseline(self.work / "models" / "start", aug)
        write_all(self.work, self.results, self._header())
        return self.results


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def run_pipeline(data: str | os.PathLike, work: str | os.PathLike, cfg: PipelineConfig, progress: bool = True) -> Results:
    """Run (or resume) the whole schedule; returns the results table."""
    return Pipeline(data, work, cfg, progress).run()
