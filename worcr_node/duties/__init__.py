"""The node's periodic work, one duty per module, all run by `worcr_node/scheduler.py`.

| duty | module | every | what it does |
|---|---|---|---|
| `promote` | `promote.py` | 0.2 s | scheduled / retrying jobs whose time came become queued |
| `leases` | `leases.py` | 0.2 s | attempts whose lease expired are requeued (or dead) |
| `expire` | `expiry.py` | 1 s | waiting jobs past their `expires_at` end as expired |
| `split` | `lane_split.py` | 0.5 s | lanes enqueued before a job limit are split by its key |
| `discard` | `shedding.py` | 1 s | queued jobs of lanes a discard rule takes are cancelled |
| `usage` | `usage.py` | 60 s | limits' usage indexes kept bounded |
| `reconcile`, `epoch` | `rebuild.py` | 5 s, 0.5 s | Redis agrees with PostgreSQL; rebuilt if lost |
| `run-time` | `run_time.py` | 1 s | attempts past their run time asked to yield, then revoked |
| `retention` | `log_retention.py` | 60 s | old job log lines deleted |

Each is a small class: its inputs in the constructor, `duty()` naming it with its period, and
the work in `run()`. The node builds them (`Node.__init__`) and hands their duties to one
`DutyScheduler`: one error policy for all. Every node runs every duty today; each is safe to run
on several nodes at once (row locks, SKIP LOCKED or fencing in PostgreSQL, atomic Lua scripts
in Redis). Which node runs which will be decided in the scheduler, in one place.
"""
