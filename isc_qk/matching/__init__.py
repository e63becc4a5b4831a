"""`isc-qk match`: new images against the references, with a calibrated decision threshold.

* `calibration` - the threshold: a number, or read from an `evaluate-uap` JSON at a precision;
* `pairs` - the top k of every query plus every pair above the threshold (exact scores);
* `stage` - describe (if images), search, write the CSV and its JSON (`formats.matches`).
"""
