"""WebAssembly monitors: the ABI, the shipped examples (WAT and C), limits
and failure modes (docs/monitors.md)."""

from __future__ import annotations

import hashlib
import ipaddress
import struct
import time
from pathlib import Path

import pytest
import wasmtime

from marionet.guard import monitor as mon
from marionet.guard.core import GuardDenied
from marionet.guard.events import Event as E
from marionet.guard.monitor import (MonitorError, MonitorLimits, MonitorModule, load_dir,
                                    scan_dir)
from marionet.guard.monitors import EXAMPLES, HERE, path
from marionet.guard.monitors.build import (BuildError, allow_list_header, compile_c,
                                           missing_toolchain)

NO_CLANG = missing_toolchain()

# -- helpers ------------------------------------------------------------------

HEAD = """
  (memory (export "memory") 2)
  (func (export "mn_abi_version") (result i32) i32.const 1)
  (func (export "mn_input_ptr") (result i32) i32.const 1024)
  (func (export "mn_input_size") (result i32) i32.const 65536)
"""


def wat(body: str, head: str = HEAD) -> bytes:
    return f"(module {head} {body})".encode()


def denial(inst: mon.MonitorInstance, events: list[E] | E) -> GuardDenied | None:
    try:
        if isinstance(events, list):
            inst.check_batch(events)
        else:
            inst.check(events)
    except GuardDenied as e:
        return e
    return None


