"""Binding the node's two listening addresses (workers over TCP, the HTTP API), with one clear
error when an address cannot be taken: which address, why, and which setting chooses another."""

from __future__ import annotations

import errno

from worcr_node.config import HostPort

__all__ = ["ListenError", "listen_error"]

_REASONS = {
    errno.EADDRINUSE: "another process already listens there",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
    errno.EADDRNOTAVAIL: "that address is not one of this machine's",
}


class ListenError(Exception):
    """The node could not listen on an address; the message says which and how to choose
    another."""


def listen_error(what: str, where: HostPort, variable: str, exc: OSError) -> ListenError:
    """`exc` from binding `where` as a ListenError naming the setting (`variable`) to change."""
    reason = _REASONS.get(exc.errno or 0) or exc.strerror or str(exc)
    flag = "--http" if variable == "WORCR_HTTP" else "--listen"
    return ListenError(
        f"cannot listen for {what} on {where}: {reason}. Stop that process, or choose another "
        f"address with {variable}=HOST:PORT (worcr dev: {flag} HOST:PORT; port 0 picks a free one)"
    )
