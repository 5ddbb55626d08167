"""Every SQL statement the node runs, named by what it does (noun first).

Writes check the expected current state and, for results of an attempt, the fencing token
(`lease_token`), so a stale or out-of-order write changes nothing. Batched statements take arrays
and `unnest` them: one round trip per batch (group commit).
"""

from __future__ import annotations

_JOB_COLS = (
    "id, state, kind, args, tags, tenant, weight, lane, run_at, expires_at, max_attempts, backoff,"
    " unique_key, reserve_for, attempt, lease_token, worker_id, node_id, result, last_error,"
    " enqueued_at, admitted_at, started_at, finished_at, updated_at, checkpoints, progress,"
    " max_run_time, yield_asked_at, function_errors"
)

LANE_INSERT_MANY = """
INSERT INTO worcr_lanes (lane, kind, tenant, tags, weight, partition)
SELECT u.lane, u.kind, u.tenant,
       CASE WHEN u.tags = '' THEN '{}'::text[] ELSE string_to_array(u.tags, E'\\x1f') END, u.weight,
       u.partition::jsonb
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::text[])
     AS u(lane, kind, tenant, tags, weight, partition)
ON CONFLICT (lane) DO NOTHING
RETURNING lane
"""

LANE_GET_MANY = (
    "SELECT lane, kind, tenant, tags, weight, partition FROM worcr_lanes"
    " WHERE lane = ANY($1::text[])"
)

JOB_INSERT_MANY = """
INSERT INTO worcr_jobs (id, seq, lane, kind, args, tags, tenant, weight, state, run_at, expires_at,
                        max_attempts, backoff, unique_key, reserve_for, max_run_time)
SELECT u.id, nextval('worcr_job_seq'), u.lane, u.kind, u.args,
       CASE WHEN u.tags = '' THEN '{}'::text[] ELSE string_to_array(u.tags, E'\\x1f') END,
       u.tenant, u.weight, u.state, to_timestamp(u.run_at), to_timestamp(u.expires_at),
       u.max_attempts, u.backoff::jsonb, u.unique_key, u.reserve_for, u.max_run_time
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::text[], $6::text[], $7::float8[],
            $8::text[], $9::float8[], $10::float8[], $11::int4[], $12::text[], $13::text[],
            $14::float8[], $15::float8[])
     AS u(id, lane, kind, args, tags, tenant, weight, state, run_at, expires_at, max_attempts,
          backoff, unique_key, reserve_for, max_run_time)
ON CONFLICT DO NOTHING
RETURNING id, seq
"""

JOB_EXISTING_BY_ID = "SELECT id, state FROM worcr_jobs WHERE id = ANY($1::uuid[])"

JOB_EXISTING_BY_UNIQUE_KEY = """
SELECT id, state, unique_key FROM worcr_jobs
WHERE unique_key = ANY($1::text[])
  AND state IN ('scheduled', 'queued', 'running', 'retrying')
"""

# queued -> running. The fencing token grows by one at every dispatch. A job no longer in the lane
# it was claimed from (moved to a split lane by a new limit) is not claimed.
JOB_CLAIM_MANY = """
UPDATE worcr_jobs j
SET state = 'running', attempt = j.attempt + 1, lease_token = j.lease_token + 1,
    worker_id = u.worker_id, node_id = $3, started_at = now(), updated_at = now(),
    admitted_at = to_timestamp(u.admitted / 1000.0), yield_asked_at = NULL, log_lines = 0
FROM unnest($1::uuid[], $2::text[], $4::text[], $5::int8[]) AS u(id, worker_id, lane, admitted)
WHERE j.id = u.id AND j.state = 'queued' AND j.lane = u.lane
  AND (j.expires_at IS NULL OR j.expires_at > now())
RETURNING j.id, j.lease_token, j.kind, j.args, j.tags, j.tenant, j.attempt, j.max_attempts,
          j.reserve_for, extract(epoch FROM j.enqueued_at)::float8, u.worker_id, j.checkpoints
"""

