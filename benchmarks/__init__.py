"""Benchmarks for pgq_sa, side by side with PgQueuer: ``python -m benchmarks SCENARIO --help``.

Scenarios live in :mod:`benchmarks.scenarios`, each in a module of its own; every run works in a
scratch database of its own (:mod:`benchmarks.scratch_databases`) and prints tables
(:mod:`benchmarks.report`).
The pytest-benchmark micro-benchmarks are in ``benchmarks/test_micro.py``.
"""
