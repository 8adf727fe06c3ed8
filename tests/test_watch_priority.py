"""The controller's CPU priority (`watch --priority`): the auto state machine on a fake clock,
the heartbeat page it shares with its guard, and the ring-read budget that keeps a flooded or
starved controller looking at the clock."""

from __future__ import annotations

import os
import signal

import pytest

from ckptrace.errors import UsageError
from ckptrace.watch import Controller, CpuPriority
from ckptrace.watchguard import Heartbeat
from ckptrace.watchmodel import Model
from test_watch_model import FakeProg

IDLE, OTHER = os.SCHED_IDLE, os.SCHED_OTHER
LATE = CpuPriority.BEHIND_SECONDS + 0.01
HOLD = CpuPriority.HOLD_SECONDS


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeHeartbeat:
    """What the guard's page shows: beats counted, raises set by the test."""

    def __init__(self):
        self.beats = 0
        self.raises = 0

    def beat(self):
        self.beats += 1

    def raised(self):
        return self.raises


def make(mode="auto"):
    clock, policies = Clock(), []
    prio = CpuPriority(mode, set_policy=policies.append, clock=clock, guard=False)
    return prio, clock, policies


def test_auto_starts_idle_and_stays_idle_while_it_keeps_up():
    prio, clock, policies = make()
    prio.start()
    for _ in range(100):
        clock.t += 0.04
        assert prio.observe(0.01) is False
    assert policies == [IDLE] and prio.idle and prio.raised == 0
    assert "idle priority (auto)" in prio.describe()


def test_auto_rises_when_late_holds_then_drops_back():
    prio, clock, policies = make()
    prio.start()
    assert prio.observe(LATE) is True
    assert policies == [IDLE, OTHER] and not prio.idle and prio.raised == 1
    assert "normal priority (auto, raised 1x" in prio.describe()
    clock.t += HOLD - 0.1
    assert prio.observe(0.0) is False and not prio.idle  # held
    clock.t += 0.2
    assert prio.observe(0.0) is True and prio.idle
    assert policies == [IDLE, OTHER, IDLE]


def test_still_late_at_normal_priority_extends_the_hold():
    prio, clock, policies = make()
    prio.start()
    prio.observe(LATE)
    clock.t += HOLD - 1
    assert prio.observe(LATE) is False  # already up: no second raise
    clock.t += 2  # past the first hold, within the extended one
    assert prio.observe(0.0) is False and not prio.idle
    clock.t += HOLD
    assert prio.observe(0.0) is True and prio.idle
    assert prio.raised == 1


def test_falling_behind_soon_after_dropping_doubles_the_hold_up_to_the_cap():
    prio, clock, _ = make()
    prio.start()
    holds = []
    for _ in range(6):
        prio.observe(LATE)
        holds.append(prio.hold)
        clock.t += prio.hold + 0.01
        assert prio.observe(0.0) is True  # back to idle...
        clock.t += 0.5  # ...and soon late again
    assert holds == [HOLD, 2 * HOLD, 4 * HOLD, 8 * HOLD, CpuPriority.HOLD_MAX_SECONDS, CpuPriority.HOLD_MAX_SECONDS]
    clock.t += 10 * CpuPriority.HOLD_MAX_SECONDS  # a long quiet spell: back to the short hold
    prio.observe(LATE)
    assert prio.hold == HOLD


def test_a_raise_by_the_guard_is_taken_over():
    prio, clock, policies = make()
    prio.start()
    prio.heartbeat = hb = FakeHeartbeat()
    assert prio.observe(0.0) is False and hb.beats == 1  # every observation is a beat
    hb.raises = 1  # the guard found us starved and set SCHED_OTHER itself
    assert prio.observe(0.0) is True
    assert not prio.idle and prio.raised == 1 and policies == [IDLE]  # not set again by us
    clock.t += HOLD + 0.1
    assert prio.observe(0.0) is True and prio.idle and policies == [IDLE, IDLE]


