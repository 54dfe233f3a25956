"""Full-text search over final messages, one statement per dialect: FTS5 on SQLite, tsvector on Postgres.

A message's score depends on that message and the query alone, never on other messages: not on other
users' (scores that move when someone else writes a word would tell that they did), nor on the user's own
newer ones (a page walk would skip or repeat matches while they write). Postgres' `ts_rank_cd` is such a
score. FTS5's bm25 is not (it weighs terms by how many rows of the whole table hold them), so SQLite uses
bm25's term-frequency part without corpus statistics: the query's words found in the message (counted by
FTS5's own tokenizer, through `highlight`), saturating, with the message's length against a fixed norm.

Keyset pagination on (score, seq): the cursor is `repr(score)|seq` (service/storage/cursors.py), exact because
both databases compute a message's score for a query deterministically as a double, and stable because the score
never changes.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from service.domain import ConversationScope
from service.storage.cursors import read_relevance
from service.storage.tables import messages

_COLUMNS = ", ".join(f"m.{column.name}" for column in messages.c)
_MARK = "**"
_KEYSET = "AND ({score} < :score OR ({score} = :score AND m.seq < :seq))"

# bm25's term-frequency saturation (k1 = 1.2, b = 0.75) against a fixed typical length, not the table's.
_K1, _B, _TYPICAL_CHARS = 1.2, 0.75, 200.0
_MARK_COUNT = "(length({text}) - length(replace({text}, char(1), '')))"
# Matches marked with char(1) by highlight(), less any char(1) the message itself holds.
_FOUND = f"({_MARK_COUNT.format(text='marked')} - {_MARK_COUNT.format(text='content')})"
_SQLITE_SCORE = f"{_FOUND} * {_K1 + 1} / ({_FOUND} + {_K1} * ({1 - _B} + {_B} * length(content) / {_TYPICAL_CHARS}))"
_SQLITE_PAGE = """
WITH hits AS MATERIALIZED (
    SELECT m.seq AS seq, m.content AS content, highlight(messages_fts, 0, char(1), '') AS marked
    FROM messages_fts JOIN messages m ON m.seq = messages_fts.rowid
    WHERE messages_fts MATCH :match AND {visible}
), scored AS MATERIALIZED (
    SELECT seq, {score} AS score FROM hits
)
SELECT {columns}, c.title AS conversation_title, scored.score AS score
FROM scored JOIN messages m ON m.seq = scored.seq JOIN conversations c ON c.id = m.conversation_id
WHERE TRUE {keyset}
ORDER BY scored.score DESC, m.seq DESC LIMIT :limit
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
    WHERE {visible} AND m.search_vector @@ plainto_tsquery('english', :query) {keyset}
    ORDER BY score DESC, m.seq DESC LIMIT :limit
) AS page
ORDER BY page.score DESC, page.seq DESC
"""


# The conversations a search covers (`ConversationScope`): the user's own, those shared with them, or both.
_OWNED = "m.owner = :owner"
_SHARED = "m.conversation_id IN (SELECT s.conversation_id FROM conversation_shares s WHERE s.user_id = :owner)"
_VISIBLE = {
    ConversationScope.OWNED: _OWNED,
    ConversationScope.SHARED: _SHARED,
    ConversationScope.ALL: f"({_OWNED} OR {_SHARED})",
}


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
    conn: AsyncConnection,
    owner: str,
    terms: tuple[str, ...],
    *,
    limit: int,
    after: str | None,
    scope: ConversationScope = ConversationScope.OWNED,
) -> list[tuple[Any, str]]:
    """Rows (message columns, conversation_title, score) with their snippets, best first."""
    match = " ".join(f'"{term}"' for term in terms)
    keyset = _KEYSET.format(score="scored.score") if after is not None else ""
    page = _typed(
        sa.text(_SQLITE_PAGE.format(columns=_COLUMNS, score=_SQLITE_SCORE, keyset=keyset, visible=_VISIBLE[scope]))
    )
    rows = list(await conn.execute(page, _params(after, owner=owner, match=match, limit=limit)))
    if not rows:
        return []
    snippets_query = sa.text(_SQLITE_SNIPPETS).bindparams(sa.bindparam("seqs", expanding=True))
    found = await conn.execute(snippets_query, {"match": match, "seqs": [row.seq for row in rows]})
    snippets = {row.seq: row.snippet for row in found}
    return [(row, snippets.get(row.seq, "")) for row in rows]


async def search_postgres(
    conn: AsyncConnection,
    owner: str,
    terms: tuple[str, ...],
    *,
    limit: int,
    after: str | None,
    scope: ConversationScope = ConversationScope.OWNED,
) -> list[tuple[Any, str]]:
    keyset = _KEYSET.format(score=_POSTGRES_RANK) if after is not None else ""
    statement = sa.text(
        _POSTGRES_PAGE.format(columns=_COLUMNS, rank=_POSTGRES_RANK, keyset=keyset, visible=_VISIBLE[scope])
    )
    page = _typed(statement, sa.column("snippet", sa.String))
    rows = await conn.execute(page, _params(after, owner=owner, query=" ".join(terms), limit=limit))
    return [(row, row.snippet) for row in rows]
