"""The supervisor's side of replication: watch every replica, elect leaders, attach restarted replicas.

Every round (``round``, twice a second from the supervisor's replication thread) probes each broker
(one call, a one-second deadline) and, per partition:

* a live leader of the newest epoch: replicas that follow no one, an older epoch or another leader
  are told to follow it (a restarted replica, a returning old leader);
* no live leader for ``failover_s`` (at once on a first start): an election. Every live replica is
  asked to promise a new epoch (``vote``); ``choose_leader`` picks among those that remember their
  log; the winner ``lead``s, the others ``follow``. Too few answering is logged and retried next
  round: the partition waits rather than lose what a silent replica alone holds.

Elections of several partitions share one call per broker per step. The epochs handed out are
above every epoch a replica reported, so a restarted supervisor never reuses one.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import ray

from pipeline.config import QueueSettings
from pipeline.queue.api import ReplicaStatus
from pipeline.queue.replication import Vote, choose_leader, election_quorum, replicas_of
from pipeline.runtime.names import ActorHandle, call_once

__all__ = ["ElectionRecord", "Elector"]

log = logging.getLogger(__name__)
PROBE_S = 1.0
CALL_S = 5.0


@dataclass(frozen=True, slots=True)
class ElectionRecord:
    """One election's outcome (``status`` shows the last ones)."""

    partition: int
    epoch: int
    leader: int
    unclean: bool
    voters: tuple[int, ...]
    wall_time: float


