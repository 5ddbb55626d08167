"""Reports are idempotent: an ack, fail or yield sent again after its answer was lost (the
usual case: the node stopped between commit and answer, and the worker re-sends it to another
node) is answered as done, not refused as a lost lease; anything else stale is still refused."""

from __future__ import annotations

import uuid
from typing import Any

from tests.conftest import NodeFactory
from tests.rawclient import RawClient


def refs(*jobs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"jobs": [{"id": j["id"], "token": j["token"], **extra} for j in jobs]}


async def test_a_report_sent_again_elsewhere_is_answered_as_done(
    node_factory: NodeFactory,
) -> None:
    a, b = await node_factory(), await node_factory()
    worker = await RawClient.connect(a.worker_address)
    await worker.hello(capacity=3, kinds=["k"])
    await worker.call("enqueue", {"jobs": [{"kind": "k", "max_attempts": 3}] * 3})
    done, failed, yielded = await worker.jobs(3)
    await worker.call("capacity", {"capacity": 0})  # nothing more for this worker
    assert (await worker.call("ack", refs(done)))["results"] == [None]
    assert (await worker.call("fail", refs(failed, error="boom")))["results"] == [None]
    assert (await worker.call("yield", refs(yielded)))["results"] == [None]
    await worker.close()

    again = await RawClient.connect(b.worker_address)
    await again.hello(capacity=0)
    assert (await again.call("ack", refs(done)))["results"] == [None]
    assert (await again.call("fail", refs(failed, error="boom")))["results"] == [None]
    assert (await again.call("yield", refs(yielded)))["results"] == [None]
    # a different report of an attempt that ended otherwise is still stale
    [stale] = (await again.call("ack", refs(failed)))["results"]
    assert stale is not None
    assert stale["code"] == "STALE_TOKEN"
    [stale] = (await again.call("ack", {"jobs": [{"id": done["id"], "token": 99}]}))["results"]
    assert stale is not None
    await again.close()
    for job, outcome in ((done, "completed"), (failed, "failed"), (yielded, "yielded")):
        rows = await b.store.attempts_of_job(uuid.UUID(job["id"]))
        assert [r["outcome"] for r in rows] == [outcome]  # nothing recorded twice
