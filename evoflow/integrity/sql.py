"""SQL fragments the checks share, so that a check's cost follows its violations.

* `population_sql`: a check's population (the ratio's denominator) without counting a large
  table: below ESTIMATE_ABOVE_ROWS rows the exact `count(*)`, above it the planner's own
  estimate (rows per page from the last VACUUM or ANALYZE times the table's current pages),
  for a column `IS NOT NULL` scaled by that column's null fraction in the statistics;
* `unique_constraint_holds_sql`: whether a unique constraint exists, is valid and has the
  expected definition, so that a "duplicates" check can answer 0 without scanning: PostgreSQL
  enforces a unique index on every write path, triggers or not.
"""

from __future__ import annotations

# Under this many rows (by the planner's estimate) a table is counted exactly: a count of
# 100,000 rows takes a few milliseconds, and the threshold tests of small tables stay exact.
ESTIMATE_ABOVE_ROWS = 100_000


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def population_sql(table: str, *, not_null: str | None = None) -> str:
    """A scalar subquery: the rows of `table` (with `not_null` IS NOT NULL when given).

    The estimate is what the planner itself assumes: rows per page as of the last VACUUM or
    ANALYZE (autovacuum keeps it within a few percent) times the pages the table has now, so a
    table that grew since is not under-counted. A table never analysed counts exactly.
    """
    where = f" WHERE {not_null} IS NOT NULL" if not_null else ""
    share = "1.0"
    if not_null:
        share = (
            "(1.0 - COALESCE((SELECT s.null_frac FROM pg_stats AS s"
            f" WHERE s.schemaname = n.nspname AND s.tablename = {_literal(table)}"
            f" AND s.attname = {_literal(not_null)} AND NOT s.inherited), 0))"
        )
    return f"""(
        SELECT CASE
            WHEN c.reltuples < {ESTIMATE_ABOVE_ROWS} OR c.relpages = 0
            THEN (SELECT count(*) FROM {table}{where})
            ELSE round(c.reltuples / c.relpages
                       * (pg_relation_size(c.oid) / current_setting('block_size')::int)
                       * {share})::bigint
        END
        FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE c.oid = {_literal(table)}::regclass)"""


def unique_constraint_holds_sql(*, table: str, name: str, definition: str) -> str:
    """A boolean expression: the unique constraint `name` of `table` exists with exactly
    `definition` (as `pg_get_constraintdef` prints it, e.g. 'UNIQUE (page_id, psid)') and its
    index is valid and ready, so no two rows can break it."""
    return f"""EXISTS (
        SELECT 1 FROM pg_constraint AS con
        JOIN pg_index AS i ON i.indexrelid = con.conindid
        WHERE con.conrelid = {_literal(table)}::regclass AND con.conname = {_literal(name)}
          AND con.contype = 'u' AND pg_get_constraintdef(con.oid) = {_literal(definition)}
          AND i.indisunique AND i.indisvalid AND i.indisready AND i.indislive)"""


def partial_index_population_sql(*, indexes: tuple[str, ...], exact_sql: str) -> str:
    """A scalar subquery: the rows a set of partial indexes cover (e.g. the live sessions, the
    waiting ones' index plus the active ones'), from their entry counts as of the last VACUUM
    or ANALYZE once they pass ESTIMATE_ABOVE_ROWS; below that, `exact_sql` (a count) decides.
    Rows that change often move in and out of such indexes: the estimate is as fresh as the
    last autovacuum of the table, so it suits a population shown beside counted thresholds,
    not a ratio threshold."""
    names = ", ".join(_literal(name) for name in indexes)
    return f"""(
        SELECT CASE WHEN sum(GREATEST(c.reltuples, 0)) < {ESTIMATE_ABOVE_ROWS}
                      OR bool_or(c.reltuples < 0)
                    THEN ({exact_sql})
                    ELSE sum(c.reltuples)::bigint END
        FROM pg_class AS c WHERE c.oid = ANY(ARRAY[{names}]::regclass[]))"""