# running -> completed, with its attempt row, in one statement.
JOB_COMPLETE_MANY = """
WITH u AS (
    SELECT * FROM unnest($1::uuid[], $2::int8[], $3::bytea[]) AS u(id, token, result)
), done AS (
    UPDATE worcr_jobs j
    SET state = 'completed', result = u.result, finished_at = now(), updated_at = now()
    FROM u
    WHERE j.id = u.id AND j.lease_token = u.token AND j.state = 'running'
    RETURNING j.id, j.attempt, j.lease_token, j.worker_id, j.node_id, j.started_at, j.admitted_at,
              j.kind, j.tenant
), hist AS (
    INSERT INTO worcr_attempts (job_id, attempt, lease_token, worker_id, node_id, started_at,
                                outcome, admitted_at)
    SELECT id, attempt, lease_token, worker_id, node_id, started_at, 'completed', admitted_at
    FROM done
)
SELECT id, kind, tenant FROM done
"""

# Running attempts with what a retry function sees of the job, not locked: the function is asked
# before the transaction that ends them (JOB_LOCK_RUNNING, JOB_FINISH_ATTEMPT_MANY).
JOB_RUNNING_FULL = """
SELECT j.id, j.lease_token, j.attempt, j.max_attempts, j.kind, j.tenant, j.tags, j.args
FROM worcr_jobs j JOIN unnest($1::uuid[], $2::int8[]) AS u(id, token)
  ON j.id = u.id AND j.lease_token = u.token
WHERE j.state = 'running'
"""

# Rows of running attempts, locked, for failure handling computed in Python.
JOB_LOCK_RUNNING = """
SELECT j.id, j.lease_token, j.attempt, j.max_attempts, j.backoff, j.expires_at
FROM worcr_jobs j JOIN unnest($1::uuid[], $2::int8[]) AS u(id, token)
  ON j.id = u.id AND j.lease_token = u.token
WHERE j.state = 'running'
ORDER BY j.id
FOR UPDATE OF j
"""

# running -> retrying | dead | queued (yield, lost lease), with the attempt row.
JOB_FINISH_ATTEMPT_MANY = """
WITH u AS (
    SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::float8[], $5::int4[],
                         $6::text[], $7::text[], $8::text[])
         AS u(id, token, new_state, run_at, attempt_delta, outcome, error, backtrace)
), moved AS (
    UPDATE worcr_jobs j
    SET state = u.new_state,
        run_at = COALESCE(to_timestamp(u.run_at), j.run_at),
        seq = CASE WHEN u.new_state = 'queued' THEN nextval('worcr_job_seq') ELSE j.seq END,
        attempt = j.attempt + u.attempt_delta,
        last_error = COALESCE(u.error, j.last_error),
        finished_at = CASE WHEN u.new_state = 'dead' THEN now() ELSE j.finished_at END,
        updated_at = now()
    FROM u
    WHERE j.id = u.id AND j.lease_token = u.token AND j.state = 'running'
    RETURNING j.id, j.seq, j.lane, j.state, j.attempt - u.attempt_delta AS ran_as, j.lease_token,
              j.worker_id, j.node_id, j.started_at, j.admitted_at, u.outcome, u.error, u.backtrace,
              j.kind, j.tenant
), hist AS (
    INSERT INTO worcr_attempts (job_id, attempt, lease_token, worker_id, node_id, started_at,
                                admitted_at, outcome, error, backtrace)
    SELECT id, ran_as, lease_token, worker_id, node_id, started_at, admitted_at, outcome, error,
           backtrace
    FROM moved
    ON CONFLICT DO NOTHING
)
SELECT id, seq, lane, state, kind, tenant FROM moved
"""

# Lost leases: the current attempt of each job (whatever its token) if it is still running.
JOB_RUNNING_TOKENS = """
SELECT id, lease_token, attempt, max_attempts FROM worcr_jobs
WHERE id = ANY($1::uuid[]) AND state = 'running'
"""

JOB_RUNNING_ALL = "SELECT id, reserve_for FROM worcr_jobs WHERE state = 'running'"

