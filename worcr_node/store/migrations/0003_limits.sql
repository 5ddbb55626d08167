-- Worcr schema, version 3: limits (concurrency, token bucket, fixed and sliding windows).
-- Limits are part of the dispatch policy: every change bumps worcr_dispatch_version in the same
-- transaction, so every node reloads them with the rules. Their live state is in Redis.

CREATE TABLE worcr_limits (
    id            uuid PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    description   text NOT NULL DEFAULT '',
    enabled       boolean NOT NULL DEFAULT true,
    scope         text NOT NULL CHECK (scope IN ('job', 'rate')),
    type          text NOT NULL
                  CHECK (type IN ('concurrency', 'token_bucket', 'fixed_window', 'sliding_window')),
    max_units     bigint NOT NULL CHECK (max_units > 0),   -- the limit N
    period        double precision NOT NULL DEFAULT 0,     -- seconds; 0 for concurrency
    burst         bigint NOT NULL DEFAULT 0,               -- token bucket only
    key_template  text NOT NULL DEFAULT '',
    match         jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Job limits keyed on job args split lanes by those values: {"customer_id": "42"}; null: none.
ALTER TABLE worcr_lanes ADD COLUMN partition jsonb;

-- When the job limits admitted the attempt (Redis clock); null when no job limit applied.
ALTER TABLE worcr_jobs ADD COLUMN admitted_at timestamptz;
ALTER TABLE worcr_attempts ADD COLUMN admitted_at timestamptz;

-- Units of concurrency-type rate limits held by running attempts (acquired by their workers),
-- so the holds can be counted again if Redis loses its data. Rows of attempts that ended are
-- ignored and swept.
CREATE TABLE worcr_holds (
    job_id       uuid NOT NULL,
    lease_token  bigint NOT NULL,
    limit_id     uuid NOT NULL,
    key          text NOT NULL,
    units        integer NOT NULL CHECK (units > 0),
    acquired_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, lease_token, limit_id, key)
);

-- Cluster-wide facts that must outlive Redis: the Redis epoch last seen (a missing epoch in
-- Redis while one is recorded here means Redis lost its data, not a first start).
CREATE TABLE worcr_cluster (
    key         text PRIMARY KEY,
    value       text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
