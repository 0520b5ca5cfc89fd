"""Replicated partitions: the state machine of one partition's replica (no I/O, no Ray, no asyncio).

The protocol is Raft's log replication with the election run centrally, by the supervisor:

* Every entry carries the *epoch* of the leader that stamped it; each replica keeps its epoch
  history (where each epoch's entries start). Only the leader of epoch E stamps E, and there is
  at most one: an election asks replicas to *promise* E (``vote``) and a replica that promised E
  refuses anything from a lower epoch (that is the fencing of an old leader).
* The leader pushes entries to each follower (``request_for`` / ``accept`` / ``on_reply``). A
  follower first cuts its log at the first offset where its epoch history differs from the
  leader's (a returning old leader loses what it held beyond what was committed), then appends.
* The high-water mark (HW) is the highest offset that ``min_insync`` replicas hold. A producer is
  acknowledged once the HW passes its entry; consumers read below the HW only.
* An election hears from at least ``replication_factor - min_insync + 1`` replicas that remember
  their log (not *fresh*: a replica restarted without its log holds nothing it could vouch for
  until it has caught up again), so every committed entry is held by one of them; the winner is
  the one with the newest last epoch, then the longest log (``choose_leader``).
* A new leader first appends a *marker* (an entry without rows) in its epoch, and moves the HW only
  over entries of its own epoch: an older epoch's entry counts as committed once the marker after
  it is held by ``min_insync`` replicas (Raft's "commit only entries of the current term"; without
  it, an old entry that a later leader copied to a majority could still be overruled by a replica
  holding a newer epoch). The marker also lets what the old leader left pending become visible
  when nothing new is produced (the end of a bounded run).

Offsets are never renumbered: an entry committed at offset o stays at o on every future leader,
which is what keeps the collector's compare-and-set on stored offsets exactly-once.
"""

from __future__ import annotations

import bisect
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "Election",
    "EpochHistory",
    "FollowerView",
    "PartitionReplica",
    "ReplicaLog",
    "Replicate",
    "Reply",
    "Vote",
    "choose_leader",
    "election_quorum",
    "replicas_of",
]

Role = Literal["leader", "follower", "unattached"]


def replicas_of(partition: int, brokers: int, factor: int) -> tuple[int, ...]:
    """The brokers holding ``partition``: its preferred leader (``partition % brokers``) and the next ones."""
    return tuple((partition + k) % brokers for k in range(factor))


def election_quorum(factor: int, min_insync: int) -> int:
    """Replicas that remember their log an election must hear from: any ``min_insync`` of them meet it."""
    return factor - min_insync + 1


class ReplicaLog(Protocol):
    """What the state machine needs of a partition's log; entries are opaque to it."""

    @property
    def start_offset(self) -> int:
        """Oldest offset held."""
        ...

    @property
    def end_offset(self) -> int:
        """Offset the next entry gets."""
        ...

    def append_entry(self, entry: Any) -> None:
        """Append ``entry`` at ``end_offset``."""
        ...

    def truncate(self, end: int) -> None:
        """Drop the entries at ``end`` and above."""
        ...

    def reset(self, start: int) -> None:
        """Drop every entry; the next one gets offset ``start``."""
        ...


