"""An in-process transport for the replication state machine: replicas, a network of pending
requests, and an elector doing what the supervisor does. Used by the unit and property tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.queue.replication import PartitionReplica, Replicate, Vote, choose_leader


class ListLog:
    """A partition log of plain values."""

    def __init__(self, start: int = 0) -> None:
        self.start = start
        self.values: list[Any] = []

    @property
    def start_offset(self) -> int:
        return self.start

    @property
    def end_offset(self) -> int:
        return self.start + len(self.values)

    def append_entry(self, entry: Any) -> None:
        self.values.append(entry)

    def truncate(self, end: int) -> None:
        del self.values[max(0, end - self.start) :]

    def reset(self, start: int) -> None:
        self.start, self.values = start, []

    def at(self, offset: int) -> Any:
        return self.values[offset - self.start]

    def items(self) -> Iterator[tuple[int, Any]]:
        return ((self.start + i, v) for i, v in enumerate(self.values))


@dataclass(frozen=True)
class Marker:
    """The entry a new leader appends in its epoch."""

    epoch: int


@dataclass
class Node:
    """One replica's process: its state machine, and what survives a crash (the disk)."""

    replica: PartitionReplica
    alive: bool = True
    disk: bool = True


@dataclass
class Message:
    source: int
    target: int
    request: Replicate
    entries: list[Any]


@dataclass
class Sim:
    """Three (by default) replicas of one partition, a network and an elector."""

    size: int = 3
    min_insync: int = 2
    nodes: dict[int, Node] = field(default_factory=dict)
    network: list[Message] = field(default_factory=list)
    epoch: int = 0  # the highest epoch the elector handed out
    leader: int | None = None
    now: float = 0.0
    unclean: int = 0

    def __post_init__(self) -> None:
        for r in range(self.size):
            self.nodes[r] = Node(self._fresh(r))

    def _fresh(self, r: int) -> PartitionReplica:
        return PartitionReplica(0, r, tuple(range(self.size)), self.min_insync, ListLog(), lag_s=5.0)

    def rep(self, r: int) -> PartitionReplica:
        return self.nodes[r].replica

    def log(self, r: int) -> ListLog:
        log = self.rep(r).log
        assert isinstance(log, ListLog)
        return log

    # --- processes -------------------------------------------------------------------------------

    def crash(self, r: int, disk: bool = True) -> None:
        node = self.nodes[r]
        node.alive, node.disk = False, disk
        self.network = [m for m in self.network if m.source != r]  # its requests in flight die with it

    def restart(self, r: int) -> None:
        node = self.nodes[r]
        old = node.replica
        if node.disk:  # the log, its epoch history, the promise and the lineage were on disk
            node.replica = PartitionReplica(
                0,
                r,
                old.replicas,
                self.min_insync,
                old.log,
                history=old.history.marks,
                promised=old.promised,
                lineage=old.lineage,
                fresh=old.fresh,
                lag_s=old.lag_s,
            )
        else:
            node.replica = self._fresh(r)
        node.alive = True

    # --- the supervisor ----------------------------------------------------------------------------

    def elect(self, exclude: tuple[int, ...] = ()) -> int | None:
        """Ask every live replica (but ``exclude``, taken for dead) to vote; the winner leads."""
        voters = [r for r, n in self.nodes.items() if n.alive and r not in exclude]
        epoch = max([self.epoch, *(self.rep(r).promised for r in voters)]) + 1
        self.epoch = epoch
        votes: list[Vote] = []
        for r in voters:
            vote = self.rep(r).vote(epoch)
            if vote is not None:
                votes.append(vote)
        everyone = len(votes) == self.size
        outcome = choose_leader(votes, tuple(range(self.size)), self.min_insync, everyone)
        if outcome is None:
            return None
        lineage = uuid.uuid4().hex[:12] if outcome.unclean else None
        if outcome.unclean:
            self.unclean += 1
        assert self.rep(outcome.leader).lead(epoch, Marker(epoch), lineage)
        self.leader = outcome.leader
        for v in votes:
            if v.replica != outcome.leader:
                self.rep(v.replica).follow(epoch, outcome.leader)
        return outcome.leader

    def attach(self) -> None:
        """Tell live replicas that follow no one (restarted) who leads."""
        if self.leader is None or not self.nodes[self.leader].alive:
            return
        for r, n in self.nodes.items():
            if n.alive and r != self.leader and n.replica.role == "unattached":
                n.replica.follow(self.epoch, self.leader)

    # --- the data path ------------------------------------------------------------------------------

    def leaders(self) -> list[int]:
        return [r for r, n in self.nodes.items() if n.alive and n.replica.is_leader]

    def append(self, r: int, value: Any) -> int:
        rep = self.rep(r)
        assert rep.is_leader
        offset = rep.log.end_offset
        rep.log.append_entry(value)
        rep.appended()
        return offset

    def send(self, source: int, target: int, max_entries: int = 4) -> Message | None:
        rep = self.rep(source)
        if not (self.nodes[source].alive and rep.is_leader) or target == source:
            return None
        request, count = rep.request_for(target, max_entries)
        log = self.log(source)
        entries = [log.at(o) for o in range(request.first_offset, request.first_offset + count)]
        message = Message(source, target, request, entries)
        self.network.append(message)
        return message

    def deliver(self, message: Message, reply_lost: bool = False) -> None:
        self.network.remove(message)
        if not self.nodes[message.target].alive:
            return
        reply = self.rep(message.target).accept(message.request, message.entries)
        if reply_lost or not self.nodes[message.source].alive:
            return
        self.now += 0.1
        self.rep(message.source).on_reply(message.target, message.request, reply, self.now)

    def replicate(self, rounds: int = 10) -> None:
        """Let the current leader talk to every live follower until nothing moves."""
        for _ in range(rounds):
            for leader in self.leaders():
                for target in self.nodes:
                    m = self.send(leader, target, max_entries=1000)
                    if m is not None:
                        self.deliver(m)

    def readable(self, r: int) -> dict[int, Any]:
        """What a consumer of replica ``r`` sees: entries below its high-water mark (markers left out)."""
        rep = self.rep(r)
        return {o: v for o, v in self.log(r).items() if o < rep.high_water and not isinstance(v, Marker)}

    def seen(self, r: int) -> list[Any]:
        """The values a consumer of replica ``r`` sees, in offset order."""
        return [v for _, v in sorted(self.readable(r).items())]

    def data(self, r: int) -> list[Any]:
        """Every entry replica ``r`` holds, markers left out."""
        return [v for _, v in self.log(r).items() if not isinstance(v, Marker)]
