"""GIST-PCA256, the ISC2021 baseline descriptor (and the paper's residual start).

* `descriptor` - lear_gist 1.2 colour GIST, vectorised (960-d) and its 32x32 preprocessing;
* `files` - image files -> GIST (worker processes, unreadable files reported);
* `stage` - the `gist-pca` stage: PCA fitted on training images, per-set descriptor files.
"""
