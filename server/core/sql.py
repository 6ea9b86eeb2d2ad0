"""The SQL Ripple runs, as named statements (STYLE.md: no SQL scattered through the code).

Longer than 400 lines because it is the one module that holds SQL: splitting it would scatter
the statements this module exists to keep together.

Fixed statements are constants. Statements over document tables are built by `TableSql` from
names that the schema has already validated (NAME_RE); `quote_ident` is the only place
identifiers are quoted. The one exception: `SELECT 1`, the listeners' keep-alive probe.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Protocol

IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class DerivedColumn(Protocol):
    """A derived index's column (search/derived.py Column): name, SQL type, value expression."""

    @property
    def name(self) -> str: ...
    @property
    def sql_type(self) -> str: ...
    @property
    def expr(self) -> str: ...


def quote_ident(name: str) -> str:
    if not IDENT_RE.match(name):
        raise ValueError(f"refusing to quote suspicious identifier {name!r}")
    return '"' + name + '"'


def lock_key(namespace: str, purpose: str) -> int:
    """A signed 64-bit advisory lock key, distinct per PostgreSQL schema and purpose."""
    digest = hashlib.blake2b(f"{namespace}:{purpose}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def notify_channel(namespace: str) -> str:
    return f"ripple_commits_{namespace}"[:63]


def index_name(table: str, index: str) -> str:
    """The PostgreSQL index over an index's key column. `{table}__{index}` when that fits in 63
    characters (the names existing deployments have); otherwise both parts are cut to 24
    characters and an 8-hex-digit hash of the full pair keeps the name unique (<= 59 chars)."""
    name = f"{table}__{index}"
    if len(name) <= 63:
        return name
    digest = hashlib.blake2b(f"{table}.{index}".encode(), digest_size=4).hexdigest()
    return f"{table[:24]}__{index[:24]}_{digest}"


BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS _ripple_tables (
    number      integer PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    indexes     jsonb NOT NULL DEFAULT '{}',
    fingerprint text NOT NULL DEFAULT ''
);
CREATE SEQUENCE IF NOT EXISTS _ripple_ts;
CREATE TABLE IF NOT EXISTS _ripple_commits (
    ts           bigint PRIMARY KEY,
    writes       jsonb NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now()
);
-- One row per idempotent mutation run, keyed per caller (a hash of who called: identity, admin
-- or anonymous), with what was called (`function`, and a hash of the arguments) so that a resend
-- of the key with another call is refused. Rows written before those columns existed have
-- caller '' and no function: they are answered as before, for any caller (see runtime.py).
CREATE TABLE IF NOT EXISTS _ripple_mutation_results (
    session_id text NOT NULL,
    request_id bigint NOT NULL,
    caller     text NOT NULL DEFAULT '',
    function   text,
    args_hash  text,
    value      jsonb NOT NULL,  -- [result], so that a null result is JSON null, not SQL NULL
    log_lines  jsonb NOT NULL,
    ts         bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, request_id, caller)
);
ALTER TABLE _ripple_mutation_results ADD COLUMN IF NOT EXISTS caller text NOT NULL DEFAULT '';
ALTER TABLE _ripple_mutation_results ADD COLUMN IF NOT EXISTS function text;
ALTER TABLE _ripple_mutation_results ADD COLUMN IF NOT EXISTS args_hash text;
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = '_ripple_mutation_results'::regclass AND contype = 'p'
                     AND array_length(conkey, 1) = 3) THEN
        ALTER TABLE _ripple_mutation_results DROP CONSTRAINT IF EXISTS _ripple_mutation_results_pkey;
        ALTER TABLE _ripple_mutation_results ADD PRIMARY KEY (session_id, request_id, caller);
    END IF;
