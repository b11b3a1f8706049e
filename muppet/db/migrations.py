"""The numbered schema migrations, written once for SQLite and PostgreSQL.

Each migration is SQL in SQLite's words with ``?`` placeholders;
``muppet.db.dialect.translate`` turns it into PostgreSQL's (``INTEGER`` ->
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
    (
        2,
        """
        -- The Productstatus index. Products, formats and backends are keyed by
        -- their slugs; times of the index ("reference_time", "time_begin",
        -- "time_end", "expires") are 'YYYY-MM-DDTHH:MM:SSZ' like runs', so
        -- text order is time order.
        CREATE TABLE products (
            slug TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            contact TEXT NOT NULL,
            parents TEXT NOT NULL,      -- JSON array of slugs
            file_count INTEGER NOT NULL,
            operational INTEGER NOT NULL,
            lifetime_hours REAL,
            metadata TEXT NOT NULL,     -- JSON object: grid and time steps
            updated_at REAL NOT NULL
        );
        CREATE TABLE formats (
            slug TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE backends (
            slug TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            url TEXT NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE instances (
            -- AUTOINCREMENT: an id is never used twice, even after deletes
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            product TEXT NOT NULL REFERENCES products (slug),
            reference_time TEXT NOT NULL,
            version INTEGER NOT NULL,
            created_at REAL NOT NULL,
            -- set once, when the first (backend, format) pair holds file_count
            -- files: a data-driven trigger fires once per instance version
            completed_at REAL,
            UNIQUE (product, reference_time, version)
        );
        CREATE INDEX instances_completed ON instances (product, completed_at);
        CREATE TABLE data (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            instance_id INTEGER NOT NULL REFERENCES instances (id),
            -- the file's path under its backend's URL: copies of one file on
            -- other backends share the record
            name TEXT NOT NULL,
            time_begin TEXT,
            time_end TEXT,
            variables TEXT NOT NULL,    -- JSON array
            created_at REAL NOT NULL,
            UNIQUE (instance_id, name)
        );
        CREATE TABLE data_instances (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            data_id INTEGER NOT NULL REFERENCES data (id),
            -- the instance again, so that "files of instance I on backend B"
            -- is one index lookup without a join
            instance_id INTEGER NOT NULL REFERENCES instances (id),
            url TEXT NOT NULL,
            format TEXT NOT NULL REFERENCES formats (slug),
            backend TEXT NOT NULL REFERENCES backends (slug),
            size INTEGER NOT NULL,
            hash_type TEXT NOT NULL,
            hash TEXT NOT NULL,
            expires TEXT,
            deleted INTEGER NOT NULL,
            partial INTEGER NOT NULL,
            -- BitTorrent: the v1 info-hash and the bencoded torrent (base64)
            info_hash TEXT,
            torrent TEXT,
            -- HOST:PORT of a BitTorrent peer serving this copy (muppet-sync)
            peer TEXT,
            created_at REAL NOT NULL,
            deleted_at REAL
        );
        CREATE INDEX data_instances_instance ON data_instances (instance_id, backend, format);
        CREATE INDEX data_instances_data ON data_instances (data_id);
        CREATE INDEX data_instances_expires ON data_instances (expires) WHERE deleted = 0;

        -- subscribers filter events by product
        ALTER TABLE events ADD COLUMN product TEXT;
        -- the committed copies of a batch's index changes, for a retried batch
        ALTER TABLE last_write ADD COLUMN written TEXT;
        CREATE INDEX events_product ON events (product, id)
        """,
    ),
    (
        3,
        """
        -- the daemons on this database: the one holding the lease ('active',
        -- see muppet/db/lease.py) names itself here for the others' messages
        CREATE TABLE daemons (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            since REAL NOT NULL,
            api TEXT NOT NULL,
            role TEXT NOT NULL
        );
        -- an operator's kill of a submitted or running job, kept with the job
        ALTER TABLE jobs ADD COLUMN kill_requested INTEGER NOT NULL DEFAULT 0;
        -- not succeeded by late_after (docs/configuration.md, "Cycling")
        ALTER TABLE jobs ADD COLUMN late INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE runs ADD COLUMN late INTEGER NOT NULL DEFAULT 0;
        -- the run whose jobs made an instance version (NULL: registered by
        -- hand): the outputs of one run, reruns included, go to one version
        ALTER TABLE instances ADD COLUMN run_id INTEGER;
        -- the record that replaced a file registered again at its URL
        ALTER TABLE data_instances ADD COLUMN superseded_by INTEGER;
        CREATE INDEX data_instances_url ON data_instances (url) WHERE deleted = 0;
        -- operators' standing orders: paused pipelines, a draining daemon
        CREATE TABLE controls (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL         -- JSON: who, since when
        )
        """,
    ),
    (
        4,
        """
        -- each pipeline definition a run was made with, by its hash: a run
        -- finishes under its own definition across a reload or a restart
        CREATE TABLE definitions (
            hash TEXT PRIMARY KEY,
            pipeline TEXT NOT NULL,
            definition TEXT NOT NULL,   -- JSON of the pipeline as loaded
            created_at REAL NOT NULL
        );
        ALTER TABLE runs ADD COLUMN definition TEXT NOT NULL DEFAULT '';
        -- requests for product updates (products.request_update): one waits
        -- while products its pipeline requires are not complete for its time
        CREATE TABLE update_requests (
            id INTEGER PRIMARY KEY,
            product TEXT NOT NULL,
            reference_time TEXT NOT NULL,
            pipeline TEXT NOT NULL,
            state TEXT NOT NULL,        -- waiting, done, refused
            waiting_for TEXT NOT NULL,  -- JSON: the required products not complete yet
            by_name TEXT NOT NULL,
            reason TEXT NOT NULL,
            created_at REAL NOT NULL,
            done_at REAL,
            run_id INTEGER              -- the run made or rerun for it
        );
        CREATE INDEX update_requests_state ON update_requests (state)
        """,
    ),
    (
        5,
        """
        -- incidents: a failure for good, lateness, a product not complete in
        -- time, the daemon's own troubles (docs/alerts.md); one open per key
        CREATE TABLE incidents (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL,          -- kind|pipeline|step|subject|reference time
            kind TEXT NOT NULL,
            pipeline TEXT NOT NULL,
            step TEXT NOT NULL,
            subject TEXT NOT NULL,      -- the product or executor it is about, or ''
            reference_time TEXT NOT NULL,  -- '' for the daemon's own troubles
            run_id INTEGER,
            job_id INTEGER,
            summary TEXT NOT NULL,
            opened_at REAL NOT NULL,
            resolved_at REAL,
            resolution TEXT NOT NULL DEFAULT '',
            acked_at REAL,
            acked_by TEXT NOT NULL DEFAULT '',
            ack_reason TEXT NOT NULL DEFAULT '',
            reminded_at REAL NOT NULL   -- the last trigger or reminder
        );
        CREATE UNIQUE INDEX incidents_open ON incidents (key) WHERE resolved_at IS NULL;
        CREATE INDEX incidents_key ON incidents (key);
        CREATE INDEX incidents_cause ON incidents (pipeline, reference_time) WHERE resolved_at IS NULL;
        -- what stakeholders must hear of each incident: its trigger, its
        -- reminders, its resolution; pending until every destination has it
        CREATE TABLE alert_notices (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            incident_id INTEGER NOT NULL REFERENCES incidents (id),
            action TEXT NOT NULL,       -- trigger, remind, resolve
            at REAL NOT NULL,
            done INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX alert_notices_pending ON alert_notices (done, id);
        -- each notice a destination (STAKEHOLDER:mail, STAKEHOLDER:webhook)
        -- has been sent: never sent there again
        CREATE TABLE alert_sends (
            notice_id INTEGER NOT NULL REFERENCES alert_notices (id),
            destination TEXT NOT NULL,
            sent_at REAL NOT NULL,
            PRIMARY KEY (notice_id, destination)
        );
        CREATE INDEX alert_sends_destination ON alert_sends (destination, sent_at)
        """,
    ),
    (
        6,
        """
        -- the lease of the active daemon (muppet/db/lease.py): its epoch,
        -- raised by each daemon that takes it, fences the writes of an
        -- earlier holder; expires (the database's clock, seconds since the
        -- epoch) is renewed by the holder, and a standby takes over a lease
        -- that expired (docs/operations.md, "Running a standby")
        CREATE TABLE lease (
            id INTEGER PRIMARY KEY,
            epoch INTEGER NOT NULL,
            holder TEXT NOT NULL,
            expires REAL NOT NULL
        );
        INSERT INTO lease (id, epoch, holder, expires) VALUES (1, 0, '', 0);
        -- each daemon's own name for its database sessions (application_name),
        -- and when a standby last said it waits
        ALTER TABLE daemons ADD COLUMN tag TEXT NOT NULL DEFAULT '';
        ALTER TABLE daemons ADD COLUMN seen REAL NOT NULL DEFAULT 0
        """,
    ),
    (
        7,
        """
        -- the console's overview (pipelines.status, muppet/summary.py): the
        -- runs counted by pipeline and state from an index, not the table,
        -- and each pipeline's newest run by one look-up; both read every run
        -- before (216-279 ms and 13-24 ms at 200,000 runs on SQLite)
        CREATE INDEX runs_pipeline_state ON runs (pipeline, state);
        CREATE INDEX runs_pipeline_id ON runs (pipeline, id)
        """,
    ),
    (
        8,
        """
        -- what pruning has removed ([daemon] keep_history; muppet/db/prune.py):
        -- the highest event, run and job numbers gone, so that the numbering
        -- goes on above them whatever is left, and a reader asking for
        -- removed events is told where the kept ones start
        CREATE TABLE pruned (
            id INTEGER PRIMARY KEY,
            events INTEGER NOT NULL,    -- every event up to this number is gone
            runs INTEGER NOT NULL,
            jobs INTEGER NOT NULL,
            at REAL NOT NULL            -- when pruning last removed events
        );
        INSERT INTO pruned (id, events, runs, jobs, at) VALUES (1, 0, 0, 0, 0);
        -- the definitions no run uses any more, found without reading every run
        CREATE INDEX runs_definition ON runs (definition)
        """,
    ),
    (
        9,
        """
        -- daemon.status counts the jobs of the running runs by state
        -- (muppet/summary.py): from this index alone, run by run in its
        -- order, rather than from the table's rows grouped in a temporary
        -- b-tree (SQLite, a run of 50,000 jobs: 2.5-3 ms instead of 12)
        CREATE INDEX jobs_run_state ON jobs (run_id, state)
        """,
    ),
    (
        10,
        """
        -- jobs.list of a run gives its first jobs by id (muppet/db/reads.py):
        -- PostgreSQL read all of a run's rows through jobs_run_id (run_id) and
        -- sorted them for the first 100 (EXPLAIN ANALYZE, a run of 10,000
        -- jobs while its fan-out is written: 2.4-3.7 ms); in this order it
        -- reads those 100 alone (0.07 ms). SQLite's index had them in this
        -- order already (it ends with the rowid, which is id); the same
        -- index, with the id named, serves both
        DROP INDEX jobs_run_id;
        CREATE INDEX jobs_run_id ON jobs (run_id, id)
        """,
    ),
)


def latest_version() -> int:
    return MIGRATIONS[-1][0]


def statements(sql: str) -> list[str]:
    """The statements of one migration, comments removed."""
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
