"""The scamper module's names over marionet: change only the import.

    from scamper import ScamperCtrl          # before
    from marionet.compat.scamper import ScamperCtrl   # after

How scamper's ways of reaching VPs map onto a marionet controller:

* ``remote_dir=DIR`` (sc_remoted's directory of per-VP sockets): DIR holds
  a marionet controller's Unix socket (``marionet controller --unix
  DIR/controller.sock``; any socket file in DIR is taken); every live VP is
  attached, as scamper attaches every socket in the directory.
* ``remote=DIR/NAME`` (one VP's socket): the controller in DIR, VP NAME.
* ``mux=ADDR`` (sc_remoted's multiplexed socket): ADDR is a controller
  (a Unix socket path or ``HOST:PORT``); no VP is attached until
  ``add_vps(ctrl.vps())``, as with scamper.
* ``unix=PATH`` (a local scamper's control socket): a controller's Unix
  socket; all its VPs are attached.
* ``add_inet(port, addr)``: a controller's client port (plain TCP on
  loopback unless TLS material is given as marionet keyword arguments).
* none of them: marionet's default, an embedded controller with a local
  endpoint (``local_vps=N`` for more), started on first use.

Unsupported, said clearly: one ``ScamperCtrl`` talks to one controller
(adding a second raises ``NotImplementedError``); ``meta=True`` is accepted
but no list/cycle objects are produced; writing ``.warts`` files (use
``.json``); primitives the endpoints do not run yet (the endpoint refuses
the task, and ``do_*`` raises ``ScamperInstError`` naming it). ``vps()``
entries carry ``tags`` as a dict (scamper: a set of strings).

One deliberate difference: errors are not dropped silently.
``responses()``/``poll()`` raise ``ScamperInstError`` where a failure
happened; pass ``errors="collect"`` to get scamper's collect-then-
``exceptions()`` behaviour (errors still unread at the end are raised
when the controller closes).
"""

from __future__ import annotations

import os
import stat
from typing import Any, Callable

from marionet.client.address import is_loopback, parse_hostport
from marionet.client.ctrl import Ctrl
from marionet.client.inst import Inst, InstError, Task, VpInfo
from marionet.results import Addr, DnsResult, DnsRR, File, Http, Ping, PingReply, Trace, TraceHop
from marionet.results.cycle import CycleStart, CycleStop

__all__ = ["ScamperCtrl", "ScamperInst", "ScamperTask", "ScamperInstError", "ScamperFile", "ScamperPing",
           "ScamperPingReply", "ScamperTrace", "ScamperTraceHop", "ScamperAddr", "ScamperVp",
           "ScamperCycle", "ScamperHost", "ScamperHostRR", "ScamperHttp"]

ScamperInst = Inst
ScamperTask = Task
ScamperInstError = InstError
ScamperPing = Ping
ScamperPingReply = PingReply
ScamperTrace = Trace
ScamperTraceHop = TraceHop
ScamperAddr = Addr
ScamperVp = VpInfo
ScamperCycle = CycleStart
ScamperHost = DnsResult
ScamperHostRR = DnsRR
ScamperHttp = Http
_ = CycleStop


class ScamperFile(File):
    """scamper's ``ScamperFile``: marionet's ``File`` plus the few names
    scamper adds (``filetype``, ``is_read()``, ``is_write()``,
    ``filter_types(…)`` after opening)."""

    @property
    def filetype(self) -> str:
        return self.kind

    def is_read(self) -> bool:
        return self.mode == "r"

    def is_write(self) -> bool:
        return self.mode != "r"

    def filter_types(self, *types: Any) -> None:  # type: ignore[override]
        flat: list[Any] = []
        for t in types:
            flat.extend(t if isinstance(t, (list, tuple, set)) else [t])
        self._filter = self._make_filter(flat or None)


def controller_in(path: str) -> str:
    """The controller address a scamper-style path names (see the module
    docstring): a directory holding a controller socket, a socket, or
    ``HOST:PORT``."""
    if os.path.isdir(path):
        preferred = os.path.join(path, "controller.sock")
        if os.path.exists(preferred):
            return "unix:" + preferred
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            try:
                if stat.S_ISSOCK(os.stat(full).st_mode):
                    return "unix:" + full
            except OSError:
                continue
        raise FileNotFoundError(f"no marionet controller socket in {path} (start one with "
                                f"`marionet controller --unix {os.path.join(path, 'controller.sock')} …`)")
    if path.startswith("unix:"):
        return path
    if os.path.exists(path):
        return "unix:" + path
    if ":" in path and not path.startswith("/"):
        parse_hostport(path)
        return path
    raise FileNotFoundError(f"{path}: no such controller socket, directory or HOST:PORT")


