"""Every primitive parameter is range-checked, in the API and on the endpoint.

One table of bad values per primitive drives three checks:

* the API (``check_params``, which ``plan_*``, ``Ctrl.do_*`` and the
  endpoint all run) raises ``ValueError`` naming the parameter;
* ``Ctrl.do_*`` raises it before anything is sent;
* a raw ``Task`` with the same values (a client bypassing the library) gets
  an ``Error`` "bad-params" naming the parameter, and the session goes on
  working: a valid ping to 127.0.0.1 still succeeds afterwards.

Plus the per-task bound (worst case at most ``MAX_TASK_S``), the run-time
cap, and good values at the edges of each range.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from typing import Any

import msgspec
import pytest

from marionet.client.errors import EndpointError
from marionet.measure.params import MAX_TASK_S
from marionet.measure.registry import check_params
from marionet.results import PingStop, from_json

from tests.unit.test_primitives import task_result

NAN, INF = math.nan, math.inf
BASE: dict[str, dict[str, Any]] = {
    "ping": {"dst": "127.0.0.1"},
    "trace": {"dst": "127.0.0.1"},
    "dns": {"qname": "www.example", "server": "127.0.0.1"},
    "http": {"dst": "127.0.0.1", "url": "http://127.0.0.1/"},
    "throughput": {"dst": "127.0.0.1"},
}

# (primitive, parameters on top of BASE, the parameter the message must name,
#  another fragment it must contain — the range, usually — or None)
BAD: list[tuple[str, dict[str, Any], str, str | None]] = [
    # ---------------------------------------------------------------- ping
    ("ping", {"attempts": 0}, "attempts", "1 - 65535"),
    ("ping", {"attempts": -1}, "attempts", "1 - 65535"),
    ("ping", {"attempts": 10**9}, "attempts", "1 - 65535"),
    ("ping", {"attempts": 1.5}, "attempts", "integer"),
    ("ping", {"attempts": "4"}, "attempts", "integer"),
    ("ping", {"attempts": True}, "attempts", "integer"),
    ("ping", {"wait_probe": -1}, "wait_probe", "0.001 s - 20 s"),
    ("ping", {"wait_probe": 0}, "wait_probe", "0.001 s - 20 s"),
    ("ping", {"wait_probe": 21}, "wait_probe", "0.001 s - 20 s"),
    ("ping", {"wait_probe": NAN}, "wait_probe", "finite"),
    ("ping", {"wait_probe": INF}, "wait_probe", "finite"),
    ("ping", {"wait_probe": -INF}, "wait_probe", "finite"),
    ("ping", {"wait_probe": 10**400}, "wait_probe", "20 s"),
    ("ping", {"wait_probe": "1s"}, "wait_probe", "timedelta"),
    ("ping", {"wait_probe": dt.timedelta(days=1)}, "wait_probe", "20 s"),
    ("ping", {"wait_timeout": 0}, "wait_timeout", "0.001 s - 255 s"),
    ("ping", {"wait_timeout": 256}, "wait_timeout", "0.001 s - 255 s"),
    ("ping", {"wait_timeout": NAN}, "wait_timeout", "finite"),
    ("ping", {"wait_timeout": INF}, "wait_timeout", "finite"),
    ("ping", {"ttl": 0}, "ttl", "1 - 255"),
    ("ping", {"ttl": 256}, "ttl", "1 - 255"),
    ("ping", {"ttl": 300}, "ttl", "1 - 255"),
    ("ping", {"tos": -1}, "tos", "0 - 255"),
    ("ping", {"tos": 256}, "tos", "0 - 255"),
    ("ping", {"size": 27}, "size", "too small"),
    ("ping", {"size": 65536}, "size", "0 - 65535"),
    ("ping", {"size": -1}, "size", "0 - 65535"),
    ("ping", {"payload": bytes(65508)}, "payload", "1000 bytes"),
    ("ping", {"payload": bytes(1001)}, "payload", "1000 bytes"),
    ("ping", {"payload": "ab" * 1001}, "payload", "1000 bytes"),
    ("ping", {"payload": "zz"}, "payload", "hex"),
    ("ping", {"payload": 5}, "payload", "bytes"),
    ("ping", {"method": "carrier-pigeon"}, "method", "icmp-echo"),
    ("ping", {"method": 5}, "method", "icmp-echo"),
    ("ping", {"dst": "not-an-address"}, "dst", "IPv4 or IPv6"),
    ("ping", {"dst": "www.example.com"}, "dst", "IPv4 or IPv6"),
    ("ping", {"dst": 2130706433}, "dst", "IPv4 or IPv6"),
    ("ping", {"dst": "224.0.0.1"}, "dst", "multicast"),
    ("ping", {"dst": "0.0.0.0"}, "dst", "unspecified"),
    ("ping", {"src": "nope"}, "src", "IPv4 or IPv6"),
    ("ping", {"src": "::1"}, "src", "IPv6"),
    ("ping", {"method": "udp", "sport": 0}, "sport", "1 - 65535"),
    ("ping", {"method": "udp", "dport": 65536}, "dport", "1 - 65535"),
    ("ping", {"method": "tcp-syn", "dport": -1}, "dport", "1 - 65535"),
    ("ping", {"icmp_id": 65536}, "icmp_id", "0 - 65535"),
    ("ping", {"icmp_seq": 65536}, "icmp_seq", "0 - 65535"),
    ("ping", {"stop_count": -1}, "stop_count", "0 - 65535"),
    ("ping", {"method": "tcp-syn", "tcp_seq": 2**32}, "tcp_seq", "4294967295"),
    ("ping", {"userid": -1}, "userid", "4294967295"),
    ("ping", {"userid": 2**32}, "userid", "4294967295"),
    # the per-task bound: each value fine, together too long
    ("ping", {"attempts": 601, "wait_probe": 1}, "attempts", "600 s"),
    ("ping", {"attempts": 65535, "wait_probe": 20}, "wait_probe", "600 s"),
    # --------------------------------------------------------------- trace
    ("trace", {"attempts": 0}, "attempts", "1 - 20"),
    ("trace", {"attempts": 21}, "attempts", "1 - 20"),
    ("trace", {"attempts": 10**9}, "attempts", "1 - 20"),
    ("trace", {"firsthop": 0}, "firsthop", "1 - 255"),
    ("trace", {"firsthop": 256}, "firsthop", "1 - 255"),
    ("trace", {"firsthop": 10, "hoplimit": 5}, "firsthop", None),
    ("trace", {"hoplimit": 256}, "hoplimit", "0 - 255"),
    ("trace", {"hoplimit": 300}, "hoplimit", "0 - 255"),
    ("trace", {"hoplimit": -1}, "hoplimit", "0 - 255"),
    ("trace", {"gaplimit": 0}, "gaplimit", "1 - 255"),
    ("trace", {"gaplimit": 256}, "gaplimit", "1 - 255"),
    ("trace", {"loops": -1}, "loops", "0 - 255"),
    ("trace", {"squeries": 0}, "squeries", "1 - 255"),
    ("trace", {"squeries": 256}, "squeries", "1 - 255"),
    ("trace", {"wait_timeout": 0}, "wait_timeout", "0.001 s - 60 s"),
    ("trace", {"wait_timeout": 61}, "wait_timeout", "0.001 s - 60 s"),
    ("trace", {"wait_timeout": NAN}, "wait_timeout", "finite"),
    ("trace", {"wait_timeout": INF}, "wait_timeout", "finite"),
    ("trace", {"wait_probe": -1}, "wait_probe", "0 s - 20 s"),
    ("trace", {"wait_probe": NAN}, "wait_probe", "finite"),
    ("trace", {"wait_probe": 10**400}, "wait_probe", "20 s"),
    ("trace", {"sport": 65536}, "sport", "1 - 65535"),
    ("trace", {"method": "tcp", "dport": 0}, "dport", "1 - 65535"),
    ("trace", {"method": "icmp-paris", "icmp_sum": 0xFFFF}, "icmp_sum", "1 - 65534"),
    ("trace", {"method": "icmp", "icmp_id": -1}, "icmp_id", "0 - 65535"),
    ("trace", {"size": 65536}, "size", "0 - 65535"),
    ("trace", {"payload": bytes(1001)}, "payload", "1000 bytes"),
    ("trace", {"method": "smoke-signal"}, "method", "udp-paris"),
    ("trace", {"dst": "nope"}, "dst", "IPv4 or IPv6"),
    ("trace", {"dst": "ff02::1"}, "dst", "multicast"),
    ("trace", {"tos": 256}, "tos", "0 - 255"),
    ("trace", {"userid": -1}, "userid", "4294967295"),
    ("trace", {"all_attempts": "yes"}, "all_attempts", "True or False"),
    ("trace", {"gaplimit": 255, "attempts": 20, "wait_timeout": 60}, "gaplimit", "600 s"),
    ("trace", {"attempts": 10, "wait_timeout": 61}, "wait_timeout", "60 s"),
    # ----------------------------------------------------------------- dns
    ("dns", {"qname": ""}, "qname", "non-empty"),
    ("dns", {"qname": 5}, "qname", "string"),
    ("dns", {"qname": "a" * 300}, "qname", "not a valid DNS name"),
    ("dns", {"server": "dns.example"}, "server", "IPv4 or IPv6"),
    ("dns", {"server": "224.0.0.251"}, "server", "multicast"),
    ("dns", {"port": 0}, "port", "1 - 65535"),
    ("dns", {"port": 65536}, "port", "1 - 65535"),
    ("dns", {"port": -1}, "port", "1 - 65535"),
    ("dns", {"qtype": "BOGUS"}, "qtype", "1 - 65535"),
    ("dns", {"qtype": 0}, "qtype", "1 - 65535"),
    ("dns", {"qtype": 65536}, "qtype", "1 - 65535"),
    ("dns", {"qtype": "AXFR"}, "qtype", "not a lookup"),
    ("dns", {"qclass": 0}, "qclass", "1 - 65535"),
    ("dns", {"qclass": 70000}, "qclass", "1 - 65535"),
    ("dns", {"qclass": "XX"}, "qclass", "1 - 65535"),
    ("dns", {"attempts": 0}, "attempts", "1 - 20"),
    ("dns", {"attempts": 21}, "attempts", "1 - 20"),
    ("dns", {"wait_timeout": 0}, "wait_timeout", "0.001 s - 60 s"),
    ("dns", {"wait_timeout": 61}, "wait_timeout", "0.001 s - 60 s"),
    ("dns", {"wait_timeout": NAN}, "wait_timeout", "finite"),
    ("dns", {"wait_timeout": INF}, "wait_timeout", "finite"),
    ("dns", {"rd": 1}, "rd", "True or False"),
    ("dns", {"tcp": "yes"}, "tcp", "True or False"),
    ("dns", {"nsid": 0}, "nsid", "True or False"),
    ("dns", {"ecs": "not-a-prefix"}, "ecs", "prefix"),
    ("dns", {"userid": 2**32}, "userid", "4294967295"),
    ("dns", {"attempts": 20, "wait_timeout": 60}, "attempts", "600 s"),
    # ---------------------------------------------------------------- http
    ("http", {"url": "ftp://x/"}, "url", "http or https"),
    ("http", {"url": "http://x:99999/"}, "url", None),
    ("http", {"url": "http://x/" + "a" * 9000}, "url", "8192"),
    ("http", {"url": 5}, "url", "string"),
    ("http", {"dst": "nope"}, "dst", "IPv4 or IPv6"),
    ("http", {"dst": "224.0.0.1"}, "dst", "multicast"),
    ("http", {"limit_time": 0}, "limit_time", "positive"),
    ("http", {"limit_time": -1}, "limit_time", "positive"),
    ("http", {"limit_time": NAN}, "limit_time", "finite"),
    ("http", {"limit_time": INF}, "limit_time", "finite"),
    ("http", {"limit_time": 10**9}, "limit_time", "604800 s"),
    ("http", {"limit_time": 10**400}, "limit_time", "604800 s"),
    ("http", {"limit_time": "60"}, "limit_time", "timedelta"),
    ("http", {"limit_size": 0}, "limit_size", "1 - 1073741824"),
    ("http", {"limit_size": -1}, "limit_size", "1 - 1073741824"),
    ("http", {"limit_size": 2**31}, "limit_size", "1 - 1073741824"),
    ("http", {"limit_size": 1.5}, "limit_size", "integer"),
    ("http", {"method": "GE T"}, "method", "token"),
    ("http", {"method": "X" * 100}, "method", "1 - 32"),
    ("http", {"headers": [["X-A", "b"]] * 101}, "headers", "100"),
    ("http", {"headers": {"X-A": "a\r\nInjected: 1"}}, "header", None),
    ("http", {"body": bytes((1 << 20) + 1)}, "body", "1048576"),
    ("http", {"family": 5}, "family", "4 or 6"),
    ("http", {"family": 4.0}, "family", "4 or 6"),
    ("http", {"userid": -1}, "userid", "4294967295"),
    ("http", {"ca": "not pem"}, "ca", "PEM"),
    ("http", {"insecure": "yes"}, "insecure", "True or False"),
    # per task: fine for a native fetch, too much for an endpoint task
    ("http", {"limit_time": 601}, "limit_time", "600 s"),
    ("http", {"limit_size": 3 << 20}, "limit_size", "2097152"),
    # ---------------------------------------------------------- throughput
    ("throughput", {"port": 0}, "port", "1 - 65535"),
    ("throughput", {"direction": "both"}, "direction", "download or upload"),
    ("throughput", {"size": 0}, "size", "1 - 4294967296"),
    ("throughput", {"size": (4 << 30) + 1}, "size", "1 - 4294967296"),
    ("throughput", {"skip": -1}, "skip", "0 - 4294967296"),
    ("throughput", {"size": 10, "skip": 10}, "skip", "below size"),
    ("throughput", {"interval": 0}, "interval", "0.001 s - 60 s"),
    ("throughput", {"interval": NAN}, "interval", "finite"),
    ("throughput", {"timeout": 0}, "timeout", "positive"),
    ("throughput", {"timeout": INF}, "timeout", "finite"),
    ("throughput", {"start_delay": 61}, "start_delay", "0 s - 60 s"),
    ("throughput", {"connect_timeout": -1}, "connect_timeout", "positive"),
    ("throughput", {"dst": "www.example.com"}, "dst", "IPv4 or IPv6"),
    ("throughput", {"userid": -1}, "userid", "4294967295"),
    # per task: connect_timeout + start_delay + timeout within 600 s
    ("throughput", {"timeout": 595}, "throughput", "600 s"),
]

GOOD: list[tuple[str, dict[str, Any]]] = [
    ("ping", {"attempts": 1, "ttl": 1, "tos": 0, "wait_probe": 0.001, "wait_timeout": 0.001}),
    ("ping", {"attempts": 65535, "wait_probe": 0.001, "ttl": 255, "tos": 255}),
    ("ping", {"attempts": 2, "wait_probe": 20, "wait_timeout": 255}),
    ("ping", {"attempts": 600, "wait_probe": 1, "wait_timeout": 1}),  # exactly 600 s
    ("ping", {"wait_probe": dt.timedelta(milliseconds=1), "wait_timeout": dt.timedelta(seconds=255)}),
    ("ping", {"size": 65535}),
    ("ping", {"size": 28}),
    ("ping", {"payload": bytes(1000)}),
    ("ping", {"payload": "ab" * 1000}),
    ("ping", {"method": "udp", "sport": 1, "dport": 65535}),
    ("ping", {"method": "tcp-syn", "sport": 65535, "dport": 1, "tcp_seq": 2**32 - 1}),
    ("ping", {"icmp_id": 0, "icmp_seq": 65535, "stop_count": 65535, "userid": 2**32 - 1}),
    ("ping", {"dst": "::1", "src": "::1"}),
    ("trace", {"firsthop": 255, "hoplimit": 255}),
    ("trace", {"firsthop": 5, "hoplimit": 5, "attempts": 20, "wait_timeout": 30}),  # 1 hop: 600 s
    ("trace", {"gaplimit": 10, "attempts": 10, "wait_timeout": 6}),  # exactly 600 s
    ("trace", {"gaplimit": 255, "squeries": 255, "attempts": 10, "wait_timeout": 60}),
    ("trace", {"wait_probe": 0, "wait_timeout": 0.001, "loops": 0, "hoplimit": 0}),
    ("trace", {"wait_probe": dt.timedelta(seconds=20), "wait_timeout": dt.timedelta(seconds=60), "gaplimit": 3}),
    ("trace", {"method": "icmp-paris", "icmp_sum": 1}),
    ("trace", {"method": "icmp-paris", "icmp_sum": 0xFFFE, "icmp_id": 65535}),
    ("dns", {"port": 1, "attempts": 1, "wait_timeout": 0.001}),
    ("dns", {"port": 65535, "attempts": 20, "wait_timeout": 28.5, "qtype": 65535, "qclass": 65535}),
    ("dns", {"wait_timeout": dt.timedelta(seconds=60), "attempts": 9}),  # exactly 600 s
    ("http", {"limit_time": 600, "limit_size": 2 << 20}),
    ("http", {"limit_time": dt.timedelta(milliseconds=1), "limit_size": 1}),
    ("http", {"headers": [["X-A", "b"]] * 100, "method": "X" * 32}),
    ("throughput", {"size": 1, "skip": 0, "interval": 0.001, "timeout": 589.95, "start_delay": 0,
                    "connect_timeout": 10, "port": 65535}),
]


def _id(row: tuple) -> str:
    name, params = row[0], row[1]
    return f"{name}-" + ",".join(f"{k}={str(v)[:12]}" for k, v in params.items())


def _params(name: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {**BASE[name], **extra}


# ------------------------------------------------------------------ API
@pytest.mark.parametrize("name,extra,param,fragment", BAD, ids=[_id(r) for r in BAD])
def test_api_refuses_with_the_parameter_named(name: str, extra: dict, param: str, fragment: str | None) -> None:
    with pytest.raises(ValueError) as ei:
        check_params(name, _params(name, extra))
    msg = str(ei.value)
    assert param in msg, msg
    if fragment is not None:
        assert fragment in msg, msg
    assert len(msg) < 400, "an error quotes what was given, never all of it"


@pytest.mark.parametrize("name,extra", GOOD, ids=[_id(r) for r in GOOD])
def test_api_accepts_the_edges(name: str, extra: dict) -> None:
    check_params(name, _params(name, extra))


def test_seconds_and_timedelta_are_the_same() -> None:
    from marionet.measure import plan_dns, plan_http, plan_ping, plan_trace

    assert plan_ping("::1", wait_probe=0.25).wait_probe_ns == \
        plan_ping("::1", wait_probe=dt.timedelta(milliseconds=250)).wait_probe_ns == 250_000_000
    assert plan_trace("::1", wait_timeout=2).wait_timeout_ns == \
        plan_trace("::1", wait_timeout=dt.timedelta(seconds=2)).wait_timeout_ns
    assert plan_dns("x.example", server="::1", wait_timeout=1.5).wait_timeout_ns == \
        plan_dns("x.example", server="::1", wait_timeout=dt.timedelta(seconds=1.5)).wait_timeout_ns
    assert plan_http("::1", url="http://x/", limit_time=dt.timedelta(minutes=2)).limit_time_ns == 120 * 10**9


def test_native_placement_is_not_held_to_the_task_bound() -> None:
    """The per-task bound is what one client may cost an endpoint; a
    researcher's own long ping or fetch (native/remote) is theirs to run."""
    from marionet.measure import plan_http, plan_ping

    plan_ping("127.0.0.1", attempts=3600, wait_probe=1)
    plan_http("127.0.0.1", url="http://x/", limit_time=86400, limit_size=1 << 30)
    with pytest.raises(ValueError, match="attempts"):
        check_params("ping", {"dst": "127.0.0.1", "attempts": 3600, "wait_probe": 1})
    check_params("ping", {"dst": "127.0.0.1", "attempts": 3600, "wait_probe": 1}, max_s=None)


