"""Full-text search over final messages, one statement per dialect: FTS5 on SQLite, tsvector on Postgres.

Keyset pagination on (score, seq): the cursor is `repr(score)|seq` (service/storage/cursors.py), exact
because both databases compute a message's score for a query deterministically as a double.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service.storage.cursors import read_relevance
from service.storage.tables import messages

_COLUMNS = ", ".join(f"m.{column.name}" for column in messages.c)
_MARK = "**"
_KEYSET = "AND ({score} < :score OR ({score} = :score AND m.seq < :seq))"

_SQLITE_PAGE = """
WITH hits AS MATERIALIZED (
    SELECT rowid AS seq, -bm25(messages_fts) AS score FROM messages_fts WHERE messages_fts MATCH :match
)
SELECT {columns}, c.title AS conversation_title, hits.score AS score
FROM hits JOIN messages m ON m.seq = hits.seq JOIN conversations c ON c.id = m.conversation_id
WHERE m.owner = :owner {keyset}
ORDER BY hits.score DESC, m.seq DESC LIMIT :limit
"""

_SQLITE_SNIPPETS = f"""
SELECT rowid AS seq, snippet(messages_fts, 0, '{_MARK}', '{_MARK}', '…', 16) AS snippet
FROM messages_fts WHERE messages_fts MATCH :match AND rowid IN :seqs
"""

_POSTGRES_RANK = "ts_rank_cd(m.search_vector, plainto_tsquery('english', :query))::float8"
_POSTGRES_PAGE = """
SELECT page.*, ts_headline('english', page.content, plainto_tsquery('english', :query),
    'StartSel=**, StopSel=**, MaxWords=24, MinWords=8, MaxFragments=2, FragmentDelimiter=" … "') AS snippet
FROM (
    SELECT {columns}, c.title AS conversation_title, {rank} AS score
    FROM messages m JOIN conversations c ON c.id = m.conversation_id
    WHERE m.owner = :owner AND m.search_vector @@ plainto_tsquery('english', :query) {keyset}
    ORDER BY score DESC, m.seq DESC LIMIT :limit
) AS page
ORDER BY page.score DESC, page.seq DESC
"""


def _typed(statement: sa.TextClause, *extra: sa.ColumnClause[Any]) -> sa.TextualSelect:
    # Typed result columns: SQLite hands back times as text unless the statement says they are DateTimes.
    return statement.columns(
        *messages.c, sa.column("conversation_title", sa.String), sa.column("score", sa.Float), *extra
    )


def _params(after: str | None, **params: Any) -> dict[str, Any]:
    if after is not None:
        score, seq = read_relevance(after)
        params.update(score=score, seq=seq)
    return params


async def search_sqlite(
    conn: AsyncConnection, owner: str, terms: tuple[str, ...], *, limit: int, after: str | None
) -> list[tuple[Any, str]]:
    """Rows (message columns, conversation_title, score) with their snippets, best first."""
    match = " ".join(f'"{term}"' for term in terms)
    keyset = _KEYSET.format(score="hits.score") if after is not None else ""
    page = _typed(sa.text(_SQLITE_PAGE.format(columns=_COLUMNS, keyset=keyset)))
    rows = list(await conn.execute(page, _params(after, owner=owner, match=match, limit=limit)))
    if not rows:
        return []
    snippets_query = sa.text(_SQLITE_SNIPPETS).bindparams(sa.bindparam("seqs", expanding=True))
    found = await conn.execute(snippets_query, {"match": match, "seqs": [row.seq for row in rows]})
    snippets = {row.seq: row.snippet for row in found}
    return [(row, snippets.get(row.seq, "")) for row in rows]


async def search_postgres(
    conn: AsyncConnection, owner: str, terms: tuple[str, ...], *, limit: int, after: str | None
) -> list[tuple[Any, str]]:
    keyset = _KEYSET.format(score=_POSTGRES_RANK) if after is not None else ""
    statement = sa.text(_POSTGRES_PAGE.format(columns=_COLUMNS, rank=_POSTGRES_RANK, keyset=keyset))
    page = _typed(statement, sa.column("snippet", sa.String))
    rows = await conn.execute(page, _params(after, owner=owner, query=" ".join(terms), limit=limit))
    return [(row, row.snippet) for row in rows]
