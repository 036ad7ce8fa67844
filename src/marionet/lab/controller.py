"""The lab's own controller: a private PKI and a ``marionet controller`` process.

Why the lab starts one: a lab is meant to be a whole measurement world on
one machine, offline.  Its VPs must register somewhere a researcher can
attach to, with the same mutual TLS as a real deployment (``--insecure`` is
refused off loopback, and the VPs reach the host over the management bridge,
not loopback).  So each lab gets:

* a PKI directory in the lab's state dir (``<id>.d/pki``): a throw-away CA,
  a controller certificate whose SANs hold the management bridge address
  (what the VPs dial) and 127.0.0.1 (what researchers dial), one endpoint
  certificate per VP (CN = VP name, which the controller checks against the
  registered name) and one client certificate for the researcher;
* a ``marionet controller`` process in the root namespace listening for
  endpoints on the bridge address, for TLS clients on 127.0.0.1 and for
  local clients on a Unix socket in the state dir.

Ports are chosen by the kernel (bind to port 0, read the number, close;
``marionet controller`` itself refuses port 0) and confirmed from the
controller's start-up line; a lost race for the port is retried, so several
labs never collide.  Everything lives under the
lab's state dir and the process is recorded in the state file, so ``down()``
and ``lab down`` after a crash remove it like any other lab process.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, TypeVar

from .system import LabError

if TYPE_CHECKING:
    from .core import Lab

T = TypeVar("T")

CLIENT_NAME = "researcher"
CONTROLLER_NAME = "controller"
START_TIMEOUT_S = 15.0
_READY = re.compile(r"^marionet controller: (?P<what>.*) \((?P<mode>[^()]*)\)\s*$")


@dataclass
class ControllerInfo:
    """How VPs reach the lab's controller and how a researcher attaches.

    ``managed`` is False for an external controller the spec or caller named
    (the lab then only launches VPs towards it).  Paths are strings so the
    record goes into the JSON state file unchanged.
    """

    endpoints: str                      # HOST:PORT the VPs dial (bridge address)
    clients: str | None = None          # HOST:PORT for TLS clients (127.0.0.1)
    unix: str | None = None             # Unix socket for local clients
    managed: bool = True
    pki: str | None = None              # PKI directory (CA, controller, VP and client certs)
    ca: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    cert: str | None = None             # the controller's own certificate and key
    key: str | None = None
    pid: int | None = None
    log: str | None = None
    vp_certs: dict[str, list[str]] = field(default_factory=dict)  # vp -> [cert, key]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ControllerInfo | None":
        if not isinstance(d, dict) or "endpoints" not in d:
            return None
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def client_tls(self) -> tuple[str, str, str] | None:
        if self.client_cert and self.client_key and self.ca:
            return self.client_cert, self.client_key, self.ca
        return None

    def attach_lines(self) -> list[str]:
        """Human-readable lines saying how to attach (``lab up`` and ``lab status``)."""
        out = []
        if not self.managed:
            out.append(f"controller (external): VPs dial {self.endpoints}")
            return out
        out.append(f"controller pid {self.pid}: VPs dial {self.endpoints}; "
                   f"clients on {self.clients} (mutual TLS) and unix:{self.unix}")
        tls = self.client_tls()
        if tls:
            cert, key, ca = tls
            out.append(f"  attach: Ctrl(controller=\"{self.clients}\", cert=\"{cert}\", key=\"{key}\", ca=\"{ca}\")")
            out.append(f"  local: unix:{self.unix} (no TLS; root on this host); scamper scripts: "
                       f"ScamperCtrl(remote_dir=\"{Path(self.unix).parent}\")")
        return out


# --------------------------------------------------------------------------
# PKI


def make_pki(path: Path, lab_id: str, gateway: str, vp_names: Iterable[str]) -> ControllerInfo:
    """Create the lab's CA and every certificate the controller, VPs and researcher need.

    Ed25519 issuance is a few milliseconds per certificate, so doing it at
    ``up()`` costs nothing noticeable and no material outlives the lab.
    """
    from marionet.guard.pki import PkiDir

    pki = PkiDir.init(path, f"marionet lab {lab_id} CA", days=30)
    ctl = pki.issue(CONTROLLER_NAME, role="controller", days=30, san_ip=[gateway, "127.0.0.1"],
                    san_dns=["localhost"], subject_name=f"marionet-lab-{lab_id}")
    cli = pki.issue(CLIENT_NAME, role="client", days=30)
    info = ControllerInfo(endpoints=f"{gateway}:0", pki=str(pki.path), ca=str(pki.ca_path),
                          client_cert=str(cli.cert), client_key=str(cli.key),
                          cert=str(ctl.cert), key=str(ctl.key))
    for name in vp_names:
        p = pki.issue(name, role="endpoint", days=30)
        info.vp_certs[name] = [str(p.cert), str(p.key)]
    return info


def issue_vp_certs(pki_path: str, vp_names: Iterable[str]) -> dict[str, list[str]]:
    """Endpoint certificates from an operator's existing PKI (for an external controller)."""
    from marionet.guard.pki import PkiDir

    pki = PkiDir(pki_path)
    out = {}
    for name in vp_names:
        try:
            p = pki.paths(name)
        except Exception:
            p = pki.issue(name, role="endpoint", days=30)
        out[name] = [str(p.cert), str(p.key)]
    return out


