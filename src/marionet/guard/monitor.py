"""WebAssembly monitors: operator- or certificate-mandated checks the guard
runs on every event (docs/monitors.md has the ABI and how to write one).

Why WebAssembly: a monitor is code from someone the endpoint does not fully
trust (a certificate may name one the researcher supplies), so it runs in a
sandbox with no imports, a memory cap, an instruction budget (fuel) and a
wall-clock deadline (epoch interruption). Anything that goes wrong inside —
a trap, running out of fuel or time, exhausting memory, a nonsensical return
value — is a *denial*, never an exception escaping into the endpoint and
never a hang.

Why the raw C-API call path: ``wasmtime.Func.__call__`` costs ~30 µs from
Python (type lookups and value boxing per call); calling
``wasmtime_func_call_unchecked`` through the package's own ctypes bindings
costs ~2 µs. The fast path is feature-detected and falls back to the public
API, so a future wasmtime that renames its internals stays correct, only
slower.
"""

from __future__ import annotations

import ctypes
import hashlib
import re
import socket
import struct
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import wasmtime

from marionet.guard.core import GuardDenied
from marionet.guard.events import OPS, PROTOS, Event

__all__ = [
    "ABI_VERSION", "RECORD_SIZE", "MAX_PAYLOAD", "REASON_SIZE",
    "MonitorError", "MonitorLimits", "MonitorModule", "MonitorInstance",
    "load_dir", "scan_dir",
]

#: Version of the host/monitor ABI this host speaks (``mn_abi_version``).
ABI_VERSION = 1
#: Bytes per event record in the input area.
RECORD_SIZE = 128
#: At most this many payload bytes of an event are copied into wasm memory.
MAX_PAYLOAD = 256
#: At most this many bytes of reason text are read from ``mn_reason_ptr``.
REASON_SIZE = 128

FLAG_DST = 1        # dst is set
FLAG_SRC = 2        # src is set
FLAG_TRUNCATED = 4  # data_copied < data_len

# op u8, proto u8, family u8, flags u8, ipproto u16, dport u16, sport u16,
# reserved u16, sock u32, dst[16], src[16], data_len u32, data_ptr u32,
# data_copied u32, reserved u32, primitive[16], principal[32], reserved[16]
_RECORD = struct.Struct("<BBBBHHHxxI16s16sIIIxxxx16s32s16x")
assert _RECORD.size == RECORD_SIZE

_MIB = 1 << 20
_WASM_PAGE = 65536
_TICK_S = 0.01          # epoch ticker period
_SETUP_FUEL = 10_000_000  # for instantiation and the mn_* getters


class MonitorError(ValueError):
    """A module that cannot be a monitor: not wasm/WAT, too big, imports,
    missing or mistyped exports, an ABI version this host does not speak."""


@dataclass(frozen=True, slots=True)
class MonitorLimits:
    """Resource bounds of one monitor instance.

    ``fuel_per_item``: instructions (wasmtime fuel units) a call may use per
    event it checks, so a batch of 256 gets 256 times the budget of a single
    check. ``deadline_s``: wall-clock bound of one call, whatever the fuel
    (enforced with epoch interruption at ``_TICK_S`` granularity, so the
    actual bound is between deadline − 10 ms and deadline)."""

    memory_bytes: int = _MIB
    module_bytes: int = _MIB
    fuel_per_item: int = 1_000_000
    deadline_s: float = 0.1

    def __post_init__(self) -> None:
        if self.memory_bytes < _WASM_PAGE:
            raise ValueError("memory_bytes must be at least one wasm page (64 KiB)")
        if self.module_bytes <= 0 or self.fuel_per_item <= 0:
            raise ValueError("module_bytes and fuel_per_item must be positive")
        if not 0 < self.deadline_s <= 60:
            raise ValueError("deadline_s must be in (0, 60]")

    @property
    def deadline_ticks(self) -> int:
        return max(1, round(self.deadline_s / _TICK_S))


DEFAULT_LIMITS = MonitorLimits()


