"""A recipe as the stage-by-stage commands that `pipeline` runs (`isc-qk recipe NAME`).

The pipeline calls the stage functions directly; these are the same stages as commands, with
the same settings (each command takes the recipe with ``--recipe``), the same work-folder
layout and the same feature cache, so running them gives the descriptors `pipeline` gives
(tested). Baselines, normalised rows and the results table are the pipeline's own extras.
"""

from __future__ import annotations

from ..configs import PipelineConfig
from ..encoders import parse
from ..models.qk_model import frozen_backbone
from ..recipes import RECIPES


def stage_commands(name: str, data: str = "DATA", work: str = "W", workers: int | None = None) -> list[str]:
    """The commands of recipe `name` on the DISC-layout folder `data`, in work folder `work`."""
    cfg = RECIPES[name].config()
    if workers is not None:
        cfg.workers = workers
    d, w = data.rstrip("/"), work.rstrip("/")
    r = f"--recipe {name}"
    wk = f"--workers {cfg.workers}"
    residual = cfg.model.residual
    start = f"{w}/gist" if residual == "gist" else f"{w}/start_{parse(residual).slug}"
    fit = "gist-pca" if residual == "gist" else "descriptor-pca"
    frozen = frozen_backbone(cfg.model)
    cache = f" --feature-cache {w}/feats" if frozen else ""
    lines = [
        f"# recipe {name}: {RECIPES[name].summary}",
        f"isc-qk {fit} {r} --train {d}/train --out {start} {wk}",
        f"isc-qk augment {d}/train --out {w}/aug {r} --workers {cfg.workers}",
        f"isc-qk init-model {r} --pca {start} --out {w}/models/start",
    ]
    current, made = "start", set()
    for phase in cfg.phases:
        side = phase[0].lower()
        epochs = _number(cfg.phase_train(side).epochs)
        lines.append(f"# phase {phase}")
        # train-q pushes against the K table of the training images, train-k against the Q table of
        # the augmented ones; a frozen backbone's tables never change, so they are computed once
        other, images = ("k", f"{d}/train") if side == "q" else ("q", f"{w}/aug")
        table = f"{w}/feats/{other}.{images.rsplit('/', 1)[-1]}" if frozen else f"{w}/feats/{current}.{other}.{images.rsplit('/', 1)[-1]}"
        if table not in made:
            lines.append(f"isc-qk precompute --model {w}/models/{current} --side {other} --images {images} --out {table} {wk}")
            made.add(table)
        keys, queries = (table, f"{w}/aug") if side == "q" else (f"{d}/train", table)
        lines.append(f"isc-qk train-{side} {r} --model {w}/models/{current} --keys {keys} --queries {queries} "
                     f"--epochs {epochs} --out {w}/models/{phase}{cache} {wk}")
        current = phase
        for s, images, set_name in (("q", "queries", "queries"), ("k", "references", "references")):
            lines.append(f"isc-qk describe --model {w}/models/{phase} --side {s} --images {d}/{images} "
                         f"--out {w}/desc/{phase}/{set_name}.h5{cache} {wk}")
        lines.append(f"isc-qk evaluate-uap --ground-truth {d}/ground_truth.csv --query {w}/desc/{phase}/queries.h5 "
                     f"--reference {w}/desc/{phase}/references.h5 --json {w}/desc/{phase}/metrics.json")
    return lines


def _number(x: float) -> str:
    """Epochs as the shortest exact decimal (1.25, 10, 0.5)."""
    return f"{x:g}" if float(f"{x:g}") == x else repr(x)


def changes_table(cfg: PipelineConfig, base: PipelineConfig) -> list[tuple[str, object, object]]:
    """(setting, base value, value) of every setting that differs."""
    from ..configs import flat, to_dict

    a, b = flat(to_dict(base)), flat(to_dict(cfg))
    return [(k, a.get(k), b[k]) for k in b if a.get(k) != b[k]]
