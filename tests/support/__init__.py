"""Servers and clusters the tests (and the benchmarks) start on 127.0.0.1: not part of the package."""
