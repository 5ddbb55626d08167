-- Worcr schema, version 4: the life of long jobs. Checkpoints and progress live on the job row
-- (maps merged by each write, fenced by the attempt's lease token); log lines have their own
-- table, per attempt; a maximum run time per job and per kind.

-- msgpack map {"name": value}: the latest value of each named checkpoint, handed as it is to
-- every later attempt (msgpack, not jsonb: values come back exactly as they were given).
ALTER TABLE worcr_jobs ADD COLUMN checkpoints bytea;
-- The attempt (lease token) and its sequence number of the last checkpoint write applied: an
-- older write of the same attempt arriving late (through another node) is not applied.
ALTER TABLE worcr_jobs ADD COLUMN checkpoint_token bigint NOT NULL DEFAULT 0;
ALTER TABLE worcr_jobs ADD COLUMN checkpoint_seq bigint NOT NULL DEFAULT 0;
-- {"name": {"current": n, "total": n | null, "at": unix seconds}}.
ALTER TABLE worcr_jobs ADD COLUMN progress jsonb;
-- Seconds an attempt may run before the node asks its worker to yield; null: the kind's.
ALTER TABLE worcr_jobs ADD COLUMN max_run_time double precision;
-- When the node asked the current attempt to yield (its run time was up); null: not asked.
ALTER TABLE worcr_jobs ADD COLUMN yield_asked_at timestamptz;
-- Log lines stored for the current attempt (the per-attempt cap).
ALTER TABLE worcr_jobs ADD COLUMN log_lines integer NOT NULL DEFAULT 0;

-- For the run-time duty: running attempts by kind and start (the kinds' run times), those with a
-- run time of their own, and those asked to yield.
CREATE INDEX worcr_jobs_running_kind ON worcr_jobs (kind, started_at) WHERE state = 'running';
CREATE INDEX worcr_jobs_running_own_time ON worcr_jobs (started_at)
    WHERE state = 'running' AND max_run_time IS NOT NULL;
CREATE INDEX worcr_jobs_yield_asked ON worcr_jobs (yield_asked_at)
    WHERE state = 'running' AND yield_asked_at IS NOT NULL;

CREATE TABLE worcr_logs (
    id           bigint GENERATED ALWAYS AS IDENTITY,  -- order of arrival, cluster-wide
    job_id       uuid NOT NULL,
    lease_token  bigint NOT NULL,                      -- the attempt (see worcr_attempts)
    attempt      integer NOT NULL,
    at           timestamptz NOT NULL,                 -- when the worker wrote the line
    level        text NOT NULL,
    message      text NOT NULL,
    PRIMARY KEY (job_id, id)
);
-- Retention deletes by time; lines arrive roughly in time order, so a BRIN index is enough.
CREATE INDEX worcr_logs_at ON worcr_logs USING brin (at);

-- Settings per job kind (a job's own value wins).
CREATE TABLE worcr_kinds (
    kind          text PRIMARY KEY,
    max_run_time  double precision CHECK (max_run_time > 0),   -- seconds; null: none
    yield_grace   double precision CHECK (yield_grace >= 0),   -- seconds; null: the default
    updated_at    timestamptz NOT NULL DEFAULT now()
);
