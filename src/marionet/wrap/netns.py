"""The program's network namespace: its only way out is the wrap's relay.

Why a namespace and not LD_PRELOAD: it catches every program alike —
dynamically linked, static, Go — because it works below the C library, at
the kernel's routing. The namespace ``mnw<pid>-<n>`` holds:

* ``lo`` (the program's own loopback: nothing listens there, nothing
  of it is carried to the VP);
* a TUN device ``mnw0`` owned by this process (it vanishes with the
  descriptor), with ``198.18.0.1/32`` and ``fd6d:6e77::1/128`` and the
  default routes of both families: every packet the program sends to
  anywhere but loopback reaches the wrap, nothing else (there is no other
  interface, so nothing can leave directly);
* iptables ``nat OUTPUT REDIRECT`` of every non-loopback TCP connection to
  the relay's listeners on the namespace's loopback (``SO_ORIGINAL_DST``
  tells the relay where it was going), so TCP never reaches the TUN;
* ``/etc/netns/<name>/resolv.conf`` and ``hosts``, which ``ip netns exec``
  bind-mounts over /etc for the program: the resolver is an alias address
  routed to the TUN, relayed as UDP to the VP's resolver.

The namespace is removed on every exit path (``remove`` is idempotent and
the runner calls it from ``finally`` and on signals); a run killed with
SIGKILL leaves a record in ``/run/marionet-wrap/`` and the next run removes
namespaces whose process is gone — only names this module made.
"""

from __future__ import annotations

import ctypes
import fcntl
import itertools
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path
from typing import Callable, TypeVar

__all__ = ["WrapNamespace", "NamespaceError", "PROGRAM_ADDR4", "PROGRAM_ADDR6", "RELAY_ADDR4", "RELAY_ADDR6",
           "RESOLVER_ALIAS4", "TUN_NAME", "sweep_stale"]

T = TypeVar("T")

TUN_NAME = "mnw0"
PROGRAM_ADDR4, PROGRAM_ADDR6 = "198.18.0.1", "fd6d:6e77::1"
#: Where the wrap's own ICMP refusals come from (routed to the TUN, never assigned).
RELAY_ADDR4, RELAY_ADDR6 = "198.18.0.254", "fd6d:6e77::fe"
RESOLVER_ALIAS4 = "198.18.0.53"
TUN_MTU = 65000
ETC_NETNS = Path("/etc/netns")
RECORDS = Path("/run/marionet-wrap")
_NAME = re.compile(r"^mnw(\d+)-(\d+)$")
_counter = itertools.count(1)

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


class NamespaceError(RuntimeError):
    """The namespace could not be built; the message says which step."""


