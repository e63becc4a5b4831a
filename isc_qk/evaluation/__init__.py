"""The ISC2021 descriptor-track evaluation, exact.

* `metrics` - the micro-AP rule (one function, `average_precision`), recall@P90, rank recalls;
* `search` - exact global top-N (query, reference) pairs, streamed; `prefilter` - its first
  pass, a reduced-precision matmul with a proven error bound;
* `evaluate` - descriptors + ground truth -> every number; `report` - table and JSON.
"""
