"""``placement=``: the same primitive run by the VP ("endpoint") or here over
the VP's packet interface ("remote"), against a real embedded controller and
local endpoints, loopback targets only."""

from __future__ import annotations

import time

import pytest

from marionet import Ctrl, InstError
from marionet.aio import AsyncCtrl
from marionet.client.actrl import BadParams
from marionet.results import Ping, PingStop, Trace, TraceStop

FAST = dict(attempts=3, wait_probe=0.05, wait_timeout=0.3)


@pytest.fixture(scope="module")
def ctrl2():
    with Ctrl(local_vps=2) as c:
        yield c


def _replies(p: Ping) -> list[tuple[str, int]]:
    return [(str(r.src), r.probe_id) for r in p.replies]


def test_remote_ping_equals_endpoint_ping(ctrl2):
    inst = ctrl2.instances()[0]
    here = ctrl2.do_ping("127.0.0.1", inst=inst, sync=True, placement="remote", **FAST)
    there = ctrl2.do_ping("127.0.0.1", inst=inst, sync=True, **FAST)
    for p in (here, there):
        assert isinstance(p, Ping) and p.vp == inst.name and p.inst is inst
        assert p.method == "icmp-echo" and p.ping_sent == 3 and p.nreplies == 3
    assert _replies(here) == _replies(there)
    assert str(here.dst) == str(there.dst) and here.stop_reason == there.stop_reason
    assert inst.taskc == 0 and inst.resultc >= 2


def test_remote_trace_and_a_list_of_instances(ctrl2):
    traces = ctrl2.do_trace("127.0.0.1", inst=ctrl2.instances(), sync=True, placement="remote",
                            method="icmp-paris", wait_timeout=0.5)
    assert [t.vp for t in traces] == [i.name for i in ctrl2.instances()]
    for t in traces:
        assert isinstance(t, Trace) and t.stop_reason == TraceStop.COMPLETED
        assert [str(h.src) for h in t.hops() if h is not None] == ["127.0.0.1"]


def test_remote_results_come_through_responses(ctrl2):
    tasks = [ctrl2.do_ping("127.0.0.1", inst=i, placement="remote", **FAST) for i in ctrl2.instances()]
    got = sorted(p.vp for p in ctrl2.responses(timeout=10))
    assert got == sorted(t.inst.name for t in tasks)
    assert all(t.is_finished() for t in tasks)


def test_halting_a_remote_task_keeps_its_partial_result(ctrl2):
    inst = ctrl2.instances()[0]
    task = ctrl2.do_ping("127.0.0.1", inst=inst, placement="remote", attempts=50, wait_probe=0.1,
                         wait_timeout=0.3)
    time.sleep(0.6)
    task.halt()
    (p,) = list(ctrl2.responses(timeout=10))
    assert p.stop_reason == PingStop.HALTED and 0 < p.ping_sent < 50


def test_bad_placement_and_native_are_clear_errors(ctrl2):
    inst = ctrl2.instances()[0]
    with pytest.raises(ValueError, match="placement must be one of endpoint, remote, got 'moon'"):
        ctrl2.do_ping("127.0.0.1", inst=inst, placement="moon")
    with pytest.raises(ValueError, match="marionet.measure"):
        ctrl2.do_ping("127.0.0.1", inst=inst, placement="native")


def test_remote_bad_parameters_and_unknown_primitives_are_refused_before_anything_runs(ctrl2):
    inst = ctrl2.instances()[0]
    with pytest.raises(BadParams, match="attempts"):
        ctrl2.do_ping("127.0.0.1", inst=inst, placement="remote", attempts=0)
    with pytest.raises(BadParams, match="unknown primitive"):
        ctrl2._run(ctrl2._actrl._do("nosuch", {"dst": "127.0.0.1"}, inst, True, None, "remote"))
    assert inst.taskc == 0


def test_remote_failure_is_the_tasks_error(ctrl2):
    inst = ctrl2.instances()[0]
    # a source address the VP does not have: the socket cannot be set up, so
    # the measurement fails (nothing is sent) — the same error as the endpoint's
    errors = []
    for placement in ("endpoint", "remote"):
        with pytest.raises(InstError) as info:
            ctrl2.do_ping("127.0.0.1", inst=inst, sync=True, placement=placement, src="192.0.2.99", attempts=1)
        errors.append(str(info.value))
    assert "(remote)" in errors[1] and "EADDRNOTAVAIL" in errors[0] and "EADDRNOTAVAIL" in errors[1]
    assert inst.taskc == 0


async def test_async_remote_placement():
    async with AsyncCtrl() as c:
        p = await c.do_ping("127.0.0.1", sync=True, placement="remote", **FAST)
        assert isinstance(p, Ping) and p.nreplies == 3


@pytest.mark.root
def test_do_ping_takes_the_ip_options_in_both_placements(ctrl2):
    """ip_rr / ip_ts reach the primitive through do_ping (raw IPv4 probes: root)."""
    inst = ctrl2.instances()[0]
    rr = ctrl2.do_ping("127.0.0.1", inst=inst, ip_rr=True, sync=True, attempts=1)
    ts = ctrl2.do_ping("127.0.0.1", inst=inst, ip_ts="tsonly", sync=True, attempts=1, placement="remote")
    (r,) = rr.replies
    assert r.v4rr and all(str(a) == "127.0.0.1" for a in r.v4rr)
    (t,) = ts.replies
    assert t.v4ts is not None and len(t.v4ts.tss) >= 1
