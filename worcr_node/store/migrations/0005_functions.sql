-- Worcr schema, version 5: embedded functions (Lua or JavaScript) and what refers to them.
-- Functions are part of the dispatch policy: every write bumps worcr_dispatch_version in the same
-- transaction, so every node reloads (and compiles the new version) within a second.

-- The current version of each function. Rules and limits refer to a function by name.
CREATE TABLE worcr_functions (
    name         text PRIMARY KEY,
    version      integer NOT NULL,
    language     text NOT NULL CHECK (language IN ('lua', 'javascript')),
    hook         text NOT NULL
                 CHECK (hook IN ('on_enqueue', 'weight', 'match', 'limit_key', 'retry', 'shed')),
    source       text NOT NULL,
    description  text NOT NULL DEFAULT '',
    enabled      boolean NOT NULL DEFAULT true,
    match        jsonb NOT NULL DEFAULT '{}',   -- on_enqueue and retry: the jobs it applies to
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Every version ever saved (the current one included), for audit and rollback.
CREATE TABLE worcr_function_versions (
    name         text NOT NULL,
    version      integer NOT NULL,
    language     text NOT NULL,
    hook         text NOT NULL,
    source       text NOT NULL,
    description  text NOT NULL DEFAULT '',
    enabled      boolean NOT NULL DEFAULT true,
    match        jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- Errors of function calls (raised, timed out, out of memory, wrong result), written by each node
-- in batches (at most a few rows per function per second; `repeats` counts the ones folded in).
CREATE TABLE worcr_function_errors (
    id        bigserial PRIMARY KEY,
    name      text NOT NULL,
    version   integer NOT NULL,
    hook      text NOT NULL,
    kind      text NOT NULL,          -- error | timeout | memory | result | tripped
    message   text NOT NULL,
    job_id    uuid,                   -- on_enqueue, retry, limit_key: the job
    lane      text,                   -- weight, match, shed: the lane
    node_id   text NOT NULL,
    repeats   integer NOT NULL DEFAULT 1,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX worcr_function_errors_name ON worcr_function_errors (name, id);
CREATE INDEX worcr_function_errors_at ON worcr_function_errors USING brin (at);

-- The errors of functions that ran for a job ([{"function", "version", "hook", "kind",
-- "message", "at"}], the latest last, at most 20): shown with the job.
ALTER TABLE worcr_jobs ADD COLUMN function_errors jsonb;

-- Rules: a function instead of a factor (multiply), as the judge (match), or for load shedding
-- (shed); and two job-side actions for load shedding without code (hold, discard).
ALTER TABLE worcr_rules ADD COLUMN function text;
ALTER TABLE worcr_rules DROP CONSTRAINT worcr_rules_action_check;
ALTER TABLE worcr_rules ADD CONSTRAINT worcr_rules_action_check
    CHECK (action IN ('multiply', 'forbid', 'match', 'hold', 'discard', 'shed'));

-- Job limits: a function computing the key (and optionally the limit) from the job.
ALTER TABLE worcr_limits ADD COLUMN function text;