def _fmt_bytes(n: int) -> str:
    if n % _MIB == 0:
        return f"{n // _MIB} MiB"
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


# -- the shared engine and its epoch ticker ---------------------------------

_engine_lock = threading.Lock()
_engine: wasmtime.Engine | None = None


def _ticker(engine: wasmtime.Engine, stop: threading.Event) -> None:
    # ctypes releases the GIL while wasm runs, so this thread gets to tick
    # even while a monitor spins in a loop.
    while not stop.wait(_TICK_S):
        engine.increment_epoch()


def shared_engine() -> wasmtime.Engine:
    """The one Engine of this process (fuel + epoch interruption on), with
    its ticker thread started on first use."""
    global _engine
    with _engine_lock:
        if _engine is None:
            cfg = wasmtime.Config()
            cfg.consume_fuel = True
            cfg.epoch_interruption = True
            cfg.cranelift_opt_level = "speed"
            engine = wasmtime.Engine(cfg)
            threading.Thread(target=_ticker, args=(engine, threading.Event()),
                             name="wasm-epoch-ticker", daemon=True).start()
            _engine = engine
        return _engine


# -- the fast call path (feature-detected) ----------------------------------

try:
    from wasmtime import _bindings as _b

    _raw_call = _b._wasmtime_func_call_unchecked
    _raw_set_fuel = _b._wasmtime_context_set_fuel
    _raw_set_deadline = _b._wasmtime_context_set_epoch_deadline
    _raw_mem_data = _b._wasmtime_memory_data
    _RawVal = _b.wasmtime_val_raw_t
    _TrapPtr = ctypes.POINTER(_b.wasm_trap_t)
    FAST_PATH = True
except (ImportError, AttributeError):  # pragma: no cover - depends on wasmtime version
    FAST_PATH = False


# -- event encoding ---------------------------------------------------------

@lru_cache(maxsize=4096)
def _addr16(addr: str) -> bytes:
    """16 bytes of an address: IPv6 as is, IPv4 as ::ffff:a.b.c.d."""
    host = addr.split("%", 1)[0]
    try:
        return b"\0" * 10 + b"\xff\xff" + socket.inet_pton(socket.AF_INET, host)
    except OSError:
        return socket.inet_pton(socket.AF_INET6, host)


@lru_cache(maxsize=1024)
def _name(text: str, size: int) -> bytes:
    return text.encode("utf-8", "replace")[:size]


def _pack(buf: bytearray, off: int, ev: Event, data_ptr: int) -> None:
    """Write one record; raises ValueError/OSError/KeyError/struct.error for
    an event that the ABI cannot represent (the caller denies it)."""
    flags = 0
    dst = src = b""
    if ev.dst:
        dst = _addr16(ev.dst)
        flags |= FLAG_DST
    if ev.src:
        src = _addr16(ev.src)
        flags |= FLAG_SRC
    shown_n = len(ev.data)
    # a fill's bytes are on the wire but not in data: counted, shown as truncated
    n = min(shown_n + ev.fill, 0xFFFFFFFF)
    copied = shown_n if shown_n <= MAX_PAYLOAD else MAX_PAYLOAD
    if copied < n:
        flags |= FLAG_TRUNCATED
    _RECORD.pack_into(
        buf, off, OPS[ev.op], PROTOS[ev.proto], ev.family, flags, ev.ipproto,
        ev.dport, ev.sport, ev.sock, dst, src, n, data_ptr if copied else 0,
        copied, _name(ev.primitive, 16), _name(ev.principal, 32))


def _dlen(ev: Event) -> int:
    try:
        return len(ev.data)
    except TypeError:
        return 0  # _pack rejects it


# -- modules ----------------------------------------------------------------

_I32 = wasmtime.ValType.i32()
_REQUIRED: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]] = {
    "mn_abi_version": ((), (_I32,)),
    "mn_input_ptr": ((), (_I32,)),
    "mn_input_size": ((), (_I32,)),
    "mn_check": ((_I32, _I32), (_I32,)),
}
_OPTIONAL = {"mn_reason_ptr": ((), (_I32,))}