def test_the_guard_and_the_controller_raising_at_once_count_one_raise():
    prio, clock, policies = make()
    prio.start()
    prio.heartbeat = hb = FakeHeartbeat()
    assert prio.observe(LATE) is True and prio.raised == 1  # we raised ourselves...
    hb.raises = 1  # ...and the guard did too, before it saw our policy change
    clock.t += 0.1
    assert prio.observe(0.0) is False
    assert prio.raised == 1 and not prio.idle and policies == [IDLE, OTHER]
    assert "raised 1x" in prio.describe()
    clock.t += HOLD
    assert prio.observe(0.0) is True and prio.idle  # and the hold is the first raise's
    hb.raises = 2  # starved again later: the guard's raise counts
    assert prio.observe(0.0) is True and prio.raised == 2 and not prio.idle


@pytest.mark.parametrize("mode, start", [("idle", [IDLE]), ("normal", [])])
def test_fixed_modes_never_change(mode, start):
    prio, clock, policies = make(mode)
    prio.start()
    for lag in (LATE, 10.0, 0.0):
        clock.t += 100
        assert prio.observe(lag) is False
    assert policies == start and prio.raised == 0


def test_unknown_mode_is_a_usage_error():
    with pytest.raises(UsageError):
        CpuPriority("fast", set_policy=lambda p: None, guard=False)


def test_heartbeat_page_is_shared_through_its_fd():
    mine = Heartbeat()
    try:
        theirs = Heartbeat(os.dup(mine.fd))  # as the guard maps it
        try:
            assert mine.age() < 1 and mine.raised() == 0
            theirs.count_raise()
            theirs.count_raise()
            assert mine.raised() == 2
            mine.beat()
            assert theirs.age() < 1 and theirs.raised() == 2  # a beat leaves the guard's count alone
            assert os.stat(f"/proc/self/fd/{mine.fd}").st_size == os.sysconf("SC_PAGE_SIZE")
        finally:
            theirs.close()
    finally:
        mine.close()


def _records(n: int, ts: int):
    E, c = FakeProg.abi.structs["ckpt_event"], FakeProg.abi.consts
    return [E(ts=ts, ns=7, type=c["CKPT_EV_MUNMAP"], hostpid=100, pid=1, a0=0x7000 + i * 4096, a1=4096)
            for i in range(n)]


def test_on_record_stops_the_read_when_the_budget_is_spent():
    out = []
    ctl = Controller(FakeProg(), Model(), host=1, focus=None, emit=out.append)
    ctl.budget = 5
    rets = [ctl.on_record(e) for e in _records(7, ts=1)]
    assert rets == [0, 0, 0, 0, -1, -1, -1]
    assert len(out) == 7  # a record is handled even when it is the one that stops the read


def test_on_record_reports_the_age_of_the_first_record_and_every_sample():
    import time

    lags = []
    ctl = Controller(FakeProg(), Model(), host=1, focus=None, emit=lambda ev: None)
    ctl.late = lags.append
    ctl.budget = 64
    old = time.monotonic_ns() - 3 * 10**9
    for e in _records(40, ts=old):
        ctl.on_record(e)
    from ckptrace.watch import LAG_SAMPLE

    assert len(lags) == 1 + (40 - 1) // LAG_SAMPLE  # records 1, 17, 33
    assert all(2.9 < lag < 60 for lag in lags)


def test_records_waiting_while_the_controller_was_stopped_are_aged_from_its_resumption(monkeypatch):
    """Ctrl-Z and fg: the records that waited in the rings are seconds old, but the controller
    was stopped, not starved; their age counted whole, and auto priority raised it as fallen
    behind (the closing note said so). Counted from the SIGCONT, they are not late."""
    import time

    from ckptrace import watch

    lags = []
    ctl = Controller(FakeProg(), Model(), host=1, focus=None, emit=lambda ev: None)
    ctl.late = lags.append
    ctl.budget = 64
    old = time.monotonic_ns() - 3 * 10**9
    monkeypatch.setattr(watch, "_resumed_ns", [0])
    watch._note_resumed(signal.SIGCONT, None)
    for e in _records(2, ts=old):
        ctl.on_record(e)
    assert lags and all(lag < 0.25 for lag in lags), lags