@dataclass(slots=True)
class EpochHistory:
    """Where each epoch's entries start: ``marks`` are (epoch, first offset), both increasing."""

    marks: list[tuple[int, int]] = field(default_factory=list)

    def epoch_at(self, offset: int) -> int:
        """The epoch of the entry at ``offset`` (0 before any mark)."""
        i = bisect.bisect_right([s for _, s in self.marks], offset)
        return self.marks[i - 1][0] if i else 0

    def last_epoch(self, end: int) -> int:
        """The epoch of the last entry of a log ending at ``end``."""
        return self.epoch_at(end - 1) if end > 0 else 0

    def begin(self, epoch: int, start: int) -> None:
        """Entries from ``start`` on are of ``epoch`` (marks at or above ``start`` are replaced)."""
        self.truncate(start)
        if not self.marks or self.marks[-1][0] != epoch:
            self.marks.append((epoch, start))

    def truncate(self, end: int) -> None:
        """Forget the marks of entries at ``end`` and above."""
        while self.marks and self.marks[-1][1] >= end:
            self.marks.pop()

    def truncated(self, end: int) -> EpochHistory:
        """A copy without the marks at ``end`` and above."""
        out = EpochHistory(list(self.marks))
        out.truncate(end)
        return out

    def divergence(self, other: EpochHistory, end: int, other_end: int) -> int:
        """The first offset where this log (ending at ``end``) and ``other`` disagree, at most the shorter end."""
        limit = min(end, other_end)
        for point in sorted({0, *(s for _, s in self.marks), *(s for _, s in other.marks)}):
            if point >= limit:
                break
            if self.epoch_at(point) != other.epoch_at(point):
                return point
        return limit


@dataclass(frozen=True, slots=True)
class Vote:
    """A replica's answer to an election: the epoch it promised and what its log holds."""

    replica: int
    epoch: int
    last_epoch: int
    end_offset: int
    high_water: int
    fresh: bool  # restarted without its log and not caught up since: it cannot vouch for anything
    lineage: str


@dataclass(frozen=True, slots=True)
class Election:
    """The outcome of ``choose_leader``: who leads, and whether the log's lineage must change."""

    leader: int
    unclean: bool  # too few replicas remember the log: acknowledged entries may be gone


@dataclass(frozen=True, slots=True)
class Replicate:
    """What a leader sends a follower (besides the entries from ``first_offset`` on)."""

    epoch: int
    leader: int
    history: tuple[tuple[int, int], ...]
    high_water: int
    start_offset: int
    end_offset: int
    first_offset: int
    lineage: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A follower's answer: where its log ends now, or why it refused."""

    end_offset: int
    promised: int
    refused: Literal["", "fenced", "unattached"] = ""


@dataclass(slots=True)
class FollowerView:
    """What a leader knows of one follower."""

    next_offset: int  # where the next request starts
    match: int = 0  # the follower holds the leader's entries below this
    caught_up_at: float | None = None  # when it last held everything the leader had
    answered: bool = False


