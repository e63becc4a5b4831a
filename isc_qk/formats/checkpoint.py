"""Training checkpoints that survive Ctrl-C and `kill -9` at any instant.

Why this layout: an exact resume needs the weights of all four model parts, the optimizer's
slots and step counter, and the loss history, all from the SAME step. Each checkpoint is a
folder ``checkpoints/step-NNNNNNNN`` written under a temporary name and renamed when complete;
``checkpoints/latest.json`` (written atomically afterwards) names the newest complete one.
A crash leaves either the old pointer (old checkpoint intact) or the new one (new checkpoint
complete); stale folders are removed on the next save.
"""

from __future__ import annotations

import shutil
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from .atomic import read_json, save_npz, write_json

POINTER = "latest.json"
_DIR = re.compile(r"^step-(\d{8,})$")
OPTIMIZER_FILE = "optimizer.npz"
STATE_FILE = "state.json"


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict


def save_checkpoint(root: str | Path, step: int, model, optimizer, state: dict) -> Path:
    """Write model + optimizer + `state` for `step` under ``root``; return its folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save(tmp)
    arrays = {f"v{i:05d}": np.asarray(v.numpy()) for i, v in enumerate(optimizer.variables)}
    names = [v.path if hasattr(v, "path") else v.name for v in optimizer.variables]
    save_npz(tmp / OPTIMIZER_FILE, **arrays)
    write_json(tmp / STATE_FILE, {**state, "step": step, "optimizer_variables": names})
    if final.exists():  # left by an earlier run that crashed before updating the pointer
        shutil.rmtree(final)
    tmp.rename(final)
    write_json(root / POINTER, {"step": step, "dir": final.name})
    for old in root.iterdir():  # keep only the checkpoint the pointer names (and nothing but ours)
        if old.is_dir() and old.name != final.name and (old.name.startswith("step-") or old.name.startswith(".tmp-step-")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Checkpoint | None:
    """The newest complete checkpoint under ``root``, or None."""
    root = Path(root)
    if not (root / POINTER).is_file():
        return None
    restart = f"delete {root} to restart from the starting model"
    ptr = read_json(root / POINTER)
    name, step = ptr.get("dir"), ptr.get("step")
    m = _DIR.match(name) if isinstance(name, str) else None
    if m is None or type(step) is not int or int(m.group(1)) != step:
        raise UserError(f"{root / POINTER}: damaged checkpoint pointer; {restart}")
    path = root / name
    if not (path / STATE_FILE).is_file() or not (path / OPTIMIZER_FILE).is_file():
        raise UserError(f"{root}: checkpoint pointer names an incomplete checkpoint; {restart}")
    state = read_json(path / STATE_FILE)
    losses, stats = state.get("losses", []), state.get("stats", [])
    if (state.get("step") != step or not isinstance(losses, list) or len(losses) < step
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in losses)
            or not isinstance(stats, list) or not all(isinstance(x, dict) for x in stats)):
        raise UserError(f"{path / STATE_FILE}: damaged checkpoint state; {restart}")
    return Checkpoint(path, step, state)


def restore_optimizer(optimizer, ckpt: Checkpoint) -> None:
    """Assign the saved optimizer variables (the optimizer must already be built)."""
    try:
        with np.load(ckpt.path / OPTIMIZER_FILE) as z:
            arrays = [z[k] for k in sorted(z.files)]
    except Exception as e:  # zip, pickle, truncation and key errors of a damaged file
        raise UserError(f"{ckpt.path / OPTIMIZER_FILE}: cannot read ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:120]}); delete the output folder to restart") from None
    variables = list(optimizer.variables)
    if len(arrays) != len(variables) or any(tuple(a.shape) != tuple(v.shape) for a, v in zip(arrays, variables)):
        raise UserError(f"{ckpt.path}: optimizer state does not fit this model; delete the output folder to restart")
    if not all(np.issubdtype(a.dtype, np.number) and np.isfinite(a).all() for a in arrays):
        raise UserError(f"{ckpt.path / OPTIMIZER_FILE}: optimizer state holds NaN or inf; delete the output folder to restart")
    for v, a in zip(variables, arrays):
        v.assign(a)