# scheduled | retrying -> queued when run_at is reached.
JOB_PROMOTE_DUE = """
WITH due AS (
    SELECT id FROM worcr_jobs
    WHERE state IN ('scheduled', 'retrying') AND run_at <= now()
    ORDER BY run_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE worcr_jobs j SET state = 'queued', seq = nextval('worcr_job_seq'), updated_at = now()
FROM due WHERE j.id = due.id
RETURNING j.id, j.seq, j.lane, j.kind, j.tenant
"""

JOB_EXPIRE_DUE = """
WITH due AS (
    SELECT id FROM worcr_jobs
    WHERE expires_at IS NOT NULL AND expires_at <= now()
      AND state IN ('scheduled', 'queued', 'retrying')
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE worcr_jobs j SET state = 'expired', finished_at = now(), updated_at = now()
FROM due WHERE j.id = due.id
RETURNING j.id, j.kind, j.tenant
"""

# The head of a lane's ready backlog: what a refill pages into the Redis window.
LANE_READY_PAGE = """
SELECT id, seq FROM worcr_jobs
WHERE lane = $1 AND state = 'queued'
ORDER BY seq
LIMIT $2
"""

# Lanes with ready work, by a loose index scan over the partial (lane, seq) index.
LANES_WITH_READY = """
WITH RECURSIVE l AS (
    (SELECT lane FROM worcr_jobs WHERE state = 'queued' ORDER BY lane LIMIT 1)
    UNION ALL
    SELECT (SELECT lane FROM worcr_jobs WHERE state = 'queued' AND lane > l.lane
            ORDER BY lane LIMIT 1)
    FROM l WHERE l.lane IS NOT NULL
)
SELECT lane FROM l WHERE lane IS NOT NULL
"""

JOB_CANCEL = """
UPDATE worcr_jobs SET state = 'cancelled', finished_at = now(), updated_at = now()
WHERE id = $1 AND state IN ('scheduled', 'queued', 'running', 'retrying')
"""

JOB_STATE_FOR_UPDATE = (
    "SELECT state, lease_token, kind, tenant FROM worcr_jobs WHERE id = $1 FOR UPDATE"
)

# The attempt a cancel interrupted (running jobs only).
ATTEMPT_CANCELLED = """
INSERT INTO worcr_attempts (job_id, attempt, lease_token, worker_id, node_id, started_at, outcome,
                            error, admitted_at)
SELECT id, attempt, lease_token, worker_id, node_id, started_at, 'cancelled', 'cancelled',
       admitted_at
FROM worcr_jobs WHERE id = $1
ON CONFLICT DO NOTHING
"""

JOB_RETRY_NOW = """
UPDATE worcr_jobs
SET state = 'queued', seq = nextval('worcr_job_seq'), run_at = NULL,
    -- an ended job gets a fresh attempt budget; a waiting one keeps its count
    attempt = CASE WHEN state IN ('dead', 'cancelled', 'expired') THEN 0 ELSE attempt END,
    expires_at = CASE WHEN state = 'expired' THEN NULL ELSE expires_at END,
    finished_at = NULL, updated_at = now()
WHERE id = $1 AND state IN ('scheduled', 'retrying', 'dead', 'cancelled', 'expired')
RETURNING id, seq, lane, kind, tenant
"""

JOB_GET = f"SELECT {_JOB_COLS} FROM worcr_jobs WHERE id = $1"

# How these attempts ended, if they did (a report re-sent after its answer was lost).
ATTEMPT_OUTCOMES = """
SELECT a.job_id, a.lease_token, a.outcome
FROM worcr_attempts a JOIN unnest($1::uuid[], $2::int8[]) AS u(id, token)
  ON a.job_id = u.id AND a.lease_token = u.token
"""

ATTEMPTS_OF_JOB = """
SELECT attempt, lease_token, worker_id, node_id, started_at, finished_at, outcome, error, backtrace,
       admitted_at
FROM worcr_attempts WHERE job_id = $1 ORDER BY lease_token
"""


def job_list(state: bool, kind: bool, tenant: bool, cursor: bool) -> str:
    """Newest first, keyset-paginated by id (UUIDv7 is time-ordered). $1 is the limit."""
    where: list[str] = []
    n = 2
    for present, clause in (
        (state, "state = ${}"),
        (kind, "kind = ${}"),
        (tenant, "tenant = ${}"),
        (cursor, "id < ${}"),
    ):
        if present:
            where.append(clause.format(n))
            n += 1
    sql = f"SELECT {_JOB_COLS} FROM worcr_jobs"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + " ORDER BY id DESC LIMIT $1"


