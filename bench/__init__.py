"""Benchmarks of ECDP: ``pytest bench/ --benchmark-only --benchmark-json out.json`` (on CPU one thread
unless ECDP_BENCH_THREADS=N), then ``python -m bench.report out.json`` for the markdown tables."""
