"""What a QK training stage iterates over: images, their positives and data order.

Positives come from the augmentation manifest (``query_id,source_id``): a query (edited
image) is a positive of its source key and of nothing else.

* train-q (table negatives): rows of a batch are QUERY images; the table holds precomputed
  K features of the keys; each query has one positive table row (its source).
* train-k (table negatives): rows are KEY images that have at least one query in the table;
  the table holds precomputed Q features of the queries; a key's positives are all its copies.
* A frozen backbone's own side may also be given as its precomputed feature table (train-q
  ``--queries`` a Q table, train-k ``--keys`` a K table): the items are then the table's rows.
* ``--negatives batch``: rows are keys that have at least one query image; each epoch picks
  one of its copies (seeded), both images go through their trainable models.

Data order is a pure function of (seed, step): epoch e uses
``np.random.default_rng([seed, e]).permutation(n)``, so resuming needs only the step number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..formats.feature_table import feature_table_paths, is_feature_table, open_feature_table, read_ids
from ..formats.images import ImageFile, list_images
from ..formats.manifest import manifest_sources
from ..ui import warn


@dataclass
class TrainData:
    """Rows of the trainable side, and how each row pairs with the other side."""

    items: list[ImageFile]  # trainable-side images, one batch row each
    positives: list[np.ndarray] | None = None  # table mode: per item, its positive table rows
    table: np.ndarray | None = None  # table mode: float16 (T, feature_dim + dim), memory-mapped
    table_prefix: str | None = None
    partners: list[ImageFile] | None = None  # batch mode: the query images
    partner_of: list[np.ndarray] | None = None  # batch mode: per item, indices into partners
    # the trainable side's own precomputed feature table, when the items were given as one
    # (a frozen backbone: train-q --queries Q table, train-k --keys K table); items are its rows
    items_prefix: str | None = None

    @property
    def n(self) -> int:
        return len(self.items)

    def positive_pairs(self, rows: np.ndarray) -> np.ndarray:
        """(batch row, table row) of every positive pair of a batch of items (table mode)."""
        return np.array([(r, t) for r, item in enumerate(rows) for t in self.positives[item]], np.int64)

    def filter(self, keep_ids: set[str]) -> "TrainData":
        """Drop items whose image could not be read (their GIST failed)."""
        keep = [i for i, f in enumerate(self.items) if f.id in keep_ids]
        return TrainData(
            [self.items[i] for i in keep],
            [self.positives[i] for i in keep] if self.positives is not None else None,
            self.table,
            self.table_prefix,
            self.partners,
            [self.partner_of[i] for i in keep] if self.partner_of is not None else None,
            self.items_prefix,
        )

    def keep_partners(self, keep_ids: set[str]) -> "TrainData":
        """Batch mode: drop unreadable query images, then keys left without any copy."""
        assert self.partners is not None and self.partner_of is not None
        ok = np.array([p.id in keep_ids for p in self.partners])
        pairs = [po[ok[po]] for po in self.partner_of]
        keep = [i for i, po in enumerate(pairs) if len(po)]
        return TrainData([self.items[i] for i in keep], None, None, None, self.partners, [pairs[i] for i in keep])


def default_manifest(queries: str | os.PathLike) -> Path:
    """AUG_DIR/manifest.csv; for a query feature table, the folder it was computed from."""
    from .precompute import table_config

    q = Path(queries)
    if q.is_dir():
        return q / "manifest.csv"
    if not is_feature_table(q):
        raise UserError(f"--queries {q}: not found (an augmented image folder, or a Q feature table PREFIX.npy)")
    cfg = table_config(q)
    if cfg is None:
        raise UserError(f"{q}: feature table has no record naming its image folder; pass --manifest")
    if cfg.side != "q":
        raise UserError(f"--queries {q}: holds {cfg.side.upper()} features; --queries needs the Q table of the "
                        "augmented images (`isc-qk precompute --side q --images AUG`)")
    return Path(cfg.images_dir) / "manifest.csv"


def _need_dir(path, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{p}: {what} must be an image folder")
    return p


def _need_table(path, what: str, side: str) -> str:
    """A feature table of `side` features (checked against its config when it has one)."""
    from .precompute import table_config

    if not is_feature_table(path):
        raise UserError(f"{path}: {what} must be a feature table prefix (PREFIX.npy from `isc-qk precompute`)")
    cfg = table_config(path)
    if cfg is not None and cfg.side != side:
        raise UserError(f"{path}: table holds {cfg.side.upper()} features, {what} needs {side.upper()} features")
    return os.fspath(path)


def build_train_data(side: str, negatives: str, keys, queries, manifest=None) -> TrainData:
    """Pair the trainable side's images with their positives, as the module docstring says."""
    manifest = Path(manifest) if manifest else default_manifest(queries)
    source = manifest_sources(manifest)
    if negatives == "batch":
        key_files = list_images(_need_dir(keys, "--keys"))
        query_files = [f for f in list_images(_need_dir(queries, "--queries")) if f.id in source]
        by_source: dict[str, list[int]] = {}
        for j, f in enumerate(query_files):
            by_source.setdefault(source[f.id], []).append(j)
        items = [f for f in key_files if f.id in by_source]
        data = TrainData(items, partners=query_files, partner_of=[np.array(by_source[f.id]) for f in items])
    elif side == "q":
        prefix = _need_table(keys, "--keys (for train-q)", "k")
        table_ids, table = open_feature_table(prefix)
        row = {k: i for i, k in enumerate(table_ids)}
        del table_ids
        listed, own = _own_items(queries, "--queries", "q", source)
        items = [f for f in listed if source[f.id] in row]
        _warn_dropped(len(source), len(listed), f"have no {'row' if own else 'image'} in --queries")
        _warn_dropped(len(listed), len(items), f"have no key row in the --keys table {prefix}")
        data = TrainData(items, [np.array([row[source[f.id]]]) for f in items], table, prefix, items_prefix=own)
    else:
        prefix = _need_table(queries, "--queries (for train-k)", "q")
        table_ids, table = open_feature_table(prefix)
        rows: dict[str, list[int]] = {}
        for i, q in enumerate(table_ids):
            if q in source:
                rows.setdefault(source[q], []).append(i)
        del table_ids
        _warn_dropped(len(source), sum(len(r) for r in rows.values()), f"have no row in the --queries table {prefix}")
        listed, own = _own_items(keys, "--keys", "k", rows)
        items = [f for f in listed if f.id in rows]
        _warn_dropped(len(rows), len(items), f"have no {'row' if own else 'image'} in --keys",
                      what="source keys of the queries")
        data = TrainData(items, [np.array(rows[f.id]) for f in items], table, prefix, items_prefix=own)
    if not data.items:
        raise UserError(
            f"no (query, key) pairs: none of the manifest's {len(source)} queries pairs with an available "
            f"image/table row (check --keys, --queries and {manifest})"
        )
    return data


