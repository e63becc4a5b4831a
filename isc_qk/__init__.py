"""isc-qk: the ISC2021 descriptor track end to end, built around QK Iteration."""

__version__ = "0.1.0"
