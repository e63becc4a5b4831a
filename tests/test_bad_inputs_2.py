"""Bad inputs, round 2 (issue 21), against the real CLI, each in its own process, asserted like
round 1 (`test_bad_inputs.py`): exit 2, one `error:` line, no traceback, every file that existed
before byte-identical, no file left behind.

The classes: files a stage writes BESIDE its named output (side files, sidecars, JPEGs, merged
outputs, lock names); folders made by ANOTHER kind of stage; absurd numbers and damaged files
the tool reads back (records, model configs, checkpoints, tables, PCAs, normalisers); ids that
would not round-trip; wrong results that used to be accepted. Plus, outside the table: a full
disk for every writing stage (a real tmpfs where this machine lets us mount one, else a file-size
limit, RLIMIT_FSIZE, which makes every write past it fail with EFBIG as a full disk fails with
ENOSPC), two spellings of one output, thin and foreign-format images, a replaced image.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import make_image_folder
from test_bad_inputs import _env, isc, refused_cleanly, tree

DIM = 8


def _h5(path: Path, names: list, vectors: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("vectors", data=vectors)
        f.create_dataset("image_names", data=np.array(names, dtype=object), dtype=h5py.string_dtype("ascii"))


def _same_size_other_jpeg(src: Path, other: Path, dst: Path) -> None:
    """`other`'s picture in a file exactly as long as `src` (JPEG readers ignore bytes after EOI)."""
    a, b = src.read_bytes(), other.read_bytes()
    assert len(b) < len(a), "pick a smaller other image"
    dst.write_bytes(b + b"\0" * (len(a) - len(b)))
    st = src.stat()
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Finished artifacts of every stage (the library makes them), and damaged copies of them."""
    from isc_qk.augment.runner import augment_folder
    from isc_qk.configs import AugmentConfig, ModelConfig, NormConfig, PCAFitConfig, TrainConfig
    from isc_qk.formats import read_descriptors, write_descriptors, write_ground_truth
    from isc_qk.models.init import init_model
    from isc_qk.normalize.files import fit_normalizer_files
    from isc_qk.qk.precompute import precompute
    from isc_qk.qk.train import train
    from isc_qk.starts.stage import describe_start_set, fit_start_pca

    root = tmp_path_factory.mktemp("bad2")
    make_image_folder(root / "train", 12, "T", seed=0, size=72)
    make_image_folder(root / "refs", 6, "R", seed=1, size=72)
    make_image_folder(root / "queries", 6, "Q", seed=2, size=72)
    write_ground_truth(root / "gt.csv", [(f"Q{i:06d}", f"R{i:06d}" if i < 3 else None) for i in range(6)])
    pca = fit_start_pca("gist", root / "train", root / "gist", PCAFitConfig(n_train=None, dim=DIM))
    for name in ("refs", "queries", "train"):
        describe_start_set(pca, root / name, root / "gist" / f"{name}.h5", progress=False)
    for i in range(2):
        describe_start_set(pca, root / "refs", root / "gist" / "ok.h5", shard=f"{i}/2", progress=False)
    q, r = read_descriptors(root / "gist" / "queries.h5"), read_descriptors(root / "gist" / "refs.h5")
    write_descriptors(root / "q.h5", q)
    write_descriptors(root / "r.h5", r)
    augment_folder(root / "train", root / "aug", AugmentConfig(copies=1), progress=False)
    m0 = init_model(pca, ModelConfig(backbone="tiny", backbone_weights=None, dim=DIM, head_hidden=16), root / "m0")
    precompute(m0, "k", root / "train", root / "k0", batch=16, progress=False)
    for i in range(2):
        precompute(m0, "k", root / "refs", root / "pm", shard=f"{i}/2", batch=16, progress=False)
    fit_normalizer_files(root / "gist" / "train.h5", NormConfig(method="nes", k=3), root / "norm")
    fit_normalizer_files(root / "gist" / "train.h5", NormConfig(method="whiten", dim=4), root / "normw")
    cfg = TrainConfig(steps=1, batch_size=4, workers=1)
    train(m0, root / "k0", root / "aug", root / "mt", cfg, progress=False)

    # 1. files beside an output that no stage made
    (root / "new.gist960.h5").write_bytes(b"a user's own file\n")
    (root / "feats").mkdir()
    (root / "feats" / "mine.ids.txt").write_text("a user's own list\n")
    (root / "userdir").mkdir()
    shutil.copy(root / "train" / "T000001.jpg", root / "userdir" / "T000001_a0.jpg")
    (root / "d.h5.report.json").write_text('{"mine": true}\n')
    (root / "n.h5.config.json").write_text('{"hello": "world"}\n')
    (root / "x.h5.config.json").write_text("[1, 2, 3]\n")
    for name, content in (("pcadir/pca.json", "{}"), ("normdir/norm.npz", "user"), ("traindir/losses.csv", "a,b\n")):
        (root / name).parent.mkdir()
        (root / name).write_text(content)
    (root / "gist" / "ok.h5").write_bytes(b"not a merge\n")  # the shards' merged name, taken
    shutil.copytree(root / "gist", root / "gist2")
    (root / "gist2" / "ok.h5").unlink()
    (root / "gist2" / "ok.gist960.h5").write_bytes(b"mine\n")
    for p in sorted(root.glob("pm.shard-*")):
        shutil.copy(p, root / p.name.replace("pm.", "pu."))
    (root / "pu.ids.txt").write_text("mine\n")
    (root / ".lk.h5.lock").write_text("these are my notes, not a lock\n")
    (root / "sdir").mkdir()
    (root / "sdir" / "s.gist960.h5").mkdir()
    # 2. folders made by another kind of stage, manifests of other runs
    shutil.copytree(root / "aug", root / "augcopy")
    for p in (root / "augcopy").glob("augment_*"):
        p.unlink()
    augment_folder(root / "train", root / "aug2", AugmentConfig(copies=2), progress=False)
    for i in range(2):
        augment_folder(root / "train", root / "augsh", AugmentConfig(copies=1), shard=f"{i}/2", progress=False)
    for p in (root / "augsh").glob("*.shard-*"):  # shard bookkeeping beside an unsharded 2-copy run
        shutil.copy(p, root / "aug2" / p.name)
    for p in (root / "augsh").glob("augment.shard-*"):
        shutil.copy(p, root / "aug2" / p.name)
    (root / "augsh" / "manifest.csv").write_text("query_id,source_id,ops\nmine,T000000,[]\n")
    # 3. damaged files read back
    for name, config in (("mlist", []), ("mnull", None)):
        shutil.copytree(m0, root / name)
        (root / name / "config.json").write_text(json.dumps(config if name == "mlist" else
                                                            {"kind": "qk-model", "config": None}))
    shutil.copytree(m0, root / "mbig")
    meta = json.loads((m0 / "config.json").read_text())
    meta["config"]["head_hidden"] = 10**11
    (root / "mbig" / "config.json").write_text(json.dumps(meta))
    shutil.copytree(m0, root / "mtype")
    meta = json.loads((m0 / "config.json").read_text())
    meta["config"]["dim"] = "eight"
    (root / "mtype" / "config.json").write_text(json.dumps(meta))
    for name, content in (("kempty", ""), ("kdict", "{}"), ("knull", "null")):
        shutil.copy(root / "k0.npy", root / f"{name}.npy")
        shutil.copy(root / "k0.ids.txt", root / f"{name}.ids.txt")
        (root / f"{name}.config.json").write_text(content)
    (root / "kzero.npy").write_bytes(b"")
    shutil.copy(root / "k0.ids.txt", root / "kzero.ids.txt")
    shutil.copy(root / "k0.npy", root / "kblank.npy")
    ids = (root / "k0.ids.txt").read_text().split()
    (root / "kblank.ids.txt").write_text("\n".join(ids[:5] + [""] + ids[6:]) + "\n")
    np.save(root / "kint.npy", np.zeros((12, 72), np.int64))
    shutil.copy(root / "k0.ids.txt", root / "kint.ids.txt")
    _interrupted_training(root, m0)
    gnan = root / "gnan"
    gnan.mkdir()
    with np.load(root / "gist" / "pca.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["mean"] = arrays["mean"].copy()
    arrays["mean"][0] = np.nan
    np.savez(gnan / "pca.npz", **arrays)
    shutil.copy(root / "gist" / "pca.json", gnan / "pca.json")
    glist = root / "glist"
    glist.mkdir()
    shutil.copy(root / "gist" / "pca.npz", glist / "pca.npz")
    (glist / "pca.json").write_text("[]")
    shutil.copytree(root / "norm", root / "normx")  # nes record, whiten arrays
    shutil.copy(root / "normw" / "norm.npz", root / "normx" / "norm.npz")
    shutil.copytree(root / "norm", root / "normy")  # nes arrays, record says none
    meta = json.loads((root / "normy" / "config.json").read_text())
    meta["config"]["method"] = "none"
    (root / "normy" / "config.json").write_text(json.dumps(meta))
    shutil.copytree(root / "mt", root / "mtdamaged")
    (root / "mtdamaged" / "train_config.json").write_text('{"kind": "qk-train"}')
    shutil.copytree(root / "aug", root / "augnull")
    rec = json.loads((root / "aug" / "augment_config.json").read_text())
    rec["config"] = None
    (root / "augnull" / "augment_config.json").write_text(json.dumps(rec))
    for p in sorted(root.glob("pm.shard-*")):
        shutil.copy(p, root / p.name.replace("pm.", "pn."))
    rec = json.loads((root / "pn.shard-1-of-2.config.json").read_text())
    rec["config"]["n_images"] = "three"
    (root / "pn.shard-1-of-2.config.json").write_text(json.dumps(rec))
    # 5. ids that do not round-trip, wrong results
    (root / "nl").mkdir()
    shutil.copy(root / "refs" / "R000000.jpg", root / "nl" / "R0\nx.jpg")
    shutil.copy(root / "refs" / "R000001.jpg", root / "nl" / "R1.jpg")
    (root / "sp").mkdir()
    shutil.copy(root / "refs" / "R000000.jpg", root / "sp" / "R0 .jpg")
    (root / "dbl").mkdir()
    shutil.copy(root / "refs" / "R000000.jpg", root / "dbl" / "x.jpg.png")
    shutil.copy(root / "refs" / "R000001.jpg", root / "dbl" / "x.png")
    (root / "case").mkdir()
    shutil.copy(root / "refs" / "R000000.jpg", root / "case" / "x.jpg")
    shutil.copy(root / "refs" / "R000001.jpg", root / "case" / "x.PNG")
    gt = (root / "gt.csv").read_text()
    (root / "gtdup.csv").write_text(gt + "Q000004,\n")
    (root / "gtnul.csv").write_text(gt + "Q0\x0000099,R000001\n")
    (root / "gtboth.csv").write_text(gt + "Q000004,R000002\n")
    _h5(root / "qempty.h5", [i.encode() for i in q.ids[:-1]] + [b""], q.vectors)
    _h5(root / "qnl.h5", [i.encode() for i in q.ids[:-1]] + [b"Q\nX"], q.vectors)
    _h5(root / "qsp.h5", [i.encode() for i in q.ids[:-1]] + [b" Q5"], q.vectors)
    _h5(root / "qT.h5", [i.encode() for i in q.ids], np.ascontiguousarray(q.vectors.T))
    unit = q.vectors[:, :6] / np.linalg.norm(q.vectors[:, :6], axis=1, keepdims=True)
    _h5(root / "qT6.h5", [i.encode() for i in q.ids], np.ascontiguousarray(unit.T))  # 6 x 6: the shape cannot tell
    from isc_qk.normalize.files import normalize_file

    normalize_file(root / "norm", root / "q.h5", root / "normed.h5")
    shutil.copytree(root / "aug", root / "aug2src")
    rows = (root / "aug" / "manifest.csv").read_text().splitlines()
    (root / "aug2src" / "manifest.csv").write_text("\n".join(rows + [rows[1].replace("T000000,", "T000001,", 1)]) + "\n")
    # 6. other
    os.symlink(root / "gone", root / "broken")
    for sub, src in (("train", "train"), ("references", "refs"), ("queries", "queries")):
        shutil.copytree(root / src, root / "disc" / sub)
    shutil.copy(root / "gt.csv", root / "disc" / "ground_truth.csv")
    (root / "wdemo" / "data" / "train").mkdir(parents=True)
    shutil.copy(root / "train" / "T000000.jpg", root / "wdemo" / "data" / "train" / "T000000.jpg")
    (root / "wpipe").mkdir()
    (root / "wpipe" / "results.md").write_text("# my notes\n")
    return root


def _interrupted_training(root: Path, m0: Path) -> None:
    """A train-q run stopped (Ctrl-C) after 2 steps, its checkpoint kept; and damaged copies."""
    from isc_qk.configs import TrainConfig
    from isc_qk.qk.train import train

    def stop(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(m0, root / "k0", root / "aug", root / "mi", TrainConfig(steps=5, batch_size=4, workers=1,
                                                                    checkpoint_every=1), progress=False, on_step=stop)
    ck = root / "mi" / "checkpoints"
    step = json.loads((ck / "latest.json").read_text())["dir"]
    damage = {
        "mi_trunc": lambda d: _truncate(d / "checkpoints" / step / "optimizer.npz"),
        "mi_state": lambda d: (d / "checkpoints" / step / "state.json").write_text("[1, 2]"),
        "mi_step": lambda d: (d / "checkpoints" / step / "state.json").write_text('{"step": "two", "losses": []}'),
        "mi_ptr": lambda d: (d / "checkpoints" / "latest.json").write_text('{"step": 2, "dir": "../../m0"}'),
        "mi_weights": lambda d: _truncate(d / "checkpoints" / step / "q_head.weights.h5"),
    }
    for name, fn in damage.items():
        shutil.copytree(root / "mi", root / name)
        fn(root / name)


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])


TRAIN = ["--keys", "k0", "--queries", "aug", "--steps", "5", "--batch", "4", "--workers", "1", "--no-progress"]
T1 = ["--keys", "k0", "--queries", "aug", "--steps", "1", "--batch", "4", "--workers", "1", "--no-progress"]

# (name, argv, a piece of the expected message); paths are relative to the world folder
CASES = [
    # 1. files a stage writes beside its named output: never someone else's
    ("gist set over a user's raw side file", ["gist-pca", "--pca", "gist", "--images", "refs", "--out", "new.h5"],
     "new.gist960.h5: exists but was not made"),
    ("precompute over a user's ids list", ["precompute", "--model", "m0", "--side", "k", "--images", "refs",
                                           "--out", "feats/mine"], "mine.ids.txt: exists but was not made"),
    ("augment over a user's JPEG", ["augment", "train", "--out", "userdir"], "T000001_a0.jpg: exists but was not made"),
    ("describe over a user's sidecar", ["describe", "--model", "m0", "--side", "k", "--images", "refs", "--out", "d.h5"],
     "d.h5.report.json: exists but was not made"),
    ("normalize over a foreign record", ["normalize", "--norm", "norm", "--in", "q.h5", "--out", "n.h5"],
     "not a record of an isc-qk stage"),
    ("gist set over a JSON list record", ["gist-pca", "--pca", "gist", "--images", "refs", "--out", "x.h5"],
     "expected a JSON object"),
    ("gist fit over a user's pca.json", ["gist-pca", "--train", "train", "--out", "pcadir"], "pca.json: exists but"),
    ("normalize-fit over a user's norm.npz", ["normalize-fit", "--train", "gist/train.h5", "--out", "normdir"],
     "norm.npz: exists but"),
    ("train-q over a user's losses.csv", ["train-q", "--model", "m0", *T1, "--out", "traindir"], "losses.csv: exists but"),
    ("gist merge over a user's file", ["gist-pca", "--merge", "--out", "gist/ok.h5"], "ok.h5"),
    ("gist merge over a user's raw file", ["gist-pca", "--merge", "--out", "gist2/ok.h5"], "ok.gist960.h5: exists but"),
    ("precompute merge over a user's ids", ["precompute", "--merge", "--out", "pu"], "pu.ids.txt: exists but"),
    ("augment-merge over a user's manifest", ["augment-merge", "augsh"], "manifest.csv: exists but"),
    ("a user's file where the lock goes", ["gist-pca", "--pca", "gist", "--images", "refs", "--out", "lk.h5"],
     "not a lock file"),
    ("raw side file is a folder", ["gist-pca", "--pca", "gist", "--images", "refs", "--out", "sdir/s.h5"],
     "existing folder"),
    ("gist set over a plain descriptor file", ["gist-pca", "--pca", "gist", "--images", "refs", "--out", "q.h5"],
     "q.h5: exists but was not made"),
    # 2. folders made by another kind of stage
    ("train-q into a normaliser", ["train-q", "--model", "m0", *T1, "--out", "norm"], "another kind of stage (normalizer"),
    ("normalize-fit into a model", ["normalize-fit", "--train", "gist/train.h5", "--out", "mt"], "another kind of stage (qk-"),
    ("gist fit into a model", ["gist-pca", "--train", "train", "--out", "mt"], "another kind of stage (qk-"),
    ("init-model into an augmentation", ["init-model", "--pca", "gist", "--backbone", "tiny", "--out", "aug2"],
     "another kind of stage (augmentation"),
    ("augment into a model", ["augment", "refs", "--out", "mt"], "another kind of stage (qk-"),
    ("augment into a normaliser", ["augment", "refs", "--out", "norm"], "another kind of stage (normalizer"),
    ("normalize-fit into an augmentation", ["normalize-fit", "--train", "gist/train.h5", "--out", "aug"],
     "another kind of stage (augmentation"),
    ("gist fit into a normaliser", ["gist-pca", "--train", "train", "--out", "norm"], "another kind of stage (normalizer"),
    ("train-q into the PCA folder", ["train-q", "--model", "m0", *T1, "--out", "gist"], "another kind of stage (descriptor PCA"),
    ("augment over another run's manifest", ["augment", "train", "--out", "augcopy"], "manifest.csv: exists but"),
    ("augment-merge over an unsharded run", ["augment-merge", "aug2"], "no shard made"),
    ("describe over a normalised file", ["describe", "--model", "m0", "--side", "q", "--images", "queries",
                                         "--out", "normed.h5"], "holds a normalized descriptors"),
    ("normalize over a gist set", ["normalize", "--norm", "norm", "--in", "q.h5", "--out", "gist/refs.h5"],
     "holds a frozen descriptors"),
    ("pipeline into a model", ["pipeline", "--data", "disc", "--work", "mt"], "another kind of stage (qk-"),
    ("demo over a user's image", ["demo", "--quick", "--work", "wdemo"], "T000000.jpg: exists but was not made"),
    ("pipeline over a user's results.md", ["pipeline", "--data", "disc", "--work", "wpipe", "--recipe", "gist"],
     "results.md: exists but was not made"),
    # 3. absurd numbers, damaged files the tool reads back
    ("negative seed, gist-pca", ["gist-pca", "--train", "train", "--out", "g9", "--seed", "-1"], "--seed"),
    ("negative seed, train-q", ["train-q", "--model", "m0", *T1, "--out", "m9", "--seed", "-1"], "--seed"),
    ("negative seed, init-model", ["init-model", "--pca", "gist", "--backbone", "tiny", "--out", "m9", "--seed", "-3"],
     "--seed"),
    ("seed past 32 bits", ["augment", "train", "--out", "a9", "--seed", str(2**40)], "--seed"),
    ("1e11 hidden units", ["init-model", "--pca", "gist", "--backbone", "tiny", "--out", "m9", "--head-hidden",
                           str(10**11)], "--head-hidden"),
    ("1e23 steps", ["train-q", "--model", "m0", "--keys", "k0", "--queries", "aug", "--out", "m9", "--steps",
                    str(10**23)], "--steps"),
    ("1e308 epochs", ["train-q", "--model", "m0", "--keys", "k0", "--queries", "aug", "--out", "m9", "--epochs",
                      "1e308"], "--epochs"),
    ("tau 1e-30", ["train-q", "--model", "m0", *T1, "--out", "m9", "--tau", "1e-30"], "--tau"),
    ("lr 1000", ["train-q", "--model", "m0", *T1, "--out", "m9", "--lr", "1000"], "--lr"),
    ("w-neg 1e300", ["train-q", "--model", "m0", *T1, "--out", "m9", "--w-neg", "1e300"], "--w-neg"),
    ("no loss at all", ["train-q", "--model", "m0", *T1, "--out", "m9", "--w-pos", "0", "--w-neg", "0"], "both 0"),
    ("a billion workers", ["train-q", "--model", "m0", *T1[:-3], "--workers", str(10**9), "--out", "m9"], "--workers"),
    ("batch of a trillion", ["train-q", "--model", "m0", "--keys", "k0", "--queries", "aug", "--out", "m9",
                             "--batch", str(10**12)], "--batch"),
    ("precompute batch beyond memory", ["precompute", "--model", "m0", "--side", "k", "--images", "refs",
                                        "--out", "t9", "--batch", str(10**8)], "memory"),
    ("describe batch beyond memory", ["describe", "--model", "m0", "--side", "k", "--images", "refs",
                                      "--out", "d9.h5", "--batch", str(10**8)], "memory"),
    ("nes beta 1e300", ["normalize-fit", "--train", "gist/train.h5", "--out", "n9", "--beta", "1e300"], "--beta"),
    ("nes k of ten million", ["normalize-fit", "--train", "gist/train.h5", "--out", "n9", "--k", str(10**7)], "--k"),
    ("copies 100000", ["augment", "train", "--out", "a9", "--copies", "100000"], "--copies"),
    ("max side 1e9", ["augment", "train", "--out", "a9", "--max-side", str(10**9)], "--max-side"),
    ("n-train 1e12", ["gist-pca", "--train", "train", "--out", "g9", "--n-train", str(10**12)], "--n-train"),
    ("residual scale 1e300", ["init-model", "--pca", "gist", "--backbone", "tiny", "--out", "m9",
                              "--residual-scale", "1e300"], "--residual-scale"),
    ("model config is a list", ["train-q", "--model", "mlist", *T1, "--out", "m9"], "expected a JSON object"),
    ("model config null", ["describe", "--model", "mnull", "--side", "k", "--images", "refs", "--out", "d9.h5"],
     "settings must be a JSON object"),
    ("init-model over a damaged model", ["init-model", "--pca", "gist", "--backbone", "tiny", "--out", "mnull"],
     "damaged"),
    ("model config with 1e11 hidden", ["precompute", "--model", "mbig", "--side", "k", "--images", "refs",
                                       "--out", "t9"], "--head-hidden"),
    ("model config with a string dim", ["describe", "--model", "mtype", "--side", "k", "--images", "refs",
                                        "--out", "d9.h5"], "wrong type"),
    ("truncated optimizer checkpoint", ["train-q", "--model", "m0", *TRAIN, "--out", "mi_trunc"], "optimizer.npz"),
    ("checkpoint state a list", ["train-q", "--model", "m0", *TRAIN, "--out", "mi_state"], "expected a JSON object"),
    ("checkpoint state garbage step", ["train-q", "--model", "m0", *TRAIN, "--out", "mi_step"], "damaged checkpoint"),
    ("checkpoint pointer outside", ["train-q", "--model", "m0", *TRAIN, "--out", "mi_ptr"], "damaged checkpoint"),
    ("truncated checkpoint weights", ["train-q", "--model", "m0", *TRAIN, "--out", "mi_weights"], "q_head.weights.h5"),
    ("empty record beside a table", ["train-q", "--model", "m0", "--keys", "kempty", *T1[2:], "--out", "m9"],
     "kempty.config.json"),
    ("{} record beside a table", ["train-q", "--model", "m0", "--keys", "kdict", *T1[2:], "--out", "m9"],
     "not a record"),
    ("null record beside a table", ["precompute", "--model", "m0", "--side", "k", "--images", "train", "--out", "knull"],
     "expected a JSON object"),
    ("zero-byte table", ["train-q", "--model", "m0", "--keys", "kzero", *T1[2:], "--out", "m9"], "not a valid .npy"),
    ("blank line in a table's ids", ["train-q", "--model", "m0", "--keys", "kblank", *T1[2:], "--out", "m9"],
     "empty"),
    ("integer table", ["train-q", "--model", "m0", "--keys", "kint", *T1[2:], "--out", "m9"], "float16 or float32"),
    ("PCA with NaN", ["init-model", "--pca", "gnan", "--backbone", "tiny", "--out", "m9"], "NaN"),
    ("PCA json a list", ["gist-pca", "--pca", "glist", "--images", "refs", "--out", "g9.h5"], "not a PCA file"),
    ("damaged train record", ["train-q", "--model", "m0", *T1, "--out", "mtdamaged"], "damaged qk-train record"),
    ("damaged augment record", ["augment", "train", "--out", "augnull"], "damaged augmentation record"),
    ("shard record without a count", ["precompute", "--merge", "--out", "pn"], "n_images"),
    # 5. wrong results that were accepted
    ("a newline in a file name", ["gist-pca", "--pca", "gist", "--images", "nl", "--out", "g9.h5"], "control character"),
    ("a trailing space in a file name", ["gist-pca", "--pca", "gist", "--images", "sp", "--out", "g9.h5"], "space"),
    ("x.jpg.png beside x.png", ["gist-pca", "--pca", "gist", "--images", "dbl", "--out", "g9.h5"], "reads back as"),
    ("x.jpg beside x.PNG", ["describe", "--model", "m0", "--side", "k", "--images", "case", "--out", "d9.h5"],
     "shared by two files"),
    ("norm arrays of another method", ["normalize", "--norm", "normx", "--in", "q.h5", "--out", "n9.h5"],
     "does not hold a nes normaliser"),
    ("norm record of another method", ["normalize", "--norm", "normy", "--in", "q.h5", "--out", "n9.h5"],
     "does not hold a none normaliser"),
    ("ground truth with a repeated row", ["evaluate-uap", "--ground-truth", "gtdup.csv", "--query", "q.h5",
                                          "--reference", "r.h5"], "duplicate row"),
    ("ground truth with a NUL byte", ["evaluate-uap", "--ground-truth", "gtnul.csv", "--query", "q.h5",
                                      "--reference", "r.h5"], "control character"),
    ("query both distractor and matched", ["evaluate-uap", "--ground-truth", "gtboth.csv", "--query", "q.h5",
                                           "--reference", "r.h5"], "without a reference"),
    ("an empty id in an HDF5", ["submit", "--query", "qempty.h5", "--reference", "r.h5", "--out", "s9.h5"], "empty"),
    ("a newline in an HDF5 id", ["submit", "--query", "qnl.h5", "--reference", "r.h5", "--out", "s9.h5"],
     "control character"),
    ("a space before an HDF5 id", ["evaluate-uap", "--ground-truth", "gt.csv", "--query", "qsp.h5", "--reference",
                                   "r.h5"], "space"),
    ("vectors stored transposed", ["evaluate-uap", "--ground-truth", "gt.csv", "--query", "qT.h5", "--reference",
                                   "r.h5"], "transposed"),
    ("square vectors stored transposed", ["evaluate-uap", "--ground-truth", "gt.csv", "--query", "qT6.h5",
                                          "--reference", "r.h5"], "transposed"),
    ("a query with two sources", ["train-q", "--model", "m0", "--keys", "k0", "--queries", "aug2src",
                                  *T1[4:], "--out", "m9"], "two sources"),
    # 6. other
    ("broken symlink as image folder", ["gist-pca", "--pca", "gist", "--images", "broken", "--out", "g9.h5"],
     "broken symbolic link"),
    ("more shards than images", ["describe", "--model", "m0", "--side", "k", "--images", "refs", "--out", "d9.h5",
                                 "--shard", "3/7"], "7 shards for only 6 images"),
    ("more augment shards than images", ["augment", "refs", "--out", "a9", "--shard", "0/9"], "9 shards"),
    ("a hundred thousand threads", ["evaluate-uap", "--ground-truth", "gt.csv", "--query", "q.h5", "--reference", "r.h5",
                                    "--threads", "100000"], "--threads"),
    ("a million and one shards", ["gist-pca", "--pca", "gist", "--images", "refs", "--out", "g9.h5", "--shard",
                                  "0/1000001"], "1,000,000"),
]


@pytest.mark.parametrize("name,argv,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_damages_nothing(world, name, argv, message):
    refused_cleanly(world, name, argv, message)


def test_there_are_at_least_sixty_new_bad_inputs():
    assert len(CASES) >= 60


# --------------------------------------------------------------------------- beyond the table
def test_no_arguments_prints_the_help_and_no_error():
    res = isc()
    assert res.returncode == 0, res.stderr
    assert "Usage" in res.stdout + res.stderr and "error:" not in res.stderr


def test_two_spellings_of_one_output_share_one_lock(world, tmp_path):
    """`--out t` and `--out t.npy` are one table: while one writer holds it, the other is refused."""
    from isc_qk.qk.precompute import table_artifact

    with table_artifact(tmp_path / "t").lock():
        res = isc("precompute", "--model", world / "m0", "--side", "k", "--images", world / "refs",
                  "--out", tmp_path / "t.npy", "--no-progress")
    assert res.returncode == 2 and "being written by another process" in res.stderr, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with table_artifact(tmp_path / "t").lock():  # another stage writing the same file t.npy
        res = isc("normalize", "--norm", world / "norm", "--in", world / "q.h5", "--out", tmp_path / "t.npy")
    assert res.returncode == 2 and "being written by another process" in res.stderr, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_thin_and_foreign_format_images_are_left_out_with_a_warning(world, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs"
    shutil.copytree(world / "refs", folder)
    Image.fromarray(np.full((1, 20000, 3), 128, np.uint8)).save(folder / "R999998.png")
    Image.fromarray(np.full((20000, 1, 3), 64, np.uint8)).save(folder / "R999999.png")
    Image.open(world / "refs" / "R000000.jpg").save(folder / "R777777.tif")
    res = isc("augment", folder, "--out", tmp_path / "aug", "--copies", "3", "--quiet")
    assert res.returncode == 0, res.stderr
    assert "too thin" in res.stderr and "R999998.png" in res.stderr and "edit failed" not in res.stderr
    assert "R777777.tif" in res.stderr and "format isc-qk does not read" in res.stderr
    assert len(list((tmp_path / "aug").glob("*.jpg"))) == 6 * 3
    res = isc("gist-pca", "--pca", world / "gist", "--images", folder, "--out", tmp_path / "s.h5")
    assert res.returncode == 0, res.stderr
    assert "R777777.tif" in res.stderr and "too thin" in res.stderr  # every stage says so, not only augment


def test_a_replaced_image_of_the_same_size_and_time_is_noticed(world, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(world / "refs", folder)
    first = isc("gist-pca", "--pca", world / "gist", "--images", folder, "--out", tmp_path / "s.h5")
    assert first.returncode == 0, first.stderr
    sizes = {p: p.stat().st_size for p in folder.glob("*.jpg")}
    big = max(sizes, key=sizes.get)
    small = min(sizes, key=sizes.get)
    replacement = tmp_path / "other.jpg"
    _same_size_other_jpeg(big, small, replacement)
    os.replace(replacement, big)
    os.utime(big, ns=(first_atime := big.stat().st_atime_ns, first_atime))
    res = isc("gist-pca", "--pca", world / "gist", "--images", folder, "--out", tmp_path / "s.h5")
    assert res.returncode == 2 and "changed since" in res.stderr, res.stderr


# --------------------------------------------------------------------------- a full disk
MOUNT = shutil.which("mount")


def _try_tmpfs(where: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` at `where`; None if this machine does not let us (why, printed)."""
    if MOUNT is None or os.geteuid() != 0:
        return "not root (or no mount command)"
    res = subprocess.run([MOUNT, "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                         text=True)
    return None if res.returncode == 0 else (res.stderr.strip() or "mount failed")


#: How to fill the disk: "tmpfs" (mount one, skip if impossible), "fsize" (simulate), or "" (tmpfs where
#: it can be mounted, else fsize). CI without mount rights runs the simulation.
FULL_DISK = os.environ.get("ISC_QK_TEST_FULL_DISK", "")


@pytest.fixture
def small_disk(tmp_path):
    """`make(tmpfs_size, fsize)` -> (folder, how, file-size limit): a folder on which writes fail
    like on a full disk: a tmpfs of `tmpfs_size` bytes where we may mount one (ENOSPC), else a
    plain folder and a limit of `fsize` bytes per file on the command (EFBIG)."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = []

    def make(size: int, fsize: int):
        why = "ISC_QK_TEST_FULL_DISK=fsize" if FULL_DISK == "fsize" else _try_tmpfs(where, str(size))
        if why is None:
            mounted.append(where)
            return where, "tmpfs", None
        if FULL_DISK == "tmpfs":
            pytest.skip(f"cannot mount a tmpfs here: {why}")
        print(f"tmpfs not available ({why}): a full disk simulated with RLIMIT_FSIZE={fsize}")
        return where, "fsize", fsize

    yield make
    for m in mounted:
        subprocess.run(["umount", str(m)], check=False)


def _run_limited(argv, cwd, fsize):
    def limit():
        if fsize is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run([sys.executable, "-m", "isc_qk", *map(str, argv)], capture_output=True, text=True,
                          env=_env(), cwd=cwd, timeout=300, preexec_fn=limit)


#: every writing stage: (name, argv with OUT the output on the small disk, tmpfs bytes, file-size limit)
WRITERS = [
    ("gist-pca fit", ["gist-pca", "--train", "train256", "--out", "OUT/g", "--n-train", "0"], 12 << 10, 4 << 10),
    ("gist-pca set", ["gist-pca", "--pca", "gist", "--images", "refs", "--out", "OUT/s.h5"], 12 << 10, 4 << 10),
    ("gist-pca merge", ["gist-pca", "--merge", "--out", "OUT/ok.h5"], 8 << 10, 4 << 10),
    ("augment", ["augment", "train", "--out", "OUT/a", "--quiet"], 24 << 10, 1 << 10),
    ("augment-merge", ["augment-merge", "OUT/augsh"], 8 << 10, 1 << 10),
    ("init-model", ["init-model", "--pca", "gist", "--backbone", "tiny", "--backbone-weights", "none",
                    "--head-hidden", "16", "--out", "OUT/m"], 12 << 10, 4 << 10),
    ("precompute", ["precompute", "--model", "m0", "--side", "k", "--images", "train", "--out", "OUT/t",
                    "--no-progress"], 12 << 10, 1 << 10),
    ("precompute merge", ["precompute", "--merge", "--out", "OUT/pm"], 8 << 10, 900),
    ("train-q", ["train-q", "--model", "m0", *T1, "--out", "OUT/mq"], 12 << 10, 4 << 10),
    ("describe", ["describe", "--model", "m0", "--side", "k", "--images", "refs", "--out", "OUT/d.h5",
                  "--no-progress"], 12 << 10, 2 << 10),
    ("normalize-fit", ["normalize-fit", "--train", "gist/train.h5", "--out", "OUT/n", "--k", "3"], 12 << 10, 1 << 10),
    ("normalize", ["normalize", "--norm", "norm", "--in", "q.h5", "--out", "OUT/n.h5"], 8 << 10, 2 << 10),
    ("submit", ["submit", "--query", "q.h5", "--reference", "r.h5", "--out", "OUT/sub.h5"], 4 << 10, 2 << 10),
    ("evaluate-uap --json --plot", ["evaluate-uap", "--ground-truth", "gt.csv", "--query", "q.h5", "--reference",
                                    "r.h5", "--json", "OUT/m.json", "--plot", "OUT/pr.png"], 8 << 10, 4 << 10),
]


def _train256(world: Path) -> None:
    """Enough training images for the CLI's 256-d GIST-PCA fit (small ones: GIST resizes anyway)."""
    if not (world / "train256").is_dir():
        make_image_folder(world / "train256", 260, "T", seed=7, size=32)


def _stage_shards(world: Path, disk: Path, name: str) -> None:
    """Merges need their shards on the small disk (written there while it had room)."""
    if name == "gist-pca merge":
        for p in (world / "gist").glob("ok.*shard*"):
            shutil.copy(p, disk / p.name)
    elif name == "precompute merge":
        for p in world.glob("pm.shard-*"):
            shutil.copy(p, disk / p.name)
    elif name == "augment-merge":
        (disk / "augsh").mkdir()
        for p in (world / "augsh").glob("*.shard-*"):
            shutil.copy(p, disk / "augsh" / p.name)
        for p in (world / "augsh").glob("augment.shard-*"):
            shutil.copy(p, disk / "augsh" / p.name)


@pytest.mark.parametrize("name,argv,size,fsize", WRITERS, ids=[w[0] for w in WRITERS])
def test_a_full_disk_is_one_line_and_leaves_nothing_broken(world, small_disk, name, argv, size, fsize):
    if name == "gist-pca fit":
        _train256(world)
    disk, how, fsize = small_disk(size, fsize)
    if how == "tmpfs" and name in ("gist-pca merge", "precompute merge", "augment-merge"):
        subprocess.run([MOUNT, "-o", "remount,size=64m", str(disk)], check=True)
        _stage_shards(world, disk, name)
        used = sum(p.stat().st_blocks * 512 for p in disk.rglob("*") if p.is_file())
        subprocess.run([MOUNT, "-o", f"remount,size={used + size}", str(disk)], check=True)
    elif how == "fsize":
        _stage_shards(world, disk, name)
    argv = [a.replace("OUT", str(disk)) for a in argv]
    before, disk_before = tree(world), tree(disk)
    res = _run_limited(argv, world, fsize)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    print(how, name, errors)
    assert res.returncode == 2, (name, how, res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert len(errors) == 1, res.stderr
    expected = "No space left on device" if how == "tmpfs" else "File too large"
    assert expected in errors[0], errors[0]
    assert tree(world) == before
    changed = sorted(k for k in disk_before if disk_before[k] != tree(disk).get(k))
    assert not changed, f"{name} changed {changed}"
    left = sorted(set(tree(disk)) - set(disk_before))
    hidden = [p for p in disk.rglob(".*")]
    assert not hidden, f"{name} left {hidden} (a lock or a temporary file)"
    if "the finished part is kept" in errors[0]:
        assert left, "it says work was kept, but nothing is there"
        if how == "tmpfs":
            subprocess.run([MOUNT, "-o", "remount,size=64m", str(disk)], check=True)
        again = _run_limited(argv, world, None)
        assert again.returncode == 0, again.stderr[-2000:]
    else:
        assert not left, f"{name} left files behind: {left}"