def _own_items(path, what: str, side: str, wanted) -> tuple[list[ImageFile], str | None]:
    """The trainable side's items: the images of a folder, or the rows of a feature table of
    this side (for a frozen backbone; train.py checks that), keeping those in `wanted`."""
    if Path(path).is_dir():
        return [f for f in list_images(path) if f.id in wanted], None
    if not is_feature_table(path):
        raise UserError(f"{what} {path}: not found (an image folder, or a {side.upper()} feature table PREFIX.npy "
                        "for a model with a frozen backbone)")
    prefix = _need_table(path, what, side)
    npy, ids_path = feature_table_paths(prefix)
    return [ImageFile(i, npy) for i in read_ids(ids_path) if i in wanted], prefix


def _warn_dropped(before: int, after: int, why: str, what: str = "training queries") -> None:
    """Pairs left out are never silent: a half-size table or missing images are worth knowing."""
    if after < before:
        warn(f"{before - after} of {before} {what} {why}; training on the remaining {after}")


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_rows(seed: int, step: int, n: int, batch: int) -> np.ndarray:
    """Item indices of the batch of `step` (drop-last batches; a pure function of the step)."""
    per_epoch = n // batch
    epoch, i = divmod(step, per_epoch)
    return epoch_order(seed, epoch, n)[i * batch : (i + 1) * batch]


def partner_choice(seed: int, step: int, n: int, batch: int, partner_of: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Batch mode: which copy of each key in the batch is its query this epoch (seeded)."""
    epoch = step // (n // batch)
    u = np.random.default_rng([seed, epoch, 1]).random(n)
    return np.array([partner_of[r][int(u[r] * len(partner_of[r]))] for r in rows])

