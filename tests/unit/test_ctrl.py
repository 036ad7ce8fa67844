"""Ctrl / AsyncCtrl against a real embedded controller and local endpoints.

Targets are loopback only. Pings are kept short (few attempts, short
waits) so the whole file runs in seconds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from marionet import Ctrl, File, Inst, InstError, Task
from marionet.aio import AsyncCtrl
from marionet.results import Ping, PingStop

FAST = dict(attempts=2, wait_probe=0.05, wait_timeout=0.3)


@pytest.fixture(scope="module")
def ctrl3():
    with Ctrl(local_vps=3) as c:
        yield c


def test_embedded_default_has_one_local_instance():
    with Ctrl() as c:
        assert c.instc == 1
        (inst,) = c.instances()
        assert inst.name == "local" and inst.cc == "ZZ" and inst.tags == {"kind": "local"}
        # inst may be omitted with exactly one instance
        ping = c.do_ping("127.0.0.1", sync=True, **FAST)
        assert isinstance(ping, Ping) and ping.nreplies == 2
        assert ping.inst is inst and ping.vp == "local"
        assert ping.min_rtt is not None and ping.min_rtt < dt.timedelta(milliseconds=50)
        assert inst.resultc == 1 and inst.taskc == 0


def test_metadata_selection_and_vps(ctrl3):
    names = [i.name for i in ctrl3.instances()]
    assert names == ["local1", "local2", "local3"]
    assert [i.name for i in ctrl3.instances(cc="US")] == ["local2"]
    assert [i.name for i in ctrl3.instances(cc=["NZ", "DE"])] == ["local1", "local3"]
    assert [i.name for i in ctrl3.instances(asn=64514)] == ["local3"]
    assert [i.name for i in ctrl3.instances(tags={"n": "1"})] == ["local1"]
    assert [i.name for i in ctrl3.instances(name="local[23]")] == ["local2", "local3"]
    assert len(ctrl3.instances(tag="kind")) == 3
    vps = ctrl3.vps(cc="NZ")
    assert [v.name for v in vps] == ["local1"] and vps[0]["asn4"] == 64512 and vps[0].alive
    inst = ctrl3.instance("local1")
    assert inst.shortname == "local1" and inst.place == "this machine" and inst.asn4 == 64512
    assert inst.st is None and inst.iata is None and inst.loc is None


def test_inst_required_with_several(ctrl3):
    with pytest.raises(ValueError, match="inst= is required: this controller has 3 instances"):
        ctrl3.do_ping("127.0.0.1")


def test_async_tasks_and_responses(ctrl3):
    insts = ctrl3.instances()
    tasks = ctrl3.do_ping("127.0.0.1", inst=insts, **FAST)
    assert len(tasks) == 3 and all(isinstance(t, Task) for t in tasks)
    assert ctrl3.taskc == 3
    for t in ctrl3.do_ping("::1", inst=insts, userid=7, **FAST):
        assert t.userid == 7
    got = list(ctrl3.responses(timeout=10))
    assert len(got) == 6 and ctrl3.taskc == 0
    assert {(str(p.dst), p.vp) for p in got} == {(d, i.name) for d in ("127.0.0.1", "::1") for i in insts}
    for p in got:
        assert p.inst in insts and p.nreplies == 2 and p.stop_reason == PingStop.DONE
        if str(p.dst) == "::1":
            assert p.userid == 7


def test_methods_and_parameters(ctrl3):
    inst = ctrl3.instance("local2")
    udp = ctrl3.do_ping("127.0.0.1", method="udp", inst=inst, sync=True, **FAST)
    assert udp.method == "udp" and udp.nreplies == 2
    syn = ctrl3.do_ping("127.0.0.1", method="tcp-syn", dport=9, inst=inst, sync=True, **FAST)
    assert syn.method == "tcp-syn" and syn.nreplies == 2
    p = ctrl3.do_ping("127.0.0.1", ttl=9, size=100, inst=inst, sync=True,
                      attempts=1, wait_probe=dt.timedelta(milliseconds=50), wait_timeout=dt.timedelta(seconds=0.3))
    assert p.ttl == 9 and p.probe_size == 100 and p.nreplies == 1


def test_refused_task_raises_at_the_call(ctrl3):
    inst = ctrl3.instance("local1")
    with pytest.raises(InstError, match="refused") as ei:
        ctrl3.do_ping("127.0.0.1", method="no-such-method", inst=inst)
    assert ei.value.inst is inst
    with pytest.raises(InstError, match="icmp_sum"):
        ctrl3.do_ping("127.0.0.1", icmp_sum=5, inst=inst)  # scamper's, not yet ours: said clearly
    assert inst.taskc == 0


def test_errors_raise_in_responses_where_they_happen():
    with Ctrl(local_vps=2) as c:
        a, b = c.instances()
        c.do_ping("127.0.0.1", inst=a, sync=False, attempts=1, wait_timeout=0.2)
        # a list of instances: per-instance refusals are queued, not raised
        tasks = c.do_ping("127.0.0.1", method="bogus", inst=[a, b])
        assert all(t.error is not None for t in tasks)
        seen, errors = [], []
        while True:
            try:
                for r in c.responses(timeout=5):
                    seen.append(r)
                break
            except InstError as e:
                errors.append(e)
        assert len(seen) == 1 and {e.inst.name for e in errors} == {a.name, b.name}
        assert list(c.exceptions()) == []


def test_collect_mode_and_exceptions():
    with Ctrl(local_vps=2, errors="collect") as c:
        insts = c.instances()
        c.do_ping("127.0.0.1", method="bogus", inst=insts)
        c.do_ping("127.0.0.1", inst=insts, attempts=1, wait_timeout=0.2)
        assert len(list(c.responses(timeout=5))) == 2
        errs = list(c.exceptions())
        assert len(errs) == 2 and all(isinstance(e, InstError) for e in errs)
        assert list(c.exceptions()) == []


def test_unretrieved_errors_are_raised_at_exit():
    with pytest.raises(ExceptionGroup) as ei:
        with Ctrl(local_vps=2) as c:
            c.do_ping("127.0.0.1", method="bogus", inst=c.instances())
    assert "never retrieved" in str(ei.value)
    assert all(isinstance(e, InstError) for e in ei.value.exceptions)


def test_poll_and_deadlines(ctrl3):
    assert ctrl3.poll() is None  # nothing outstanding: no waiting
    inst = ctrl3.instance("local3")
    ctrl3.do_ping("127.0.0.1", inst=inst, attempts=3, wait_probe=0.4, wait_timeout=0.2)
    t0 = time.monotonic()
    assert ctrl3.poll(timeout=0.1) is None
    assert time.monotonic() - t0 < 0.5
    assert list(ctrl3.responses(until=dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=0.1))) == []
    r = ctrl3.poll(timeout=dt.timedelta(seconds=5))
    assert isinstance(r, Ping) and r.inst is inst


def test_halt(ctrl3):
    inst = ctrl3.instance("local1")
    task = ctrl3.do_ping("127.0.0.1", inst=inst, attempts=50, wait_probe=0.1)
    time.sleep(0.35)
    task.halt()
    (r,) = list(ctrl3.responses(timeout=8))
    assert r.stop_reason == PingStop.HALTED and 1 <= r.ping_sent < 50
    assert task.halted and inst.taskc == 0


def test_morecb_feeds_targets_and_eofcb():
    targets = {"local1": ["127.0.0.1", "127.0.0.2", "::1"], "local2": ["127.0.0.3", "127.0.0.4"]}
    eofs: list[str] = []
    calls: list[tuple[str, int]] = []

    def more(ctrl, inst, param):
        calls.append((inst.name, inst.taskc))
        todo = param[inst.name]
        if todo:
            ctrl.do_ping(todo.pop(0), inst=inst, **FAST)
        else:
            inst.done()

    def eof(ctrl, inst, param):
        assert inst.is_eof() and inst.is_done()
        eofs.append(inst.name)

    with Ctrl(local_vps=2, morecb=more, eofcb=eof, param=targets, window=2) as c:
        got = []
        while not c.is_done():
            r = c.poll(timeout=5)
            if r is not None:
                got.append(r)
        assert sorted(str(r.dst) for r in got) == sorted(["127.0.0.1", "127.0.0.2", "::1", "127.0.0.3",
                                                        "127.0.0.4"])
        assert sorted(eofs) == ["local1", "local2"]
        assert max(n for _, n in calls) < 2  # the window bounds outstanding tasks
        with pytest.raises(InstError, match="done"):
            c.do_ping("127.0.0.1", inst=c.instance("local1"))


def test_outfile_records_every_result(tmp_path):
    path = tmp_path / "out.json.gz"
    f = File(path, "w")
    with Ctrl(local_vps=2, outfile=f) as c:
        c.do_ping("127.0.0.1", inst=c.instances(), **FAST)
        c.do_ping("::1", inst=c.instance("local2"), sync=True, **FAST)
        assert len(list(c.responses(timeout=10))) == 2
    f.close()
    with File(path) as rf:
        pings = [o for o in rf if isinstance(o, Ping)]
    assert sorted((p.vp, str(p.dst)) for p in pings) == [("local1", "127.0.0.1"), ("local2", "127.0.0.1"),
                                                         ("local2", "::1")]
    assert all(p.inst is None and p.nreplies == 2 for p in pings)


def test_clock_offset_and_repr(ctrl3):
    inst = ctrl3.instance("local1")
    assert "local1" in repr(inst) and str(inst) == "local1"
    time.sleep(1.2)  # keepalives measure the offset
    ctrl3.vps()
    # instance metadata is what the controller sent at attach; refreshed on events
    off = inst.clock_offset
    assert off is None or abs(off) < dt.timedelta(milliseconds=50)


async def test_sync_api_inside_a_running_event_loop():
    """As in Jupyter: an event loop runs in this thread; Ctrl still works."""
    asyncio.get_running_loop()  # we are inside one
    with Ctrl() as c:
        p = c.do_ping("127.0.0.1", sync=True, **FAST)
        assert p.nreplies == 2
        c.do_ping("127.0.0.1", **FAST)
        assert len(list(c.responses(timeout=5))) == 1


async def test_async_ctrl():
    async with AsyncCtrl(local_vps=2) as ctrl:
        insts = ctrl.instances()
        assert all(isinstance(i, Inst) for i in insts)
        t = await ctrl.do_ping("127.0.0.1", inst=insts[0], **FAST)
        r = await t  # a task can be awaited for its result
        assert r.nreplies == 2 and r.inst is insts[0]
        tasks = await ctrl.do_ping("::1", inst=insts, **FAST)
        got = [r async for r in ctrl.responses(timeout=5)]
        # the awaited task's result was also delivered in order; responses() has the rest
        assert len(tasks) == 2 and len(got) == 3
        assert (await ctrl.do_ping("127.0.0.1", inst=insts[1], sync=True, **FAST)).vp == insts[1].name
        vps = await ctrl.vps(cc="US")
        assert [v.name for v in vps] == ["local2"]


async def test_async_ctrl_callbacks_may_be_coroutines():
    todo = ["127.0.0.1", "127.0.0.2"]

    async def more(ctrl, inst, param):
        if param:
            await ctrl.do_ping(param.pop(), inst=inst, **FAST)
        else:
            inst.done()

    async with AsyncCtrl(morecb=more, param=todo, window=1) as ctrl:
        got = []
        while not ctrl.is_done():
            r = await ctrl.poll(timeout=5)
            if r is not None:
                got.append(str(r.dst))
        assert sorted(got) == ["127.0.0.1", "127.0.0.2"]


def test_remove_and_add_back():
    with Ctrl(local_vps=2) as c:
        a = c.instance("local1")
        c.do_ping("127.0.0.1", inst=a, attempts=50, wait_probe=0.1)
        c.remove(a)
        assert c.instc == 1 and [i.name for i in c.instances()] == ["local2"]
        assert list(c.responses(timeout=3)) == [] and c.taskc == 0  # its task ended quietly
        (back,) = c.add_vps(["local1"])
        assert back is not a and back.name == "local1"
        assert c.do_ping("127.0.0.1", inst=back, sync=True, **FAST).nreplies == 2
        with pytest.raises(InstError, match="cannot attach VP 'nope'"):
            c.add_vps("nope")


def test_sync_call_from_the_loop_thread_is_a_clear_error():
    from marionet.client.loop_thread import LoopThread

    lt = LoopThread()
    try:
        async def nested() -> None:
            lt.run(asyncio.sleep(0))

        with pytest.raises(RuntimeError, match="asyncio API"):
            lt.run(nested())
        with pytest.raises(TimeoutError):
            lt.run(asyncio.sleep(5), timeout=0.05)
    finally:
        lt.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        lt.run(asyncio.sleep(0))