END
$$;
CREATE TABLE IF NOT EXISTS _ripple_meta (
    key   text PRIMARY KEY,
    value jsonb NOT NULL
);
-- A random number each writing transaction logs with its change-log row: after a connection
-- lost while COMMIT was in flight, finding it says the transaction committed (commit.py).
ALTER TABLE _ripple_commits ADD COLUMN IF NOT EXISTS marker bigint;
CREATE INDEX IF NOT EXISTS _ripple_commits_marker ON _ripple_commits (marker) WHERE marker IS NOT NULL;
-- The commit tail of every writing transaction: serialize on an advisory lock (held until the
-- transaction ends), take the next timestamp (never below the wall clock in ns, never below the
-- last one), log the write set and the marker, and NOTIFY. Because the lock is held through
-- COMMIT, change-log rows become visible in timestamp order.
CREATE OR REPLACE FUNCTION _ripple_commit(p_writes jsonb, p_lock bigint, p_channel text, p_marker bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    t bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    t := greatest(nextval('_ripple_ts'),
                  (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint);
    PERFORM setval('_ripple_ts', t);
    INSERT INTO _ripple_commits (ts, writes, marker) VALUES (t, p_writes, p_marker);
    PERFORM pg_notify(p_channel, t::text);
    RETURN t;
END
$$;
-- File storage (docs/storage.md). Bytes that may be in the blob store without a `_storage`
-- document: an upload under way ('upload', with a direct multipart upload's id) and a file whose
-- document was deleted ('delete'). The row goes once the bytes are registered or removed; the
-- sweeper (storage/files.py) removes what is left behind.
CREATE TABLE IF NOT EXISTS _ripple_storage_pending (
    key        text PRIMARY KEY,
    reason     text NOT NULL,
    upload_id  text,
    content_type text,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- Upload URL tokens used so far (single use); kept until they expire.
CREATE TABLE IF NOT EXISTS _ripple_upload_tokens (
    nonce      text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
-- Full-text search statistics (search/text.py): rows of deltas, per index ("table.index") and
-- term ('' : the index's document count and total length), inserted by every write and folded
-- together by compact_stats. COLLATE "C": terms compare as their bytes, so a prefix is a range.
CREATE TABLE IF NOT EXISTS _ripple_search_stats (
    idx    text NOT NULL,
    term   text COLLATE "C" NOT NULL,
    docs   bigint NOT NULL,
    tokens bigint NOT NULL DEFAULT 0,
    folded boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS _ripple_search_stats_term ON _ripple_search_stats (idx, term);
CREATE INDEX IF NOT EXISTS _ripple_search_stats_unfolded ON _ripple_search_stats (idx, term) WHERE NOT folded;
-- The tail as processes of earlier versions call it, without a marker (a rolling upgrade).
CREATE OR REPLACE FUNCTION _ripple_commit(p_writes jsonb, p_lock bigint, p_channel text)
RETURNS bigint LANGUAGE sql AS $$ SELECT _ripple_commit(p_writes, p_lock, p_channel, NULL::bigint) $$;
"""

SCHEMA_LOCK = "SELECT pg_advisory_xact_lock($1)"
LIST_TABLES = "SELECT number, name, indexes, fingerprint FROM _ripple_tables"
INSERT_TABLE = """
INSERT INTO _ripple_tables (number, name, indexes, fingerprint)
VALUES ((SELECT coalesce(max(number), 0) + 1 FROM _ripple_tables WHERE number < 10000), $1, '{}', '')
RETURNING number
"""
INSERT_SYSTEM_TABLE = """
INSERT INTO _ripple_tables (number, name, indexes, fingerprint) VALUES ($1, $2, '{}', '')
ON CONFLICT (number) DO NOTHING
"""
UPDATE_TABLE = "UPDATE _ripple_tables SET indexes = $2, fingerprint = $3 WHERE name = $1"
COMMIT_TAIL = "SELECT _ripple_commit($1, $2, $3, $4)"
LAST_COMMIT_TS = "SELECT currval('_ripple_ts')"  # the ts this session's last commit tail took
LATEST_TS = "SELECT coalesce(max(ts), 0) FROM _ripple_commits"
# Idempotent mutations, keyed by (session id, request id, caller). The stored ts is a lower
# bound (0 when the row is written, before the commit's ts exists): a replay answers with the
# latest commit ts, which covers the mutation because its row, committed with it, was found. Read
# outside the mutation's transaction, so the look-up takes no serializable predicate lock on the
# shared primary key (which made concurrent sessions' mutations conflict); the primary key still
# makes a concurrent duplicate fail. A row from before callers were recorded (caller '') matches
# any caller; one of the caller's own comes first.
GET_MUTATION_RESULT = """
SELECT value, log_lines, function, args_hash,
       greatest(ts, (SELECT coalesce(max(ts), 0) FROM _ripple_commits)) AS ts
FROM _ripple_mutation_results WHERE session_id = $1 AND request_id = $2 AND caller IN ($3, '')
ORDER BY caller = '' LIMIT 1
"""
# ... read inside a group commit's transaction (group_commit.py): the group's commit ts covers
# it, and its reads stay off the change log (a read of its latest ts would conflict with every commit).
GET_STORED_RESULT = """
SELECT value, log_lines, function, args_hash
FROM _ripple_mutation_results WHERE session_id = $1 AND request_id = $2 AND caller IN ($3, '')
ORDER BY caller = '' LIMIT 1
"""
PUT_MUTATION_RESULT = """
INSERT INTO _ripple_mutation_results (session_id, request_id, caller, function, args_hash, value, log_lines, ts)
VALUES ($1, $2, $3, $4, $5, $6, $7, 0)
"""
PRUNED_THROUGH = "SELECT (value #>> '{}')::bigint FROM _ripple_meta WHERE key = 'commits_pruned_through'"
# Change log reading for live queries: everything after what a process has processed.
COMMITS_AFTER = "SELECT ts, writes FROM _ripple_commits WHERE ts > $1 ORDER BY ts LIMIT $2"
# ... and for a query at an older ts (/api/query_at_ts): the commits between it and the snapshot.
COMMITS_BETWEEN = "SELECT writes FROM _ripple_commits WHERE ts > $1 AND ts <= $2 ORDER BY ts LIMIT $3"
PRUNE_COMMITS = """
WITH cutoff AS (
    SELECT least($1::bigint, (SELECT max(ts) FROM _ripple_commits)) AS ts
), gone AS (
    DELETE FROM _ripple_commits WHERE ts < (SELECT ts FROM cutoff) RETURNING ts
)
INSERT INTO _ripple_meta (key, value)
SELECT 'commits_pruned_through', to_jsonb(max(ts)) FROM gone HAVING count(*) > 0
ON CONFLICT (key) DO UPDATE SET value = to_jsonb(greatest(
    (_ripple_meta.value #>> '{}')::bigint, (EXCLUDED.value #>> '{}')::bigint))
"""
PRUNE_MUTATION_RESULTS = "DELETE FROM _ripple_mutation_results WHERE created_at < now() - make_interval(secs => $1)"
CREATE_SCHEMA = "CREATE SCHEMA IF NOT EXISTS {schema}"

# -- file storage (storage/files.py) ---------------------------------------------------------------
# The deployment's upload-token key: drawn by the first process that asks, shared by all.
STORAGE_SECRET = """
WITH drawn AS (
    INSERT INTO _ripple_meta (key, value) VALUES ('storage_secret', to_jsonb($1::text))
    ON CONFLICT (key) DO NOTHING RETURNING value
)
SELECT value #>> '{}' FROM drawn
UNION ALL SELECT value #>> '{}' FROM _ripple_meta WHERE key = 'storage_secret'
LIMIT 1
"""
# An upload URL's token used ($1 nonce, $2 its expiry in epoch seconds) and the upload under key
# $3 begun, in one statement; no row: the token was used before.
USE_UPLOAD_TOKEN = """
WITH used AS (
    INSERT INTO _ripple_upload_tokens (nonce, expires_at) VALUES ($1, to_timestamp($2))
    ON CONFLICT (nonce) DO NOTHING RETURNING nonce
)
INSERT INTO _ripple_storage_pending (key, reason) SELECT $3, 'upload' FROM used RETURNING key
"""
BEGIN_UPLOAD = "INSERT INTO _ripple_storage_pending (key, reason) VALUES ($1, 'upload')"
SET_UPLOAD_ID = "UPDATE _ripple_storage_pending SET upload_id = $2, content_type = $3 WHERE key = $1 AND reason = 'upload'"
UPLOAD_ID = "SELECT upload_id, content_type FROM _ripple_storage_pending WHERE key = $1 AND reason = 'upload'"
# In the transaction that inserts the `_storage` document: no row, the sweeper gave it up.
FINISH_UPLOAD = "DELETE FROM _ripple_storage_pending WHERE key = $1 AND reason = 'upload' RETURNING key"
# In the transaction that deletes the `_storage` document.
MARK_DELETED = """
INSERT INTO _ripple_storage_pending (key, reason) VALUES ($1, 'delete')
ON CONFLICT (key) DO UPDATE SET reason = 'delete', created_at = now()
"""
FORGET_PENDING = "DELETE FROM _ripple_storage_pending WHERE key = $1 AND reason = $2"
# What the sweeper takes on: deletions not done after $1 s and uploads not finished after $2 s,
# turned into deletions (so an upload still running cannot register any more) and leased for
# $4 s (their created_at moved ahead), so that another process leaves them alone meanwhile.
CLAIM_LEFT_BEHIND = """
UPDATE _ripple_storage_pending p SET reason = 'delete', created_at = now() + make_interval(secs => $4)
FROM (
    SELECT key FROM _ripple_storage_pending
    WHERE (reason = 'delete' AND created_at < now() - make_interval(secs => $1))
       OR (reason = 'upload' AND created_at < now() - make_interval(secs => $2))
    ORDER BY created_at LIMIT $3 FOR UPDATE SKIP LOCKED
) due
WHERE p.key = due.key
RETURNING p.key, p.upload_id
"""
PRUNE_UPLOAD_TOKENS = "DELETE FROM _ripple_upload_tokens WHERE expires_at < now() - interval '1 minute'"

# -- full-text search (search/text.py, search/query.py) ------------------------------------------------
LOG_SEARCH_STATS = """
INSERT INTO _ripple_search_stats (idx, term, docs, tokens)
SELECT $1, t, d, n FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS u(t, d, n)
"""
FORGET_SEARCH_STATS = "DELETE FROM _ripple_search_stats WHERE idx = $1"
TRY_XACT_LOCK = "SELECT pg_try_advisory_xact_lock($1)"
# Up to $1 terms with unfolded rows: their rows become one (none when no document holds the term).
COMPACT_SEARCH_STATS = """
WITH pick AS (
    SELECT DISTINCT idx, term FROM _ripple_search_stats WHERE NOT folded LIMIT $1
), gone AS (
    DELETE FROM _ripple_search_stats s USING pick WHERE s.idx = pick.idx AND s.term = pick.term
    RETURNING s.idx, s.term, s.docs, s.tokens
), kept AS (
    INSERT INTO _ripple_search_stats (idx, term, docs, tokens, folded)
    SELECT idx, term, sum(docs), sum(tokens), true FROM gone GROUP BY idx, term
    HAVING sum(docs) <> 0 OR sum(tokens) <> 0
    RETURNING 1
)
SELECT count(*) FROM gone
"""
BM25_K1 = 1.2
BM25_B = 0.75
MAX_SEARCH_TERMS = 64  # index terms one search scores: the query's own, then prefix expansions
PREFIX_BOOST = 0.5  # a prefix expansion's weight (Convex: `boost *= 0.5` for prefix matches)


def postings_table(table: str, index: str) -> str:
    """The postings table of a search index: `_search_` (no user table starts with `_`), then
    the table's and index's names cut short, then a hash of the full pair (unique, <= 57 chars)."""
    digest = hashlib.blake2b(f"{table}.{index}".encode(), digest_size=4).hexdigest()
    return f"_search_{table[:20]}_{index[:16]}_{digest}"


def create_postings(postings: str) -> str:
    # term COLLATE "C": compared as bytes, as the statistics' terms are. `f`: the document's filter
    # lexemes (search/text.py filter_lexeme), for `f @> $filters`. The primary key includes what a
    # search reads, so that it reads postings from the index alone once VACUUM has seen the pages.
    return (
        f"CREATE TABLE IF NOT EXISTS {quote_ident(postings)} ("
        'term text COLLATE "C" NOT NULL, id text NOT NULL, tf integer NOT NULL, len integer NOT NULL, '
        "creation_time double precision NOT NULL, f text[] NOT NULL, "
        "PRIMARY KEY (term, id) INCLUDE (tf, len, creation_time, f))"
    )


def drop_postings(postings: str) -> str:
    return f"DROP TABLE IF EXISTS {quote_ident(postings)}"


def write_postings(postings: str, remove: bool, put: bool, new: bool) -> str:
    """One document's postings and statistics, in one statement: $1 its id; $2 terms it no
    longer holds (their postings go: `remove`); $3 the index's statistics name, $4-$6 the deltas
    (terms, documents, tokens); $7 its length, $8 creation time, $9 filter lexemes; $10 terms and
    $11 their counts to write (`put`): plain inserts for a `new` document, else inserts or updates.
    The terms of $2 and $10 never overlap. Parts with nothing to do are left out of the statement
    rather than given empty arrays: under SERIALIZABLE every read of the postings (a DELETE's scan,
    an ON CONFLICT check) takes predicate locks that concurrent writers of the same terms conflict
    with, and a new document's postings need neither."""
    p = quote_ident(postings)
    parts = []
    if remove:
        parts.append(f"gone AS (DELETE FROM {p} WHERE term = ANY($2::text[]) AND id = $1)")
    if put:
        upsert = "" if new else " ON CONFLICT (term, id) DO UPDATE SET tf = EXCLUDED.tf, len = EXCLUDED.len, f = EXCLUDED.f"
        parts.append(
            f"put AS (INSERT INTO {p} (term, id, tf, len, creation_time, f) "
            f"SELECT t, $1, n, $7, $8, $9::text[] FROM unnest($10::text[], $11::integer[]) AS u(t, n){upsert})"
        )
    # Every parameter appears, typed, whichever parts are left out.
    unused = "" if remove and put else " WHERE $1::text IS NOT NULL OR $2::text[] IS NOT NULL OR $7::integer IS NOT NULL " \
        "OR $8::float8 IS NOT NULL OR $9::text[] IS NOT NULL OR $10::text[] IS NOT NULL OR $11::integer[] IS NOT NULL"
    return (
        (f"WITH {', '.join(parts)} " if parts else "")
        + "INSERT INTO _ripple_search_stats (idx, term, docs, tokens) "
        + f"SELECT $3, t, d, n FROM unnest($4::text[], $5::bigint[], $6::bigint[]) AS u(t, d, n){unused}"
    )


def delete_postings_many(postings: str) -> str:
    """Many documents' postings removed: $1 terms, $2 the ids they go for (pairs)."""
    return (f"DELETE FROM {quote_ident(postings)} AS p USING unnest($1::text[], $2::text[]) AS g(term, id) "
            "WHERE p.term = g.term AND p.id = g.id")


def put_postings_many(postings: str, new: bool) -> str:
    """Many documents' postings written, one array element per posting: $1 term, $2 id, $3 its
    count, $4 the document's length, $5 creation time, $6 filter lexemes joined by spaces
    (lexemes hold none). Plain inserts when every document is `new`, else inserts or updates
    (write_postings says why the two differ)."""
    upsert = "" if new else " ON CONFLICT (term, id) DO UPDATE SET tf = EXCLUDED.tf, len = EXCLUDED.len, f = EXCLUDED.f"
    return (
        f"INSERT INTO {quote_ident(postings)} (term, id, tf, len, creation_time, f) "
        "SELECT t, i, n, l, c, string_to_array(f, ' ') "
        f"FROM unnest($1::text[], $2::text[], $3::integer[], $4::integer[], $5::float8[], $6::text[]) AS u(t, i, n, l, c, f)"
        f"{upsert}"
    )


def search_rank(table: str, postings: str, filtered: bool, after: bool, until: bool) -> str:
    """A full-text search as one statement (one snapshot; a query's single-statement fast path).

    The statistics first: $1 the index's name in `_ripple_search_stats`, $2 the query's own terms,
    [$3, $4) the range of the prefix expansions of its last term. The terms scored are the query's
    own the index holds, then expansions in byte order, 64 in all; each weighs
    idf x boost (1, or 0.5 for an expansion) x (k1 + 1), idf = ln(1 + (N - df + 0.5) / (df + 0.5)).
    Then the postings of those terms (one primary-key range each), BM25 summed per document, best
    first (then newest, then by id), at most $5 documents, read for the page only. `filtered`:
    only postings whose filter lexemes include all of $6. `after`: only documents ranked after
    the position (score, creation time, id) in the next three parameters; `until`: only those up
    to and including the position in the three after that."""
    nxt = 7 if filtered else 6
    where = []
    if after:
        where.append(f"(score, creation_time, id) < (${nxt}::float8, ${nxt + 1}::float8, ${nxt + 2}::text)")
        nxt += 3
    if until:
        where.append(f"(score, creation_time, id) >= (${nxt}::float8, ${nxt + 1}::float8, ${nxt + 2}::text)")
    k1, b = BM25_K1, BM25_B
    return f"""
WITH found AS (
    (SELECT term, sum(docs)::float8 AS df, false AS expansion FROM _ripple_search_stats
     WHERE idx = $1 AND term = ANY($2::text[]) GROUP BY term)
    UNION ALL
    (SELECT term, sum(docs)::float8, true FROM _ripple_search_stats
     WHERE idx = $1 AND term > $3 AND term < $4 AND term <> ALL($2::text[])
     GROUP BY term HAVING sum(docs) > 0 ORDER BY term LIMIT {MAX_SEARCH_TERMS})
), total AS (
    SELECT greatest(coalesce(sum(docs), 0), 1)::float8 AS n, coalesce(sum(tokens), 0)::float8 AS tokens
    FROM _ripple_search_stats WHERE idx = $1 AND term = ''
), q AS (
    SELECT f.term,
           ln(1 + (total.n - f.df + 0.5) / (f.df + 0.5)) * (CASE WHEN f.expansion THEN {PREFIX_BOOST} ELSE 1 END) * {1 + k1} AS w,
           {k1 * b}::float8 / coalesce(nullif(total.tokens / total.n, 0), 1) AS kb
    FROM (SELECT * FROM found WHERE df > 0 ORDER BY expansion, term LIMIT {MAX_SEARCH_TERMS}) AS f, total
)
SELECT r.id, r.creation_time, t.doc, r.score FROM (
    SELECT id, creation_time, score FROM (
        SELECT p.id, max(p.creation_time) AS creation_time,
               sum(q.w * p.tf / (p.tf + {k1 * (1 - b)}::float8 + q.kb * p.len)) AS score
        FROM q CROSS JOIN LATERAL (
            -- OFFSET 0 keeps this as it is: one primary-key range per term, whatever the planner
            -- guesses of the terms' count or the filter (it would rather scan everything)
            SELECT id, tf, len, creation_time FROM {quote_ident(postings)} WHERE term = q.term
            {"AND f @> $6::text[]" if filtered else ""} OFFSET 0
        ) AS p
        GROUP BY p.id
    ) AS scored
    {"WHERE " + " AND ".join(where) if where else ""}
    ORDER BY score DESC, creation_time DESC, id DESC LIMIT $5
) AS r JOIN {quote_ident(table)} AS t ON t.id = r.id
ORDER BY r.score DESC, r.creation_time DESC, r.id DESC
"""


# -- vector search (search/vector.py, search/vector_query.py) ------------------------------------------
# pgvector's types and operators are named with their schema: Ripple's search_path holds only its own.
PGVECTOR = """
SELECT e.extversion, n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'vector'
"""
# In `public`, not in a deployment's schema: dropping that would drop the extension for all.
CREATE_PGVECTOR = "CREATE EXTENSION IF NOT EXISTS vector SCHEMA public"
# Settings ($1 names, $2 values) for the rest of the transaction only, as SET LOCAL makes them.
SET_LOCAL = "SELECT set_config(name, value, true) FROM unnest($1::text[], $2::text[]) AS s(name, value)"


def pgvector_type(schema: str, name: str, dimensions: int) -> str:
    """`"public".vector(768)`: pgvector's `vector` or `halfvec` of a number of dimensions."""
    return f"{quote_ident(schema)}.{name}({int(dimensions)})"


def hnsw_index_name(table: str, index: str) -> str:
    return index_name(table, index + "_hnsw")


def create_hnsw_index(table: str, index: str, schema: str, dimensions: int, halfvec: bool) -> str:
    """pgvector's HNSW index (cosine distance) over vector index `index`'s column `v_<index>`;
    `halfvec`: over its 16-bit `halfvec` cast instead (HNSW takes `vector`s of up to 2,000
    dimensions, `halfvec`s of up to 4,000)."""
    column = quote_ident("v_" + index)
    if halfvec:
        target = f"({column}::{pgvector_type(schema, 'halfvec', dimensions)}) {quote_ident(schema)}.halfvec_cosine_ops"
    else:
        target = f"{column} {quote_ident(schema)}.vector_cosine_ops"
    name = quote_ident(hnsw_index_name(table, index))
    return f"CREATE INDEX IF NOT EXISTS {name} ON {quote_ident(table)} USING hnsw ({target})"


def _vector_where(index: str, filtered: bool) -> str:
    where = f"{quote_ident('v_' + index)} IS NOT NULL"
    return where + (f" AND {quote_ident('f_' + index)} && $3::text[]" if filtered else "")


def vector_search_float8(table: str, index: str, filtered: bool) -> str:
    """Exact search without pgvector: the documents of `table` in vector index `index` (float8[]
    unit vectors) by their dot product with $1 (the query's unit vector): their cosine
    similarity, best first (then by id, descending), at most $2; `filtered`: only those with a
    filter token in $3."""
    v = quote_ident("v_" + index)
    return (
        f"SELECT id, (SELECT sum(x * y) FROM unnest({v}, $1::float8[]) AS u(x, y)) AS score "
        f"FROM {quote_ident(table)} WHERE {_vector_where(index, filtered)} ORDER BY score DESC, id DESC LIMIT $2"
    )


def vector_search_pgvector(table: str, index: str, schema: str, dimensions: int, filtered: bool, order: str) -> str:
    """The same with pgvector (score: 1 - cosine distance). `order`: "exact" sorts every
    matching document by score (no index can give that order); "hnsw" orders by the distance
    operator over the column, "hnsw-halfvec" over its halfvec cast, so that the HNSW index made
    by create_hnsw_index can produce the order (approximately). The query vector is a scalar
    subquery: computed once, never per row."""
    v, op = quote_ident("v_" + index), f"OPERATOR({quote_ident(schema)}.<=>)"
    query = f"(SELECT $1::float8[]::{pgvector_type(schema, 'vector', dimensions)})"
    if order == "exact":
        order_by = "score DESC, id DESC"
    elif order == "hnsw":
        order_by = f"{v} {op} {query}"
    else:
        half = pgvector_type(schema, "halfvec", dimensions)
        order_by = f"({v}::{half}) {op} (SELECT $1::float8[]::{half})"
    return (
        f"SELECT id, 1 - ({v} {op} {query}) AS score FROM {quote_ident(table)} "
        f"WHERE {_vector_where(index, filtered)} ORDER BY {order_by} LIMIT $2"
    )


def create_gin_index(table: str, index: str, column: str) -> str:
    name = quote_ident(index_name(table, index))
    return f"CREATE INDEX IF NOT EXISTS {name} ON {quote_ident(table)} USING gin ({quote_ident(column)})"


class TableSql:
    """The statements for one document table."""

    def __init__(self, table: str, indexes: list[str], derived: Sequence[DerivedColumn] = ()) -> None:
        """`derived`: the columns of the table's search and vector indexes (search/derived.py),
        written with every document after the key columns, each parameter passed through its
        column's SQL expression."""
        self.table = table
        t = quote_ident(table)
        self.indexes = indexes
        self.key_columns = {name: quote_ident("k_" + name) for name in indexes}
        targets = [self.key_columns[i] for i in indexes] + [quote_ident(c.name) for c in derived]
        exprs = ["{}"] * len(indexes) + [c.expr for c in derived]

        def params(first: int) -> list[str]:
            return [e.replace("{}", f"${n}") for n, e in enumerate(exprs, start=first)]

        cols = ", ".join(targets)
        sets = ", ".join(f"{c} = {p}" for c, p in zip(targets, params(3), strict=True))
        self.create = (
            f"CREATE TABLE IF NOT EXISTS {t} ("
            "id text PRIMARY KEY, creation_time double precision NOT NULL, doc jsonb NOT NULL)"
        )
        self.get = f"SELECT creation_time, doc FROM {t} WHERE id = $1"
        self.insert = (
            f"INSERT INTO {t} (id, creation_time, doc, {cols}) VALUES ($1, $2, $3, {', '.join(params(4))})"
        )
        self.update = f"UPDATE {t} SET doc = $2, {sets} WHERE id = $1"
        # The row version at ctid $2 only (one the transaction holds locked): no index lookup.
        at_ctid_sets = ", ".join(f"{c} = {p}" for c, p in zip(targets, params(4), strict=True))
        self.update_at_ctid = f"UPDATE {t} SET doc = $3, {at_ctid_sets} WHERE id = $1 AND ctid = $2"
        # Several such row versions in one statement (a table without derived columns): $1 ids,
        # $2 ctids, $3 docs, then one array per key column. `ctid = ANY($2)` makes it a TID scan.
        key_types = ", ".join(f"${n}::bytea[]" for n in range(4, 4 + len(indexes)))
        key_names = ", ".join(f"k{n}" for n in range(len(indexes)))
        many_sets = ", ".join(f"{self.key_columns[i]} = v.k{n}" for n, i in enumerate(indexes))
        self.update_many_at_ctid = (
            f"UPDATE {t} AS t SET doc = v.doc{', ' if indexes else ''}{many_sets} "
            f"FROM unnest($1::text[], $2::tid[], $3::jsonb[]{', ' if indexes else ''}{key_types}) "
            f"AS v(id, ctid, doc{', ' if indexes else ''}{key_names}) "
            "WHERE t.ctid = ANY($2::tid[]) AND t.ctid = v.ctid AND t.id = v.id"
        )
        self.delete = f"DELETE FROM {t} WHERE id = $1"
        # Many documents at once (an import, bulk_writes.py): $1 ids, $2 creation times, $3 docs,
        # then one array per key column. None for a table with derived columns: a vector
        # index's are arrays themselves, which unnest cannot carry per row (its rows go by
        # executemany of `insert`).
        many_types = ", ".join(f"${n}::bytea[]" for n in range(4, 4 + len(indexes)))
        self.insert_many = None if derived else (
            f"INSERT INTO {t} (id, creation_time, doc{', ' if indexes else ''}{cols}) "
            f"SELECT * FROM unnest($1::text[], $2::float8[], $3::jsonb[]{', ' if indexes else ''}{many_types})"
        )
        self.delete_many = f"DELETE FROM {t} WHERE id = ANY($1::text[])"
        self.present = f"SELECT id FROM {t} WHERE id = ANY($1::text[])"  # which of ids $1 are documents
        self.scan_all = f"SELECT id, creation_time, doc FROM {t}"
        self.range: dict[tuple[str, bool], str] = {}
        for name, col in self.key_columns.items():
            for desc in (False, True):
                order = "DESC" if desc else "ASC"
                self.range[(name, desc)] = (
                    f"SELECT id, creation_time, doc, {col} FROM {t} "
                    f"WHERE {col} >= $1 AND {col} < $2 ORDER BY {col} {order} LIMIT $3"
                )
        # The built-in by_id index is the primary key. Ids are lowercase letters and digits,
        # which every collation orders as their bytes; bounds come as text (query.py, id_bound).
        for desc in (False, True):
            self.range[("by_id", desc)] = (
                f"SELECT id, creation_time, doc, convert_to(id, 'UTF8') FROM {t} "
                f"WHERE id >= $1 AND id < $2 ORDER BY id {'DESC' if desc else 'ASC'} LIMIT $3"
            )
        # Many reads of one kind in one statement (batched_reads.py): statement -> its batched
        # form, which takes one array per parameter and returns each read's rows as that
        # statement alone would, followed by the read's position in the arrays (from 1).
        self.batched: dict[str, str] = {self.get: (
            f"SELECT t.creation_time, t.doc, b.i FROM unnest($1::text[]) WITH ORDINALITY AS b(id, i) "
            f"JOIN {t} AS t ON t.id = b.id"
        )}
        for (name, desc), statement in self.range.items():
            col, bound = ("id", "text") if name == "by_id" else (self.key_columns[name], "bytea")
            key = "convert_to(r.id, 'UTF8')" if name == "by_id" else f"r.{col}"
            order = "DESC" if desc else "ASC"
            self.batched[statement] = (
                f"SELECT r.id, r.creation_time, r.doc, {key}, b.i "
                f"FROM unnest($1::{bound}[], $2::{bound}[], $3::int8[]) WITH ORDINALITY AS b(lo, hi, n, i) "
                f"CROSS JOIN LATERAL (SELECT * FROM {t} WHERE {col} >= b.lo AND {col} < b.hi "
                f"ORDER BY {col} {order} LIMIT b.n) AS r ORDER BY b.i, r.{col} {order}"
            )

    def add_key_column(self, index: str) -> str:
        return f"ALTER TABLE {quote_ident(self.table)} ADD COLUMN IF NOT EXISTS {self.key_columns[index]} bytea"

    def set_key(self, index: str) -> str:
        return f"UPDATE {quote_ident(self.table)} SET {self.key_columns[index]} = $2 WHERE id = $1"

    def key_not_null(self, index: str) -> str:
        return f"ALTER TABLE {quote_ident(self.table)} ALTER COLUMN {self.key_columns[index]} SET NOT NULL"

    def create_index(self, index: str) -> str:
        name = quote_ident(index_name(self.table, index))
        return f"CREATE INDEX IF NOT EXISTS {name} ON {quote_ident(self.table)} ({self.key_columns[index]})"

    @staticmethod
    def drop_key_column(table: str, index: str) -> str:
        return TableSql.drop_column(table, "k_" + index)

    @staticmethod
    def drop_column(table: str, column: str) -> str:
        return f"ALTER TABLE {quote_ident(table)} DROP COLUMN IF EXISTS {quote_ident(column)}"

    def add_column(self, column: DerivedColumn) -> str:
        return f"ALTER TABLE {quote_ident(self.table)} ADD COLUMN IF NOT EXISTS {quote_ident(column.name)} {column.sql_type}"

    def set_columns(self, columns: Sequence[DerivedColumn]) -> str:
        """A backfill's UPDATE of derived columns: $1 the id, then one parameter per column."""
        sets = ", ".join(f"{quote_ident(c.name)} = {c.expr.replace('{}', f'${n}')}" for n, c in enumerate(columns, start=2))
        return f"UPDATE {quote_ident(self.table)} SET {sets} WHERE id = $1"


# -- Scheduler and crons (server/core/scheduler/) ----------------------------------------------------
# The job and cron documents live in ordinary document tables (system tables `_scheduled_functions`
# and `_cron_jobs`); these statements find and row-lock them, and every change goes through a
# system DatabaseWriter (DatabaseWriter.patch_locked for rows locked here), so it is validated,
# indexed and logged by the commit tail.
#
# Jobs are found by a plain read (PEEK_DUE_JOBS) and claimed by their physical row address
# (ctid): a TID scan takes no SSI predicate locks on index pages, so concurrent SERIALIZABLE
# claimers and their writes do not conflict with one another (see docs/scheduler.md).

def jobs_channel(namespace: str) -> str:
    """NOTIFY channel that wakes sleeping scheduler loops; the payload is a due time in ms."""
    return f"ripple_jobs_{namespace}"[:63]


_JOBS = quote_ident("_scheduled_functions")
_CRONS = quote_ident("_cron_jobs")

NOTIFY = "SELECT pg_notify($1, $2)"
ADVISORY_XACT_LOCK = "SELECT pg_advisory_xact_lock($1)"
# Candidates: the earliest due pending jobs, unlocked (a hint; the claim decides), with the index
# keys stored with that row version (a batch's job marks reuse them as the old keys).
JOB_KEY_COLUMNS = ("k_by_creation_time", "k_by_state", "k_by_parent", "k_by_completed_time")
PEEK_DUE_JOBS = (
    f"SELECT id, ctid, creation_time, doc, {', '.join(JOB_KEY_COLUMNS)} FROM {_JOBS} "
    "WHERE k_by_state >= $1 AND k_by_state < $2 ORDER BY k_by_state LIMIT $3 OFFSET $4"
)
# The claim: that very row version (so its document is the one peeked), if it is still pending
# and due and nobody holds it.
CLAIM_JOB_AT = (
    f"SELECT id FROM {_JOBS} WHERE ctid = $1 AND id = $2 "
    "AND k_by_state >= $3 AND k_by_state < $4 FOR UPDATE SKIP LOCKED"
)
# A batch's claim (scheduler/batch.py): the same, for several row versions at once (a TID scan
# over the array); the caller keeps only the rows whose id is the one it peeked at that ctid.
CLAIM_JOBS_AT = (
    f"SELECT id, ctid FROM {_JOBS} WHERE ctid = ANY($1::tid[]) "
    "AND k_by_state >= $2 AND k_by_state < $3 FOR UPDATE SKIP LOCKED"
)
# The earliest pending job in a by_state range, unlocked (to arm the timer).
FIRST_JOB_IN_RANGE = (
    f"SELECT id, creation_time, doc FROM {_JOBS} WHERE k_by_state >= $1 AND k_by_state < $2 "
    "ORDER BY k_by_state LIMIT 1"
)
LOCK_JOBS = f"SELECT id, creation_time, doc FROM {_JOBS} WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"
LOCK_JOBS_IN_STATE_RANGE = (
    f"SELECT id, creation_time, doc FROM {_JOBS} WHERE k_by_state >= $1 AND k_by_state < $2 "
    "ORDER BY k_by_state LIMIT $3 FOR UPDATE SKIP LOCKED"
)
LOCK_JOBS_COMPLETED_BEFORE = (
    f"SELECT id, creation_time, doc FROM {_JOBS} WHERE k_by_completed_time >= $1 "
    "AND k_by_completed_time < $2 ORDER BY k_by_completed_time LIMIT $3 FOR UPDATE SKIP LOCKED"
)
LOCK_DUE_CRONS = (
    f"SELECT id, creation_time, doc FROM {_CRONS} WHERE k_by_next_run >= $1 AND k_by_next_run < $2 "
    "ORDER BY k_by_next_run LIMIT $3 FOR UPDATE SKIP LOCKED"
)
FIRST_CRON = f"SELECT id, creation_time, doc FROM {_CRONS} ORDER BY k_by_next_run LIMIT 1"


# Transaction.savepoint(): e.g. a scheduled mutation's user code runs under one inside the
# claiming transaction; if it raises, its writes roll back and the job's failure is recorded in
# the same commit. A nested mutation (ctx.run_mutation) runs under one too. Savepoints are named
# by nesting level and never released (a round trip saved): ROLLBACK TO names the newest
# savepoint of that name, the one its block opened, and undoes every deeper one with it.
def savepoint(level: int) -> str:
    return f"SAVEPOINT ripple_savepoint_{level}"


def release_savepoint(level: int) -> str:
    return f"RELEASE SAVEPOINT ripple_savepoint_{level}"


def rollback_to_savepoint(level: int) -> str:
    return f"ROLLBACK TO SAVEPOINT ripple_savepoint_{level}"


# A connection lost while COMMIT was in flight (commit.py): the process of the PostgreSQL
# backend that ran the transaction is ended (identified by pid and start, a pid can be reused),
# waiting up to $3 ms for it to exit. No row: it is gone; false: still there. Once it is gone,
# its transaction is over for good, and its marker in the change log says whether it committed.
BACKEND_START = "SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
END_BACKEND = """
SELECT pg_terminate_backend(pid, $3::bigint) FROM (
    SELECT pid FROM pg_stat_activity WHERE pid = $1 AND backend_start = $2 OFFSET 0
) AS lost
"""
COMMITTED_WITH_MARKER = "SELECT ts FROM _ripple_commits WHERE marker = $1"


BEGIN = {
    "serializable": "BEGIN ISOLATION LEVEL SERIALIZABLE",
    "read_committed": "BEGIN ISOLATION LEVEL READ COMMITTED",
    "snapshot": "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
}
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"
# A live-query tick's snapshot shared with helper connections (subscriptions.py, tick_runs.py):
# the tick's transaction exports it; a helper's transaction imports it as its first statement.
EXPORT_SNAPSHOT = "SELECT pg_export_snapshot()"
_SNAPSHOT_ID_RE = re.compile(r"^[0-9A-Fa-f]+-[0-9A-Fa-f]+(-[0-9]+)?$")


def begin_imported_snapshot(snapshot_id: str) -> str:
    """BEGIN a read-only snapshot transaction that imports `snapshot_id` (pg_export_snapshot()'s,
    checked: SET TRANSACTION SNAPSHOT takes no parameter), as one simple-protocol message."""
    if not _SNAPSHOT_ID_RE.match(snapshot_id):
        raise ValueError(f"refusing to inline an unexpected snapshot id {snapshot_id!r}")
    return f"{BEGIN['snapshot']}; SET TRANSACTION SNAPSHOT '{snapshot_id}'"


_CHANNEL_RE = re.compile(r"^[A-Za-z0-9_]{1,63}$")


def commit_with_tail(writes_json: str, lock: int, channel: str, marker: int) -> str:
    """The commit tail and COMMIT as one simple-protocol message, so the commit lock taken by
    _ripple_commit is released by the same round trip that takes it. Simple-protocol messages
    take no parameters: the write set is inlined as a dollar-quoted literal. Write sets hold
    table names, ids and base64 keys only, never a `$`; anything else is refused."""
    if "$" in writes_json or not _CHANNEL_RE.match(channel):
        raise ValueError("refusing to inline a write set or channel with unexpected characters")
    return f"SELECT _ripple_commit($w${writes_json}$w$::jsonb, {int(lock)}, '{channel}', {int(marker)}); COMMIT"