# ---------------------------------------------------------- Ctrl.do_*
@pytest.fixture(scope="module")
def ctrl():
    from marionet import Ctrl

    with Ctrl(local_vps=2) as c:
        yield c


_DO = {"ping": "do_ping", "trace": "do_trace", "dns": "do_dns", "http": "do_http", "throughput": "do_throughput"}


@pytest.mark.parametrize("name,extra,param,fragment", BAD, ids=[_id(r) for r in BAD])
def test_do_refuses_before_sending(ctrl, monkeypatch, name: str, extra: dict, param: str,
                                   fragment: str | None) -> None:
    from marionet.client.actrl import BadParams
    from marionet.client.inst import InstError

    inst = ctrl.instance("local1")

    async def sent(*a: Any, **kw: Any) -> None:
        raise AssertionError("a task with bad parameters was sent")

    monkeypatch.setattr(inst.session, "task", sent)
    params = _params(name, extra)
    with pytest.raises(ValueError) as ei:
        getattr(ctrl, _DO[name])(**params, inst=inst)
    assert isinstance(ei.value, BadParams) and isinstance(ei.value, InstError)
    assert ei.value.inst is inst and param in str(ei.value) and "bad-params" in str(ei.value)
    assert inst.taskc == 0


def test_do_for_a_list_gives_each_task_the_error(ctrl) -> None:
    from marionet.client.actrl import BadParams

    insts = ctrl.instances()
    tasks = ctrl.do_ping("127.0.0.1", ttl=300, inst=insts)
    assert len(tasks) == 2 and all(isinstance(t.error, BadParams) and "ttl" in str(t.error) for t in tasks)
    errs = list(ctrl.exceptions())
    assert {e.inst.name for e in errs} == {i.name for i in insts}


