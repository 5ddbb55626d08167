"""Benchmarks (see bench/README.md). A package so that `python -m worcr.worker bench.noop_jobs`
finds the job module from the repository root."""
