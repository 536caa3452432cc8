"""Machinery for multi-run studies: resumable run execution with config hashes, adapters to
the analysis tools, and the statistics of the verdicts. ``benchmarks/reproduce.py`` uses it."""