def _to_binary(data: bytes, name: str) -> bytes:
    if data[:4] == b"\0asm":
        return data
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MonitorError(f"monitor {name}: not a WebAssembly module "
                           "(no \\0asm magic, and not UTF-8 WAT text)") from None
    if "(module" not in text:
        raise MonitorError(f"monitor {name}: not a WebAssembly module "
                           "(no \\0asm magic, and no '(module' in the text)")
    try:
        return wasmtime.wat2wasm(text)
    except wasmtime.WasmtimeError as e:
        raise MonitorError(f"monitor {name}: WAT does not compile: {_first_line(e)}") from None


def _trap_text(e: BaseException) -> str:
    """The cause of a wasmtime error without its backtrace boilerplate:
    "wasm `unreachable` instruction executed (at 0x8b in <wasm function 3>)"."""
    text = str(e)
    head, sep, cause = text.partition("Caused by:")
    if not sep:
        return _first_line(e)
    parts = []
    for ln in cause.splitlines():
        ln = re.sub(r"^\s*\d+:\s*", "", ln).strip()
        ln = ln.removeprefix("wasm trap: ")
        if ln:
            parts.append(ln)
    where = re.search(r"^\s*0:\s*(0x[0-9a-f]+) - (.*)$", head, re.M)
    at = f" (at {where.group(1)} in {where.group(2).split('!')[-1]})" if where else ""
    return "; ".join(parts) + at


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return "; ".join(lines[:3]) if lines else type(e).__name__


