"""Thin wrappers over ip/iptables/sysctl and process bookkeeping.

Everything the lab does to the machine goes through here so errors carry the
command and its stderr, and so processes are only ever ended by pid after
checking they are still the process we started (pid reuse).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import shlex
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Sequence

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000


class LabError(RuntimeError):
    """A lab operation failed; the message names the command and its stderr."""


class NeedsRoot(LabError):
    pass


ROOT_MESSAGE = (
    "marionet lab needs root: it creates network namespaces, veth/TUN links, "
    "routes, tc qdiscs and iptables rules. Run it as root (e.g. `sudo marionet lab up`)."
)


def require_root() -> None:
    if os.geteuid() != 0:
        raise NeedsRoot(ROOT_MESSAGE)


def run(cmd: Sequence[str], *, check: bool = True, input: str | None = None,
        timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    try:
        cp = subprocess.run(list(cmd), capture_output=True, text=True, input=input, timeout=timeout)
    except FileNotFoundError:
        from .tools import missing_message, package_of
        raise LabError(missing_message([(cmd[0], package_of(cmd[0]))])) from None
    if check and cp.returncode != 0:
        extra = f"\n  input: {input.strip()[:500]}" if input else ""
        raise LabError(f"command failed ({cp.returncode}): {shlex.join(cmd)}\n  {cp.stderr.strip()}{extra}")
    return cp


def ns_cmd(ns: str | None, cmd: Sequence[str]) -> list[str]:
    return list(cmd) if ns is None else ["ip", "netns", "exec", ns, *cmd]


def ip_batch(ns: str | None, lines: list[str]) -> None:
    """Run many ``ip`` commands in one process (one fork instead of dozens)."""
    if not lines:
        return
    base = ["ip"] + (["-n", ns] if ns else []) + ["-batch", "-"]
    run(base, input="\n".join(lines) + "\n")


def sysctl(ns: str, settings: dict[str, str], *, check: bool = True) -> None:
    """Write sysctls inside ``ns`` by writing /proc/sys in one exec'd shell."""
    if not settings:
        return
    script = "; ".join(
        f"echo {shlex.quote(v)} > /proc/sys/{k.replace('.', '/')}" + ("" if check else " 2>/dev/null || true")
        for k, v in settings.items()
    )
    if check:
        script = "set -e; " + script
    run(ns_cmd(ns, ["sh", "-c", script]))


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_DIR.iterdir())
    except FileNotFoundError:
        return []


def link_exists(name: str, ns: str | None = None) -> bool:
    return run(["ip"] + (["-n", ns] if ns else []) + ["link", "show", "dev", name], check=False).returncode == 0


def setns(name: str) -> None:
    """Move the calling thread into named netns ``name`` (Python 3.11 has no os.setns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(str(NETNS_DIR / name), os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


_SIOCETHTOOL = 0x8946
_ETHTOOL_STXCSUM = 0x17


def tx_checksum_off(ns: str, names: list[str]) -> list[str]:
    """Turn off transmit checksum offload on interfaces ``names`` in netns
    ``ns``; returns the names it could not change.

    Why: over veth a packet from a UDP or TCP socket leaves with its
    checksum unfinished (CHECKSUM_PARTIAL) — a real NIC would finish it on
    the wire — so a router's ICMP error quotes a checksum the sender never
    put there, and tools that match probes by it (scamper's IPv6
    udp-paris, tracelb) see no replies. With offload off the kernel
    finishes it in software, as the Internet would see it. The ioctl is
    ethtool's (``ethtool -K DEV tx off``) from a thread that enters ``ns``.
    """
    failed: list[str] = []
    box: dict[str, BaseException] = {}

    def work() -> None:
        try:
            setns(ns)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for name in names:
                    ev = bytearray(struct.pack("II", _ETHTOOL_STXCSUM, 0))
                    ptr = ctypes.addressof(ctypes.c_char.from_buffer(ev))
                    try:
                        fcntl.ioctl(s, _SIOCETHTOOL, struct.pack("16sP", name.encode()[:15], ptr))
                    except OSError:
                        failed.append(name)
        except BaseException as e:  # noqa: BLE001 - carried to the caller
            box["err"] = e

    t = threading.Thread(target=work, name=f"txcsum-{ns}")  # setns moves this thread only
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return failed


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/pid/stat: identifies a process across pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat.rsplit(")", 1)[1].split()
    return int(rest[19])


def alive(pid: int, starttime: int | None) -> bool:
    st = proc_starttime(pid)
    return st is not None and (starttime is None or st == starttime)


def stop_pid(pid: int, starttime: int | None, timeout: float = 3.0) -> bool:
    """SIGTERM, wait, SIGKILL: only if pid still is the process we recorded."""
    if not alive(pid, starttime):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:  # reap if it is our child
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        if not alive(pid, starttime) or _zombie(pid):
            return True
        time.sleep(0.02)
    if alive(pid, starttime):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return True


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
