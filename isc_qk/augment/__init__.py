"""ISC-style training queries: K AugLy-edited copies of every training image.

* `recipe` - THE table of edits (family, AugLy op, weight, parameter ranges) and sampling;
* `ops` - op functions that need more than one AugLy call, bundled assets, the folder context;
* `apply` - one query: sample, apply in order, keep sizes sane;
* `runner` - the `augment` stage over a folder: resumable, parallel, shardable, merge;
* `shims` - AugLy 1.0 on current Pillow/NumPy (installed where a worker starts).

QK Iteration learns from (query, key) pairs where the key is a training image and the query
is an edited copy of it, so the edits should look like the ISC2021 queries: colour changes,
overlays (emoji, text, another image, stripes), pixel-level damage, spatial changes, and
compositions (screenshots, memes, pasted onto another photo).
"""
