"""The Q and K models: sides of (encoder, start, head), the model folder.

* `heads` - the FFN head with the residual start;
* `qk_model` - `QKModel` (both sides) and its folder; `init` - the `init-model` stage.

The backbones themselves are encoders (`isc_qk.encoders`), the starts `isc_qk.starts`.
"""