class PartitionReplica:
    """One replica of one partition: role, epochs, high-water mark, and (as leader) its followers."""

    def __init__(
        self,
        partition: int,
        me: int,
        replicas: Sequence[int],
        min_insync: int,
        log: ReplicaLog,
        *,
        history: Sequence[tuple[int, int]] = (),
        promised: int = 0,
        lineage: str | None = None,
        fresh: bool = True,
        lag_s: float = 10.0,
    ) -> None:
        if me not in replicas:
            raise ValueError(f"replica {me} is not one of partition {partition}'s replicas {list(replicas)}")
        if not 1 <= min_insync <= len(replicas):
            raise ValueError(f"min_insync {min_insync} must be between 1 and {len(replicas)}")
        self.partition = partition
        self.me = me
        self.replicas = tuple(replicas)
        self.min_insync = min_insync
        self.log = log
        self.history = EpochHistory([(int(e), int(s)) for e, s in history])
        self.promised = promised
        self.lineage = lineage or uuid.uuid4().hex[:12]
        self.fresh = fresh
        self.lag_s = lag_s
        self.role: Role = "unattached"
        self.epoch = 0
        self.leader: int | None = None
        self.high_water = log.start_offset
        self.followers: dict[int, FollowerView] = {}
        self.epoch_start = 0  # as leader: the offset of this epoch's marker
        self.truncated = 0  # entries dropped because they diverged from a leader's log

    # --- elections -----------------------------------------------------------------------------------

    def vote(self, epoch: int) -> Vote | None:
        """Promise ``epoch`` (None when an equal or newer one was promised); a leader stops leading."""
        if epoch <= self.promised:
            return None
        self.promised = epoch
        if self.role == "leader":
            self._step_down()
        end = self.log.end_offset
        return Vote(self.me, epoch, self.history.last_epoch(end), end, self.high_water, self.fresh, self.lineage)

    def lead(self, epoch: int, marker: Any, lineage: str | None = None) -> bool:
        """Become the leader of ``epoch`` (which this replica promised), appending ``marker`` in it.

        False (nothing changed) when a newer epoch was promised since the vote.
        """
        if epoch != self.promised:
            return False
        if lineage is not None and lineage != self.lineage:
            self.lineage = lineage  # an unclean election: the producers re-send what they retain
        end = self.log.end_offset
        self.high_water = max(min(self.high_water, end), self.log.start_offset)
        self.history.begin(epoch, end)
        self.log.append_entry(marker)
        self.epoch_start = end
        self.role, self.epoch, self.leader, self.fresh = "leader", epoch, self.me, False
        self.followers = {r: FollowerView(end) for r in self.replicas if r != self.me}
        self._advance()
        return True

    def follow(self, epoch: int, leader: int) -> bool:
        """Follow ``leader`` in ``epoch`` (the supervisor says so); False when a newer epoch was promised."""
        if epoch < self.promised or (epoch == self.promised and self.role == "leader" and leader != self.me):
            return False
        self.promised = epoch
        if self.role == "leader" and leader != self.me:
            self._step_down()
        self.role, self.epoch, self.leader = "follower", epoch, leader
        return True

    def fenced(self, promised: int) -> None:
        """A follower promised a newer epoch: another leader was elected; stop leading."""
        self.promised = max(self.promised, promised)
        if self.role == "leader":
            self._step_down()

    def _step_down(self) -> None:
        self.role, self.leader = "follower", None
        self.followers = {}

    # --- the leader's side ---------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """Whether this replica leads its partition now."""
        return self.role == "leader"

    def request_for(self, follower: int, max_entries: int) -> tuple[Replicate, int]:
        """The next request for ``follower`` and how many entries (from ``first_offset``) it carries."""
        view = self.followers[follower]
        first = min(max(view.next_offset, self.log.start_offset), self.log.end_offset)
        count = max(0, min(max_entries, self.log.end_offset - first))
        request = Replicate(
            self.epoch,
            self.me,
            tuple(self.history.marks),
            self.high_water,
            self.log.start_offset,
            self.log.end_offset,
            first,
            self.lineage,
        )
        return request, count

    def on_reply(self, follower: int, request: Replicate, reply: Reply, now: float) -> bool:
        """Take a follower's answer; True when the high-water mark moved."""
        if self.role != "leader" or request.epoch != self.epoch or follower not in self.followers:
            return False  # an answer to an earlier epoch's request
        if reply.refused == "fenced":
            self.fenced(reply.promised)
            return False
        view = self.followers[follower]
        view.answered = reply.refused == ""
        if reply.refused:
            view.next_offset = self.log.end_offset
            view.match = 0
            return False
        view.match = min(reply.end_offset, self.log.end_offset)
        view.next_offset = view.match
        if reply.end_offset >= request.end_offset:
            view.caught_up_at = now
        return self._advance()

    def appended(self) -> bool:
        """After a local append: True when the high-water mark moved (``min_insync`` 1)."""
        return self._advance()

    def _advance(self) -> bool:
        held = sorted([self.log.end_offset, *(v.match for v in self.followers.values())], reverse=True)
        quorum = held[self.min_insync - 1] if len(held) >= self.min_insync else 0
        if quorum > self.high_water and quorum > self.epoch_start:  # this epoch's marker is held
            self.high_water = quorum
            return True
        return False

    def in_sync(self, now: float) -> tuple[int, ...]:
        """The replicas caught up with the leader within ``lag_s`` (the leader first)."""
        if self.role != "leader":
            return ()
        end = self.log.end_offset
        out = [self.me]
        for r, v in self.followers.items():
            recent = v.caught_up_at is not None and now - v.caught_up_at <= self.lag_s
            if v.answered and (v.match >= end or recent):
                out.append(r)
        return tuple(out)

    def lag(self) -> dict[int, int]:
        """Entries each follower lacks (the leader's view)."""
        end = self.log.end_offset
        return {r: max(0, end - v.match) for r, v in self.followers.items()}

    # --- the follower's side -------------------------------------------------------------------------

    def accept(self, request: Replicate, entries: Sequence[Any]) -> Reply:
        """Take a leader's request: fence, cut a diverging tail, append what continues the log."""
        if request.epoch < self.promised:
            return Reply(self.log.end_offset, self.promised, "fenced")
        if self.promised == 0 or self.role == "unattached":
            # Restarted and not told yet whom to follow: without its log it might otherwise help an
            # old leader the others fenced reach its quorum; with it, take no entries from a leader
            # that may be gone already (the supervisor attaches it to the current one).
            return Reply(self.log.end_offset, self.promised, "unattached")
        if request.epoch == self.epoch and self.leader not in (None, request.leader):
            return Reply(self.log.end_offset, self.promised, "fenced")  # one leader per epoch, the first heard
        if self.role == "leader":
            self._step_down()
        self.promised = request.epoch
        self.role, self.epoch, self.leader = "follower", request.epoch, request.leader
        if request.lineage != self.lineage:
            self._reset(request, request.start_offset)  # an unclean election elsewhere: start over from the leader
        leader_history = EpochHistory(list(request.history))
        log = self.log
        if log.end_offset < request.start_offset:
            self._reset(request, request.start_offset)  # behind what the leader retains: rebuild
        else:
            cut = self.history.divergence(leader_history, log.end_offset, request.end_offset)
            if cut < log.start_offset:
                self._reset(request, request.start_offset)
            elif cut < log.end_offset:
                self.truncated += log.end_offset - cut
                log.truncate(cut)
        first = request.first_offset
        end = log.end_offset
        try:
            if first <= end < first + len(entries):
                for entry in entries[end - first :]:
                    log.append_entry(entry)
        finally:  # an append that raised (a full disk) leaves the history of what was appended
            self.history = leader_history.truncated(log.end_offset)
        self.high_water = max(log.start_offset, min(request.high_water, log.end_offset))
        if log.end_offset >= request.high_water:
            self.fresh = False  # holds everything committed: may vouch for it in an election
        return Reply(log.end_offset, self.promised)

    def _reset(self, request: Replicate, start: int) -> None:
        self.truncated += self.log.end_offset - self.log.start_offset
        self.log.reset(start)
        self.lineage = request.lineage
        self.history = EpochHistory(list(request.history)).truncated(start)
        self.high_water = start

    # --- reports ------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Role, epochs and offsets (persisted ``history``/``promised``/``lineage`` included)."""
        return {
            "role": self.role,
            "epoch": self.epoch,
            "promised": self.promised,
            "leader": self.leader,
            "lineage": self.lineage,
            "fresh": self.fresh,
            "history": [list(m) for m in self.history.marks],
            "start_offset": self.log.start_offset,
            "end_offset": self.log.end_offset,
            "high_water": self.high_water,
            "truncated": self.truncated,
        }


def choose_leader(votes: Sequence[Vote], replicas: Sequence[int], min_insync: int, everyone: bool) -> Election | None:
    """The winner of an election from the votes received, or None when it cannot be decided safely.

    Clean: at least ``election_quorum`` voters remember their log; the winner has the newest last
    epoch, then the longest log, then comes first in ``replicas`` (the preferred leader). Unclean:
    every replica answered but too few remember their log (a first start, or each restarted without
    it): the longest log wins and the lineage changes, so that producers re-send what they retain.
    """
    rank = {r: i for i, r in enumerate(replicas)}
    remembering = [v for v in votes if not v.fresh]
    if len(remembering) >= election_quorum(len(replicas), min_insync):
        pool, unclean = remembering, False
    elif everyone and votes:
        pool, unclean = list(votes), True
    else:
        return None
    best = max(pool, key=lambda v: (v.last_epoch, v.end_offset, -rank.get(v.replica, len(rank))))
    return Election(best.replica, unclean)
