"""Residual starts: a frozen encoder and its PCA fitted on training images (`start`), and the
`gist-pca` / `descriptor-pca` stage that fits it and describes image sets with it (`stage`)."""