# -- dispatch policy (rules, fairness, tenant weights) ------------------------------------------

POLICY_VERSION = "SELECT version FROM worcr_dispatch_version"
POLICY_BUMP = "UPDATE worcr_dispatch_version SET version = version + 1 RETURNING version"

_RULE_COLS = (
    "id, name, description, enabled, match, action, factor, function, created_at, updated_at"
)
RULE_LIST = f"SELECT {_RULE_COLS} FROM worcr_rules ORDER BY created_at, id"
RULE_GET = f"SELECT {_RULE_COLS} FROM worcr_rules WHERE id = $1"
RULE_COUNT = "SELECT count(*) FROM worcr_rules"
# Serializes rule creation, so concurrent creates cannot pass the rule limit together.
RULE_CREATE_LOCK = "SELECT pg_advisory_xact_lock(x'776F7263722D72'::bigint)"  # "worcr-r"
RULE_INSERT = f"""
INSERT INTO worcr_rules (id, name, description, enabled, match, action, factor, function)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8)
RETURNING {_RULE_COLS}
"""
RULE_UPDATE = f"""
UPDATE worcr_rules
SET name = $2, description = $3, enabled = $4, match = $5::jsonb, action = $6, factor = $7,
    function = $8, updated_at = now()
WHERE id = $1
RETURNING {_RULE_COLS}
"""
RULE_DELETE = "DELETE FROM worcr_rules WHERE id = $1 RETURNING id"

FAIRNESS_LIST = "SELECT scope, strategy FROM worcr_fairness"
FAIRNESS_CLEAR = "DELETE FROM worcr_fairness"
FAIRNESS_INSERT_MANY = """
INSERT INTO worcr_fairness (scope, strategy)
SELECT * FROM unnest($1::text[], $2::text[])
"""

TENANT_WEIGHT_LIST = "SELECT tenant, weight, updated_at FROM worcr_tenants ORDER BY tenant"
TENANT_WEIGHT_GET = "SELECT tenant, weight, updated_at FROM worcr_tenants WHERE tenant = $1"
TENANT_WEIGHT_SET = """
INSERT INTO worcr_tenants (tenant, weight) VALUES ($1, $2)
ON CONFLICT (tenant) DO UPDATE SET weight = EXCLUDED.weight, updated_at = now()
RETURNING tenant, weight, updated_at
"""
TENANT_WEIGHT_DELETE = "DELETE FROM worcr_tenants WHERE tenant = $1 RETURNING tenant"

# Running jobs per tenant (fewest_running), through the partial index on running jobs.
RUNNING_BY_TENANT = "SELECT tenant, count(*) FROM worcr_jobs WHERE state = 'running' GROUP BY 1"

# -- limits ----------------------------------------------------------------------------------------

_LIMIT_COLS = (
    "id, name, description, enabled, scope, type, max_units, period, burst, key_template, match,"
    " function, created_at, updated_at"
)
LIMIT_LIST = f"SELECT {_LIMIT_COLS} FROM worcr_limits ORDER BY created_at, id"
LIMIT_GET = f"SELECT {_LIMIT_COLS} FROM worcr_limits WHERE id = $1"
LIMIT_GET_BY_NAME = f"SELECT {_LIMIT_COLS} FROM worcr_limits WHERE name = $1"
LIMIT_COUNT = "SELECT count(*) FROM worcr_limits"
LIMIT_CREATE_LOCK = "SELECT pg_advisory_xact_lock(x'776F7263722D6C'::bigint)"  # "worcr-l"
LIMIT_INSERT = f"""
INSERT INTO worcr_limits (id, name, description, enabled, scope, type, max_units, period, burst,
                          key_template, match, function)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12)
RETURNING {_LIMIT_COLS}
"""
LIMIT_UPDATE = f"""
UPDATE worcr_limits
SET name = $2, description = $3, enabled = $4, scope = $5, type = $6, max_units = $7, period = $8,
    burst = $9, key_template = $10, match = $11::jsonb, function = $12, updated_at = now()
WHERE id = $1
RETURNING {_LIMIT_COLS}
"""
LIMIT_DELETE = "DELETE FROM worcr_limits WHERE id = $1 RETURNING id"

