"""What a refused write means, across the drivers (asyncpg, sqlite3)."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError


def is_foreign_key_violation(error: IntegrityError) -> bool:
    """Whether the database refused a row for referring to one that does not exist (SQLSTATE 23503)."""
    driver_error = error.orig
    return (
        getattr(driver_error, "sqlstate", None) == "23503"
        or getattr(driver_error, "sqlite_errorname", None) == "SQLITE_CONSTRAINT_FOREIGNKEY"
    )
