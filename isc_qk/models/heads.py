"""The FFN head of the Q and K models, with the residual start (paper fig. 5).

    head input = concat(backbone features, start)        start = e.g. GIST-PCA256 of the image
    descriptor = residual_scale * FFN(head input) + start        (then L2, with output_l2)

`head_hidden = 0` makes the head linear (W x + b, zero-initialised).

The residual makes an untrained model reproduce the start descriptor's baseline, so training
starts from a useful descriptor instead of noise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..configs import ModelConfig

if TYPE_CHECKING:
    import keras


def build_head(feature_dim: int, cfg: ModelConfig, seed: int | None = None) -> "keras.Model":
    """FFN head: (B, feature_dim + dim) -> (B, dim) = scale * FFN(x) + x[:, -dim:].

    The last `dim` input columns are the image's start vector, so the residual adds it back.
    Initialisation is seeded (`seed`, default cfg.seed) so runs are reproducible.
    With `cfg.head_shortcut` the FFN's output layer and a linear shortcut beside it both start
    at zero: the untrained model is exactly the start.
    """
    import keras
    from keras import layers

    seed = cfg.seed if seed is None else seed
    inp = keras.Input((feature_dim + cfg.dim,), name="features")
    start = inp[:, feature_dim:]  # a graph op on the KerasTensor: no Lambda to deserialise
    if cfg.head_hidden == 0:  # linear head: zero-initialised, so the untrained model is the start
        f = layers.Dense(cfg.dim, kernel_initializer="zeros", name="linear")(inp)
        return _finish(keras, layers, inp, f, start, cfg)
    h = layers.Dense(
        cfg.head_hidden,
        activation="relu",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        name="ffn_hidden",
    )(inp)
    out_init = "zeros" if cfg.head_shortcut else keras.initializers.GlorotUniform(seed=seed + 7919)
    f = layers.Dense(cfg.dim, kernel_initializer=out_init, name="ffn_out")(h)
    if cfg.head_shortcut:
        lin = layers.Dense(cfg.dim, kernel_initializer="zeros", name="linear_shortcut")(inp)
        f = layers.Add(name="ffn_plus_linear")([f, lin])
    return _finish(keras, layers, inp, f, start, cfg)


def _finish(keras, layers, inp, f, start, cfg: ModelConfig):
    """descriptor = residual_scale * f + start, then L2 if cfg.output_l2."""
    out = layers.Add(name="residual")([layers.Rescaling(cfg.residual_scale, name="residual_scale")(f), start])
    if cfg.output_l2:
        out = layers.UnitNormalization(axis=1, name="output_l2")(out)
    return keras.Model(inp, out, name="qk_head")
