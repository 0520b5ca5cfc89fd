"""The replication state machine over an in-process transport: acks, high-water mark, in-sync set,
elections, epoch fencing, truncation of a returning old leader, rebuilding an emptied replica; and
property tests over random interleavings of appends, crashes and elections."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pipeline.queue.replication import EpochHistory, Vote, choose_leader, election_quorum, replicas_of
from tests.unit.queue.replication_sim import Sim


def started(size: int = 3, min_insync: int = 2) -> Sim:
    sim = Sim(size, min_insync)
    assert sim.elect() == 0  # a first start: the preferred replica leads
    sim.replicate()
    return sim


def test_replicas_of_a_partition_are_its_preferred_leader_and_the_next_brokers() -> None:
    assert replicas_of(0, 3, 3) == (0, 1, 2)
    assert replicas_of(4, 3, 3) == (1, 2, 0)
    assert replicas_of(5, 4, 2) == (1, 2)
    assert election_quorum(3, 2) == 2
    assert election_quorum(3, 3) == 1


def test_epoch_history_finds_where_two_logs_diverge() -> None:
    mine = EpochHistory([(1, 0), (2, 5)])
    theirs = EpochHistory([(1, 0), (3, 5)])
    assert mine.epoch_at(4) == 1 and mine.epoch_at(5) == 2 and mine.last_epoch(0) == 0
    assert mine.divergence(theirs, 8, 9) == 5
    assert mine.divergence(EpochHistory([(1, 0)]), 8, 6) == 5  # agree, but theirs is shorter
    assert mine.divergence(EpochHistory([(1, 0), (2, 5)]), 8, 10) == 8
    mine.begin(4, 3)
    assert mine.marks == [(1, 0), (4, 3)]


def test_an_append_is_acknowledged_once_min_insync_replicas_hold_it() -> None:
    sim = started()
    offset = sim.append(0, "a")
    assert sim.rep(0).high_water == offset  # only the leader holds it
    message = sim.send(0, 1)
    assert message is not None
    sim.deliver(message)
    assert sim.rep(0).high_water == offset + 1  # leader + one follower = min_insync


def test_consumers_see_only_below_the_high_water_mark() -> None:
    sim = started()
    sim.append(0, "a")
    sim.replicate()
    sim.append(0, "b")  # not replicated yet
    assert sim.seen(0) == ["a"]
    sim.replicate()
    assert sim.seen(0) == ["a", "b"]


def test_a_dead_follower_does_not_stall_appends_and_leaves_the_in_sync_set() -> None:
    sim = started()
    sim.append(0, "a")
    sim.replicate()
    assert set(sim.rep(0).in_sync(sim.now)) == {0, 1, 2}
    sim.crash(2)
    for i in range(5):
        sim.append(0, f"b{i}")
        sim.replicate()
    assert sim.seen(0) == ["a", "b0", "b1", "b2", "b3", "b4"]  # no stall: 0 and 1 are min_insync
    sim.now += 60
    sim.replicate()
    assert set(sim.rep(0).in_sync(sim.now)) == {0, 1}  # under-replicated
    assert sim.rep(0).lag()[2] == 5
    sim.restart(2)
    sim.attach()
    sim.replicate()
    assert set(sim.rep(0).in_sync(sim.now)) == {0, 1, 2}  # repaired
    assert sim.rep(0).lag()[2] == 0


def test_an_emptied_replica_is_rebuilt_from_the_leader_and_cannot_vote_until_then() -> None:
    sim = started()
    for v in "abc":
        sim.append(0, v)
    sim.replicate()
    sim.crash(1, disk=False)
    sim.restart(1)
    assert sim.rep(1).fresh and sim.rep(1).promised == 0
    message = sim.send(0, 1)
    assert message is not None
    sim.deliver(message)
    assert sim.rep(0).followers[1].match == 0  # unattached: refuses until the supervisor attaches it
    sim.attach()
    sim.replicate()
    assert sim.data(1) == ["a", "b", "c"]
    assert not sim.rep(1).fresh


def test_election_picks_the_newest_epoch_then_the_longest_log_then_the_preferred_replica() -> None:
    def vote(replica: int, last_epoch: int, end: int, fresh: bool = False) -> Vote:
        return Vote(replica, 9, last_epoch, end, 0, fresh, "x")

    assert choose_leader([vote(1, 2, 5), vote(2, 3, 4)], (0, 1, 2), 2, False).leader == 2  # type: ignore[union-attr]
    assert choose_leader([vote(1, 3, 5), vote(2, 3, 4)], (0, 1, 2), 2, False).leader == 1  # type: ignore[union-attr]
    assert choose_leader([vote(2, 3, 5), vote(1, 3, 5)], (0, 1, 2), 2, False).leader == 1  # type: ignore[union-attr]


def test_an_election_without_enough_replicas_that_remember_their_log_is_refused() -> None:
    votes = [Vote(1, 9, 3, 5, 0, False, "x"), Vote(2, 9, 0, 0, 0, True, "y")]
    assert choose_leader(votes, (0, 1, 2), 2, everyone=False) is None
    outcome = choose_leader([*votes, Vote(0, 9, 0, 0, 0, True, "z")], (0, 1, 2), 2, everyone=True)
    assert outcome is not None and outcome.unclean and outcome.leader == 1


def test_a_leader_change_keeps_every_acknowledged_offset_and_fences_the_old_leader() -> None:
    sim = started()
    for v in "ab":
        sim.append(0, v)
    sim.replicate()
    sim.append(0, "tail")  # held by the old leader alone: never acknowledged
    assert sim.elect(exclude=(0,)) in (1, 2)  # the supervisor takes 0 for dead (it is only slow)
    new = sim.leader
    assert new is not None
    sim.append(new, "c")
    sim.replicate()
    assert sim.seen(new) == ["a", "b", "c"]
    # The old leader still believes it leads: its requests are refused and it steps down.
    assert not sim.rep(0).is_leader  # excluded from the vote, it learnt of the new epoch from the new leader
    assert sim.data(0) == ["a", "b", "c"]  # truncated "tail" and caught up
    assert sim.rep(0).truncated == 1


def test_an_old_leader_that_returns_with_entries_the_new_leader_lacks_truncates_them() -> None:
    sim = started()
    sim.append(0, "a")
    sim.replicate()
    sim.append(0, "x")
    sim.append(0, "y")  # beyond the high-water mark: only on 0
    sim.crash(0)
    assert sim.elect() == 1
    sim.append(1, "b")
    sim.replicate()
    sim.restart(0)  # from its disk: a, x, y
    assert sim.data(0) == ["a", "x", "y"]
    sim.attach()
    sim.replicate()
    assert sim.data(0) == ["a", "b"]
    assert sim.rep(0).truncated == 2
    assert sim.seen(1) == ["a", "b"]


def test_a_stale_leader_cannot_reach_its_quorum_after_an_election() -> None:
    sim = started()
    sim.append(0, "a")
    sim.replicate()
    assert sim.elect(exclude=(0,)) == 1  # 0 is partitioned away, still leading in its own view
    stale = sim.rep(0)
    stale.role = "leader"  # as if it never heard of the election
    offset = sim.append(0, "lost")
    m = sim.send(0, 2)  # 2 voted in the election too
    assert m is not None
    sim.deliver(m)
    assert not stale.is_leader  # fenced by the first follower it reached
    assert sim.send(0, 1) is None
    assert stale.high_water <= offset  # never acknowledged


def test_figure_8_an_entry_of_an_older_epoch_is_restamped_before_it_counts_as_committed() -> None:
    """Raft's figure 8: without re-stamping, an entry replicated to a majority by a later leader
    could still be overwritten by a replica holding a newer epoch."""
    sim = started()
    sim.append(0, "e1")  # only on 0 (epoch 1)
    sim.crash(0)
    assert sim.elect() == 1  # epoch 2
    sim.append(1, "e2")  # only on 1
    sim.crash(1)
    sim.restart(0)
    assert sim.elect() == 0  # epoch 3: 0 (longest log) against 2
    sim.replicate()  # e1 now on 0 and 2, re-stamped epoch 3: committed at offset 0
    assert sim.seen(0) == ["e1"]
    sim.crash(0)
    sim.restart(1)
    assert sim.elect() == 2  # epoch 3 (e1 re-stamped) beats 1's epoch 2
    sim.replicate()
    assert sim.seen(2) == ["e1"]
    assert sim.data(1) == ["e1"]


def test_min_insync_one_acknowledges_at_once() -> None:
    sim = started(min_insync=1)
    offset = sim.append(0, "a")
    assert sim.rep(0).high_water == offset + 1


# --- properties -------------------------------------------------------------------------------------


class Interleavings(RuleBasedStateMachine):
    """Random appends, replication steps (delayed, reordered, lost), crashes, restarts and elections.

    Properties: an offset acknowledged to a producer or shown to a consumer is never lost or
    changed (on every leader elected later, in the same lineage); at most one leader per epoch;
    with every crash keeping its disk, an election is never unclean once anything was acknowledged.
    """

    amnesia = False

    def __init__(self) -> None:
        super().__init__()
        self.sim = Sim()
        self.value = 0
        self.truth: dict[str, dict[int, Any]] = {}  # lineage -> offset -> value acked or seen
        self.pending: list[tuple[int, int, int, Any]] = []  # leader, epoch, offset, value

    @initialize()
    def first_election(self) -> None:
        assert self.sim.elect() is not None

    def _record(self, lineage: str, offset: int, value: Any) -> None:
        known = self.truth.setdefault(lineage, {})
        assert known.get(offset, value) == value, f"offset {offset} changed from {known[offset]} to {value}"
        known[offset] = value

    @rule(pick=st.integers(0, 5))
    def append(self, pick: int) -> None:
        leaders = self.sim.leaders()
        if not leaders:
            return
        r = leaders[pick % len(leaders)]  # possibly a stale leader
        self.value += 1
        offset = self.sim.append(r, self.value)
        self.pending.append((r, self.sim.rep(r).epoch, offset, self.value))

    @rule(source=st.integers(0, 2), dest=st.integers(0, 2), count=st.integers(0, 3))
    def send(self, source: int, dest: int, count: int) -> None:
        self.sim.send(source, dest, count)

    @rule(pick=st.integers(0, 5), dest=st.integers(0, 2))
    def append_to(self, pick: int, dest: int) -> None:
        """Append and replicate to one follower only: followers fall behind unevenly."""
        self.append(pick)
        for leader in self.sim.leaders():
            m = self.sim.send(leader, dest, 1000)
            if m is not None:
                self.sim.deliver(m)

    @rule(rounds=st.integers(1, 2))
    def replicate(self, rounds: int) -> None:
        self.sim.replicate(rounds)

    @precondition(lambda self: bool(self.sim.network))
    @rule(pick=st.integers(0, 100), lost=st.booleans())
    def deliver(self, pick: int, lost: bool) -> None:
        self.sim.deliver(self.sim.network[pick % len(self.sim.network)], reply_lost=lost)

    @rule(r=st.integers(0, 2), disk=st.booleans())
    def crash(self, r: int, disk: bool) -> None:
        if self.sim.nodes[r].alive:
            self.sim.crash(r, disk=disk or not self.amnesia)

    @rule(r=st.integers(0, 2))
    def restart(self, r: int) -> None:
        if not self.sim.nodes[r].alive:
            self.sim.restart(r)

    @rule(exclude=st.sets(st.integers(0, 2), max_size=1))
    def elect(self, exclude: set[int]) -> None:
        before = self.sim.unclean
        lineages = {self.sim.rep(r).lineage for r in self.sim.nodes}
        winner = self.sim.elect(tuple(exclude))
        if winner is None:
            event("election refused")
            return
        rep = self.sim.rep(winner)
        event("election after acknowledgements" if self.truth.get(rep.lineage) else "election, nothing acknowledged")
        if self.sim.unclean > before and not self.amnesia:
            # With every log on disk an election is unclean only while nothing was ever acknowledged.
            assert not any(self.truth.get(lineage) for lineage in lineages)
        known = self.truth.get(rep.lineage, {})
        log = self.sim.log(winner)
        for offset, value in known.items():
            if offset >= log.start_offset:
                assert offset < log.end_offset and log.at(offset) == value, (
                    f"leader {winner} of epoch {rep.epoch} lacks acknowledged offset {offset}"
                )

    @rule()
    def attach(self) -> None:
        self.sim.attach()

    @rule(pick=st.integers(0, 5))
    def consume(self, pick: int) -> None:
        leaders = self.sim.leaders()
        if leaders:
            r = leaders[pick % len(leaders)]
            for offset, value in self.sim.readable(r).items():
                self._record(self.sim.rep(r).lineage, offset, value)

    @invariant()
    def acknowledgements_hold(self) -> None:
        still = []
        for r, epoch, offset, value in self.pending:
            rep = self.sim.rep(r)
            if not (self.sim.nodes[r].alive and rep.is_leader and rep.epoch == epoch):
                continue  # the producer would re-send it: no promise was made
            if rep.high_water > offset:
                self._record(rep.lineage, offset, value)
            else:
                still.append((r, epoch, offset, value))
        self.pending = still

    @invariant()
    def one_leader_per_epoch(self) -> None:
        epochs = [self.sim.rep(r).epoch for r in self.sim.leaders()]
        assert len(epochs) == len(set(epochs))


class InterleavingsWithAmnesia(Interleavings):
    """Crashes may also lose the replica's log (no queue dir): nothing is lost within a lineage."""

    amnesia = True


_settings = settings(
    max_examples=200, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestInterleavings = Interleavings.TestCase
TestInterleavings.settings = _settings
TestInterleavingsWithAmnesia = InterleavingsWithAmnesia.TestCase
TestInterleavingsWithAmnesia.settings = _settings


@pytest.mark.parametrize("seed", range(3))
def test_a_quiet_cluster_acknowledges_everything_after_any_single_failure(seed: int) -> None:
    sim = started()
    for i in range(5):
        sim.append(0, i)
    sim.replicate()
    sim.crash(seed)
    leader = sim.elect() if seed == 0 else 0
    assert leader is not None
    for i in range(5, 10):
        sim.append(leader, i)
    sim.replicate()
    assert sim.seen(leader) == list(range(10))
