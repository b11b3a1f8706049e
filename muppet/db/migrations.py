"""The numbered schema migrations, written once for SQLite and PostgreSQL.

Each migration is SQL in SQLite's words with ``?`` placeholders;
``muppet.db.store.translate`` turns it into PostgreSQL's (``INTEGER`` ->
``BIGINT``, ``REAL`` -> ``DOUBLE PRECISION``, ``AUTOINCREMENT`` -> an identity
column). Statements are split on ``;``, so a migration must not put a
semicolon inside a string literal: sqlite3's ``executescript`` would do the
splitting for us but commits first, and a migration has to be one transaction.

To change the schema, append ``(N + 1, SQL)`` to ``MIGRATIONS``; never edit a
migration that has shipped, since databases out there have applied it already.
"""

from __future__ import annotations

#: ``(version, sql)`` in ascending order, without gaps
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            pipeline TEXT NOT NULL,
            -- 'YYYY-MM-DDTHH:MM:SSZ': fixed width, so text order is time order
            reference_time TEXT NOT NULL,
            state TEXT NOT NULL,
            cause TEXT NOT NULL,
            created_at REAL NOT NULL,
            ended_at REAL,
            UNIQUE (pipeline, reference_time)
        );
        CREATE INDEX runs_state ON runs (state);

        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs (id),
            pipeline TEXT NOT NULL,
            step TEXT NOT NULL,
            -- "index" is reserved in both dialects
            job_index INTEGER NOT NULL,
            count INTEGER NOT NULL,
            executor TEXT NOT NULL,
            state TEXT NOT NULL,
            failures INTEGER NOT NULL,
            -- no foreign keys: a failed job names its successor in the same
            -- batch that creates the successor, in either order
            predecessor INTEGER,
            successor INTEGER,
            not_before REAL NOT NULL,
            exit_code INTEGER,
            reason TEXT NOT NULL,
            batch_id TEXT NOT NULL,
            host TEXT NOT NULL,
            created_at REAL NOT NULL,
            submitted_at REAL,
            started_at REAL,
            ended_at REAL
        );
        CREATE INDEX jobs_run_id ON jobs (run_id);
        CREATE INDEX jobs_state ON jobs (state);

        CREATE TABLE job_logs (
            job_id INTEGER PRIMARY KEY REFERENCES jobs (id),
            stdout TEXT NOT NULL,
            stderr TEXT NOT NULL
        );

        -- the transactional outbox: subscribers resume after the last id seen
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            subject_id INTEGER NOT NULL,
            payload TEXT NOT NULL
        );

        -- the last batch the database task committed, so that a retry after
        -- a commit whose outcome was lost (connection dropped during COMMIT)
        -- does not write the batch twice; one row, the task is the only writer
        CREATE TABLE last_write (
            id INTEGER PRIMARY KEY,
            token TEXT NOT NULL,
            rejected TEXT NOT NULL
        )
        """,
    ),
)


def latest_version() -> int:
    return MIGRATIONS[-1][0]


def statements(sql: str) -> list[str]:
    """The statements of one migration, comments removed."""
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
