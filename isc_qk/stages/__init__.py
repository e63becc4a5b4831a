"""The stage/artifact layer: bookkeeping every stage shares, in one place.

* `artifact` - an output and its sidecars: the record (settings + input fingerprints), the
  finished/resumable/other-settings check, the report, scratch clean-up;
* `runner` - THE per-image stage runner: list, shard, decode with one error policy, rows;
* `merge` - THE shard merge of every stage's `--shard I/N` outputs;
* `guard` - outputs never overwrite, contain or lie inside inputs; outputs are writable; a
  folder holds one kind of stage's output;
* `lock` - one writer per output;
* `fingerprint` - what an input was, cheaply;
* `shards` - ``--shard I/N`` slices, their names and how to find them;
* `rows` - chunked, resumable one-row-per-image writing into tables and descriptor files;
* `resources` - the memory a stage's batches need, checked before the work.
"""
