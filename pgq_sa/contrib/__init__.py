"""Optional integrations, each behind an extra: ``prometheus`` (metrics) and ``otel`` (tracing).

Each module subscribes to a queue's :mod:`pgq_sa._events`; importing one without its extra
installed raises ``ImportError`` naming the extra to install.
"""
