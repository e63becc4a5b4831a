"""Network definitions the Keras encoders build (not encoders themselves: registry discovery
skips this package): EfficientNet-Lite with its ImageNet weights read torch-free from .pth."""