# Concurrency units of rate limits held by running attempts (recount after a Redis loss).
HOLD_ADD = """
INSERT INTO worcr_holds (job_id, lease_token, limit_id, key, units)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (job_id, lease_token, limit_id, key)
DO UPDATE SET units = worcr_holds.units + EXCLUDED.units
"""
HOLD_GIVE = """
UPDATE worcr_holds SET units = units - $5
WHERE job_id = $1 AND lease_token = $2 AND limit_id = $3 AND key = $4 AND units > $5
RETURNING units
"""
HOLD_DROP = """
DELETE FROM worcr_holds WHERE job_id = $1 AND lease_token = $2 AND limit_id = $3 AND key = $4
"""
HOLD_SWEEP = """
DELETE FROM worcr_holds h
WHERE NOT EXISTS (SELECT 1 FROM worcr_jobs j
                  WHERE j.id = h.job_id AND j.lease_token = h.lease_token AND j.state = 'running')
"""

# Running attempts with what a recount needs: their job limits and their rate-limit holds.
JOB_RUNNING_FOR_RECOUNT = """
SELECT j.id, j.reserve_for, j.kind, j.tenant, j.tags, j.args, j.worker_id,
       (SELECT l.partition FROM worcr_lanes l WHERE l.lane = j.lane) AS partition,
       coalesce((SELECT array_agg(h.limit_id::text || E'\\x1f' || h.key || E'\\x1f' || h.units)
                 FROM worcr_holds h
                 WHERE h.job_id = j.id AND h.lease_token = j.lease_token), '{}') AS holds
FROM worcr_jobs j WHERE j.state = 'running'
"""

JOB_QUEUED_LANES = (
    "SELECT DISTINCT lane FROM worcr_jobs WHERE id = ANY($1::uuid[]) AND state = 'queued'"
)
JOB_RUNNING_STILL = "SELECT id FROM worcr_jobs WHERE id = ANY($1::uuid[]) AND state = 'running'"

CLUSTER_GET = "SELECT value FROM worcr_cluster WHERE key = $1"
CLUSTER_SET = """
INSERT INTO worcr_cluster (key, value) VALUES ($1, $2)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
"""

# Splitting a lane by args values (a job limit keyed on an args path was created after its jobs
# were enqueued): the waiting jobs of the lane, then their moves to the split lanes.
# A lane's waiting jobs, read without locks: what splits each is asked of functions (limit_key)
# outside any transaction, then JOB_MOVE_LANES moves those still waiting in that lane.
LANE_JOBS_TO_SPLIT = """
SELECT id, args FROM worcr_jobs
WHERE lane = $1 AND state IN ('queued', 'scheduled', 'retrying')
ORDER BY seq
LIMIT $2
"""
JOB_MOVE_LANES = """
UPDATE worcr_jobs j SET lane = u.lane, updated_at = now()
FROM unnest($1::uuid[], $2::text[]) AS u(id, lane)
WHERE j.id = u.id AND j.lane = $3 AND j.state IN ('queued', 'scheduled', 'retrying')
RETURNING j.lane, j.state
"""


# -- the life of running jobs: checkpoints, progress, logs, run time ------------------------------
# Each write is fenced like a result: it changes the job only while the attempt that sent it is
# the running one. A batch holds at most one row per (job, token) (merged by the writer).

# The running attempts among ($1 id, $2 token), locked in id order (every multi-row writer of
# running jobs locks in id order, so concurrent batches cannot deadlock), with their checkpoints
# and the (token, seq) of the last checkpoint write applied: the writer merges in Python.
CHECKPOINT_LOCK_MANY = """
SELECT j.id, j.lease_token, j.checkpoints, j.checkpoint_token, j.checkpoint_seq
FROM worcr_jobs j JOIN unnest($1::uuid[], $2::int8[]) AS u(id, token)
  ON j.id = u.id AND j.lease_token = u.token
WHERE j.state = 'running'
ORDER BY j.id
FOR UPDATE OF j
"""