class Elector:
    """Leaders of every partition, decided from what the replicas report."""

    def __init__(
        self,
        queue: QueueSettings,
        brokers: Callable[[], Sequence[ActorHandle]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue = queue
        self._brokers = brokers
        self._clock = clock
        self.replicas = {p: replicas_of(p, queue.brokers, queue.replication_factor) for p in range(queue.partitions)}
        self.states: dict[int, dict[int, ReplicaStatus]] = {}  # broker -> its replicas, as last reported
        self.answered: set[int] = set()
        self._epochs: dict[int, int] = {}
        self._leaderless: dict[int, float] = {}
        self._refused: dict[int, str] = {}
        self.elections: deque[ElectionRecord] = deque(maxlen=100)

    def round(self) -> list[ElectionRecord]:
        """Probe, attach, elect where needed; returns the elections held."""
        self._probe()
        now = self._clock()
        follow: dict[int, dict[int, tuple[int, int]]] = {}
        due: list[int] = []
        for p, members in self.replicas.items():
            live = {b: self.states[b][p] for b in members if b in self.answered and p in self.states.get(b, {})}
            for s in live.values():
                self._epochs[p] = max(self._epochs.get(p, 0), s["promised"], s["epoch"])
            epoch = self._epochs.get(p, 0)
            leader = next((b for b, s in live.items() if s["role"] == "leader" and s["epoch"] == epoch), None)
            if leader is not None:
                self._leaderless.pop(p, None)
                for b, s in live.items():
                    if b != leader and (s["role"] != "follower" or s["epoch"] != epoch or s["leader"] != leader):
                        follow.setdefault(b, {})[p] = (epoch, leader)
                continue
            since = self._leaderless.setdefault(p, now)
            if (epoch == 0 or now - since >= self._queue.failover_s) and self._electable(p, live):
                due.append(p)
        self._order("follow", follow)
        return self._elect(due) if due else []

    def _electable(self, partition: int, live: dict[int, ReplicaStatus]) -> bool:
        """Whether enough replicas answer for an election to succeed (else no epoch is spent on it)."""
        members = self.replicas[partition]
        remembering = sum(not s["fresh"] for s in live.values())
        if len(live) == len(members) or remembering >= election_quorum(len(members), self._queue.min_insync):
            return True
        why = (
            f"partition {partition}: no leader can be elected yet: {remembering} of {len(members)} replicas "
            f"that remember the log answer, {election_quorum(len(members), self._queue.min_insync)} needed"
        )
        if self._refused.get(partition) != why:
            log.warning(why)
            self._refused[partition] = why
        return False

    def settle(self, timeout_s: float = 60.0) -> None:
        """Rounds until every partition has a leader (a first start elects at once)."""
        deadline = self._clock() + timeout_s
        while self.leaderless():
            if self._clock() > deadline:
                raise TimeoutError(f"partitions {self.leaderless()} have no leader after {timeout_s:.0f}s")
            self.round()
            if self.leaderless():
                time.sleep(0.2)

    def leaderless(self) -> list[int]:
        """Partitions with no live leader of their newest epoch, as of the last round."""
        out = []
        for p, members in self.replicas.items():
            epoch = self._epochs.get(p, 0)
            states = [self.states.get(b, {}).get(p) for b in members if b in self.answered]
            if not any(s is not None and s["role"] == "leader" and s["epoch"] == epoch for s in states):
                out.append(p)
        return out

    def _probe(self) -> None:
        handles = list(self._brokers())
        refs = {b: call_once(h, "probe") for b, h in enumerate(handles)}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=PROBE_S)
        done = set(ready)
        self.answered = set()
        for b, ref in refs.items():
            if ref not in done:
                continue
            try:
                answer: dict[str, Any] = ray.get(ref, timeout=0)
            except ray.exceptions.RayError:
                continue
            self.states[b] = answer["replicas"]
            self.answered.add(b)

    def _order(self, method: str, orders: dict[int, dict[int, Any]]) -> dict[int, dict[int, Any]]:
        """One ``method`` call per broker with its share of ``orders``; the answers of those that answered."""
        handles = list(self._brokers())
        refs = {b: call_once(handles[b], method, o) for b, o in orders.items() if o}
        if not refs:
            return {}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=CALL_S)
        done = set(ready)
        out: dict[int, dict[int, Any]] = {}
        for b, ref in refs.items():
            if ref in done:
                try:
                    out[b] = ray.get(ref, timeout=0)
                except ray.exceptions.RayError as exc:
                    log.warning("broker %d: %s failed: %s", b, method, exc)
        return out

    def _elect(self, partitions: list[int]) -> list[ElectionRecord]:
        epochs = {p: self._epochs.get(p, 0) + 1 for p in partitions}
        self._epochs.update(epochs)
        asks: dict[int, dict[int, int]] = {}
        for p in partitions:
            for b in self.replicas[p]:
                if b in self.answered:
                    asks.setdefault(b, {})[p] = epochs[p]
        answers = self._order("vote", asks)
        leads: dict[int, dict[int, tuple[int, str | None]]] = {}
        outcomes: dict[int, tuple[int, bool, list[Vote]]] = {}
        for p in partitions:
            votes = [v for a in answers.values() if (v := a.get(p)) is not None]
            members = self.replicas[p]
            outcome = choose_leader(votes, members, self._queue.min_insync, len(votes) == len(members))
            if outcome is None:
                self._cannot(p, votes)
                continue
            self._refused.pop(p, None)
            lineage = uuid.uuid4().hex[:12] if outcome.unclean else None
            leads.setdefault(outcome.leader, {})[p] = (epochs[p], lineage)
            outcomes[p] = (outcome.leader, outcome.unclean, votes)
        led = self._order("lead", leads)
        follow: dict[int, dict[int, tuple[int, int]]] = {}
        records = []
        for p, (leader, unclean, votes) in outcomes.items():
            if not led.get(leader, {}).get(p):
                log.warning(
                    "partition %d: broker %d did not take the lead of epoch %d; electing again", p, leader, epochs[p]
                )
                continue
            for v in votes:
                if v.replica != leader:
                    follow.setdefault(v.replica, {})[p] = (epochs[p], leader)
            record = ElectionRecord(p, epochs[p], leader, unclean, tuple(v.replica for v in votes), time.time())
            records.append(record)
            self.elections.append(record)
            first = all(v.fresh and v.last_epoch == 0 for v in votes)
            (log.info if first or not unclean else log.error)(
                "partition %d: broker %d leads epoch %d (voters %s%s)",
                p,
                leader,
                epochs[p],
                list(record.voters),
                "; UNCLEAN: too few replicas remembered the log, producers re-send what they retain"
                if unclean and not first
                else "",
            )
        self._order("follow", follow)
        return records

    def _cannot(self, partition: int, votes: list[Vote]) -> None:
        members = self.replicas[partition]
        need = election_quorum(len(members), self._queue.min_insync)
        why = (
            f"partition {partition}: no leader can be elected yet: {sum(not v.fresh for v in votes)} of "
            f"{len(members)} replicas that remember the log answered, {need} needed (the others are away)"
        )
        if self._refused.get(partition) != why:
            log.warning(why)
            self._refused[partition] = why

    def report(self) -> dict[int, dict[str, Any]]:
        """Per partition: leader, replicas, in-sync set, epoch, offsets and lags, from the last round."""
        out: dict[int, dict[str, Any]] = {}
        for p, members in self.replicas.items():
            epoch = self._epochs.get(p, 0)
            entry: dict[str, Any] = {"replicas": list(members), "epoch": epoch, "leader": None, "in_sync": []}
            for b in members:
                s = self.states.get(b, {}).get(p)
                if s is not None and b in self.answered and s["role"] == "leader" and s["epoch"] == epoch:
                    entry.update(
                        leader=b,
                        in_sync=s["in_sync"],
                        lag=s["lag"],
                        high_water=s["high_water"],
                        end_offset=s["end_offset"],
                    )
            entry["under_replicated"] = len(entry["in_sync"]) < len(members)
            out[p] = entry
        return out

    def recent(self, n: int = 20) -> list[dict[str, Any]]:
        """The last ``n`` elections."""
        return [asdict(r) for r in list(self.elections)[-n:]]
