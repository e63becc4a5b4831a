"""GIST, the ISC2021 baseline descriptor (and the paper's residual start): the algorithm.

* `descriptor` - lear_gist 1.2 colour GIST, vectorised (960-d), and its 32x32 preprocessing.

As an encoder it is `encoders.gist`; its PCA-256 stage is `starts.stage` (`gist-pca`).
"""