def test_the_guard_does_not_count_the_time_the_controller_was_stopped():
    """Stopped (state T), the controller's heartbeat ages, and the guard raised it, stopped or the
    moment it went on. Staleness counts from when it was seen running again, or its last beat."""
    from ckptrace.watchguard import Staleness

    s = Staleness()
    assert s.age(0.01, False, 100.0) == 0.0  # (first seen running: from now)
    assert s.age(0.5, False, 101.0) == 0.5  # starved: its beat ages
    assert s.age(3.0, True, 103.0) == 0.0  # stopped: not starved
    assert s.age(3.2, False, 103.2) == 0.0  # just went on: no beat yet, not late yet
    assert abs(s.age(3.5, False, 103.5) - 0.3) < 1e-9  # and then as long as it goes without a beat
    assert s.age(0.01, False, 104.0) == 0.01  # it beat


def test_a_failure_in_the_callback_stops_the_read_and_is_kept():
    ctl = Controller(FakeProg(), Model(), host=1, focus=None, emit=lambda ev: None)

    def boom(ev):
        raise ValueError("boom")

    ctl.emit = boom
    assert ctl.on_record(_records(1, ts=1)[0]) == -1
    assert isinstance(ctl.failure, ValueError)
    assert ctl.on_record(_records(1, ts=1)[0]) == -1


def test_loop_gc_collects_cycles_on_its_ticks_only_and_restores_the_collector():
    """The loop's collector: no automatic collections inside, cycles reclaimed at each tick,
    startup objects frozen, and the interpreter's collector as it was afterwards."""
    import gc
    import time
    import weakref

    from ckptrace.watch import LoopGc

    class Node:
        pass

    assert gc.isenabled()
    with LoopGc() as collector:
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: reference counting alone never frees it
        gone = weakref.ref(a)
        del a, b
        keep = [Node() for _ in range(20000)]  # far past the allocation count of a collection
        assert gone() is not None
        collector.tick(time.monotonic())
        assert gone() is None
        del keep
    assert gc.isenabled() and gc.get_freeze_count() == 0


@pytest.mark.parametrize("mode", ["auto", "idle", "normal"])
def test_stopping_finishes_at_normal_priority_in_every_mode(mode):
    """The last read and the detaching of every program must not crawl at SCHED_IDLE on a
    saturated host (minutes, with the programs attached): stop() puts the controller back at
    normal priority, and does not touch a controller that is there already."""
    prio, clock, policies = make(mode)
    prio.start()
    prio.stop()
    assert policies == ([] if mode == "normal" else [IDLE, OTHER]) and not prio.idle
    prio, clock, policies = make("auto")
    prio.start()
    clock.t += 1
    prio.observe(LATE)  # raised already
    prio.stop()
    assert policies == [IDLE, OTHER]


def test_a_stop_request_raises_at_once_and_nothing_lowers_it_again():
    prio, clock, policies = make("auto")
    prio.start()
    prio.hurry()  # what the SIGTERM/SIGINT handler does
    for _ in range(10):
        clock.t += HOLD
        assert prio.observe(0.0) is False
    assert policies == [IDLE, OTHER] and not prio.idle
    prio.stop()
    assert policies == [IDLE, OTHER]


def test_a_stop_request_while_lowering_wins():
    """The signal handler's hurry() can run at any point of start()'s or observe()'s lowering;
    the controller must end at normal priority whichever it is."""
    # before start(): it does not lower at all
    prio, clock, policies = make("idle")
    prio.hurry()
    prio.start()
    assert policies == [] and not prio.idle
    # in the middle of _set(idle=True), just after the policy call
    prio, clock, policies = make("idle")

    def set_policy(policy):
        policies.append(policy)
        if policy == IDLE and len(policies) == 1:
            prio.hurry()

    prio.set_policy = set_policy
    prio.start()
    assert policies[-1] == OTHER and not prio.idle


def test_a_guard_that_does_not_start_leaves_no_page_open(monkeypatch):
    from ckptrace import watchguard
    from ckptrace.errors import CkptError

    made = []

    class NoGuard:
        def __init__(self, heartbeat, stale):
            made.append(heartbeat)
            raise CkptError("the controller's priority guard did not start (try --priority normal)")

    monkeypatch.setattr(watchguard, "Guard", NoGuard)
    prio = CpuPriority("auto", set_policy=[].append, clock=Clock())
    with pytest.raises(CkptError):
        prio.start()
    assert prio.heartbeat is None and made[0].page.closed
