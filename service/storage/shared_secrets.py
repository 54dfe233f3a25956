"""Secrets every replica on one database shares: random bytes made once, by whichever replica asks first."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError

from service.storage.database import Database
from service.storage.tables import service_secrets

SECRET_BYTES = 32


async def shared_secret(database: Database, name: str) -> bytes:
    """The secret called `name`, made now if the database has none. Replicas starting together race to make
    it; the primary key lets one win, and the others read the winner's."""
    found = await _read(database, name)
    if found is None:
        try:
            async with database.connection() as conn:
                row = {"name": name, "value": secrets.token_hex(SECRET_BYTES), "create_time": datetime.now(UTC)}
                await conn.execute(service_secrets.insert().values(**row))
                await conn.commit()
        except IntegrityError:
            pass  # another replica made it first
        found = await _read(database, name)
    assert found is not None
    return bytes.fromhex(found)


async def _read(database: Database, name: str) -> str | None:
    async with database.connection() as conn:
        query = service_secrets.select().where(service_secrets.c.name == name)
        row = (await conn.execute(query)).first()
    return row.value if row else None
