"""`isc-qk match`: new images against the references, with a calibrated decision threshold.

* `calibration` - the threshold: a number, or read from an `evaluate-uap` JSON at a precision;
* `pairs` - the top k of every query plus every pair above the threshold (exact scores);
* `stage` - describe (if images), search, write the CSV and its JSON (`formats.matches`).
"""

# the defaults, declared once (the command and the API read them here: no heavy import)
DEFAULT_TOP_K = 10  # as the ISC rule's 10 results per query
DEFAULT_PRECISION = 0.9  # the ISC operating point (recall@P90)
