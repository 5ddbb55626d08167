-- Worcr schema, version 1: jobs, their lanes and per-attempt history.
-- Applied by worcr_node.store.migrate under an advisory lock, so several nodes may start at once.

CREATE TABLE worcr_lanes (
    lane        text PRIMARY KEY,          -- stable hash of (kind, tenant, tags, weight)
    kind        text NOT NULL,
    tenant      text NOT NULL,
    tags        text[] NOT NULL,
    weight      double precision NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE SEQUENCE worcr_job_seq AS bigint CACHE 100;

CREATE TABLE worcr_jobs (
    id            uuid PRIMARY KEY,        -- UUIDv7: time-ordered
    seq           bigint NOT NULL,         -- order within a lane; renewed each time it becomes ready
    lane          text NOT NULL,
    kind          text NOT NULL,
    args          bytea NOT NULL,          -- msgpack
    tags          text[] NOT NULL DEFAULT '{}',
    tenant        text NOT NULL DEFAULT 'default',
    weight        double precision NOT NULL DEFAULT 1,
    state         text NOT NULL,
    run_at        timestamptz,
    expires_at    timestamptz,
    max_attempts  integer NOT NULL DEFAULT 25,
    backoff       jsonb,                   -- {"base", "factor", "max", "jitter"}; null = defaults
    unique_key    text,
    reserve_for   double precision NOT NULL DEFAULT 60,  -- lease length, seconds
    attempt       integer NOT NULL DEFAULT 0,  -- attempts counted toward max_attempts
    lease_token   bigint NOT NULL DEFAULT 0,   -- fencing token: +1 at every dispatch
    worker_id     text,
    node_id       text,
    result        bytea,
    last_error    text,
    enqueued_at   timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- The ready backlog of a lane, read in order by lane refills (the Redis window's source).
CREATE INDEX worcr_jobs_ready ON worcr_jobs (lane, seq) WHERE state = 'queued';
-- Jobs waiting for their time: scheduled and retrying.
CREATE INDEX worcr_jobs_due ON worcr_jobs (run_at) WHERE state IN ('scheduled', 'retrying');
-- Jobs that may expire before they run.
CREATE INDEX worcr_jobs_expiring ON worcr_jobs (expires_at)
    WHERE expires_at IS NOT NULL AND state IN ('scheduled', 'queued', 'retrying');
CREATE INDEX worcr_jobs_running ON worcr_jobs (id) WHERE state = 'running';
-- One pending or running job per unique key.
CREATE UNIQUE INDEX worcr_jobs_unique ON worcr_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'queued', 'running', 'retrying');
-- Listing by state/kind/tenant, newest first, keyset-paginated by id.
CREATE INDEX worcr_jobs_state_id ON worcr_jobs (state, id);
CREATE INDEX worcr_jobs_kind_id ON worcr_jobs (kind, id);
CREATE INDEX worcr_jobs_tenant_id ON worcr_jobs (tenant, id);

CREATE TABLE worcr_attempts (
    job_id       uuid NOT NULL,
    attempt      integer NOT NULL,         -- the job's attempt number when it ran
    lease_token  bigint NOT NULL,
    worker_id    text,
    node_id      text,
    started_at   timestamptz,
    finished_at  timestamptz NOT NULL DEFAULT now(),
    outcome      text NOT NULL,            -- completed | failed | yielded | lease_expired | cancelled
    error        text,
    backtrace    text,
    PRIMARY KEY (job_id, lease_token)
);
