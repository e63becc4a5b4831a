"""The Q and K models: backbones, heads, the model folder.

* `backbones` - the registry (input size, feature width) and builders, BN frozen;
* `efficientnet_lite` - Keras EfficientNet-Lite0/1/2 with ImageNet weights converted offline;
* `pth` - a torch-free reader of the PyTorch .pth files those weights come in;
* `heads` - the FFN head with the residual start;
* `qk_model` - `QKModel` (both sides) and its folder; `init` - the `init-model` stage.
"""
