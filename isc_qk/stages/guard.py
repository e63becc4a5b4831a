"""Before any work: an output may never be, contain, or lie inside an input, and must be writable;
a folder output belongs to one kind of stage.

Why here, once: every writing command has outputs and inputs, and the ways one can destroy the
other are the same for all of them (``--out`` naming the query file, a JSON written over the
ground truth, descriptors written into the model folder, a folder output wrapped around the
data, a training run pointed at a normaliser's folder). Paths are resolved (symlinks followed)
before they are compared. Which files a stage may replace inside its output is the artifact
layer's business (`stages.artifact`: every path a stage writes is declared before the work).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import UserError

PathLike = str | os.PathLike

def _resolve(p: PathLike) -> Path:
    return Path(os.path.abspath(Path(p).expanduser().resolve(strict=False)))


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and parent in child.parents


def check_paths(outputs: dict[str, PathLike | None], inputs: dict[str, PathLike | None] | None = None,
                output_is_folder: dict[str, bool] | None = None,
                folder_kinds: dict[str, Iterable[str]] | None = None) -> None:
    """Refuse outputs that collide with inputs or cannot be written (UserError, one line).

    `outputs` / `inputs`: option name -> path (None entries are ignored). `output_is_folder`
    says which outputs are folders (default: files); an existing folder output may hold only
    records of the kinds `folder_kinds` names for it (none if not given: an empty folder).
    """
    ins = {k: _resolve(v) for k, v in (inputs or {}).items() if v is not None}
    folders = output_is_folder or {}
    outs = {k: v for k, v in outputs.items() if v is not None}
    for name, raw in outs.items():
        out = _resolve(raw)
        for iname, inp in ins.items():
            if out == inp:
                raise UserError(f"{name} {raw} is also the input {iname}; writing it would destroy the input: choose another output")
            if _inside(out, inp):
                raise UserError(f"{name} {raw} lies inside the input {iname} {inp}; choose an output outside it")
            if _inside(inp, out):
                raise UserError(f"{name} {raw} contains the input {iname} {inp}; choose an output that does not")
        check_writable(raw, name, folder=folders.get(name, False))
        if folders.get(name, False):
            check_folder_kinds(raw, (folder_kinds or {}).get(name, ()), name)
    resolved = [(n, _resolve(p)) for n, p in outs.items()]
    for i, (a, pa) in enumerate(resolved):
        for b, pb in resolved[i + 1:]:
            if pa == pb:
                raise UserError(f"{a} and {b} name the same file {pa}; give them different paths")


def check_writable(path: PathLike, name: str = "--out", folder: bool = False) -> None:
    """The output can be created: not an existing folder (for a file) or file (for a folder),
    no file where a parent folder must be, and the nearest existing parent folder is writable."""
    p = Path(path)
    if p.exists():
        if folder and not p.is_dir():
            raise UserError(f"{name} {p} is an existing file; a folder is needed here")
        if not folder and p.is_dir():
            raise UserError(f"{name} {p} is an existing folder; give a file name")
    parent = p if (folder and p.is_dir()) else p.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{name} {p}: cannot create it, {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{name} {p}: the folder {parent} is not writable")


def folder_records(folder: PathLike) -> list[tuple[Path, str]]:
    """(record file, kind) of every stage record directly inside `folder`: ``config.json``
    (model folders, normalisers) and ``<stage>_config.json`` (every artifact folder)."""
    folder = Path(folder)
    found = []
    try:
        names = [n for n in os.listdir(folder) if n == "config.json" or n.endswith("_config.json")]
    except OSError:
        return []
    for n in sorted(names):
        try:
            rec = json.loads((folder / n).read_text())
        except (OSError, ValueError, UnicodeDecodeError, RecursionError):
            continue  # not a record: a file of the user's, judged by the stage's own path checks
        if isinstance(rec, dict) and isinstance(rec.get("kind"), str):
            if not isinstance(rec.get("config"), dict):
                raise UserError(f"{folder / n}: a damaged {rec['kind']} record (its 'config' is not an object); "
                                "delete the folder to start over")
            found.append((folder / n, rec["kind"]))
    return found


def check_folder_kinds(folder: PathLike, kinds: Iterable[str], name: str = "--out") -> None:
    """A folder is the output of one kind of stage: refuse one that holds another kind's record
    (a training run into a normaliser's folder would rewrite its config.json)."""
    kinds = set(kinds)
    for path, kind in folder_records(folder):
        if kind not in kinds:
            raise UserError(f"{name} {folder} is the output of another kind of stage ({kind}, {path.name}); a folder "
                            "holds one kind of output: choose another folder")


def check_replaceable(path: PathLike | None, name: str, looks_like, kind: str) -> None:
    """A one-shot output (a submission, a metrics JSON, a plot) may replace an earlier one of
    its kind, never some other file that happens to sit at that path."""
    if path is None:
        return
    p = Path(path)
    if p.is_file() and not looks_like(p):
        raise UserError(f"{name} {p} exists and is not a {kind}; choose another path or delete it")


def is_png(p: Path) -> bool:
    with open(p, "rb") as fh:
        return fh.read(8) == b"\x89PNG\r\n\x1a\n"


def is_metrics_json(p: Path) -> bool:
    import json

    try:
        return "micro_ap" in json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError):
        return False


def is_submission(p: Path) -> bool:
    import h5py

    try:
        with h5py.File(p, "r") as f:
            return {"query", "reference", "query_ids", "reference_ids"} <= set(f.keys())
    except OSError:
        return False
