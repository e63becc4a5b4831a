"""The stage/artifact layer: every stage's bookkeeping, written once.

An `Artifact` is one stage output (a file such as ``SET.h5``, a table prefix such as
``feats/k0`` for ``feats/k0.npy``, or a folder such as a model folder) together with the
files that sit beside it:

* ``config.json`` - the *record*: the stage's kind, its settings (a configs dataclass) and the
  fingerprints of its inputs. A re-run with other settings or other inputs into the same
  output is refused with the differences named, never silently mixed or "already complete";
* ``report.json`` - written last: its presence (with the output) means *finished*;
* ``partial.npy`` / ``progress.json`` - scratch of a resumable run (`stages.rows`);
  kept when a run is interrupted (Ctrl-C, kill -9, a full disk: the same command resumes),
  removed when it fails otherwise (a re-run starts clean) or finishes;
* a hidden ``.lock`` - one writer per output (`stages.lock`).

Names: a file ``X`` has ``X.config.json``...; a prefix ``P`` has ``P.config.json``...;
a folder ``D`` has ``D/<stage>_config.json``... (the folder's own content keeps its names).

What may be replaced: a stage declares EVERY path it writes besides these (``writes``: a raw
descriptor file beside ``SET.h5``, ``PREFIX.ids.txt``, the JPEGs and manifest of an
augmentation folder, the files of a model folder) before any work. Without a matching record,
any of them that exists was not made by this stage and the run is refused, naming it; a folder
holds the records of one kind of stage only (`guard.check_folder_kinds`). A run that fails
removes what it created and nothing else.

`Artifact.open` is the one entry point every stage calls before any work::

    art = Artifact(out, "descriptors", layout="file")
    with art.open(config, inputs, check={...paths...}, writes=[...]) as state:
        if state.done:
            return state.report
        ... work, resumable ...
        art.finish(report)

and `Artifact.merging` the one of the ``--merge`` steps that join shards.
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
from ..errors import UserError, is_resource_error, os_error_line
from ..formats.atomic import read_json, write_json
from . import guard, lock
from .shards import Shard, find_shards, shard_name

LAYOUTS = ("file", "prefix", "folder")
LISTED = 64  # up to this many declared paths are checked one by one; more by listing their folders


def existing(paths: list[Path]) -> list[Path]:
    """The paths of `paths` that exist (files, folders or links), in order; cheap for many."""
    if len(paths) <= LISTED:
        return [p for p in paths if os.path.lexists(p)]
    by_dir: dict[Path, set[str]] = {}
    for p in paths:
        by_dir.setdefault(p.parent, set())
    for d in by_dir:
        try:
            by_dir[d] = set(os.listdir(d))
        except OSError:
            pass
    return [p for p in paths if p.name in by_dir[p.parent]]


def _remove(paths: list[Path]) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


def _record_problem(rec: dict) -> str | None:
    """Why a parsed record is not one this layer wrote, or None."""
    if not isinstance(rec.get("kind"), str):
        return "it names no stage kind"
    if not isinstance(rec.get("config"), dict):
        return "its 'config' is not an object"
    inputs = rec.get("inputs", {})
    if not isinstance(inputs, dict) or any(
            not isinstance(v, dict) or not isinstance(v.get("path"), str) or not isinstance(v.get("fingerprint"), str)
            for v in inputs.values()):
        return "its 'inputs' are damaged"
    return None


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
    legacy: str | None = None  # what an older version fingerprinted it as (accepted as the same input)

    def as_record(self) -> dict:
        return {"path": os.path.abspath(self.path), "fingerprint": self.fingerprint}

    @classmethod
    def of_images(cls, name: str, path: str | os.PathLike, files) -> "Input":
        """An image folder (its listed `formats.images.ImageFile`s), as `fingerprint.of_image_list`
        says; records of older versions (names and sizes only) still match."""
        from . import fingerprint

        return cls(name, Path(path), fingerprint.of_image_list(files), fingerprint.of_image_list_v1(files))

    def matches(self, fingerprint: object) -> bool:
        return fingerprint == self.fingerprint or (self.legacy is not None and fingerprint == self.legacy)


@dataclass
class State:
    """What `Artifact.open` found: finished (with its report), resumable, or new."""

    done: bool
    resumed: bool
    report: dict = field(default_factory=dict)


class Artifact:
    """A stage output and its sidecars (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, kind: str, layout: str = "file", stage: str | None = None,
                 owns: tuple[str, ...] = ()) -> None:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}")
        s = os.fspath(path)
        if layout == "prefix" and s.endswith(".npy"):
            s = s[:-4]
        self.path = Path(s)
        self.kind = kind
        self.layout = layout
        self.stage = stage or kind.replace(" ", "-")
        self.owns = owns  # other kinds of record this stage writes into its folder (a model's config.json)

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
        """Named after the file written, so stages that name it differently share the lock: a
        table ``--out t`` and a descriptor file ``--out t.npy`` both lock ``.t.npy.lock``."""
        if self.layout == "folder":
            return self.path / f".{self.stage}.lock"
        name = self.path.name + (".npy" if self.layout == "prefix" else "")
        return self.path.with_name(f".{name}.lock")

    def sharded(self, shard: Shard) -> "Artifact":
        """The artifact of one `--shard I/N` slice (``SET.shard-I-of-N.h5`` ...)."""
        return Artifact(shard_name(self.path, shard, keep_suffix=self.layout == "file"), self.kind, self.layout,
                        self.stage, self.owns)

    def shards(self, marker: str = "") -> list["Artifact"]:
        """The complete set of finished shard artifacts of this output, in order."""
        paths = find_shards(self.path, keep_suffix=self.layout == "file", marker=marker)
        arts = [Artifact(p, self.kind, self.layout, self.stage, self.owns) for p in paths]
        for a in arts:
            if not a.report_path.is_file():
                raise UserError(f"{a.path}: shard not finished yet; re-run it to complete it")
        return arts

    def own_files(self) -> list[Path]:
        """Every file this layer writes for the artifact (not the lock), output included."""
        out = [self.path.with_name(self.path.name + ".npy")] if self.layout == "prefix" else []
        out += [self.path] if self.layout == "file" else []
        return out + [self.record_path, self.report_path, self.partial, self.progress, self.side("parts")]

    # ------------------------------------------------------------------ the record
    def record(self) -> dict | None:
        """The record beside the output, None if there is none; UserError if it is damaged."""
        if not os.path.lexists(self.record_path):
            return None
        rec = read_json(self.record_path)
        why = _record_problem(rec)
        if why:
            raise UserError(f"{self.record_path}: not a record of an isc-qk stage ({why}); delete it, and what it "
                            "describes, to start over")
        return rec

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
        if old["kind"] != self.kind:
            raise UserError(f"{self.path}: holds a {old['kind']}, not a {self.kind}; choose another output")
        changes = diff(old.get("config", {}), to_dict(config), ignore, defaults=_defaults(config))
        if changes:
            raise UserError(f"{self.path}: existing {self.kind} was made with other settings "
                            f"({'; '.join(changes[:4])}); use another output or delete it to start over")
        old_in = old.get("inputs", {})
        new_in = {i.name: i.as_record() for i in inputs}
        by_name = {i.name: i for i in inputs}
        moved = [n for n in sorted(set(old_in) | set(new_in))
                 if n not in old_in or n not in by_name or not by_name[n].matches(old_in[n].get("fingerprint"))]
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
        write_json(self.record_path, {"kind": self.kind, "stage": self.stage, "isc_qk_version": __version__,
                                      "config": to_dict(config), "inputs": {i.name: i.as_record() for i in inputs}})

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
             resumable: Callable[[], bool] | None = None, writes: list[str | os.PathLike] = ()) -> Iterator[State]:
        """Guard the paths, take the lock, compare the record; yield the `State`.

        `check`: more paths (option name -> path) this output must not be, contain or lie
        inside, besides those of `inputs`. `writes`: every path the stage writes besides the
        output and its sidecars (see the module docstring); without a matching record, one
        that exists is refused. `skip_done=False`: a finished output is opened for more work
        anyway (augment adds copies). `replace_stale`: an output whose inputs changed content
        at the same paths is recomputed (cheap derived files) instead of refused. The record
        is written before the work starts. If the block fails, what it created goes (the
        scratch too, and the record of a new output) unless `resumable()` says a stage's own
        resumable state (e.g. a training checkpoint) is still there; a full disk, a quota or
        no memory keeps resumable rows too and becomes a one-line UserError. Ctrl-C keeps all.
        """
        inputs = list(inputs)
        paths = {i.name: i.path for i in inputs} | dict(check or {})
        writes = [Path(w) for w in writes]
        self._guard(paths, writes)
        created = self.layout == "folder" and not self.path.exists()
        with self.lock():
            status = self.check_record(config, inputs, ignore, replace_stale)
            same = status == "same"
            if same and skip_done and self.is_done():
                yield State(done=True, resumed=False, report=self.report())
                return
            declared = self._declared(writes)
            if status == "none":
                self._refuse_existing(declared)
            else:
                self._remove_stale_temps(declared)
            if status == "stale":
                self.discard_scratch()
            before = set(existing(declared))
            self.report_path.unlink(missing_ok=True)
            if not same:  # a resumed run keeps the record that began it (its ignored settings too)
                self.write_record(config, inputs)
            try:
                yield State(done=False, resumed=same)
            except KeyboardInterrupt:
                raise
            except BaseException as e:
                self._failed(e, declared, before, status == "none", created, resumable)

    @contextlib.contextmanager
    def merging(self, check: dict[str, Any] | None = None, writes: list[str | os.PathLike] = ()) -> Iterator[None]:
        """The guard, lock and clean-up of a ``--merge`` step (it writes its record itself,
        `write_merged_record`): an output that exists without this stage's record is refused."""
        writes = [Path(w) for w in writes]
        self._guard(dict(check or {}), writes)
        with self.lock():
            old = self.record()
            if old is not None and old["kind"] != self.kind:
                raise UserError(f"{self.path}: holds a {old['kind']}, not a {self.kind}; choose another output")
            declared = self._declared(writes)
            if old is None:
                self._refuse_existing(declared)
            before = set(existing(declared))
            try:
                yield
            except KeyboardInterrupt:
                raise
            except BaseException as e:
                self._failed(e, declared, before, old is None, False, None)

    def _guard(self, paths: dict[str, Any], writes: list[Path]) -> None:
        """Outputs (the side files beside this one too) against the inputs; the folder's owner."""
        outputs: dict[str, Any] = {"--out": self.path}
        if self.layout != "folder":  # side files inside an output folder are covered by the folder
            outputs |= {f"--out ({w.name})": w for w in writes[:LISTED] if w.parent != self.path.parent or
                        w.name != self.path.name}
        guard.check_paths(outputs, paths, {"--out": self.layout == "folder"},
                          {"--out": {self.kind, *self.owns}})

    def _declared(self, writes: list[Path]) -> list[Path]:
        own = [p for p in self.own_files() if p != self.record_path]
        return own + [w for w in writes if w not in own]

    def _refuse_existing(self, declared: list[Path]) -> None:
        found = existing(declared)
        if found:
            more = f", nor {len(found) - 1} more of the files it would write" if len(found) > 1 else ""
            raise UserError(f"{found[0]}: exists but was not made by this {self.stage} stage (no matching record "
                            f"beside it{more}); choose another output or delete it")

    def _remove_stale_temps(self, declared: list[Path]) -> None:
        """Temporary files (`formats.atomic`) of our own outputs left by a killed run of this stage
        (the lock says none is running now)."""
        if len(declared) > LISTED:  # a folder of many outputs (augment) cleans its own temporaries
            return
        for parent in {p.parent for p in declared}:
            try:
                temps = [n for n in os.listdir(parent) if n.startswith(".") and n.endswith(".tmp")]
            except OSError:
                continue
            for p in declared:
                if p.parent == parent:
                    for n in temps:
                        if n.startswith(f".{p.name}.") and n != f".{p.name}.tmp":
                            with contextlib.suppress(OSError):
                                (parent / n).unlink()

    def _failed(self, e: BaseException, declared: list[Path], before: set[Path], new: bool, created: bool,
                resumable: Callable[[], bool] | None) -> None:
        """Clean up after a failed block, then re-raise (a resource failure as one line)."""
        resource = is_resource_error(e)
        keep = bool(resumable and resumable()) or (resource and self.rows_kept() > 0)
        if not keep:
            self.discard_scratch()
            _remove([p for p in existing(declared) if p not in before])
            if new:  # nothing left to resume: leave no record either
                self.record_path.unlink(missing_ok=True)
                if created:  # a folder this run made holds only this run's files
                    shutil.rmtree(self.path, ignore_errors=True)
        if not resource:
            raise e
        if isinstance(e, MemoryError):
            what = f"out of memory while making {self.path}; use a smaller --batch (or --shard the work)"
        else:
            what = f"{os_error_line(e)} (while making {self.path})"
        tail = ("the finished part is kept: make room, then run the same command again to resume" if keep
                else "nothing was left behind")
        raise UserError(f"{what}; {tail}") from None

    def rows_kept(self) -> int:
        """Rows a failed or interrupted per-image run left resumable in the scratch (0: none)."""
        from ..formats import npy

        try:
            done = read_json(self.progress).get("rows_done", 0) if self.progress.is_file() else 0
        except UserError:
            return 0
        return done if isinstance(done, int) and done > 0 and npy.layout(self.partial) is not None else 0

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
        """The record of a merged output; refused if the output exists with another record. Call it
        before writing the merged files: from here on the output no longer counts as finished."""
        old = self.record()
        if old is not None:
            changes = diff(old.get("config", {}), config, ignore=("n_images", *ignore))
            if changes:
                raise UserError(f"{self.path}: existing {self.kind} was made with other settings "
                                f"({'; '.join(changes[:4])}); use another output or delete it")
            fingerprints = lambda rec: {k: v.get("fingerprint") for k, v in rec.items()}  # noqa: E731
            if fingerprints(old.get("inputs", {})) != fingerprints(inputs):
                raise UserError(f"{self.path}: existing {self.kind} was made from other inputs than these shards; "
                                "use another output or delete it")
        self.report_path.unlink(missing_ok=True)
        write_json(self.record_path, {"kind": self.kind, "stage": self.stage, "isc_qk_version": __version__,
                                      "config": config, "inputs": inputs})


def holds_stage_outputs(folder: Path, depth: int = 3) -> bool:
    """Whether a folder's SUBfolders (up to `depth` levels) hold a stage's record: work that a
    composite stage (pipeline, demo) keeps when it fails, so that a re-run resumes there."""
    folder = Path(folder)
    base = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        level = len(Path(root).parts) - base
        if level >= depth:
            dirs[:] = []
        if level >= 1 and any(f == "config.json" or f.endswith(("_config.json", ".config.json")) for f in files):
            return True
    return False


def total_images(shards: list[Artifact]) -> int:
    """The images of a set of shards, from their records (``n_images``)."""
    total = 0
    for s in shards:
        n = s.record()["config"].get("n_images")
        if type(n) is not int or n < 0:
            raise UserError(f"{s.record_path}: damaged record (n_images {n!r}); re-run that shard")
        total += n
    return total


def _defaults(config: Any) -> dict | None:
    """The default settings of `config`'s dataclass (None if it has required fields)."""
    try:
        return to_dict(type(config)())
    except TypeError:
        return None