def test_do_userid_is_checked(ctrl) -> None:
    with pytest.raises(ValueError, match="userid"):
        ctrl.do_ping("127.0.0.1", userid=-1, inst=ctrl.instance("local1"))
    with pytest.raises(ValueError, match="userid"):
        ctrl.do_ping("127.0.0.1", userid="7", inst=ctrl.instance("local1"))


@pytest.mark.root
def test_do_accepts_timedelta_and_the_edges(ctrl) -> None:
    p = ctrl.do_ping("127.0.0.1", attempts=1, ttl=255, wait_probe=dt.timedelta(milliseconds=1),
                     wait_timeout=dt.timedelta(seconds=0.3), inst=ctrl.instance("local2"), sync=True)
    assert p.nreplies == 1 and p.ttl == 255


# ----------------------------------------------------- raw Task on the wire
def _wire(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as a client puts them in a Task (timedeltas as seconds)."""
    from marionet.client.actrl import params_of

    return params_of(**params)


def _wireable(params: dict[str, Any]) -> bool:
    try:
        msgspec.msgpack.encode(_wire(params))
        return True
    except (TypeError, OverflowError):  # ints beyond 64 bits
        return False


WIRE_BAD = [r for r in BAD if _wireable(_params(r[0], r[1]))]


async def _result(session: Any, tid: int, timeout: float = 15) -> Any:
    return await task_result(session, tid, timeout)


async def _valid_ping_works(session: Any) -> None:
    tid = await session.task("ping", {"dst": "127.0.0.1", "attempts": 1, "wait_timeout": 0.5})
    n = await _result(session, tid)
    assert n.error is None, n.error
    assert from_json(n.result).nreplies == 1


def test_most_of_the_table_goes_over_the_wire() -> None:
    assert len(WIRE_BAD) >= len(BAD) - 3  # only ints beyond 64 bits cannot


@pytest.mark.root
async def test_endpoint_refuses_raw_bad_tasks_and_the_session_goes_on(session) -> None:
    """A client that skips the library's checks gets "bad-params" naming the
    parameter for every row, and the same session still measures."""
    for name, extra, param, fragment in WIRE_BAD:
        with pytest.raises(EndpointError) as ei:
            await session.task(name, _wire(_params(name, extra)))
        assert ei.value.code == "bad-params", (name, extra, ei.value)
        assert param in ei.value.reason, (name, extra, ei.value.reason)
        if fragment is not None:
            assert fragment in ei.value.reason, (name, extra, ei.value.reason)
    await session.ping()
    await _valid_ping_works(session)


@pytest.mark.root
async def test_endpoint_accepts_the_edges(session) -> None:
    """Good boundary values are accepted as tasks (each is halted at once:
    acceptance is the point, not 65535 probes); a ping at the edges runs."""
    for name, extra in GOOD:
        params = _params(name, extra)
        if not _wireable(params):
            continue
        tid = await session.task(name, _wire(params))
        try:
            await session.halt(tid)
        except EndpointError as exc:  # it may have finished already
            assert exc.code == "unknown-task"
        await _result(session, tid)
    tid = await session.task("ping", {"dst": "127.0.0.1", "attempts": 1, "ttl": 255, "tos": 255,
                                      "size": 65535, "wait_probe": 0.001, "wait_timeout": 1})
    n = await _result(session, tid)
    assert n.error is None, n.error
    assert from_json(n.result).probe_size == 65535


@pytest.mark.root
async def test_endpoint_task_bound_is_its_own(endpoint, session) -> None:
    endpoint.primitives.max_task_s = 1.0
    with pytest.raises(EndpointError, match="bad-params.*at most 1 s"):
        await session.task("ping", {"dst": "127.0.0.1", "attempts": 4, "wait_probe": 1})
    await _valid_ping_works(session)
    assert MAX_TASK_S == 600


@pytest.mark.root
async def test_endpoint_halts_a_task_at_the_run_time_cap(endpoint, session) -> None:
    """What the parameters cannot bound, the run-time cap does: the task is
    halted, its partial result delivered, and the result says why."""
    endpoint.primitives.max_run_s = 0.4
    tid = await session.task("ping", {"dst": "127.0.0.1", "attempts": 100, "wait_probe": 0.05})
    n = await _result(session, tid)
    assert n.error is None, n.error
    p = from_json(n.result)
    assert p.stop_reason == PingStop.HALTED and 2 <= p.ping_sent < 100
    assert "halted by the endpoint after 0.4 s" in p.extra["task_limit"]
    endpoint.primitives.max_run_s = None
    await _valid_ping_works(session)
