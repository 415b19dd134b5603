"""Peer job-queue implementations used as comparison points by the pgq_sa benchmarks."""