class MonitorModule:
    """A compiled, validated monitor; ``instantiate`` gives per-session state.

    ``digest`` is the SHA-256 (hex) of the WebAssembly *binary*: of the bytes
    as supplied for a ``.wasm``, of the compiled binary for WAT text (which
    depends on the text's exact formatting and on the WAT compiler, so
    certificates should mandate digests of ``.wasm`` files)."""

    name: str
    digest: str

    def __init__(self, binary: bytes, name: str, limits: MonitorLimits) -> None:
        self.name = name
        self.limits = limits
        self.binary = binary
        self.digest = hashlib.sha256(binary).hexdigest()
        try:
            self._module = wasmtime.Module(shared_engine(), binary)
        except wasmtime.WasmtimeError as e:
            raise MonitorError(f"monitor {name}: invalid WebAssembly: {_first_line(e)}") from None
        self._validate_exports()
        # A trial instance: runs the start function under the limits, asks the
        # ABI version and checks the buffers it names.
        self.instantiate()

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "monitor", *,
                   limits: MonitorLimits = DEFAULT_LIMITS) -> "MonitorModule":
        """A monitor from a wasm binary or WAT text."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise MonitorError(f"monitor {name}: expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) > limits.module_bytes:
            raise MonitorError(f"monitor {name}: module is {len(data)} bytes; "
                               f"the limit is {_fmt_bytes(limits.module_bytes)}")
        binary = _to_binary(data, name)
        if len(binary) > limits.module_bytes:
            raise MonitorError(f"monitor {name}: compiled module is {len(binary)} bytes; "
                               f"the limit is {_fmt_bytes(limits.module_bytes)}")
        return cls(binary, name, limits)

    @classmethod
    def from_file(cls, path: str | Path, *, limits: MonitorLimits = DEFAULT_LIMITS) -> "MonitorModule":
        """A monitor from a ``.wasm`` or ``.wat`` file, named by its stem."""
        p = Path(path)
        try:
            size = p.stat().st_size
            if size > limits.module_bytes:
                raise MonitorError(f"monitor {p.stem} ({p}): file is {size} bytes; "
                                   f"the limit is {_fmt_bytes(limits.module_bytes)}")
            data = p.read_bytes()
        except OSError as e:
            raise MonitorError(f"monitor {p.stem}: cannot read {p}: {e.strerror or e}") from None
        return cls.from_bytes(data, p.stem, limits=limits)

    def _validate_exports(self) -> None:
        if self._module.imports:
            names = ", ".join(f"{i.module}.{i.name}" for i in self._module.imports)
            raise MonitorError(f"monitor {self.name}: imports are not allowed "
                               f"(a monitor is self-contained): {names}")
        exports = {e.name: e.type for e in self._module.exports}
        if not isinstance(exports.get("memory"), wasmtime.MemoryType):
            raise MonitorError(f"monitor {self.name}: missing export 'memory' (a memory)")
        for fname, sig in (_REQUIRED | _OPTIONAL).items():
            ty = exports.get(fname)
            if ty is None:
                if fname in _REQUIRED:
                    raise MonitorError(f"monitor {self.name}: missing export {fname!r} "
                                       f"(ABI v{ABI_VERSION}, see docs/monitors.md)")
                continue
            if not isinstance(ty, wasmtime.FuncType) or (tuple(ty.params), tuple(ty.results)) != sig:
                want = f"({', '.join('i32' for _ in sig[0])}) -> i32"
                raise MonitorError(f"monitor {self.name}: export {fname!r} must be a function {want}")
        self.has_reason = "mn_reason_ptr" in exports

    def instantiate(self) -> "MonitorInstance":
        """A fresh instance (fresh state), e.g. one per session."""
        return MonitorInstance(self)

    def __repr__(self) -> str:
        return f"MonitorModule({self.name!r}, {self.digest[:16]}…)"


class MonitorInstance:
    """One monitor's state for one session. Not thread-safe: use it from the
    session's own thread or event loop.

    After a failure (trap, fuel or deadline exhausted, bad return value) the
    instance is *poisoned*: its state may be half-updated, so every later
    check is denied with the first failure's reason (fail closed). An
    ordinary denial does not poison."""

    def __init__(self, module: MonitorModule) -> None:
        self.module = module
        self.name = module.name
        self.rule = f"monitor {module.name}"
        self.poisoned: str | None = None
        lim = module.limits
        self._limits = lim
        store = wasmtime.Store(shared_engine())
        store.set_limits(memory_size=lim.memory_bytes, table_elements=10_000,
                         instances=1, tables=1, memories=1)
        self._store = store
        self._arm(_SETUP_FUEL)
        try:
            inst = wasmtime.Instance(store, module._module, [])
            ex = inst.exports(store)
            self._memory: wasmtime.Memory = ex["memory"]  # type: ignore[assignment]
            self._check_fn: wasmtime.Func = ex["mn_check"]  # type: ignore[assignment]
            version = self._getter(ex, "mn_abi_version")
            if version != ABI_VERSION:
                raise MonitorError(f"monitor {self.name}: ABI version {version}; "
                                   f"this host speaks version {ABI_VERSION}")
            self.input_ptr = self._getter(ex, "mn_input_ptr") & 0xFFFFFFFF
            self.input_size = self._getter(ex, "mn_input_size") & 0xFFFFFFFF
            self.reason_ptr = (self._getter(ex, "mn_reason_ptr") & 0xFFFFFFFF
                               if module.has_reason else None)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            raise MonitorError(f"monitor {self.name}: instantiation failed: "
                               f"{self._describe_failure(e, _SETUP_FUEL)}") from None
        mem_len = self._memory.data_len(store)
        if self.input_size < RECORD_SIZE + MAX_PAYLOAD:
            raise MonitorError(f"monitor {self.name}: input area of {self.input_size} bytes; "
                               f"at least {RECORD_SIZE + MAX_PAYLOAD} needed")
        if self.input_ptr % 8:
            raise MonitorError(f"monitor {self.name}: input area at {self.input_ptr} "
                               "is not 8-byte aligned")
        if self.input_ptr + self.input_size > mem_len:
            raise MonitorError(f"monitor {self.name}: input area "
                               f"[{self.input_ptr}, {self.input_ptr + self.input_size}) "
                               f"lies outside its {mem_len}-byte memory")
        if self.reason_ptr is not None and self.reason_ptr + REASON_SIZE > mem_len:
            raise MonitorError(f"monitor {self.name}: reason area at {self.reason_ptr} "
                               f"lies outside its {mem_len}-byte memory")
        self._buf = bytearray(self.input_size)
        if FAST_PATH:
            self._ctx = store._context()
            self._fref = ctypes.byref(self._check_fn._func)
            self._mref = ctypes.byref(self._memory._memory)
            self._cbuf = (ctypes.c_char * self.input_size).from_buffer(self._buf)
            self._args = (_RawVal * 2)()
            self._trap = _TrapPtr()
            self._tref = ctypes.byref(self._trap)

    def _getter(self, ex: Any, name: str) -> int:
        fn = ex[name]
        return int(fn(self._store))

    def _arm(self, fuel: int) -> None:
        self._store.set_fuel(fuel)
        self._store.set_epoch_deadline(self._limits.deadline_ticks)

    # -- checks --

    def check(self, event: Event) -> None:
        """Raise ``GuardDenied`` unless the monitor allows ``event``."""
        self._run((event,), 0, 1, False)

    def check_batch(self, events: Sequence[Event]) -> None:
        """Check all ``events`` with one wasm call per input-area-full (one
        call for any ``nsendv`` batch of ≤ 256 items with ≤ 256 bytes each).
        On a denial, ``GuardDenied.index`` is the first denied item; the
        items before it were allowed (state updated), those after it were not
        evaluated."""
        n = len(events)
        start = 0
        room = self.input_size
        while start < n:
            # greedy chunk: records first, then each item's payload copy
            end, used = start, 0
            while end < n:
                dl = _dlen(events[end])
                need = RECORD_SIZE + (dl if dl <= MAX_PAYLOAD else MAX_PAYLOAD)
                if used + need > room:
                    break
                used += need
                end += 1
            self._run(events, start, end, True)
            start = end

    def _deny(self, reason: str, index: int | None) -> GuardDenied:
        return GuardDenied(self.rule, reason, index)

    def _run(self, events: Sequence[Event], start: int, end: int, batch: bool) -> None:
        if self.poisoned is not None:
            raise self._deny(f"disabled after an earlier failure: {self.poisoned}",
                             start if batch else None)
        count = end - start
        buf = self._buf
        base = self.input_ptr
        poff = count * RECORD_SIZE  # payload area starts after the records
        for k in range(count):
            ev = events[start + k]
            try:
                _pack(buf, k * RECORD_SIZE, ev, base + poff)
                d = ev.data
                if d:
                    c = len(d) if len(d) <= MAX_PAYLOAD else MAX_PAYLOAD
                    buf[poff:poff + c] = d[:c]
                    poff += c
            except (KeyError, ValueError, OSError, TypeError, struct.error) as e:
                # nothing of this chunk was evaluated; earlier chunks were
                raise self._deny(f"event not representable in the monitor ABI "
                                 f"({type(e).__name__}: {e})", start + k if batch else None) from None
        fuel = self._limits.fuel_per_item * count
        try:
            if FAST_PATH:
                ctx = self._ctx
                _raw_set_fuel(ctx, fuel)
                _raw_set_deadline(ctx, self._limits.deadline_ticks)
                ctypes.memmove(ctypes.addressof(_raw_mem_data(ctx, self._mref).contents) + base,
                               self._cbuf, poff)
                args = self._args
                args[0].i32 = base
                args[1].i32 = count
                err = _raw_call(ctx, self._fref, args, 2, self._tref)
                if err:
                    raise wasmtime.WasmtimeError._from_ptr(err)
                if self._trap:
                    trap = wasmtime.Trap._from_ptr(self._trap)
                    self._trap = _TrapPtr()  # the Trap object owns the old one
                    self._tref = ctypes.byref(self._trap)
                    raise trap
                r = args[0].i32 & 0xFFFFFFFF
            else:
                self._arm(fuel)
                self._memory.write(self._store, bytes(buf[:poff]), base)
                r = int(self._check_fn(self._store, base, count)) & 0xFFFFFFFF
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            self.poisoned = self._describe_failure(e, fuel)
            raise self._deny(self.poisoned, start if batch else None) from None
        if r == 0:
            return
        idx, code = (r >> 8) - 1, r & 0xFF
        if code == 0 or not 0 <= idx < count:
            self.poisoned = (f"bad return value {r:#x} from mn_check for {count} item(s) "
                             "(want 0, or ((index + 1) << 8) | code with code 1..255)")
            raise self._deny(self.poisoned, start if batch else None)
        raise self._deny(self._reason(code), start + idx if batch else None)

    def _reason(self, code: int) -> str:
        text = ""
        if self.reason_ptr is not None:
            try:
                raw = self._memory.read(self._store, self.reason_ptr, self.reason_ptr + REASON_SIZE)
                raw = bytes(raw).split(b"\0", 1)[0]
                text = "".join(ch if ch.isprintable() else "?"
                               for ch in raw.decode("utf-8", "replace")).strip()
                self._memory.write(self._store, b"\0", self.reason_ptr)  # no stale reasons
            except (wasmtime.WasmtimeError, ValueError, IndexError):
                text = ""
        return f"{text} (code {code})" if text else f"denied with code {code}"

    def _describe_failure(self, e: BaseException, fuel: int) -> str:
        code = e.trap_code if isinstance(e, wasmtime.Trap) else None
        if code == wasmtime.TrapCode.OUT_OF_FUEL:
            what = f"trapped: out of fuel after {fuel} instructions"
        elif code == wasmtime.TrapCode.INTERRUPT:
            what = (f"trapped: wall-clock deadline of {self._limits.deadline_s * 1000:g} ms "
                    "exceeded")
        elif isinstance(e, wasmtime.Trap):
            what = f"trapped: {_trap_text(e)}"
        else:
            what = f"failed: {_trap_text(e)}"
        try:
            mem = getattr(self, "_memory", None)
            if mem is not None and mem.data_len(self._store) + _WASM_PAGE > self._limits.memory_bytes:
                what += (f"; memory limit {_fmt_bytes(self._limits.memory_bytes)} exceeded "
                         "(memory is full, memory.grow beyond it fails)")
        except wasmtime.WasmtimeError:
            pass
        return what


# -- directories ------------------------------------------------------------

def scan_dir(path: str | Path, *, limits: MonitorLimits = DEFAULT_LIMITS
             ) -> tuple[dict[str, MonitorModule], dict[Path, str]]:
    """Every ``*.wasm`` and ``*.wat`` in ``path``: (modules by digest,
    errors by file). For callers that want to report bad files and go on."""
    p = Path(path)
    if not p.is_dir():
        raise MonitorError(f"monitor directory {p} does not exist or is not a directory")
    good: dict[str, MonitorModule] = {}
    bad: dict[Path, str] = {}
    for f in sorted(p.iterdir()):
        if f.suffix not in (".wasm", ".wat") or not f.is_file():
            continue
        try:
            m = MonitorModule.from_file(f, limits=limits)
        except MonitorError as e:
            bad[f] = str(e)
            continue
        good.setdefault(m.digest, m)
    return good, bad


def load_dir(path: str | Path, *, limits: MonitorLimits = DEFAULT_LIMITS) -> dict[str, MonitorModule]:
    """Every ``*.wasm`` and ``*.wat`` in ``path``, by digest.

    Strict: raises ``MonitorError`` naming every bad file and why, because an
    operator's monitor that silently fails to load would leave sessions
    unchecked (or fail later, confusingly, when a certificate mandates it)."""
    good, bad = scan_dir(path, limits=limits)
    if bad:
        lines = "\n".join(f"  {f}: {msg}" for f, msg in bad.items())
        raise MonitorError(f"{len(bad)} bad monitor file(s) in {path}:\n{lines}")
    return good