CHECKPOINT_SET_MANY = """
UPDATE worcr_jobs j
SET checkpoints = u.value, checkpoint_token = u.token, checkpoint_seq = u.seq
FROM unnest($1::uuid[], $2::bytea[], $3::int8[], $4::int8[]) AS u(id, value, token, seq)
WHERE j.id = u.id
"""

# Merge progress counters into the job's map; returns the merged map for the event stream. The
# rows are locked (in id order) before they are read, so a concurrent merge is never lost and
# the fence is checked on the latest row.
PROGRESS_SET_MANY = """
WITH u AS (
    SELECT * FROM unnest($1::uuid[], $2::int8[], $3::jsonb[]) AS u(id, token, put)
), locked AS (
    SELECT j.id, COALESCE(j.progress, '{}'::jsonb) || u.put AS value
    FROM worcr_jobs j JOIN u ON j.id = u.id AND j.lease_token = u.token
    WHERE j.state = 'running'
    ORDER BY j.id
    FOR UPDATE OF j
)
UPDATE worcr_jobs j SET progress = m.value
FROM locked m
WHERE j.id = m.id AND octet_length(m.value::text) <= $4
RETURNING j.id, j.lease_token, j.progress::text, j.kind, j.tenant
"""

# Count the lines against the attempt's cap ($4) and store those under it, in one statement.
# `cur` locks each job row, so concurrent batches of one attempt count in turn.
LOG_INSERT_MANY = """
WITH u AS (
    SELECT * FROM unnest($1::uuid[], $2::int8[], $3::int4[]) AS u(id, token, n)
), cur AS (
    SELECT j.id, j.lease_token, j.attempt, j.kind, j.tenant, j.log_lines AS before, u.n
    FROM worcr_jobs j JOIN u ON j.id = u.id AND j.lease_token = u.token
    WHERE j.state = 'running' AND j.log_lines < $4
    ORDER BY j.id
    FOR UPDATE OF j
), counted AS (
    UPDATE worcr_jobs j SET log_lines = LEAST(cur.before + cur.n, $4)
    FROM cur WHERE j.id = cur.id
), ins AS (
    INSERT INTO worcr_logs (job_id, lease_token, attempt, at, level, message)
    SELECT cur.id, cur.lease_token, cur.attempt, to_timestamp(l.at), l.level, l.message
    FROM unnest($5::uuid[], $6::int8[], $7::int4[], $8::float8[], $9::text[], $10::text[])
         AS l(id, token, idx, at, level, message)
    JOIN cur ON cur.id = l.id AND cur.lease_token = l.token
    WHERE cur.before + l.idx < $4
    ORDER BY l.id, l.idx
    RETURNING job_id, id, lease_token, attempt, extract(epoch FROM at)::float8 AS at, level,
              message
)
SELECT ins.job_id, ins.id, ins.lease_token, ins.attempt, ins.at, ins.level, ins.message,
       cur.kind, cur.tenant
FROM ins JOIN cur ON cur.id = ins.job_id AND cur.lease_token = ins.lease_token
ORDER BY ins.id
"""

# The (job, token) pairs among ($1, $2) that are running attempts.
JOB_ATTEMPT_RUNNING = """
SELECT id, lease_token FROM worcr_jobs j JOIN unnest($1::uuid[], $2::int8[]) AS u(jid, token)
  ON j.id = u.jid AND j.lease_token = u.token
WHERE j.state = 'running'
"""

LOGS_OF_JOB = """
SELECT id, lease_token, attempt, extract(epoch FROM at)::float8 AS at, level, message
FROM worcr_logs
WHERE job_id = $1 AND id > $2 AND ($3::int4 IS NULL OR attempt = $3)
ORDER BY id
LIMIT $4
"""

# Retention: lines older than the cutoff, a batch at a time.
LOGS_DELETE_BEFORE = """
DELETE FROM worcr_logs WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM worcr_logs WHERE at < to_timestamp($1) LIMIT $2
))
"""

