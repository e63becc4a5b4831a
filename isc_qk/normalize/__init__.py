"""Score normalisation folded into descriptors, with training-set statistics only.

* `normalizer` - fitting and applying nes (negative-embedding subtraction, + DBA) and whitening;
* `files` - the `normalize-fit` and `normalize` stages on descriptor files.
"""
