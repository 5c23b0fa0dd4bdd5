"""The gateway's own limits, as configured or derived from the process's file limit
(``RLIMIT_NOFILE``) and the system's cap on listen queues (``somaxconn``).

Every client connection takes a file descriptor, and every request in flight one more
for its upstream (two while a hedge races). Derived defaults keep the sum under the
file limit, with room for the rest of the process (listener, event loop, store,
Redis, log files), so that running out of descriptors, which would fail requests
already admitted, cannot happen by default: new connections are refused first.
"""

from __future__ import annotations

import contextlib
import resource
from dataclasses import dataclass, field
from pathlib import Path

from polyroute.router.config import GatewayConfig

DEFAULT_MAX_IN_FLIGHT = 256
"""Requests one gateway process serves at once by default: what one core can serve.
Measured (docs/performance.md#overload): streams paced like a fast LLM's answer (50
chunks a second each) take the whole core at 200 to 250 at once, past which every
stream slows down with each one added, until the first-chunk timeouts fire for all of
them (the independent soak of issue 30 found 250 sustainable, 1,000 not). With 1,000
clients asking, the admitted ones' time to the first chunk is 5x shorter than without
the cap; 128 halves it again, for deployments where latency matters more than
throughput."""
RESERVED_FDS = 128
"""Descriptors left to the rest of the process, and to refusals in progress."""
UPSTREAM_FDS_PER_REQUEST = 2
"""An upstream connection per request in flight, and one more for a hedge or a pooled
connection not yet reused."""
_SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


@dataclass(frozen=True, slots=True)
class Limits:
    """The numbers the gateway enforces (``max_in_flight`` ``None``: no cap)."""

    max_connections: int
    max_in_flight: int | None
    backlog: int
    file_limit: int | None
    """The process's soft ``RLIMIT_NOFILE`` (``None``: unlimited or unknown)."""
    warnings: list[str] = field(default_factory=list)
    """Configured values the file limit cannot hold, said at start."""


def file_limit() -> int | None:
    """The soft limit on this process's open files, ``None`` when there is none."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def somaxconn() -> int | None:
    """The system's cap on a listen queue (Linux), ``None`` when unknown."""
    with contextlib.suppress(OSError, ValueError):
        return int(_SOMAXCONN.read_text().strip())
    return None


def limits_for(
    config: GatewayConfig, files: int | None = None, queue_cap: int | None = None
) -> Limits:
    """The limits ``config`` asks for, its unset ones derived from ``files`` (the file
    limit) and the backlog capped by ``queue_cap`` (the kernel would cap it silently)."""
    room = max(16, files - RESERVED_FDS) if files is not None else None
    in_flight = max_in_flight(config, files)
    connections = config.max_connections
    if connections is None:
        if room is None:
            connections = 1_000_000
        else:
            upstreams = UPSTREAM_FDS_PER_REQUEST * (in_flight or room // 3)
            connections = max(8, room - upstreams)
    backlog = min(config.backlog, queue_cap) if queue_cap else config.backlog
    warnings = []
    if room is not None and config.max_connections is not None:
        needed = connections + UPSTREAM_FDS_PER_REQUEST * (in_flight or 0)
        if needed > room:
            warnings.append(
                f"gateway.max_connections {connections} with max_in_flight {in_flight} may "
                f"need {needed + RESERVED_FDS} file descriptors, over the process's limit of "
                f"{files}: raise the limit (ulimit -n, LimitNOFILE) or lower them"
            )
    return Limits(connections, in_flight, backlog, files, warnings)


def max_in_flight(config: GatewayConfig, files: int | None) -> int | None:
    """``gateway.max_in_flight`` (0: no cap, ``None``), or by default
    :data:`DEFAULT_MAX_IN_FLIGHT`, lowered to a third of the descriptors a low file
    limit leaves (a connection and two upstream descriptors each)."""
    if config.max_in_flight is not None:
        return config.max_in_flight or None
    if files is None:
        return DEFAULT_MAX_IN_FLIGHT
    return max(1, min(DEFAULT_MAX_IN_FLIGHT, (files - RESERVED_FDS) // 3))