@pytest.fixture(scope="session")
def c_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shipped C examples, compiled once for the session."""
    if NO_CLANG:
        pytest.skip(NO_CLANG)
    out = tmp_path_factory.mktemp("c-monitors")
    built = {}
    for c in sorted(HERE.glob("*.c")):
        built[c.stem] = out / f"{c.stem}.wasm"
        compile_c(c, built[c.stem])
    return built


def load(name: str, flavour: str, c_builds_req: pytest.FixtureRequest) -> MonitorModule:
    if flavour == "wat":
        return MonitorModule.from_file(path(name))
    return MonitorModule.from_file(c_builds_req.getfixturevalue("c_builds")[name])


BOTH = pytest.mark.parametrize("flavour", ["wat", "c"])

ICMP = E("nsend", sock=5, proto="raw", ipproto=1, dst="192.0.2.1", data=b"\x08\0" + bytes(62))
ICMP6 = E("nsend", sock=6, proto="raw", family=6, ipproto=58, dst="2001:db8::1", data=b"\x80\0")
UDP = E("nsend", sock=7, proto="udp", ipproto=17, dst="192.0.2.1", dport=53, data=b"q")


# -- the ABI --------------------------------------------------------------------

def test_every_example_ships_as_wat_and_loads() -> None:
    for name in EXAMPLES:
        m = MonitorModule.from_file(path(name))
        assert m.name == name
        m.instantiate().check(E("nclose", sock=1))


def test_record_layout_matches_the_documented_offsets() -> None:
    inst = MonitorModule.from_file(path("allow-all")).instantiate()
    data = bytes(range(256)) * 4  # 1024 bytes, truncated to 256
    inst.check(E("nsend", sock=0x01020304, proto="udp", family=4, ipproto=17, dst="192.0.2.1",
                 dport=53, src="2001:db8::7", sport=4242, data=data, primitive="ping",
                 principal="alice@example"))
    raw = bytes(inst._memory.read(inst._store, inst.input_ptr, inst.input_ptr + 128))
    assert raw[0:4] == bytes([2, 1, 4, 1 | 2 | 4])  # nsend, udp, v4, dst+src+truncated
    assert struct.unpack_from("<HHH", raw, 4) == (17, 53, 4242)
    assert struct.unpack_from("<I", raw, 12)[0] == 0x01020304
    assert raw[16:32] == ipaddress.ip_address("::ffff:192.0.2.1").packed
    assert raw[32:48] == ipaddress.ip_address("2001:db8::7").packed
    data_len, data_ptr, copied = struct.unpack_from("<III", raw, 48)
    assert (data_len, copied) == (1024, 256)
    assert data_ptr == inst.input_ptr + 128  # payloads follow the records
    assert bytes(inst._memory.read(inst._store, data_ptr, data_ptr + copied)) == data[:256]
    assert raw[64:80] == b"ping".ljust(16, b"\0")
    assert raw[80:112] == b"alice@example".ljust(32, b"\0")


def test_an_event_the_abi_cannot_carry_is_a_denial() -> None:
    inst = MonitorModule.from_file(path("allow-all")).instantiate()
    for ev in (E("bogus"), E("nopen", proto="sctp"), E("nopen", proto="tcp", dst="not-an-ip"),
               E("nsend", proto="udp", dport=70000), E("nsend", data="text, not bytes")):  # type: ignore[arg-type]
        d = denial(inst, ev)
        assert d is not None and "not representable" in d.reason and d.index is None
    d = denial(inst, [UDP, E("bogus"), UDP])
    assert d is not None and d.index == 1
    inst.check(UDP)  # not poisoned: the monitor never saw those


# -- allow-all and tcp-only ------------------------------------------------------

def test_allow_all_allows_everything() -> None:
    inst = MonitorModule.from_file(path("allow-all")).instantiate()
    inst.check_batch([E(op, proto=p) for op in mon.OPS for p in mon.PROTOS])
    inst.check(ICMP)


@BOTH
def test_tcp_only(flavour: str, request: pytest.FixtureRequest) -> None:
    inst = load("tcp-only", flavour, request).instantiate()
    inst.check_batch([E("nopen", proto="tcp", dst="192.0.2.1", dport=80),
                      E("nopen", proto="tcp-listen", sport=8080),
                      E("accept", sock=2, proto="tcp-listen", dst="192.0.2.9"),
                      E("nsend", sock=1, proto="tcp", data=b"x"),
                      E("ndata", sock=1, proto="tcp", data=b"y"), E("nclose", sock=1)])
    for proto in ("udp", "raw"):
        d = denial(inst, E("nopen", proto=proto))
        assert d is not None and d.rule == "monitor tcp-only"
        assert d.reason == "only TCP sockets may be opened (code 1)" and d.index is None
    d = denial(inst, [E("nopen", proto="tcp"), UDP, E("nopen", proto="tcp")])
    assert d is not None and d.index == 1 and "sends only on TCP" in d.reason


# -- icmp-budget ---------------------------------------------------------------

@BOTH
def test_icmp_budget_counts_only_icmp_and_denies_the_eleventh(
        flavour: str, request: pytest.FixtureRequest) -> None:
    inst = load("icmp-budget", flavour, request).instantiate()
    for i in range(10):
        inst.check(ICMP if i % 2 else ICMP6)
        inst.check(UDP)  # does not count
        inst.check(E("nsend", proto="raw", ipproto=17))  # raw UDP does not count
    d = denial(inst, ICMP)
    assert d is not None and d.reason == "ICMP budget of 10 sends used up (code 1)"
    assert denial(inst, ICMP) is not None  # still used up: state persists
    inst.check(UDP)
    # a fresh instance (a new session) has a fresh budget
    load("icmp-budget", flavour, request).instantiate().check(ICMP)


@BOTH
def test_icmp_budget_batch_index_and_state_equal_one_by_one(
        flavour: str, request: pytest.FixtureRequest) -> None:
    m = load("icmp-budget", flavour, request)
    d = denial(m.instantiate(), [ICMP] * 8 + [UDP] + [ICMP] * 5)
    assert d is not None and d.index == 11  # the 11th ICMP send
    events = [ICMP, UDP, ICMP, ICMP, UDP, ICMP, ICMP]
    batched, single = m.instantiate(), m.instantiate()
    batched.check_batch(events)
    for ev in events:
        single.check(ev)
    for inst in (batched, single):
        inst.check_batch([ICMP] * 5)  # 5 + 5 = 10
        assert denial(inst, ICMP) is not None


def test_batches_larger_than_the_input_area_are_chunked_with_global_indexes() -> None:
    inst = MonitorModule.from_file(path("icmp-budget")).instantiate()
    big = E("nsend", proto="udp", data=bytes(1000))  # 128 + 256 bytes each
    events = [big] * 590 + [ICMP] * 11
    calls = []
    real = inst._run
    inst._run = lambda evs, s, e, b: (calls.append((s, e)), real(evs, s, e, b))[1]  # type: ignore[method-assign]
    d = denial(inst, events)
    assert d is not None and d.index == 600
    assert len(calls) >= 2 and calls[0][0] == 0 and calls[-1][1] == 601
    assert all(e - s <= inst.input_size // 128 for s, e in calls)


# -- dst-allow-list ------------------------------------------------------------

@BOTH
def test_dst_allow_list_default_list(flavour: str, request: pytest.FixtureRequest) -> None:
    inst = load("dst-allow-list", flavour, request).instantiate()
    inst.check_batch([E("nopen", proto="tcp", dst=a, dport=80)
                      for a in ("192.0.2.80", "198.51.100.80", "2001:db8::80")])
    inst.check(E("nsend", sock=1, proto="tcp", dst="192.0.2.80", dport=80, data=b"GET /"))
    inst.check(E("nclose", sock=1))
    for ev, code in ((E("nopen", proto="tcp", dst="192.0.2.81"), 2),
                     (E("nopen", proto="tcp", dst="::ffff:192.0.2.81"), 2),
                     (E("nopen", proto="tcp"), 2),  # no destination
                     (E("nopen", proto="udp", dst="192.0.2.80"), 1),
                     (E("nsend", proto="raw", dst="192.0.2.80"), 1),
                     (E("nsend", proto="tcp", dst="203.0.113.1"), 2)):
        d = denial(inst, ev)
        assert d is not None and d.reason.endswith(f"(code {code})"), (ev, d)


@pytest.mark.skipif(bool(NO_CLANG), reason=NO_CLANG or "")
def test_dst_allow_list_pam25_top_1k_web_servers(tmp_path: Path) -> None:
    """PAM'25 Appendix B: TCP nopen allowed to ranks 1-1000 of a list,
    denied for ranks 1001-1100."""
    ranked = [str(ipaddress.ip_address(0x0A000000 + 7919 * i)) for i in range(1100)]
    ranked[5] = "2001:db8::5"
    binary = compile_c(path("dst-allow-list", ".c"), tmp_path / "top1k.wasm",
                       allow_list=ranked[:1000])
    inst = MonitorModule.from_bytes(binary, "top1k").instantiate()
    top = [E("nopen", proto="tcp", family=6 if ":" in a else 4, dst=a, dport=443)
           for a in ranked[:1000]]
    inst.check_batch(top)
    for a in ranked[1000:]:
        d = denial(inst, E("nopen", proto="tcp", dst=a, dport=443))
        assert d is not None and "not in the allow list" in d.reason
    d = denial(inst, top[:10] + [E("nopen", proto="tcp", dst=ranked[1050])] + top[10:20])
    assert d is not None and d.index == 10


def test_allow_list_header_sorts_dedups_and_rejects_garbage() -> None:
    h = allow_list_header(["192.0.2.2", "# comment", "", "192.0.2.1", "192.0.2.2", "::1"])
    assert "MN_ALLOW_COUNT 3u" in h
    assert h.index("::1") < h.index("192.0.2.1") < h.index("192.0.2.2")
    with pytest.raises(BuildError, match="not an IP address"):
        allow_list_header(["192.0.2.300"])
    with pytest.raises(BuildError, match="empty"):
        allow_list_header(["# nothing"])


@pytest.mark.skipif(bool(NO_CLANG), reason=NO_CLANG or "")
def test_c_builds_are_reproducible_and_compile_errors_are_reported(tmp_path: Path) -> None:
    a = compile_c(path("icmp-budget", ".c"), allow_list=None)
    b = compile_c(path("icmp-budget", ".c"))
    assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest()
    c = compile_c(path("icmp-budget", ".c"), defines=["ICMP_BUDGET=2"])
    inst = MonitorModule.from_bytes(c, "icmp2").instantiate()
    inst.check_batch([ICMP, ICMP])
    d = denial(inst, ICMP)
    assert d is not None and "ICMP budget of 2 sends" in d.reason
    bad = tmp_path / "bad.c"
    bad.write_text("int f(void) { return undeclared_thing; }\n")
    with pytest.raises(BuildError, match="undeclared_thing"):
        compile_c(bad)


# -- http-only -----------------------------------------------------------------

def _get(sock: int, data: bytes = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") -> E:
    return E("nsend", sock=sock, proto="tcp", dst="192.0.2.80", dport=80, data=data)


def _resp(sock: int, data: bytes = b"HTTP/1.1 200 OK\r\n") -> E:
    return E("ndata", sock=sock, proto="tcp", dst="192.0.2.80", dport=80, data=data)


@BOTH
def test_http_only(flavour: str, request: pytest.FixtureRequest) -> None:
    inst = load("http-only", flavour, request).instantiate()
    inst.check_batch([E("nopen", proto="tcp", dst="192.0.2.80", dport=80),
                      _get(1), _get(1, b"body, not a method"), _resp(1),
                      _resp(1, b"<html>" + bytes(500)),
                      _get(2, b"HEAD / HTTP/1.0\r\n\r\n" + bytes(1000)), _get(2, b"")])
    for ev, want in ((E("nopen", proto="tcp", dst="192.0.2.80", dport=443), "port 80"),
                     (E("nopen", proto="udp", dport=80), "port 80"),
                     (_get(3, b"SSH-2.0-OpenSSH"), "not an HTTP request"),
                     (_get(3, b"GE"), "not an HTTP request"),
                     (_resp(4, b"SSH-2.0-x"), "not an HTTP response"),
                     (E("nsend", sock=1, proto="udp", dport=80, data=b"GET /"), "port 80")):
        d = denial(inst, ev)
        assert d is not None and want in d.reason, (ev, d)
    # nclose forgets the socket: a new socket with the same id starts afresh
    inst.check(E("nclose", sock=1))
    assert denial(inst, _get(1, b"body again")) is not None
    inst.check(_get(1))


@BOTH
def test_http_only_items_after_a_denial_are_not_evaluated(
        flavour: str, request: pytest.FixtureRequest) -> None:
    inst = load("http-only", flavour, request).instantiate()
    d = denial(inst, [_get(1), E("nopen", proto="udp"), _get(2)])
    assert d is not None and d.index == 1
    inst.check(_get(1, b"more body"))  # sock 1 was evaluated: its request was seen
    d = denial(inst, _get(2, b"more body"))  # sock 2 was not: this is its first segment
    assert d is not None and "not an HTTP request" in d.reason


@BOTH
def test_http_only_socket_table_is_bounded(flavour: str, request: pytest.FixtureRequest) -> None:
    inst = load("http-only", flavour, request).instantiate()
    inst.check_batch([_get(s) for s in range(100, 164)])
    d = denial(inst, _get(164))
    assert d is not None and "too many sockets" in d.reason and d.reason.endswith("(code 4)")
    inst.check(E("nclose", sock=100))
    inst.check(_get(164))


# -- failures are denials --------------------------------------------------------

LOOP = wat('(func (export "mn_check") (param i32 i32) (result i32) (loop $l (br $l)) i32.const 0)')
GROW = wat("""(func (export "mn_check") (param i32 i32) (result i32)
  (loop $l (br_if $l (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
  unreachable)""")
TRAP = wat('(func (export "mn_check") (param i32 i32) (result i32) unreachable)')
OOB = wat("""(func (export "mn_check") (param i32 i32) (result i32)
  (i32.store (i32.const 0x7ffffff0) (i32.const 1)) i32.const 0)""")
BAD_RET = wat('(func (export "mn_check") (param i32 i32) (result i32) i32.const 0x500)')


def test_infinite_loop_runs_out_of_fuel_fast() -> None:
    inst = MonitorModule.from_bytes(LOOP, "spin").instantiate()
    t = time.monotonic()
    d = denial(inst, UDP)
    assert time.monotonic() - t < 0.5
    assert d is not None and d.rule == "monitor spin"
    assert d.reason == "trapped: out of fuel after 1000000 instructions"


def test_infinite_loop_with_unbounded_fuel_hits_the_wall_clock_deadline() -> None:
    m = MonitorModule.from_bytes(LOOP, "spin", limits=MonitorLimits(fuel_per_item=10**15))
    inst = m.instantiate()
    t = time.monotonic()
    d = denial(inst, [UDP, UDP])
    took = time.monotonic() - t
    assert 0.05 < took < 0.5
    assert d is not None and "deadline of 100 ms exceeded" in d.reason and d.index == 0


def test_a_failed_instance_is_poisoned_and_keeps_denying() -> None:
    inst = MonitorModule.from_bytes(LOOP, "spin").instantiate()
    first = denial(inst, UDP)
    assert first is not None
    t = time.monotonic()
    for ev in ([UDP, UDP], UDP):
        d = denial(inst, ev)
        assert d is not None and d.reason == f"disabled after an earlier failure: {first.reason}"
    assert time.monotonic() - t < 0.05  # no wasm is entered again


def test_memory_exhaustion_is_a_denial_naming_memory() -> None:
    d = denial(MonitorModule.from_bytes(GROW, "hog").instantiate(), UDP)
    assert d is not None and "unreachable" in d.reason
    assert "memory limit 1 MiB exceeded" in d.reason
    small = MonitorModule.from_bytes(GROW, "hog", limits=MonitorLimits(memory_bytes=256 * 1024))
    d = denial(small.instantiate(), UDP)
    assert d is not None and "memory limit 256 KiB exceeded" in d.reason


def test_trap_out_of_bounds_and_bad_return_value_are_denials() -> None:
    d = denial(MonitorModule.from_bytes(TRAP, "t").instantiate(), UDP)
    assert d is not None and d.reason.startswith("trapped:") and "unreachable" in d.reason
    assert "memory limit" not in d.reason
    d = denial(MonitorModule.from_bytes(OOB, "oob").instantiate(), UDP)
    assert d is not None and "out of bounds" in d.reason
    inst = MonitorModule.from_bytes(BAD_RET, "ret").instantiate()
    d = denial(inst, [UDP, UDP])  # index 4 of a 2-item batch
    assert d is not None and "bad return value 0x500" in d.reason and d.index == 0
    assert denial(inst, UDP) is not None  # poisoned


def test_denial_without_reason_text_names_the_code() -> None:
    m = MonitorModule.from_bytes(wat(
        '(func (export "mn_check") (param i32 i32) (result i32) i32.const 0x107)'), "coded")
    d = denial(m.instantiate(), UDP)
    assert d is not None and d.reason == "denied with code 7"


def test_the_public_wasmtime_call_path_behaves_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mon, "FAST_PATH", False)
    inst = MonitorModule.from_file(path("icmp-budget")).instantiate()
    d = denial(inst, [UDP] + [ICMP] * 11)
    assert d is not None and d.index == 11 and "ICMP budget of 10" in d.reason
    d = denial(MonitorModule.from_bytes(LOOP, "spin").instantiate(), UDP)
    assert d is not None and "out of fuel" in d.reason


# -- bad modules are MonitorError at load --------------------------------------

@pytest.mark.parametrize("data, match", [
    (b"\x7fELF\x02\x01\x01" + bytes(100), "not a WebAssembly module"),
    (b"hello, world", "not a WebAssembly module"),
    (b"\0asm\x01\0\0\0\xff\xff", "invalid WebAssembly"),
    (b"(module (func $f (result i32) i32.const 1 i32.add))", "WAT does not compile|invalid"),
    (wat('(func (export "mn_check") (param i32 i32) (result i32) i32.const 0)',
         head=HEAD.replace("(result i32) i32.const 1)", "(result i32) i32.const 2)", 1)),
     "ABI version 2; this host speaks version 1"),
    (wat(""), "missing export 'mn_check'"),
    (b'(module (memory (export "memory") 1))', "missing export 'mn_abi_version'"),
    (wat('(func (export "mn_check") (param i32) (result i32) i32.const 0)'), "must be a function"),
    (b'(module (func (export "mn_check") (param i32 i32) (result i32) i32.const 0))',
     "missing export 'memory'"),
    (wat('(func (export "mn_check") (param i32 i32) (result i32) i32.const 0)',
         head='(import "env" "clock" (func))' + HEAD), "imports are not allowed.*env.clock"),
    (wat('(func (export "mn_check") (param i32 i32) (result i32) i32.const 0)',
         head=HEAD.replace("i32.const 65536", "i32.const 200")), "at least 384"),
    (wat('(func (export "mn_check") (param i32 i32) (result i32) i32.const 0)',
         head=HEAD.replace("i32.const 65536", "i32.const 1000000")), "outside"),
    (wat('(func (export "mn_check") (param i32 i32) (result i32) i32.const 0)',
         head=HEAD.replace('(memory (export "memory") 2)', '(memory (export "memory") 17)')),
     "instantiation failed"),
    (wat('(func $s (loop $l (br $l))) (start $s) '
         '(func (export "mn_check") (param i32 i32) (result i32) i32.const 0)'),
     "instantiation failed: trapped: out of fuel"),
])
def test_bad_modules_are_refused_at_load(data: bytes, match: str) -> None:
    with pytest.raises(MonitorError, match=match):
        MonitorModule.from_bytes(data, "bad")


def test_module_size_cap() -> None:
    with pytest.raises(MonitorError, match="limit is 1 MiB"):
        MonitorModule.from_bytes(b"\0asm" + bytes(2 << 20))
    with pytest.raises(MonitorError, match="limit is 1 KiB"):
        MonitorModule.from_file(path("http-only"), limits=MonitorLimits(module_bytes=1024))


def test_missing_file_is_a_monitor_error(tmp_path: Path) -> None:
    with pytest.raises(MonitorError, match="cannot read"):
        MonitorModule.from_file(tmp_path / "nope.wasm")


# -- digests and directories -----------------------------------------------------

def test_digest_is_of_the_wasm_binary_and_stable(tmp_path: Path) -> None:
    text = path("tcp-only").read_bytes()
    binary = wasmtime.wat2wasm(text.decode())
    a = MonitorModule.from_bytes(text, "tcp-only")
    b = MonitorModule.from_bytes(binary, "other-name")
    assert a.digest == b.digest == hashlib.sha256(binary).hexdigest()
    (tmp_path / "x.wasm").write_bytes(binary)
    assert MonitorModule.from_file(tmp_path / "x.wasm").digest == a.digest
    assert MonitorModule.from_bytes(LOOP).digest != a.digest


def test_load_dir_by_digest_and_bad_files_named(tmp_path: Path) -> None:
    (tmp_path / "tcp-only.wat").write_bytes(path("tcp-only").read_bytes())
    (tmp_path / "icmp.wasm").write_bytes(wasmtime.wat2wasm(path("icmp-budget").read_text()))
    (tmp_path / "README.txt").write_text("ignored")
    mods = load_dir(tmp_path)
    assert sorted(m.name for m in mods.values()) == ["icmp", "tcp-only"]
    assert all(d == m.digest for d, m in mods.items())
    (tmp_path / "broken.wasm").write_bytes(b"not wasm")
    (tmp_path / "old.wat").write_bytes(wat(""))
    with pytest.raises(MonitorError) as ei:
        load_dir(tmp_path)
    msg = str(ei.value)
    assert "2 bad monitor file(s)" in msg
    assert f"{tmp_path / 'broken.wasm'}: monitor broken: not a WebAssembly module" in msg
    assert f"{tmp_path / 'old.wat'}: monitor old: missing export 'mn_check'" in msg
    good, bad = scan_dir(tmp_path)
    assert len(good) == 2 and set(bad) == {tmp_path / "broken.wasm", tmp_path / "old.wat"}
    with pytest.raises(MonitorError, match="not a directory"):
        load_dir(tmp_path / "README.txt")
