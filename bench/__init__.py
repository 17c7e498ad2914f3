"""Benchmarks for the SA3 pipeline (random weights at the real shapes). Not tests: nothing here asserts
timings. Run from the repository root, e.g. ``python -m bench.t2a --variant small --seconds 30``;
see bench/README.md."""