# --------------------------------------------------------------------------
# process


def free_port(host: str) -> int:
    """A TCP port the kernel considers free on ``host`` right now."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def controller_command(info: ControllerInfo, gateway: str, lab_id: str) -> list[str]:
    from .vp import marionet_argv

    return [*marionet_argv(), "controller", "--endpoints", f"{gateway}:{free_port(gateway)}",
            "--clients", f"127.0.0.1:{free_port('127.0.0.1')}",
            "--unix", str(info.unix), "--cert", str(info.cert), "--key", str(info.key), "--ca", str(info.ca),
            "--name", f"lab-{lab_id}"]


def start(lab: "Lab", gateway: str, vp_names: list[str]) -> ControllerInfo:
    """PKI + controller process for ``lab``; returns once it listens (or raises LabError)."""
    from .hooks import service_dir

    d = service_dir(lab)
    info = make_pki(d / "pki", lab.lab_id, gateway, vp_names)
    # a directory of its own: scamper-style scripts take "any socket in DIR"
    # (``ScamperCtrl(remote_dir=DIR)``), and the services keep sockets elsewhere
    sock_dir = d / "controller"
    sock_dir.mkdir(mode=0o700, exist_ok=True)
    info.unix = str(sock_dir / "controller.sock")
    info.log = str(d / "controller.log")
    for attempt in range(3):
        argv = controller_command(info, gateway, lab.lab_id)
        log_path = Path(d / f"controller.{attempt}.log" if attempt else info.log)
        with open(log_path, "ab") as log:
            # stdout to a file, not a pipe: after `lab up` exits nobody would read a pipe
            p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        lab._track(p, "controller", None)
        info.pid, info.log = p.pid, str(log_path)
        try:
            where = _wait_ready(p, log_path, START_TIMEOUT_S)
            break
        except LabError as e:
            if attempt == 2 or "in use" not in str(e):
                raise
    info.endpoints = where["endpoints"]
    info.clients = where.get("clients")
    return info


def _wait_ready(p: subprocess.Popen, log: Path, timeout: float) -> dict[str, str]:
    """Parse ``marionet controller: endpoints on A, clients on B, clients on unix:P (…)``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        for line in text.splitlines():
            m = _READY.match(line)
            if m:
                out: dict[str, str] = {}
                for part in m.group("what").split(", "):
                    role, _, addr = part.partition(" on ")
                    if addr.startswith("unix:"):
                        out.setdefault("unix", addr[5:])
                    else:
                        out.setdefault(role, addr)
                if "endpoints" not in out:
                    raise LabError(f"controller started without an endpoint listener: {line}")
                return out
        if p.poll() is not None:
            raise LabError(f"the lab's controller exited ({p.returncode}): {text[-1500:]}")
        time.sleep(0.02)
    raise LabError(f"the lab's controller did not start within {timeout:.0f} s (log {log})")


# --------------------------------------------------------------------------
# talking to it from synchronous code


def run_coro(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from sync code, also when a loop already runs.

    ``Lab`` is synchronous and is used from pytest-asyncio tests and
    notebooks where ``asyncio.run`` would refuse; a short-lived thread with
    its own loop works everywhere.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())  # type: ignore[arg-type]
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["v"] = asyncio.run(factory())  # type: ignore[arg-type]
        except BaseException as e:  # noqa: BLE001  (re-raised below)
            box["e"] = e
    t = threading.Thread(target=target, name="marionet-lab-sync")
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]


async def connect(info: ControllerInfo, *, prefer_unix: bool = True) -> Any:
    """A ``ControllerConnection`` to the lab's controller (Unix socket when we may, else TLS)."""
    from marionet.client.controller import connect_controller

    if prefer_unix and info.unix and Path(info.unix).exists():
        return await connect_controller(f"unix:{info.unix}")
    tls = info.client_tls()
    if info.clients is None or tls is None:
        raise LabError("no client address or client certificate for this lab's controller")
    cert, key, ca = tls
    return await connect_controller(info.clients, ca=ca, cert=cert, key=key)


async def wait_registered(info: ControllerInfo, names: Iterable[str], timeout: float) -> list[dict[str, Any]]:
    """Poll the registry until every VP in ``names`` is alive; returns their records.

    Polling (every 50 ms) rather than VP events keeps this independent of
    the event stream's details and is cheap for a handful of VPs.
    """
    want = set(names)
    deadline = time.monotonic() + timeout
    conn = None
    try:
        while True:
            try:
                if conn is None:
                    conn = await connect(info)
                vps = await conn.vps()
                have = {v["name"] for v in vps}
                if want <= have:
                    return [v for v in vps if v["name"] in want]
            except Exception as e:  # noqa: BLE001  (not up yet, or restarting: retry until the deadline)
                if conn is not None:
                    await conn.close()
                    conn = None
                if time.monotonic() > deadline:
                    raise LabError(f"controller unreachable: {e}") from None
                have = set()
            if time.monotonic() > deadline:
                raise LabError(f"VPs not registered after {timeout:.0f} s: {', '.join(sorted(want - have))}")
            await asyncio.sleep(0.05)
    finally:
        if conn is not None:
            await conn.close()
