"""What the supervisor knows about each actor it keeps alive: restarts, re-creations, backoff, reasons.

Pure bookkeeping (no Ray calls), so its rules are unit-tested on their own: an actor whose process
changed (a new pid) was restarted by Ray; an actor that is gone for good (its node lost past
``max_restarts``, its constructor failing) is re-created by the supervisor, but no sooner than its
backoff allows, and the reason is kept for ``status``, the logs and a metric.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypedDict

__all__ = ["ActorHealth", "ActorRecord", "Supervision"]

State = Literal["running", "unresponsive", "restarting", "gone", "recreating"]


class ActorHealth(TypedDict):
    """One actor as ``status`` shows it."""

    role: str
    state: str
    pid: int | None
    restarts: int
    recreated: int
    reason: str | None


@dataclass(slots=True)
class ActorRecord:
    """The supervisor's memory of one named actor."""

    role: str
    state: State = "running"
    pid: int | None = None
    restarts: int = 0
    recreated: int = 0
    failures: int = 0  # consecutive re-creations that did not bring it back
    reason: str | None = None
    not_before: float = 0.0
    history: list[str] = field(default_factory=list)


class Supervision:
    """Per-actor records and the decisions they lead to."""

    def __init__(self, clock: Callable[[], float], base_backoff_s: float = 1.0, max_backoff_s: float = 60.0) -> None:
        self._clock = clock
        self._base = base_backoff_s
        self._max = max_backoff_s
        self.records: dict[str, ActorRecord] = {}

    def _record(self, name: str, role: str) -> ActorRecord:
        return self.records.setdefault(name, ActorRecord(role))

    def answered(self, name: str, role: str, pid: int) -> bool:
        """The actor answered from process ``pid``; True when that is a restart Ray made since last time."""
        r = self._record(name, role)
        restarted = r.pid is not None and pid != r.pid
        if restarted:
            r.restarts += 1
            r.reason = f"restarted by Ray (pid {r.pid} -> {pid})"
            r.history.append(r.reason)
        r.pid = pid
        r.state = "running"
        r.failures = 0
        return restarted

    def silent(self, name: str, role: str, restarting: bool) -> None:
        """The actor did not answer in time (busy, or Ray is restarting it): wait, do not re-create."""
        self._record(name, role).state = "restarting" if restarting else "unresponsive"

    def gone(self, name: str, role: str, reason: str) -> bool:
        """The actor is dead for good; True when it may be re-created now (its backoff has passed)."""
        r = self._record(name, role)
        r.state = "gone"
        r.reason = reason
        return self._clock() >= r.not_before

    def recreated(self, name: str, role: str) -> None:
        """A new actor was started under this name; the next re-creation waits longer if it fails too."""
        r = self._record(name, role)
        r.recreated += 1
        r.failures += 1
        r.state = "recreating"
        r.pid = None
        r.not_before = self._clock() + min(self._max, self._base * 2 ** (r.failures - 1))
        r.history.append(f"re-created: {r.reason}")

    def forget(self, name: str) -> None:
        """Stop tracking an actor that was retired on purpose."""
        self.records.pop(name, None)

    def report(self) -> dict[str, ActorHealth]:
        """Every tracked actor's health, by name."""
        return {
            name: {
                "role": r.role,
                "state": r.state,
                "pid": r.pid,
                "restarts": r.restarts,
                "recreated": r.recreated,
                "reason": r.reason,
            }
            for name, r in sorted(self.records.items())
        }