def _run(argv: list[str], what: str, stdin: str | None = None) -> None:
    try:
        cp = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise NamespaceError(f"{what}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise NamespaceError(f"{what}: {argv[0]} did not finish in 30 s") from None
    if cp.returncode != 0:
        raise NamespaceError(f"{what}: {' '.join(argv[:4])}… failed: {cp.stderr.strip() or cp.returncode}")


def _in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a short-lived thread set into ``netns``: sockets and
    TUN devices it creates belong there, and no other thread moves."""
    out: dict[str, object] = {}

    def work() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        except OSError as exc:
            out["err"] = exc
            return
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                out["err"] = OSError(err, f"setns({netns}): {os.strerror(err)}")
                return
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            out["err"] = exc
        finally:
            os.close(fd)

    t = threading.Thread(target=work, name=f"netns-{netns}")
    t.start()
    t.join()
    if "err" in out:
        raise out["err"]  # type: ignore[misc]
    return out["value"]  # type: ignore[return-value]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _existing() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def sweep_stale() -> list[str]:
    """Remove namespaces of wrap runs whose process is gone (SIGKILL).

    Only names with a record in ``/run/marionet-wrap/`` (written by
    ``create``) and of the form ``mnw<pid>-<n>`` with ``<pid>`` dead.
    """
    removed: list[str] = []
    try:
        records = list(RECORDS.iterdir())
    except FileNotFoundError:
        return removed
    for rec in records:
        m = _NAME.match(rec.name)
        if not m or _pid_alive(int(m.group(1))):
            continue
        subprocess.run(["ip", "netns", "del", rec.name], capture_output=True, timeout=30)
        shutil.rmtree(ETC_NETNS / rec.name, ignore_errors=True)
        rec.unlink(missing_ok=True)
        removed.append(rec.name)
    return removed


class WrapNamespace:
    """One program's namespace (see the module docstring). Use as a context
    manager, or ``create()`` … ``remove()``."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"mnw{os.getpid()}-{next(_counter)}"
        if not _NAME.match(self.name):
            raise ValueError(f"namespace name {self.name!r} is not mnw<pid>-<n>")
        self.tun_fd: int | None = None
        self.listeners: dict[int, socket.socket] = {}
        self._created = False
        self._owned = False  # set once we know the name is ours to make (and so to remove)
        self._etc = ETC_NETNS / self.name

    # ------------------------------------------------------------- building
    def create(self, *, hosts: str, resolv_conf: str) -> "WrapNamespace":
        """Build everything; on any failure remove what was made and raise."""
        sweep_stale()
        if self.name in _existing():
            raise NamespaceError(f"namespace {self.name} exists already; not touching it")
        self._owned = True
        try:
            RECORDS.mkdir(parents=True, exist_ok=True)
            (RECORDS / self.name).write_text(f"{os.getpid()}\n")
            self._created = True  # the name has our pid: a half-made namespace is ours to delete
            _run(["ip", "netns", "add", self.name], "creating the namespace")
            self._etc.mkdir(parents=True, exist_ok=True)
            (self._etc / "hosts").write_text(hosts)
            (self._etc / "resolv.conf").write_text(resolv_conf)
            self.tun_fd = _in_netns(self.name, self._open_tun)
            os.set_blocking(self.tun_fd, False)
            batch = "\n".join([
                "link set lo up",
                f"link set {TUN_NAME} mtu {TUN_MTU} up",
                f"addr add {PROGRAM_ADDR4}/32 dev {TUN_NAME}",
                f"addr add {PROGRAM_ADDR6}/128 dev {TUN_NAME} nodad",
                f"route add default dev {TUN_NAME}",
                f"route add ::/0 dev {TUN_NAME}",
            ]) + "\n"
            _run(["ip", "-n", self.name, "-batch", "-"], "configuring the namespace", stdin=batch)
            for family in (4, 6):
                self.listeners[family] = _in_netns(self.name, lambda f=family: self._listener(f))
            p4, p6 = (self.listeners[f].getsockname()[1] for f in (4, 6))
            _run(["ip", "netns", "exec", self.name, "iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
                  "!", "-d", "127.0.0.0/8", "-j", "REDIRECT", "--to-ports", str(p4)], "redirecting IPv4 TCP")
            _run(["ip", "netns", "exec", self.name, "ip6tables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
                  "!", "-d", "::1", "-j", "REDIRECT", "--to-ports", str(p6)], "redirecting IPv6 TCP")
        except BaseException:
            self.remove()
            raise
        return self

    @staticmethod
    def _open_tun() -> int:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", TUN_NAME.encode(), IFF_TUN | IFF_NO_PI))
        except OSError:
            os.close(fd)
            raise
        return fd

    @staticmethod
    def _listener(family: int) -> socket.socket:
        if family == 4:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
        else:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind(("::1", 0))
        s.listen(512)
        s.setblocking(False)
        return s

    def program_argv(self, argv: list[str]) -> list[str]:
        """How to start ``argv`` inside the namespace (with its /etc files)."""
        return ["ip", "netns", "exec", self.name, *argv]

    # ------------------------------------------------------------- removal
    def remove(self) -> None:
        """Close our descriptors and delete the namespace and its files (idempotent)."""
        for s in self.listeners.values():
            s.close()
        self.listeners.clear()
        if self.tun_fd is not None:
            try:
                os.close(self.tun_fd)
            except OSError:
                pass
            self.tun_fd = None
        if not self._owned:
            return
        if self._created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=30)
            self._created = False
        shutil.rmtree(self._etc, ignore_errors=True)
        (RECORDS / self.name).unlink(missing_ok=True)
        self._owned = False

    def exists(self) -> bool:
        return self.name in _existing()

    def __enter__(self) -> "WrapNamespace":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
