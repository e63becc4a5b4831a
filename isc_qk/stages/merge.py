"""THE shard merge: join the outputs of every `--shard I/N` run of a stage into the output an
unsharded run writes, with the same record.

A stage names its outputs for a shard (``outputs(shard, shard_record)``: the main file and
any side files, e.g. ``SET.h5`` and ``SET.gist960.h5``), how one output's shard files are
joined (``join(parts, target)``, e.g. concatenating HDF5 sets or tables in order) and how the
shards' reports add up. The bookkeeping is the same for all of them: every shard finished,
made with the same settings and from the same inputs as shard 0 (`Artifact.merged_record`),
one writer, the merged record written before the outputs, the report last.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import UserError
from .artifact import Artifact, total_images
from .shards import Shard

Outputs = Callable[[Shard, dict], list[Path]]
Join = Callable[[list[Path], Path], None]


def merge_shards(art: Artifact, outputs: Outputs, join: Join | list[Join], report: Callable[[list[dict]], dict],
                 marker: str = "", shards: list[Artifact] | None = None, ignore: tuple[str, ...] = (),
                 writes: list[Path] = ()) -> list[Path]:
    """Merge the finished shards of `art`; returns the merged outputs (as `outputs` orders them).

    `join`: one function for every output, or one per output. `marker`: a suffix a shard's
    output must have to count (``.npy`` for table prefixes). `shards`: the shard artifacts when
    they are not named after `art` (augment's live side by side in one folder); `ignore`:
    settings a merged record may differ in from an earlier one (augment's copies); `writes`: side
    files the outputs bring besides themselves (a table's ids)."""
    if shards is None:
        shards = art.shards(marker=marker)
    for s in shards:
        if not s.report_path.is_file():
            raise UserError(f"{s.path}: shard not finished yet; re-run it to complete it")
    config, inputs = art.merged_record(shards)
    records = [s.record() or {} for s in shards]
    if "n_images" in config:
        config["n_images"] = total_images(shards)
    n = len(shards)
    parts = [outputs(Shard(i, n), rec) for i, rec in enumerate(records)]
    targets = outputs(Shard(0, 1), records[0])
    joins = join if isinstance(join, list) else [join] * len(targets)
    with art.merging(writes=[*targets, *writes]):  # refuses outputs this stage did not make; a failure removes its files
        art.write_merged_record(config, inputs, ignore)
        for k, target in enumerate(targets):
            joins[k]([p[k] for p in parts], target)
        art.finish({**report([s.report() for s in shards]), "merged_shards": n})
    return targets