# Running attempts past their maximum run time (the job's own, else its kind's), not yet asked
# to yield: mark them asked. Each branch reads a small partial index. Returns (id, token). Rows
# locked by a checkpoint or progress write are waited for, not skipped (a job that writes all
# the time would be skipped at every tick); locks are taken in id order like every writer's, and
# a row asked by another node meanwhile is left out (yield_asked_at is checked again).
RUN_TIME_ASK_YIELD = """
WITH due AS (
    SELECT d.id FROM worcr_kinds k
    CROSS JOIN LATERAL (
        SELECT j.id FROM worcr_jobs j
        WHERE j.kind = k.kind AND j.state = 'running'
          AND j.started_at <= now() - make_interval(secs => k.max_run_time)
          AND j.max_run_time IS NULL AND j.yield_asked_at IS NULL
        LIMIT $1
    ) d
    WHERE k.max_run_time IS NOT NULL
    UNION
    SELECT j.id FROM worcr_jobs j
    WHERE j.state = 'running' AND j.max_run_time IS NOT NULL AND j.yield_asked_at IS NULL
      AND j.started_at <= now() - make_interval(secs => j.max_run_time)
), locked AS (
    SELECT j.id FROM worcr_jobs j
    WHERE j.id = ANY(ARRAY(SELECT id FROM due))
      AND j.state = 'running' AND j.yield_asked_at IS NULL
    ORDER BY j.id
    LIMIT $1
    FOR UPDATE OF j
)
UPDATE worcr_jobs j SET yield_asked_at = now()
FROM locked WHERE j.id = locked.id
RETURNING j.id, j.lease_token
"""

# Attempts asked to yield and still running: (id, token, the run time exceeded, the grace ($2
# seconds unless the kind says), whether the grace is over).
RUN_TIME_ASKED = """
SELECT j.id, j.lease_token, COALESCE(j.max_run_time, k.max_run_time, 0) AS max_run_time,
       COALESCE(k.yield_grace, $2) AS grace,
       j.yield_asked_at + make_interval(secs => COALESCE(k.yield_grace, $2)) <= now() AS overdue
FROM worcr_jobs j LEFT JOIN worcr_kinds k ON k.kind = j.kind
WHERE j.state = 'running' AND j.yield_asked_at IS NOT NULL
ORDER BY j.yield_asked_at
LIMIT $1
"""

_KIND_COLS = "kind, max_run_time, yield_grace, updated_at"
KIND_LIST = f"SELECT {_KIND_COLS} FROM worcr_kinds ORDER BY kind"
KIND_GET = f"SELECT {_KIND_COLS} FROM worcr_kinds WHERE kind = $1"
KIND_PUT = f"""
INSERT INTO worcr_kinds (kind, max_run_time, yield_grace) VALUES ($1, $2, $3)
ON CONFLICT (kind) DO UPDATE
SET max_run_time = EXCLUDED.max_run_time, yield_grace = EXCLUDED.yield_grace, updated_at = now()
RETURNING {_KIND_COLS}
"""
KIND_DELETE = "DELETE FROM worcr_kinds WHERE kind = $1 RETURNING kind"


# The last $3 log lines of the attempt with lease token $2 of a job, oldest first: the snapshot
# that opens a job's event stream (the primary key (job_id, id) is read backwards). By token, not
# attempt number: an operator retry starts the attempt numbers again.
LOGS_TAIL_OF_JOB = """
SELECT id, lease_token, attempt, at, level, message FROM (
    SELECT id, lease_token, attempt, extract(epoch FROM at)::float8 AS at, level, message
    FROM worcr_logs
    WHERE job_id = $1 AND lease_token = $2
    ORDER BY id DESC
    LIMIT $3
) AS tail
ORDER BY id
"""

# -- embedded functions (functions/store.py) -------------------------------------------------------

