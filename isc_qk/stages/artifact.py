"""The stage/artifact layer: every stage's bookkeeping, written once.

An `Artifact` is one stage output (a file such as ``SET.h5``, a table prefix such as
``feats/k0`` for ``feats/k0.npy``, or a folder such as a model folder) together with the
files that sit beside it:

* ``config.json`` - the *record*: the stage's settings (a configs dataclass) and the
  fingerprints of its inputs. A re-run with other settings or other inputs into the same
  output is refused with the differences named, never silently mixed or "already complete";
* ``report.json`` - written last: its presence (with the output) means *finished*;
* ``partial.npy`` / ``progress.json`` - scratch of a resumable run (`stages.rows`);
  kept when a run is interrupted (Ctrl-C, kill -9: the same command resumes), removed when
  it fails (a re-run starts clean) or finishes;
* a hidden ``.lock`` - one writer per output (`stages.lock`).

Names: a file ``X`` has ``X.config.json``...; a prefix ``P`` has ``P.config.json``...;
a folder ``D`` has ``D/<stage>_config.json``... (the folder's own content keeps its names).

`Artifact.open` is the one entry point every stage calls before any work::

    art = Artifact(out, "descriptors", layout="file")
    with art.open(config, inputs, check={...paths...}) as state:
        if state.done:
            return state.report
        ... work, resumable ...
        art.finish(report)
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..configs import diff, to_dict
from ..errors import UserError
from ..formats.atomic import read_json, write_json
from . import guard, lock
from .shards import Shard, find_shards, shard_name

LAYOUTS = ("file", "prefix", "folder")


def _same_path(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    return os.path.abspath(a) == os.path.abspath(b)


@dataclass(frozen=True)
class Input:
    """One input of a stage: its option name (for messages), path and fingerprint."""

    name: str
    path: Path
    fingerprint: str

    def as_record(self) -> dict:
        return {"path": os.path.abspath(self.path), "fingerprint": self.fingerprint}


@dataclass
class State:
    """What `Artifact.open` found: finished (with its report), resumable, or new."""

    done: bool
    resumed: bool
    report: dict = field(default_factory=dict)


class Artifact:
    """A stage output and its sidecars (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, kind: str, layout: str = "file", stage: str | None = None) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}")
        s = os.fspath(path)
        if layout == "prefix" and s.endswith(".npy"):
            s = s[:-4]
        self.path = Path(s)
        self.kind = kind
        self.layout = layout
        self.stage = stage or kind.replace(" ", "-")

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r}, {self.kind!r}, {self.layout!r})"

    # ------------------------------------------------------------------ names
    def side(self, what: str) -> Path:
        """A sidecar: ``X.what`` beside a file/prefix, ``D/<stage>_what`` inside a folder."""
        if self.layout == "folder":
            return self.path / f"{self.stage}_{what}"
        return self.path.with_name(f"{self.path.name}.{what}")

    @property
    def record_path(self) -> Path:
        return self.side("config.json")

    @property
    def report_path(self) -> Path:
        return self.side("report.json")

    @property
    def partial(self) -> Path:
        return self.side("partial.npy")

    @property
    def progress(self) -> Path:
        return self.side("progress.json")

    @property
    def lock_path(self) -> Path:
        if self.layout == "folder":
            return self.path / f".{self.stage}.lock"
        return self.path.with_name(f".{self.path.name}.lock")

    def sharded(self, shard: Shard) -> "Artifact":
        """The artifact of one `--shard I/N` slice (``SET.shard-I-of-N.h5`` ...)."""
        return Artifact(shard_name(self.path, shard, keep_suffix=self.layout == "file"), self.kind, self.layout,
                        self.stage)

    def shards(self, marker: str = "") -> list["Artifact"]:
        """The complete set of finished shard artifacts of this output, in order."""
        paths = find_shards(self.path, keep_suffix=self.layout == "file", marker=marker)
        arts = [Artifact(p, self.kind, self.layout, self.stage) for p in paths]
        for a in arts:
            if not a.report_path.is_file():
                raise UserError(f"{a.path}: shard not finished yet; re-run it to complete it")
        return arts

    # ------------------------------------------------------------------ the record
    def record(self) -> dict | None:
        return read_json(self.record_path) if self.record_path.is_file() else None

    def report(self) -> dict:
        return read_json(self.report_path) if self.report_path.is_file() else {}

    def check_record(self, config: Any, inputs: list[Input], ignore: tuple[str, ...] = (),
                     replace_stale: bool = False) -> str:
        """Compare the record beside the output with these settings and inputs.

        Returns "none" (no record), "same", or "stale" (same settings and input paths, but an
        input's content changed, and `replace_stale` allows recomputing); raises UserError,
        naming the differences and what to do, when the output was made otherwise.
        """
        old = self.record()
        if old is None:
            return "none"
        if old.get("kind") not in (None, self.kind):
            raise UserError(f"{self.path}: holds a {old.get('kind')}, not a {self.kind}; choose another output")
        changes = diff(old.get("config", {}), to_dict(config), ignore, defaults=_defaults(config))
        if changes:
            raise UserError(f"{self.path}: existing {self.kind} was made with other settings "
                            f"({'; '.join(changes[:4])}); use another output or delete it to start over")
        old_in = old.get("inputs", {})
        new_in = {i.name: i.as_record() for i in inputs}
        moved = [n for n in sorted(set(old_in) | set(new_in))
                 if (old_in.get(n) or {}).get("fingerprint") != (new_in.get(n) or {}).get("fingerprint")]
        if not moved:
            return "same"
        same_paths = all(n in old_in and n in new_in and _same_path(old_in[n].get("path"), new_in[n]["path"])
                         for n in moved)
        if replace_stale and same_paths:
            return "stale"
        what = "; ".join(f"{n}: {(old_in.get(n) or {}).get('path')} -> {(new_in.get(n) or {}).get('path')}"
                         + (" (changed since)" if n in old_in and n in new_in and
                            _same_path(old_in[n].get("path"), new_in[n]["path"]) else "")
                         for n in moved[:3])
        raise UserError(f"{self.path}: existing {self.kind} was made from other inputs ({what}); "
                        "use another output or delete it to start over")

    def write_record(self, config: Any, inputs: list[Input]) -> None:
        write_json(self.record_path, {"kind": self.kind, "isc_qk_version": __version__, "config": to_dict(config),
                                      "inputs": {i.name: i.as_record() for i in inputs}})

    def is_done(self) -> bool:
        """Finished: the report is written after the output itself."""
        return self.report_path.is_file() and self._output_exists()

    def _output_exists(self) -> bool:
        if self.layout == "prefix":
            return self.path.with_name(self.path.name + ".npy").is_file()
        return self.path.exists()

    # ------------------------------------------------------------------ the run
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Be the only writer of this output for the block (UserError naming the holder otherwise)."""
        if self.layout == "folder":
            self.path.mkdir(parents=True, exist_ok=True)
        with lock.exclusive(self.lock_path, str(self.path)):
            yield

    @contextlib.contextmanager
    def open(self, config: Any, inputs: list[Input] = (), check: dict[str, Any] | None = None,
             ignore: tuple[str, ...] = (), skip_done: bool = True, replace_stale: bool = False,
             resumable: Callable[[], bool] | None = None) -> Iterator[State]:
        """Guard the paths, take the lock, compare the record; yield the `State`.

        `check`: more paths (option name -> path) this output must not be, contain or lie
        inside, besides those of `inputs`. `skip_done=False`: a finished output is opened for
        more work anyway (augment adds copies). `replace_stale`: an output whose inputs changed
        content at the same paths is recomputed (cheap derived files) instead of refused. The
        record is written before the work starts. If the block fails (not if it is
        interrupted), the scratch files go, and the record too unless `resumable()` says a
        stage's own resumable state (e.g. a training checkpoint) is still there.
        """
        inputs = list(inputs)
        paths = {i.name: i.path for i in inputs} | dict(check or {})
        guard.check_paths({"--out": self.path}, paths, {"--out": self.layout == "folder"})
        created = self.layout == "folder" and not self.path.exists()
        with self.lock():
            status = self.check_record(config, inputs, ignore, replace_stale)
            same = status == "same"
            if same and skip_done and self.is_done():
                yield State(done=True, resumed=False, report=self.report())
                return
            if status == "stale":
                self.discard_scratch()
            if status == "none" and self._output_exists() and self.layout != "folder":
                raise UserError(f"{self.path}: exists but was not made by this {self.stage} stage "
                                "(no matching record beside it); choose another output or delete it")
            self.report_path.unlink(missing_ok=True)
            self.write_record(config, inputs)
            try:
                yield State(done=False, resumed=same)
            except KeyboardInterrupt:
                raise
            except BaseException:
                self.discard_scratch()
                if not (resumable and resumable()):  # nothing left to resume: leave no record either
                    self.record_path.unlink(missing_ok=True)
                    if created:  # a folder this run made holds only this run's files
                        shutil.rmtree(self.path, ignore_errors=True)
                raise

    def finish(self, report: dict) -> dict:
        """Write the report (last): from now on the artifact counts as finished."""
        self.discard_scratch()
        write_json(self.report_path, report)
        return report

    def discard_scratch(self) -> None:
        for p in (self.partial, self.progress):
            p.unlink(missing_ok=True)
        parts = self.side("parts")
        if parts.is_dir():
            shutil.rmtree(parts, ignore_errors=True)

    # ------------------------------------------------------------------ merging
    def merged_record(self, shards: list["Artifact"]) -> tuple[dict, dict]:
        """(config, inputs) common to every shard, with the shard field cleared; UserError if
        the shards were made with other settings or from other inputs than shard 0."""
        records = [s.record() for s in shards]
        if any(r is None for r in records):
            bad = next(s for s, r in zip(shards, records) if r is None)
            raise UserError(f"{bad.path}: shard has no record beside it; re-run that shard")
        first = records[0]
        for s, r in zip(shards[1:], records[1:]):
            changes = diff(first.get("config", {}), r.get("config", {}), ignore=("shard", "n_images"))
            if changes:
                raise UserError(f"{s.path}: shard made with other settings than shard 0 ({'; '.join(changes[:3])})")
            fp = lambda rec: {k: v.get("fingerprint") for k, v in rec.get("inputs", {}).items()}  # noqa: E731
            if fp(r) != fp(first):
                raise UserError(f"{s.path}: shard made from other inputs than shard 0; re-run it with the same inputs")
        config = {**first.get("config", {}), "shard": "0/1"}
        return config, first.get("inputs", {})

    def write_merged_record(self, config: dict, inputs: dict, ignore: tuple[str, ...] = ()) -> None:
        """The record of a merged output; refused if the output exists with another record."""
        old = self.record()
        if old is not None:
            changes = diff(old.get("config", {}), config, ignore=("n_images", *ignore))
            if changes:
                raise UserError(f"{self.path}: existing {self.kind} was made with other settings "
                                f"({'; '.join(changes[:4])}); use another output or delete it")
        write_json(self.record_path, {"kind": self.kind, "isc_qk_version": __version__, "config": config,
                                      "inputs": inputs})


def _defaults(config: Any) -> dict | None:
    """The default settings of `config`'s dataclass (None if it has required fields)."""
    try:
        return to_dict(type(config)())
    except TypeError:
        return None
