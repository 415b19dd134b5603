"""The web dashboard: see and steer a queue from a browser (the ``web`` extra).

``create_app(bind, *, schema="pgq", read_only=False, auth=...)`` returns an ASGI application to
serve with uvicorn (``pgq-sa web`` does) or to mount inside a FastAPI/Starlette service; see
docs/web.md for mounting it in Flask and for what it shows. Everything else in this package is
internal.
"""

try:
    from pgq_sa.web._app import create_app
except ImportError as error:  # pragma: no cover - depends on the installed extras
    if error.name not in {"starlette", "jinja2", "uvicorn", "markupsafe"}:
        raise
    raise ImportError(
        f"the web dashboard needs the 'web' extra ({error.name} is missing): "
        "pip install 'pgq-sa[web]'"
    ) from error

__all__ = ["create_app"]
