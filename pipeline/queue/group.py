"""Consumer groups: membership, heartbeats, sticky assignment and generations.

A member joins, is assigned partitions, and heartbeats. A member whose last heartbeat is older
than the session timeout is dropped. Any change of membership starts a new *generation* and a
rebalance that moves as few partitions as possible. Every operation a member makes carries its
generation; one from an older generation is refused (``FencedError``), so a member that was dropped
while it stalled cannot commit.

Generations only grow, even across a coordinator restarted on a clock that is behind: every
generation a member reports (in a heartbeat or a check) is remembered, the next generation is above
all of them, and a member reporting one above the current starts a new generation at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pipeline.errors import FencedError

__all__ = ["Assignment", "GroupCoordinator", "sticky_assign"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Assignment:
    """What a member owns in one generation."""

    generation: int
    partitions: tuple[int, ...]


def sticky_assign(
    partitions: Sequence[int], members: Sequence[str], current: Mapping[str, Sequence[int]]
) -> dict[str, tuple[int, ...]]:
    """Balance ``partitions`` over ``members`` keeping as many current owners as possible.

    Every member ends with ``floor(P/M)`` or ``ceil(P/M)`` partitions. Members that already hold
    more get the larger quotas, so the number of partitions that move is minimal.
    """
    if not members:
        return {}
    ordered = sorted(members, key=lambda m: (-len(current.get(m, ())), m))
    base, extra = divmod(len(partitions), len(ordered))
    quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(ordered)}
    valid = set(partitions)
    taken: set[int] = set()
    result: dict[str, list[int]] = {}
    for m in ordered:
        keep = [p for p in sorted(current.get(m, ())) if p in valid and p not in taken][: quota[m]]
        taken.update(keep)
        result[m] = keep
    free = [p for p in sorted(partitions) if p not in taken]
    for m in ordered:
        while len(result[m]) < quota[m]:
            result[m].append(free.pop(0))
    return {m: tuple(sorted(ps)) for m, ps in result.items()}


class GroupCoordinator:
    """Membership and assignment of one consumer group over a fixed partition set."""

    def __init__(
        self,
        group: str,
        partitions: Sequence[int],
        session_timeout_s: float,
        clock: Callable[[], float],
        first_generation: int = 1,
    ) -> None:
        self.group = group
        self._partitions = tuple(partitions)
        self._timeout = session_timeout_s
        self._clock = clock
        self.generation = first_generation
        self._seen = first_generation  # highest generation any member reported
        self._last_seen: dict[str, float] = {}
        self._assignment: dict[str, tuple[int, ...]] = {}
        self.rebalances = 0

    @property
    def members(self) -> tuple[str, ...]:
        """Current members, sorted."""
        return tuple(sorted(self._last_seen))

    def owner_of(self, partition: int) -> str | None:
        """The member that owns a partition now."""
        for member, parts in self._assignment.items():
            if partition in parts:
                return member
        return None

    def join(self, member: str) -> Assignment:
        """Add (or re-add) a member; always starts a new generation.

        Member ids may carry an incarnation suffix (``collector-0#1712345``): a new incarnation
        replaces the old one at once instead of waiting for its session to time out.
        """
        self.expire()
        base = member.split("#", 1)[0]
        for old in [m for m in self._last_seen if m != member and m.split("#", 1)[0] == base]:
            del self._last_seen[old]
            log.info("group %s: %s replaces %s", self.group, member, old)
        self._last_seen[member] = self._clock()
        self._rebalance(f"{member} joined")
        return self.assignment_of(member)

    def leave(self, member: str) -> None:
        """Remove a member (graceful shutdown); its partitions go to the others."""
        if self._last_seen.pop(member, None) is not None:
            self._rebalance(f"{member} left")

    def heartbeat(self, member: str, generation: int) -> Assignment:
        """Record liveness; returns the member's current assignment (maybe a newer generation).

        A member that was dropped (session expired) is told so by ``FencedError`` and must rejoin.
        """
        self.expire()
        self._note(generation)
        if member not in self._last_seen:
            raise FencedError(
                f"group {self.group}: member {member} is not in the group (session expired?); rejoin",
                group=self.group,
                member=member,
                generation=generation,
                current=self.generation,
            )
        self._last_seen[member] = self._clock()
        if generation > self.generation:
            self._rebalance(f"{member} reported generation {generation}, above this coordinator's (clock behind?)")
        return self.assignment_of(member)

    def _note(self, generation: int) -> None:
        self._seen = max(self._seen, generation)

    def assignment_of(self, member: str) -> Assignment:
        """The member's partitions in the current generation."""
        return Assignment(self.generation, self._assignment.get(member, ()))

    def check(self, member: str, generation: int, partition: int | None = None) -> None:
        """Raise ``FencedError`` unless ``member`` acts in the current generation (and owns ``partition``)."""
        self.expire()
        self._note(generation)
        if generation != self.generation or member not in self._last_seen:
            raise FencedError(
                f"group {self.group}: member {member} used generation {generation}, current is {self.generation}",
                group=self.group,
                member=member,
                generation=generation,
                current=self.generation,
            )
        if partition is not None and partition not in self._assignment.get(member, ()):
            raise FencedError(
                f"group {self.group}: partition {partition} is not assigned to {member} in generation {generation}",
                group=self.group,
                member=member,
                generation=generation,
                current=self.generation,
            )

    def expire(self) -> list[str]:
        """Drop members whose session timed out; returns them."""
        now = self._clock()
        gone = [m for m, seen in self._last_seen.items() if now - seen > self._timeout]
        for m in gone:
            del self._last_seen[m]
        if gone:
            self._rebalance(f"session expired: {', '.join(sorted(gone))}")
        return gone

    def _rebalance(self, reason: str) -> None:
        self.generation = max(self.generation, self._seen) + 1
        self.rebalances += 1
        before = self._assignment
        self._assignment = sticky_assign(self._partitions, self.members, before)
        moved = sum(1 for m, ps in self._assignment.items() for p in ps if p not in before.get(m, ()))
        log.info(
            "group %s generation %d: %s; %d member(s), %d partition(s) moved",
            self.group,
            self.generation,
            reason,
            len(self._last_seen),
            moved,
        )
