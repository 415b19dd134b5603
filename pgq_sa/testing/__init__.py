"""Testing your tasks against the real thing: a pytest plugin and a synchronous job runner.

The plugin (:mod:`pgq_sa.testing._plugin`, loaded automatically by pytest through the ``pytest11``
entry point) gives each test a fresh, migrated PostgreSQL database: ``pgq_database_url`` and
``pgq_engine``. :func:`run_due_jobs` runs the due jobs inside the test with the workers' own
statements, so a test can enqueue, run and assert on stored results end to end.
"""

from pgq_sa.testing._runner import JobRun, run_due_jobs, run_due_jobs_async

__all__ = ["JobRun", "run_due_jobs", "run_due_jobs_async"]
