-- Worcr schema, version 2: the dispatch policy (tag rules, fairness between tenants).
-- Every change to these tables also bumps worcr_dispatch_version in the same transaction; nodes
-- poll that one row (and hear a Redis nudge) and reload the whole policy when it moves.

CREATE TABLE worcr_rules (
    id           uuid PRIMARY KEY,
    name         text NOT NULL UNIQUE,
    description  text NOT NULL DEFAULT '',
    enabled      boolean NOT NULL DEFAULT true,
    match        jsonb NOT NULL,
    action       text NOT NULL CHECK (action IN ('multiply', 'forbid')),
    factor       double precision NOT NULL DEFAULT 1 CHECK (factor > 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Fairness strategy per scope: '*' is the default, any other scope is a job kind.
CREATE TABLE worcr_fairness (
    scope       text PRIMARY KEY,
    strategy    text NOT NULL
                CHECK (strategy IN ('fifo', 'round_robin', 'weighted_fair', 'fewest_running')),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO worcr_fairness (scope, strategy) VALUES ('*', 'round_robin');

-- Tenant weights for weighted_fair (absent: 1).
CREATE TABLE worcr_tenants (
    tenant      text PRIMARY KEY,
    weight      double precision NOT NULL CHECK (weight > 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE worcr_dispatch_version (
    one      boolean PRIMARY KEY DEFAULT true CHECK (one),
    version  bigint NOT NULL
);
INSERT INTO worcr_dispatch_version (one, version) VALUES (true, 1);