_FUNCTION_COLS = (
    "name, version, language, hook, source, description, enabled, match, created_at, updated_at"
)
FUNCTION_LIST = f"SELECT {_FUNCTION_COLS} FROM worcr_functions ORDER BY name"
FUNCTION_GET = f"SELECT {_FUNCTION_COLS} FROM worcr_functions WHERE name = $1"
FUNCTION_GET_FOR_UPDATE = f"SELECT {_FUNCTION_COLS} FROM worcr_functions WHERE name = $1 FOR UPDATE"
FUNCTION_COUNT = "SELECT count(*) FROM worcr_functions"
FUNCTION_CREATE_LOCK = "SELECT pg_advisory_xact_lock(x'776F7263722D66'::bigint)"  # "worcr-f"
# Insert or replace the current version ($2 = the next version number).
FUNCTION_PUT = f"""
INSERT INTO worcr_functions (name, version, language, hook, source, description, enabled, match)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)
ON CONFLICT (name) DO UPDATE
SET version = EXCLUDED.version, language = EXCLUDED.language, hook = EXCLUDED.hook,
    source = EXCLUDED.source, description = EXCLUDED.description, enabled = EXCLUDED.enabled,
    match = EXCLUDED.match, updated_at = now()
RETURNING {_FUNCTION_COLS}
"""
FUNCTION_VERSION_ADD = """
INSERT INTO worcr_function_versions (name, version, language, hook, source, description, enabled,
                                     match)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)
"""
FUNCTION_NEXT_VERSION = (
    "SELECT coalesce(max(version), 0) + 1 FROM worcr_function_versions WHERE name = $1"
)
FUNCTION_DELETE = "DELETE FROM worcr_functions WHERE name = $1 RETURNING name"
FUNCTION_VERSIONS = """
SELECT name, version, language, hook, source, description, enabled, match, created_at,
       created_at AS updated_at
FROM worcr_function_versions WHERE name = $1 ORDER BY version DESC LIMIT $2
"""
FUNCTION_VERSION_GET = """
SELECT name, version, language, hook, source, description, enabled, match, created_at,
       created_at AS updated_at
FROM worcr_function_versions WHERE name = $1 AND version = $2
"""
# Who refers to a function: rules and limits, by name (a function in use cannot be deleted nor
# change its hook).
FUNCTION_USERS = """
SELECT 'rule' AS what, name FROM worcr_rules WHERE function = $1
UNION ALL
SELECT 'limit', name FROM worcr_limits WHERE function = $1
ORDER BY 1, 2
"""
FUNCTION_HOOK = "SELECT hook FROM worcr_functions WHERE name = $1 FOR SHARE"
FUNCTION_ERROR_INSERT_MANY = """
INSERT INTO worcr_function_errors (name, version, hook, kind, message, job_id, lane, node_id,
                                   repeats, at)
SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::uuid[],
                     $7::text[], $8::text[], $9::int[], $10::timestamptz[])
"""
FUNCTION_ERRORS = """
SELECT id, name, version, hook, kind, message, job_id, lane, node_id, repeats, at
FROM worcr_function_errors
WHERE name = $1 AND ($2::bigint IS NULL OR id < $2)
ORDER BY id DESC
LIMIT $3
"""
FUNCTION_ERRORS_PRUNE = (
    "DELETE FROM worcr_function_errors WHERE at < now() - make_interval(secs => $1)"
)
# Errors of functions that ran for jobs, onto the jobs (the latest 20 kept).
JOB_FUNCTION_ERRORS_ADD = """
UPDATE worcr_jobs j
SET function_errors = (
    SELECT jsonb_agg(e ORDER BY n) FROM (
        SELECT e, n FROM jsonb_array_elements(coalesce(j.function_errors, '[]'::jsonb) || u.errs)
             WITH ORDINALITY AS x(e, n)
        ORDER BY n DESC LIMIT 20
    ) AS kept
)
FROM unnest($1::uuid[], $2::jsonb[]) AS u(id, errs)
WHERE j.id = u.id
"""

# Load shedding: cancel up to $2 queued jobs of lanes a discard rule takes.
LANE_DISCARD_QUEUED = """
WITH picked AS (
    SELECT id FROM worcr_jobs
    WHERE lane = ANY($1::text[]) AND state = 'queued'
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE worcr_jobs j
SET state = 'cancelled', finished_at = now(), updated_at = now(), last_error = $3
FROM picked WHERE j.id = picked.id
RETURNING j.id, j.kind, j.tenant
"""
