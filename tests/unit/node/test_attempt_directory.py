"""The attempt directory: cancel and yield asks find the link holding an attempt by job id and
lease token; a newer dispatch replaces an older one; a link forgets only what it holds."""

from __future__ import annotations

from worcr_node.transport.directory import AttemptDirectory


class Link:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def test_asks_find_the_link_holding_the_attempt_with_that_token() -> None:
    a, b = Link("a"), Link("b")
    d: AttemptDirectory[Link] = AttemptDirectory()
    d.hold("j1", 1, a)
    d.hold("j2", 4, a)
    d.hold("j3", 2, b)
    assert d.holders([("j1", 1), ("j3", 2), ("j2", 9), ("nope", 1)]) == {
        a: [("j1", 1)],
        b: [("j3", 2)],
    }


def test_a_new_dispatch_replaces_the_old_and_the_old_link_cannot_release_it() -> None:
    old, new = Link("old"), Link("new")
    d: AttemptDirectory[Link] = AttemptDirectory()
    d.hold("j", 1, old)
    d.hold("j", 2, new)  # dispatched again (or adopted by the worker's new connection)
    assert d.holders([("j", 1)]) == {}
    d.release_all(old, ["j"])  # the old connection closes
    assert d.holders([("j", 2)]) == {new: [("j", 2)]}
    d.release("j", new)
    assert len(d) == 0