class ScamperCtrl(Ctrl):
    """scamper's ``ScamperCtrl`` over marionet (see the module docstring).

    Extra keyword arguments are marionet's ``Ctrl`` options (``ca``,
    ``cert``, ``key``, ``insecure``, ``local_vps``, ``window``,
    ``errors``, …); ``controller=`` names a controller directly.
    """

    def __init__(self, meta: bool = False, morecb: Callable[..., Any] | None = None,
                 eofcb: Callable[..., Any] | None = None, param: Any = None, unix: str | None = None,
                 remote: str | None = None, remote_dir: str | None = None, mux: str | None = None,
                 outfile: Any = None, **marionet: Any) -> None:
        controller = marionet.pop("controller", None) or os.environ.get("MARIONET_CONTROLLER") or None
        super().__init__(None, morecb=morecb, eofcb=eofcb, param=param, outfile=outfile, _start=False,
                         **marionet)
        self.meta = meta
        self._explicit = {k for k in ("insecure", "ca", "cert", "key") if k in marionet}
        given = [(k, v) for k, v in (("remote_dir", remote_dir), ("mux", mux), ("unix", unix),
                                     ("remote", remote)) if v]
        if len(given) > 1:
            raise NotImplementedError("marionet's ScamperCtrl talks to one controller: give one of "
                                      f"unix=, remote=, remote_dir=, mux= (got {', '.join(k for k, _ in given)})")
        if given:
            kind, value = given[0]
            {"remote_dir": self.add_remote_dir, "mux": self.add_mux, "unix": self.add_unix,
             "remote": self.add_remote}[kind](value)
        elif controller is not None:
            self._use(controller, None)

    # ------------------------------------------------------------ sources
    def _use(self, controller: str, vps: list[str] | None) -> bool:
        """Start on ``controller`` attaching ``vps`` (None: all); False if
        already started there."""
        if self._a is not None:
            if self._a.controller != controller and not (
                    controller.startswith("unix:") and self._a.controller == controller):
                raise NotImplementedError(f"this ScamperCtrl already uses controller {self._a.controller}; "
                                          "marionet's ScamperCtrl talks to one controller")
            return False
        if not controller.startswith("unix:") and "insecure" not in self._explicit \
                and self._kw.get("ca") is None:
            host, _ = parse_hostport(controller)
            self._kw["insecure"] = is_loopback(host)
        self._controller = controller
        self._kw["vps"] = vps
        self._start()
        return True

    def add_remote_dir(self, path: str) -> None:
        """Attach every live VP of the controller whose socket is in ``path``."""
        if not self._use(controller_in(path), None):
            self.add_vps(self.vps())

    def add_mux(self, path: str) -> None:
        """Use the controller at ``path``; attach VPs with ``add_vps``."""
        self._use(controller_in(path), [])

    def add_remote(self, path: str) -> Inst:
        """``DIR/NAME``: VP NAME of the controller whose socket is in DIR."""
        directory, name = os.path.split(path.rstrip("/"))
        ctl = controller_in(directory or ".")
        self._use(ctl, [name]) or self.add_vps([name])
        return self.instance(name)

    def add_unix(self, path: str) -> Inst | None:
        """A controller's Unix socket; attaches all its VPs and returns the
        first instance (scamper: the one local scamper)."""
        if not self._use(controller_in(path), None):
            self.add_vps(self.vps())
        insts = self.instances()
        return insts[0] if insts else None

    def add_inet(self, port: int, addr: str | None = None) -> Inst | None:
        """A controller's client port on ``addr`` (default 127.0.0.1)."""
        host = addr or "127.0.0.1"
        ctl = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if not self._use(ctl, None):
            self.add_vps(self.vps())
        insts = self.instances()
        return insts[0] if insts else None


_MISSING = {
    "ScamperTracelb": "tracelb is not implemented yet",
    "ScamperDealias": "alias resolution is not implemented yet",
    "ScamperTbit": "tbit is not implemented yet",
    "ScamperSniff": "sniff is not implemented yet",
    "ScamperUdpprobe": "udpprobe is not implemented yet",
    "ScamperMux": "use ScamperCtrl(mux=ADDR) and ctrl.vps()",
    "ScamperList": "marionet files carry no list objects",
}


def __getattr__(name: str) -> Any:
    if name in _MISSING:
        raise AttributeError(f"marionet.compat.scamper has no {name}: {_MISSING[name]}")
    raise AttributeError(f"module 'marionet.compat.scamper' has no attribute {name!r}")
