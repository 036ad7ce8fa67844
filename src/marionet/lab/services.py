"""Services on lab target hosts: DNS, HTTP(S), bulk TCP, UDP echo, alias router.

A lab target is only useful if real measurement tools find real servers on
it: ``dig`` and our DNS primitive need an authoritative server that behaves
like the ones on the Internet; the HTTP primitive and the CDN-catchment demo
need HTTP and HTTPS with a certificate the VPs can verify; throughput needs a
source/sink; NTP-style delay needs a responder that stamps receive and
transmit times. So every kind here is a real server process started inside
the target's network namespace with ``ip netns exec``:

==============  ===========================================================
kind            server
==============  ===========================================================
``dns``         NSD (Debian ``nsd``): authoritative, small, no recursion,
                starts in a namespace with a config that lives entirely in
                the state dir.
``http``        nginx (Debian ``nginx-light``); static files and a JSON API.
``https``       nginx with a certificate from the lab CA (``labca.py``).
``resolver``    Unbound (Debian ``unbound``): recursive, for the lab's own
                zones only (stub zones at their authoritative servers, no
                root hints: every other name is NXDOMAIN), for clients in
                the lab's prefixes.
``bulk``        ``impl="simple"`` (default): a Python TCP source (sends N
                random bytes) and sink (reads, discards, reports counts);
                ``impl="iperf3"``: ``iperf3 -s`` in the foreground.
``throughput``  the MNTPUT1 throughput server (``marionet.measure.
                throughput_server``): downloads of N pseudo-random bytes and
                uploads answered with the receiver's kernel-stamped
                ``b, t0, t1`` report; options ``port`` (default 5301),
                ``addresses`` (default: every address, v4 and v6),
                ``max_clients``; ``transfers()`` reads its per-transfer log.
``udpecho``     a Python UDP responder: payload + kernel receive time +
                transmit time (ns).
``aliasrouter`` the IP-ID emulating router (``aliasrouter.py``).
``ntp``         chronyd (Debian ``chrony``) as a server of its local clock
                (``local stratum N``) with ``-x``: it answers mode-3 client
                queries but never steers the machine's clock.
``snmp``        snmpd (Debian ``snmpd``): SNMPv1/v2c, one read-only
                community ("public"), sysDescr/sysName/sysLocation/sysContact
                from the options, no system config files read.
==============  ===========================================================

Every service gets its own directory ``<state_dir>/<name>/`` holding its
config, logs and a ``service.json`` record (pid and process start time) from
which :func:`stop_leftovers` can end it after a crash of the lab process.
Processes run in their own session (process group = pid), so ``stop`` ends
exactly what it started — the server and its workers — and nothing else.
"""

from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import os
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "KINDS",
    "ServiceConfigError",
    "ServiceStartError",
    "ServiceHandle",
    "start_service",
    "stop_leftovers",
    "netns_socket",
    "netns_addresses",
    "UDPECHO_TRAILER",
    "parse_udpecho_reply",
]

KINDS = ("dns", "http", "https", "bulk", "udpecho", "aliasrouter", "resolver", "ntp", "snmp")
KINDS += ("throughput",)

#: Trailer a udpecho reply appends to the echoed payload: receive time then
#: transmit time, ns since the Unix epoch (CLOCK_REALTIME), big-endian.
UDPECHO_TRAILER = struct.Struct("!QQ")

# Socket constants Python 3.11 lacks (see reference/linux.md).
_SO_TIMESTAMPNS = 35
_IP_PKTINFO = 8
_IP_FREEBIND = 15
_CLONE_NEWNET = 0x40000000

_READY_TIMEOUT = 10.0


class ServiceConfigError(ValueError):
    """A service's options are wrong; the message names the field."""


class ServiceStartError(RuntimeError):
    """The server did not come up; the message carries the tail of its log."""


# ---------------------------------------------------------------- namespaces

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _netns_file(netns: str) -> str:
    path = f"/run/netns/{netns}"
    if not os.path.exists(path):
        raise ServiceConfigError(f"netns: namespace {netns!r} does not exist ({path} missing)")
    return path


def netns_socket(netns: str | None, family: int, type: int, proto: int = 0) -> socket.socket:
    """A socket that lives in ``netns`` (``None``: this process's namespace).

    A socket keeps the namespace it was created in, and ``setns`` changes
    only the calling thread, so a short-lived thread enters the namespace,
    makes the socket and leaves. This lets one test process probe from many
    namespaces without ``ip netns exec`` subprocesses.
    """
    if netns is None:
        return socket.socket(family, type, proto)
    target_path = _netns_file(netns)
    box: dict[str, Any] = {}

    def work() -> None:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(target_path, os.O_RDONLY)
        try:
            _setns(target)
            try:
                box["sock"] = socket.socket(family, type, proto)
            finally:
                _setns(home)
        except BaseException as e:  # carried to the caller's thread
            box["err"] = e
        finally:
            os.close(home)
            os.close(target)

    t = threading.Thread(target=work, name=f"netns-{netns}")
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]
    return box["sock"]


def netns_addresses(netns: str, *, include_loopback: bool = True) -> list[str]:
    """Addresses configured in ``netns`` (no link-local ones).

    Servers bind these explicitly because a wildcard UDP socket may answer
    from the wrong source address on a multi-homed lab router.
    """
    _netns_file(netns)
    out = subprocess.run(
        ["ip", "-n", netns, "-j", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    addrs: list[str] = []
    for link in json.loads(out or "[]"):
        for a in link.get("addr_info", []):
            scope = a.get("scope")
            if scope == "link":
                continue
            if scope == "host" and not include_loopback:
                continue
            addrs.append(a["local"])
    return addrs


def _proc_starttime(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks, to tell our process from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


# ------------------------------------------------------------------- handles


@dataclass
class ServiceHandle:
    """A running service: what clients need (addresses, ports) and how to stop it."""

    kind: str
    name: str
    netns: str
    directory: Path
    addresses: list[str]
    ports: dict[str, int]
    info: dict[str, Any] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        """Pid of the server process (also its process group id)."""
        assert self._proc is not None
        return self._proc.pid

    @property
    def port(self) -> int:
        """The main port (first of ``ports``)."""
        return next(iter(self.ports.values()))

    @property
    def log_path(self) -> Path:
        return self.directory / "service.log"

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def transfers(self) -> list[dict[str, Any]]:
        """Per-connection records of the simple bulk server (JSON lines)."""
        p = self.directory / "transfers.jsonl"
        if not p.exists():
            return []
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def stop(self, timeout: float = 5.0) -> None:
        """End the server and its process group; safe to call twice.

        SIGTERM first so nginx/NSD remove their pid files and sockets, then
        SIGKILL for anything left in the group. Only the group this handle
        created is signalled, and only while its leader is known to be ours.
        """
        if self._stopped or self._proc is None:
            self._stopped = True
            return
        self._stopped = True
        proc = self._proc
        pgid = proc.pid
        if proc.poll() is None:
            _killpg(pgid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _killpg(pgid, signal.SIGKILL)
                proc.wait(timeout)
        # Workers that outlived the leader (same group; a pgid cannot be
        # reused while any member lives). Wait until the group is empty so
        # that ports and files are free when stop() returns.
        _killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            (self.directory / "service.json").unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> "ServiceHandle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------- option help


def _opt(options: Mapping[str, Any], key: str, typ: type | tuple[type, ...], default: Any, kind: str) -> Any:
    v = options.get(key, default)
    if v is None:
        return None
    if typ is int and isinstance(v, bool):
        raise ServiceConfigError(f"{kind}.{key}: expected an integer, got {v!r}")
    if not isinstance(v, typ):
        names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise ServiceConfigError(f"{kind}.{key}: expected {names}, got {type(v).__name__} {v!r}")
    return v


def _port(options: Mapping[str, Any], key: str, default: int, kind: str) -> int:
    p = _opt(options, key, int, default, kind)
    if not 0 < p < 65536:
        raise ServiceConfigError(f"{kind}.{key}: port {p} is outside 1..65535")
    return p


def _addresses(netns: str, options: Mapping[str, Any], kind: str) -> list[str]:
    given = options.get("addresses")
    if given is None:
        addrs = netns_addresses(netns)
    else:
        if not isinstance(given, (list, tuple)) or not given:
            raise ServiceConfigError(f"{kind}.addresses: expected a non-empty list of IP addresses")
        addrs = []
        for a in given:
            try:
                addrs.append(str(ipaddress.ip_address(a)))
            except ValueError:
                raise ServiceConfigError(f"{kind}.addresses: {a!r} is not an IP address") from None
    if not addrs:
        raise ServiceConfigError(f"{kind}.addresses: namespace {netns!r} has no addresses to serve on")
    return addrs


def _public_first(addrs: Sequence[str]) -> list[str]:
    """Order addresses so that non-loopback ones come first (clients use those)."""
    return sorted(addrs, key=lambda a: ipaddress.ip_address(a).is_loopback)


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# -------------------------------------------------------------- process mgmt


def _launch(kind: str, name: str, netns: str, directory: Path, cmd: Sequence[str]) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in ``netns`` as a new session, logging to the service dir."""
    log = open(directory / "service.log", "ab")
    try:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, *cmd],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=directory,
        )
    finally:
        log.close()
    record = {
        "kind": kind,
        "name": name,
        "netns": netns,
        "pid": proc.pid,
        "starttime": _proc_starttime(proc.pid),
        "cmd": list(cmd),
    }
    (directory / "service.json").write_text(json.dumps(record, indent=1))
    return proc


def _wait_ready(handle: ServiceHandle, check: Callable[[], bool], timeout: float = _READY_TIMEOUT) -> None:
    """Poll ``check`` until it passes; fail early if the server died."""
    deadline = time.monotonic() + timeout
    last_err: BaseException | None = None
    while True:
        if not handle.running():
            handle.stop()
            raise ServiceStartError(
                f"{handle.kind} service {handle.name!r} in {handle.netns} exited during start "
                f"(status {handle._proc.returncode if handle._proc else '?'}); log:\n{handle.log_tail()}"
            )
        try:
            if check():
                return
        except OSError as e:
            last_err = e
        if time.monotonic() > deadline:
            handle.stop()
            raise ServiceStartError(
                f"{handle.kind} service {handle.name!r} in {handle.netns} not ready after {timeout:.0f}s"
                f" (last error: {last_err}); log:\n{handle.log_tail()}"
            )
        time.sleep(0.05)


def _tcp_answers(netns: str, addr: str, port: int) -> bool:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with netns_socket(netns, fam, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect((addr, port))
        except (ConnectionRefusedError, TimeoutError):
            return False
        return True


def stop_leftovers(state_dir: str | os.PathLike[str]) -> list[int]:
    """End service processes recorded under ``state_dir`` (after a crash).

    A record is trusted only if the pid still has the recorded start time, so
    a pid reused by an unrelated process is never signalled. Returns the pids
    that were signalled.
    """
    ended: list[int] = []
    for rec_path in Path(state_dir).glob("*/service.json"):
        try:
            rec = json.loads(rec_path.read_text())
            pid, start = int(rec["pid"]), rec.get("starttime")
        except (OSError, ValueError, KeyError):
            continue
        if start is not None and _proc_starttime(pid) == start:
            _killpg(pid, signal.SIGTERM)
            for _ in range(50):
                # An exited process we cannot reap (not our child; here PID 1
                # does not reap either) lingers as a zombie: it has stopped.
                if _proc_starttime(pid) != start or _zombie(pid):
                    break
                time.sleep(0.05)
            else:
                _killpg(pid, signal.SIGKILL)
            ended.append(pid)
        rec_path.unlink(missing_ok=True)
    return ended


# ------------------------------------------------------------------------ dns

_RR_TYPES = ("A", "AAAA", "NS", "MX", "TXT", "CNAME")


def _fqdn(name: str, zone: str) -> str:
    if name in ("@", ""):
        return zone
    return name if name.endswith(".") else f"{name}.{zone}"


def _txt_quote(s: str) -> str:
    """Split into ≤255-byte character-strings and quote (RFC 1035 TXT)."""
    b = s.encode()
    parts = [b[i : i + 255] for i in range(0, len(b), 255)] or [b""]
    out = []
    for p in parts:
        t = p.decode(errors="replace").replace("\\", "\\\\").replace('"', '\\"')
        out.append(f'"{t}"')
    return " ".join(out)


def _zone_text(zone: str, records: Sequence[Any], ttl: int, serial: int, ns_names: list[str],
               glue: list[str], where: str) -> str:
    """Render a zone file; every record is validated with an error naming its index."""
    lines = [f"$ORIGIN {zone}", f"$TTL {ttl}"]
    primary = ns_names[0]
    lines.append(f"@ IN SOA {primary} hostmaster.{zone} {serial} 3600 600 86400 60")
    have: set[tuple[str, str]] = set()
    body: list[str] = []
    for i, r in enumerate(records):
        w = f"{where}.records[{i}]"
        if isinstance(r, Mapping):
            name, rtype, value, rttl = r.get("name"), r.get("type"), r.get("value"), r.get("ttl")
        elif isinstance(r, (list, tuple)) and len(r) in (3, 4):
            name, rtype, value = r[0], r[1], r[2]
            rttl = r[3] if len(r) == 4 else None
        else:
            raise ServiceConfigError(f"{w}: expected {{name, type, value[, ttl]}} or [name, type, value], got {r!r}")
        if not isinstance(name, str) or not (name in ("@", "") or re.fullmatch(r"[A-Za-z0-9_*.-]+", name)):
            raise ServiceConfigError(f"{w}.name: bad owner name {name!r}")
        if not isinstance(rtype, str) or rtype.upper() not in _RR_TYPES:
            raise ServiceConfigError(f"{w}.type: {rtype!r} is not one of {', '.join(_RR_TYPES)}")
        rtype = rtype.upper()
        if rttl is not None and (not isinstance(rttl, int) or isinstance(rttl, bool) or rttl < 0):
            raise ServiceConfigError(f"{w}.ttl: expected a non-negative integer, got {rttl!r}")
        owner = _fqdn(name, zone)
        if rtype in ("A", "AAAA"):
            try:
                ip = ipaddress.ip_address(value)
            except ValueError:
                raise ServiceConfigError(f"{w}.value: {value!r} is not an IP address") from None
            if (rtype == "A") != (ip.version == 4):
                raise ServiceConfigError(f"{w}.value: {value!r} is not an IPv{4 if rtype == 'A' else 6} address")
            rdata = str(ip)
        elif rtype in ("NS", "CNAME"):
            if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
                raise ServiceConfigError(f"{w}.value: bad host name {value!r}")
            rdata = _fqdn(value, zone)
        elif rtype == "MX":
            if isinstance(value, Mapping):
                pref, host = value.get("preference", 10), value.get("exchange")
            elif isinstance(value, str) and len(value.split()) == 2:
                pref_s, host = value.split()
                pref = int(pref_s) if pref_s.isdigit() else -1
            else:
                raise ServiceConfigError(f"{w}.value: MX needs 'PREF HOST' or {{preference, exchange}}, got {value!r}")
            if not isinstance(pref, int) or not 0 <= pref < 65536 or not isinstance(host, str):
                raise ServiceConfigError(f"{w}.value: bad MX {value!r}")
            rdata = f"{pref} {_fqdn(host, zone)}"
        else:  # TXT
            if isinstance(value, str):
                rdata = _txt_quote(value)
            elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                rdata = " ".join(_txt_quote(v) for v in value)
            else:
                raise ServiceConfigError(f"{w}.value: TXT needs a string or list of strings, got {value!r}")
        have.add((owner.lower(), rtype))
        body.append(f"{owner} {'' if rttl is None else rttl} IN {rtype} {rdata}")
    if not any(t == "NS" and o == zone.lower() for o, t in have):
        for n in ns_names:
            body.insert(0, f"@ IN NS {n}")
    # Glue for in-zone name servers without addresses: the server's own.
    for n in ns_names:
        if n.lower().endswith(zone.lower()) and not any(o == n.lower() and t in ("A", "AAAA") for o, t in have):
            for a in glue:
                body.append(f"{n} IN {'AAAA' if ':' in a else 'A'} {a}")
    return "\n".join(lines + body) + "\n"


def _start_dns(netns: str, name: str, d: Path, options: Mapping[str, Any]) -> ServiceHandle:
    port = _port(options, "port", 53, "dns")
    addrs = _addresses(netns, options, "dns")
    zones_opt = options.get("zones")
    if zones_opt is None:
        if "zone" not in options:
            raise ServiceConfigError("dns.zone: required (the zone name, e.g. 'lab.example.')")
        zones_opt = [{k: options[k] for k in ("zone", "records", "ttl", "ns", "serial") if k in options}]
    if not isinstance(zones_opt, (list, tuple)) or not zones_opt:
        raise ServiceConfigError("dns.zones: expected a non-empty list of {zone, records}")
    glue = [a for a in _public_first(addrs) if not ipaddress.ip_address(a).is_loopback]
    zone_names: list[str] = []
    conf_zones: list[str] = []
    for zi, z in enumerate(zones_opt):
        where = f"dns.zones[{zi}]" if "zones" in options else "dns"
        if not isinstance(z, Mapping):
            raise ServiceConfigError(f"{where}: expected a table, got {z!r}")
        zone = z.get("zone")
        if not isinstance(zone, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+\.?", zone) or zone == ".":
            raise ServiceConfigError(f"{where}.zone: bad zone name {zone!r}")
        zone = zone.rstrip(".").lower() + "."
        ttl = _opt(z, "ttl", int, 300, where)
        serial = _opt(z, "serial", int, int(time.time()) % (1 << 31), where)
        records = z.get("records", [])
        if not isinstance(records, (list, tuple)):
            raise ServiceConfigError(f"{where}.records: expected a list, got {type(records).__name__}")
        ns_opt = z.get("ns", [f"ns1.{zone}"])
        if isinstance(ns_opt, str):
            ns_opt = [ns_opt]
        if not isinstance(ns_opt, (list, tuple)) or not all(isinstance(n, str) for n in ns_opt) or not ns_opt:
            raise ServiceConfigError(f"{where}.ns: expected a list of name-server host names")
        ns_names = [_fqdn(n, zone) for n in ns_opt]
        text = _zone_text(zone, records, ttl, serial, ns_names, glue, where)
        zfile = d / f"{zone.rstrip('.')}.zone"
        zfile.write_text(text)
        chk = subprocess.run(["nsd-checkzone", zone, str(zfile)], capture_output=True, text=True)
        if chk.returncode != 0:
            raise ServiceConfigError(f"{where}: zone {zone} rejected by nsd-checkzone: {chk.stderr.strip() or chk.stdout.strip()}")
        zone_names.append(zone)
        conf_zones.append(f'zone:\n    name: "{zone}"\n    zonefile: "{zfile}"\n')
    listen = "".join(f"    ip-address: {a}@{port}\n" for a in addrs)
    conf = (
        "server:\n"
        f"{listen}"
        "    ip-freebind: yes\n"  # v6 addresses may still be tentative (DAD)
        "    server-count: 1\n"
        '    username: ""\n'  # stay root: the state dir is private to root
        '    chroot: ""\n'
        '    database: ""\n'
        f'    zonesdir: "{d}"\n'
        f'    zonelistfile: "{d}/zone.list"\n'
        f'    xfrdfile: "{d}/xfrd.state"\n'
        f'    xfrdir: "{d}"\n'
        f'    pidfile: "{d}/nsd.pid"\n'
        f'    logfile: "{d}/nsd.log"\n'
        "    hide-version: yes\n"
        "    verbosity: 1\n"
        "remote-control:\n"
        "    control-enable: no\n" + "".join(conf_zones)
    )
    conf_path = d / "nsd.conf"
    conf_path.write_text(conf)
    chk = subprocess.run(["nsd-checkconf", str(conf_path)], capture_output=True, text=True)
    if chk.returncode != 0:
        raise ServiceConfigError(f"dns: generated nsd.conf rejected: {chk.stderr.strip()}")
    proc = _launch("dns", name, netns, d, ["nsd", "-d", "-c", str(conf_path)])
    h = ServiceHandle("dns", name, netns, d, _public_first(addrs), {"dns": port},
                      {"zones": zone_names, "config": str(conf_path)}, proc)

    _wait_ready(h, lambda: _dns_answers(netns, h.addresses[0], port, zone_names[0], 0.1))
    return h


# ------------------------------------------------------------------- resolver


def _resolver_zones(options: Mapping[str, Any]) -> dict[str, list[str]]:
    """``zones``: {zone: [server address, …]} — where each lab zone's authoritative servers are."""
    zones = options.get("zones")
    if not isinstance(zones, Mapping) or not zones:
        raise ServiceConfigError("resolver.zones: required, a table of zone -> [authoritative server addresses]")
    out: dict[str, list[str]] = {}
    for zone, servers in zones.items():
        if not isinstance(zone, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+\.?", zone) or zone.strip(".") == "":
            raise ServiceConfigError(f"resolver.zones: bad zone name {zone!r}")
        if isinstance(servers, str):
            servers = [servers]
        if not isinstance(servers, (list, tuple)) or not servers:
            raise ServiceConfigError(f"resolver.zones[{zone!r}]: expected a non-empty list of server addresses")
        addrs = []
        for a in servers:
            host, _, port = str(a).rpartition("@") if "@" in str(a) else (str(a), "", "")
            try:
                addrs.append(str(ipaddress.ip_address(host)) + (f"@{int(port)}" if port else ""))
            except ValueError:
                raise ServiceConfigError(f"resolver.zones[{zone!r}]: {a!r} is not an IP address[@port]") from None
        out[zone.rstrip(".").lower() + "."] = addrs
    return out


def _start_resolver(netns: str, name: str, d: Path, options: Mapping[str, Any]) -> ServiceHandle:
    """Unbound as the lab's recursive resolver.

    Stub zones (not forward zones) because the servers behind them are
    authoritative and must be asked without recursion, as a resolver on the
    Internet asks them.  Every name outside those zones falls into a static
    root zone, so nothing is ever sent towards the Internet's root servers.
    """
    port = _port(options, "port", 53, "resolver")
    addrs = _addresses(netns, options, "resolver")
    zones = _resolver_zones(options)
    allow = options.get("allow", [])
    if not isinstance(allow, (list, tuple)):
        raise ServiceConfigError("resolver.allow: expected a list of client prefixes")
    acl = ["127.0.0.0/8", "::1/128"]
    for p in allow:
        try:
            acl.append(str(ipaddress.ip_network(p, strict=False)))
        except ValueError:
            raise ServiceConfigError(f"resolver.allow: {p!r} is not a prefix") from None
    conf = [
        "server:",
        *(f"    interface: {a}@{port}" for a in addrs),
        "    ip-freebind: yes",
        "    do-daemonize: no",
        "    use-systemd: no",
        '    username: ""',  # stay root: the state dir is private to root
        '    chroot: ""',
        f'    directory: "{d}"',
        f'    pidfile: "{d}/unbound.pid"',
        '    logfile: ""',  # stderr, i.e. service.log
        "    use-syslog: no",
        "    log-time-ascii: yes",
        "    verbosity: 1",
        "    num-threads: 1",
        "    so-reuseport: no",
        "    outgoing-range: 256",
        '    module-config: "iterator"',  # the lab's zones are unsigned; no trust anchor
        "    do-not-query-localhost: no",  # an authoritative server may listen on loopback
        "    unblock-lan-zones: yes",  # lab reverse zones (10.in-addr.arpa …) are real here
        "    insecure-lan-zones: yes",
        "    hide-identity: yes",
        "    hide-version: yes",
        "    access-control: 0.0.0.0/0 refuse",
        "    access-control: ::/0 refuse",
        *(f"    access-control: {p} allow" for p in acl),
        '    local-zone: "." static',  # no root hints in use: outside the lab, NXDOMAIN
        *(f'    local-zone: "{z}" transparent' for z in zones),
    ]
    for z, servers in zones.items():
        conf += ["stub-zone:", f'    name: "{z}"', *(f"    stub-addr: {a}" for a in servers)]
    conf += ["remote-control:", "    control-enable: no"]
    conf_path = d / "unbound.conf"
    conf_path.write_text("\n".join(conf) + "\n")
    chk = subprocess.run(["unbound-checkconf", str(conf_path)], capture_output=True, text=True)
    if chk.returncode != 0:
        raise ServiceConfigError(f"resolver: generated unbound.conf rejected: {(chk.stderr or chk.stdout).strip()}")
    proc = _launch("resolver", name, netns, d, ["unbound", "-d", "-c", str(conf_path)])
    h = ServiceHandle("resolver", name, netns, d, _public_first(addrs), {"dns": port},
                      {"zones": dict(zones), "config": str(conf_path), "allow": acl}, proc)
    first = next(iter(zones))
    # through the stub zone to its authoritative server: ready means resolving
    _wait_ready(h, lambda: _dns_answers(netns, h.addresses[0], port, first, 0.2))
    return h


def _dns_answers(netns: str, addr: str, port: int, zone: str, timeout: float) -> bool:
    """True once ``addr`` answers the SOA of ``zone`` with data (asked from inside ``netns``)."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rdatatype

    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with netns_socket(netns, fam, socket.SOCK_DGRAM) as s:
        s.setblocking(False)  # dnspython's timeout only works on non-blocking sockets
        q = dns.message.make_query(zone, dns.rdatatype.SOA)
        try:
            r = dns.query.udp(q, addr, timeout=timeout, port=port, sock=s)
        except dns.exception.Timeout:
            return False
        return r.rcode() == 0 and bool(r.answer)


# ---------------------------------------------------------------- http/https

_URL_PATH_RE = re.compile(r"^/[A-Za-z0-9._~/-]*$")


def _start_web(kind: str, netns: str, name: str, d: Path, options: Mapping[str, Any],
               state_dir: Path) -> ServiceHandle:
    tls = kind == "https"
    port = _port(options, "port", 443 if tls else 80, kind)
    addrs = _addresses(netns, options, kind)
    hostnames = options.get("hostnames", [])
    if isinstance(hostnames, str):
        hostnames = [hostnames]
    if not isinstance(hostnames, (list, tuple)) or not all(isinstance(x, str) for x in hostnames):
        raise ServiceConfigError(f"{kind}.hostnames: expected a list of host names")
    served_by = _opt(options, "served_by", str, hostnames[0] if hostnames else netns, kind)

    www = d / "www"
    api = d / "api"
    for sub in (www, api, d / "tmp"):
        sub.mkdir(exist_ok=True)
    files = options.get("files", {"index.html": f"<!doctype html><title>{served_by}</title><p>marionet lab: {served_by}</p>\n"})
    if not isinstance(files, Mapping):
        raise ServiceConfigError(f"{kind}.files: expected a table of path -> content")
    for rel, content in files.items():
        p = Path(str(rel).lstrip("/"))
        if ".." in p.parts or not str(p) or p.is_absolute():
            raise ServiceConfigError(f"{kind}.files: bad path {rel!r}")
        target = www / p
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        elif isinstance(content, str):
            target.write_text(content)
        elif isinstance(content, int) and not isinstance(content, bool) and content >= 0:
            target.write_bytes(os.urandom(content))  # a sized random object
        else:
            raise ServiceConfigError(f"{kind}.files[{rel!r}]: expected text, bytes or a size in bytes")

    routes: dict[str, Any] = {}
    servers = options.get("servers")
    if servers is not None:
        if not isinstance(servers, (list, tuple)):
            raise ServiceConfigError(f"{kind}.servers: expected a list of server host names")
        routes["/api/servers"] = {"served_by": served_by, "servers": list(servers)}
    extra = options.get("api", {})
    if not isinstance(extra, Mapping):
        raise ServiceConfigError(f"{kind}.api: expected a table of URL path -> JSON value")
    routes.update(extra)
    locations = []
    for i, (path, value) in enumerate(routes.items()):
        if not isinstance(path, str) or not _URL_PATH_RE.match(path):
            raise ServiceConfigError(f"{kind}.api: bad URL path {path!r}")
        f = api / f"route{i}.json"
        try:
            f.write_text(json.dumps(value, indent=1) + "\n")
        except TypeError as e:
            raise ServiceConfigError(f"{kind}.api[{path!r}]: not JSON-serialisable: {e}") from None
        locations.append(f"        location = {path} {{ default_type application/json; alias {f}; }}\n")

    has_v6 = any(":" in a for a in netns_addresses(netns))
    ssl = " ssl" if tls else ""
    listen = f"        listen {port}{ssl};\n" + (f"        listen [::]:{port}{ssl};\n" if has_v6 else "")
    tls_conf = ""
    if tls:
        from .labca import LabCA

        ca_dir = Path(options.get("ca_dir", state_dir / "ca"))
        ca = LabCA.load_or_create(ca_dir)
        cert, key = ca.issue_server_cert(list(hostnames), [a for a in addrs], d, stem="server")
        tls_conf = (
            f"        ssl_certificate {cert};\n"
            f"        ssl_certificate_key {key};\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;\n"
        )
    server_names = " ".join(hostnames) if hostnames else "_"
    conf = f"""# generated by marionet.lab.services; nginx runs in the foreground
# as root (workers too) because the state dir is private to root.
daemon off;
master_process on;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 1024; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    types {{ text/html html htm; text/plain txt; application/json json; text/css css;
            application/javascript js; image/png png; application/octet-stream bin; }}
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 30;
    server_tokens off;
    server {{
{listen}        server_name {server_names};
        root {www};
        index index.html;
        add_header X-Served-By {served_by} always;
{tls_conf}{''.join(locations)}    }}
}}
"""
    conf_path = d / "nginx.conf"
    conf_path.write_text(conf)
    chk = subprocess.run(["nginx", "-t", "-q", "-p", str(d), "-c", str(conf_path), "-e", str(d / "error.log")],
                         capture_output=True, text=True)
    if chk.returncode != 0:
        raise ServiceConfigError(f"{kind}: generated nginx.conf rejected: {chk.stderr.strip()}")
    proc = _launch(kind, name, netns, d, ["nginx", "-p", str(d), "-c", str(conf_path), "-e", str(d / "error.log")])
    info: dict[str, Any] = {"root": str(www), "config": str(conf_path), "hostnames": list(hostnames),
                            "api": sorted(routes)}
    if tls:
        info["ca"] = str(ca.root_path)
        info["cert"] = str(cert)
    h = ServiceHandle(kind, name, netns, d, _public_first(addrs), {kind: port}, info, proc)
    _wait_ready(h, lambda: _tcp_answers(netns, h.addresses[0], port))
    return h


# ----------------------------------------------------------------------- bulk


def _start_bulk(netns: str, name: str, d: Path, options: Mapping[str, Any]) -> ServiceHandle:
    impl = _opt(options, "impl", str, "simple", "bulk")
    addrs = _public_first(_addresses(netns, options, "bulk"))
    if impl == "iperf3":
        port = _port(options, "port", 5201, "bulk")
        if shutil.which("iperf3") is None:
            raise ServiceStartError("bulk.impl=iperf3: iperf3 is not installed (apt-get install -y iperf3)")
        # Foreground (no -D) so the pid we hold is the server's.
        proc = _launch("bulk", name, netns, d, ["iperf3", "-s", "-p", str(port), "--forceflush"])
        h = ServiceHandle("bulk", name, netns, d, addrs, {"iperf3": port}, {"impl": "iperf3"}, proc)
        _wait_ready(h, lambda: _tcp_answers(netns, addrs[0], port))
        return h
    if impl != "simple":
        raise ServiceConfigError(f"bulk.impl: {impl!r} is not 'simple' or 'iperf3'")
    cfg = {
        "source_port": _port(options, "source_port", 5002, "bulk"),
        "sink_port": _port(options, "sink_port", 5001, "bulk"),
        "size": _opt(options, "size", int, 25 << 20, "bulk"),
        "mark": _opt(options, "mark", int, 1 << 20, "bulk"),
        "log": str(d / "transfers.jsonl"),
    }
    if cfg["source_port"] == cfg["sink_port"]:
        raise ServiceConfigError("bulk.sink_port: must differ from bulk.source_port")
    if cfg["size"] < 0 or cfg["mark"] < 0:
        raise ServiceConfigError("bulk.size/bulk.mark: must be non-negative")
    return _start_python_server("bulk", netns, name, d, cfg, addrs,
                                {"source": cfg["source_port"], "sink": cfg["sink_port"]},
                                {"impl": "simple", "size": cfg["size"], "mark": cfg["mark"]})


def _start_udpecho(netns: str, name: str, d: Path, options: Mapping[str, Any]) -> ServiceHandle:
    port = _port(options, "port", 7, "udpecho")
    addrs = _public_first(_addresses(netns, options, "udpecho"))
    cfg = {"port": port}
    h = _start_python_server("udpecho", netns, name, d, cfg, addrs, {"udpecho": port}, {"trailer": "!QQ rx_ns tx_ns"},
                             ready=False)

    def ready() -> bool:
        a = addrs[0]
        fam = socket.AF_INET6 if ":" in a else socket.AF_INET
        with netns_socket(netns, fam, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            s.sendto(b"ready?", (a, port))
            try:
                data = s.recv(2048)
            except (TimeoutError, ConnectionRefusedError):
                return False
            return data.startswith(b"ready?")

    _wait_ready(h, ready)
    return h


def _start_throughput(netns: str, name: str, d: Path, options: Mapping[str, Any]) -> ServiceHandle:
    """The MNTPUT1 server, same interpreter (and PYTHONPATH) as the lab, ready once it listens."""
    from marionet.measure.throughput_proto import DEFAULT_PORT

    port = _port(options, "port", DEFAULT_PORT, "throughput")
    max_clients = _opt(options, "max_clients", int, 64, "throughput")
    if max_clients < 1:
        raise ServiceConfigError(f"throughput.max_clients: must be >= 1, got {max_clients}")
    given = options.get("addresses")
    addrs = _public_first(_addresses(netns, options, "throughput"))
    listen = [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addrs] if given is not None else [str(port)]
    ready = d / "ready"
    ready.unlink(missing_ok=True)
    cmd = [sys.executable, "-u", "-m", "marionet.measure.throughput_server", "--max-clients", str(max_clients),
           "--ready-file", str(ready), "--transfers", str(d / "transfers.jsonl")]
    for item in listen:
        cmd += ["--listen", item]
    proc = _launch("throughput", name, netns, d, cmd)
    h = ServiceHandle("throughput", name, netns, d, addrs, {"throughput": port},
                      {"protocol": "MNTPUT1", "max_clients": max_clients}, proc)
    _wait_ready(h, ready.exists)
    return h


def _start_python_server(kind: str, netns: str, name: str, d: Path, cfg: dict[str, Any], addrs: list[str],
                         ports: dict[str, int], info: dict[str, Any], ready: bool = True) -> ServiceHandle:
    cfg_path = d / f"{kind}.json"
    (d / "ready").unlink(missing_ok=True)
    cfg_path.write_text(json.dumps({**cfg, "ready": str(d / "ready")}))
    proc = _launch(kind, name, netns, d, [sys.executable, "-u", "-m", "marionet.lab.services", "serve", kind,
                                          str(cfg_path)])
    h = ServiceHandle(kind, name, netns, d, addrs, ports, info, proc)
    if ready:
        # The server writes this file once it listens; probing the ports
        # instead would leave empty transfers in its log.
        _wait_ready(h, (d / "ready").exists)
    return h


# --------------------------------------------------------------- aliasrouter


def _start_aliasrouter(netns: str, name: str, d: Path, options: Mapping[str, Any]) -> ServiceHandle:
    from . import aliasrouter

    raw = options.get("config")
    if raw is None:
        raise ServiceConfigError("aliasrouter.config: required (a path or a table with [[router]] entries)")
    cfg = aliasrouter.load_config(raw)
    cfg_path = d / "aliasrouter.json"
    cfg_path.write_text(json.dumps(aliasrouter.config_to_dict(cfg)))
    ready_path, stats_path = d / "ready", d / "stats.json"
    ready_path.unlink(missing_ok=True)
    proc = _launch("aliasrouter", name, netns, d, [sys.executable, "-u", "-m", "marionet.lab.aliasrouter",
                                                   "--config", str(cfg_path), "--ready-file", str(ready_path),
                                                   "--stats", str(stats_path)])
    addrs = [a for r in cfg.routers for a in r.addresses]
    h = ServiceHandle("aliasrouter", name, netns, d, addrs, {}, {
        "stats": str(stats_path), "tun": cfg.tun, "alias_sets": [sorted(s) for s in aliasrouter.alias_sets(cfg)]},
        proc)
    _wait_ready(h, ready_path.exists)
    return h


# ---------------------------------------------------------------------- entry


def start_service(kind: str, netns: str, options: Mapping[str, Any] | None = None, *,
                  state_dir: str | os.PathLike[str] | None = None) -> ServiceHandle:
    """Start a ``kind`` server in namespace ``netns`` and wait until it answers.

    ``state_dir`` is the lab's state directory (or ``options["state_dir"]``);
    the service works in ``<state_dir>/<name>`` where ``name`` is
    ``options["name"]`` (default: ``<netns>-<kind>``). Raises
    :class:`ServiceConfigError` for bad options (the message names the field)
    and :class:`ServiceStartError` when the server does not come up.
    """
    options = dict(options or {})
    if kind not in KINDS:
        raise ServiceConfigError(f"kind: {kind!r} is not one of {', '.join(KINDS)}")
    sd = state_dir if state_dir is not None else options.pop("state_dir", None)
    if sd is None:
        raise ServiceConfigError("state_dir: required (the lab's state directory)")
    options.pop("state_dir", None)
    _netns_file(netns)
    name = _opt(options, "name", str, f"{netns}-{kind}", kind)
    if not _NAME_RE.match(name):
        raise ServiceConfigError(f"{kind}.name: {name!r} is not a plain file name")
    state = Path(sd).resolve()
    d = state / name
    rec = d / "service.json"
    if rec.exists():
        raise ServiceStartError(f"{kind}.name: a service {name!r} is already recorded in {d}; stop it first")
    d.mkdir(parents=True, exist_ok=True)
    if kind == "dns":
        return _start_dns(netns, name, d, options)
    if kind in ("http", "https"):
        return _start_web(kind, netns, name, d, options, state)
    if kind == "bulk":
        return _start_bulk(netns, name, d, options)
    if kind == "udpecho":
        return _start_udpecho(netns, name, d, options)
    if kind == "throughput":
        return _start_throughput(netns, name, d, options)
    if kind == "resolver":
        return _start_resolver(netns, name, d, options)
    if kind in ("ntp", "snmp"):
        from .udpservices import start_ntp, start_snmp
        return (start_ntp if kind == "ntp" else start_snmp)(netns, name, d, options)
    return _start_aliasrouter(netns, name, d, options)


# ============================================== servers run inside namespaces


def _log_line(path: str, lock: threading.Lock, rec: dict[str, Any]) -> None:
    with lock, open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def _tcp_listeners(port: int) -> list[socket.socket]:
    """Wildcard listeners, v4 and (if the namespace has IPv6) v6.

    TCP replies always come from the connected address, so a wildcard is
    safe here (unlike UDP).
    """
    socks = []
    for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            s = socket.socket(fam, socket.SOCK_STREAM)
        except OSError:
            continue
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            s.bind((addr, port))
        except OSError:
            s.close()
            if fam == socket.AF_INET:
                raise
            continue
        s.listen(128)
        socks.append(s)
    return socks


def _serve_bulk(cfg: Mapping[str, Any]) -> None:
    """Simple bulk server: a random-byte source and a discarding sink.

    The source sends ``size`` bytes then half-closes, so the client sees EOF
    exactly at the end of the data. The sink reads to EOF, recording (like
    the PAM'25 method) the time and byte count once ``mark`` bytes have
    arrived and the time of the last byte, and answers with that record as
    one JSON line so a remote client learns the receiver's view.
    """
    size, mark, log = int(cfg["size"]), int(cfg["mark"]), str(cfg["log"])
    block = os.urandom(1 << 20)
    lock = threading.Lock()

    def source(conn: socket.socket, peer: Any) -> None:
        t0 = time.time_ns()
        sent = 0
        mv = memoryview(block)
        try:
            while sent < size:
                n = min(len(block), size - sent)
                conn.sendall(mv[:n])
                sent += n
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(30)
            while conn.recv(65536):
                pass
        except OSError:
            pass
        finally:
            conn.close()
        _log_line(log, lock, {"role": "source", "peer": list(peer[:2]), "bytes": sent, "t_start_ns": t0,
                              "t_end_ns": time.time_ns(), "complete": sent == size})

    def sink(conn: socket.socket, peer: Any) -> None:
        buf = bytearray(1 << 18)
        total = 0
        t_accept = time.time_ns()
        t_first = t_mark = None
        b_mark = 0
        try:
            while True:
                n = conn.recv_into(buf)
                if n == 0:
                    break
                now = time.time_ns()
                if t_first is None:
                    t_first = now
                total += n
                if t_mark is None and total >= mark:
                    t_mark, b_mark = now, total
            t_last = time.time_ns()
            rec = {"role": "sink", "peer": list(peer[:2]), "bytes": total, "t_accept_ns": t_accept,
                   "t_first_ns": t_first, "t_mark_ns": t_mark, "bytes_at_mark": b_mark, "t_last_ns": t_last}
            try:
                conn.sendall((json.dumps(rec) + "\n").encode())
            except OSError:
                pass
        except OSError as e:
            rec = {"role": "sink", "peer": list(peer[:2]), "bytes": total, "error": str(e)}
        finally:
            conn.close()
        _log_line(log, lock, rec)

    sel = selectors.DefaultSelector()
    for s in _tcp_listeners(int(cfg["source_port"])):
        sel.register(s, selectors.EVENT_READ, source)
    for s in _tcp_listeners(int(cfg["sink_port"])):
        sel.register(s, selectors.EVENT_READ, sink)
    Path(cfg["ready"]).touch()
    while True:
        for key, _ in sel.select():
            lsock: socket.socket = key.fileobj  # type: ignore[assignment]
            try:
                conn, peer = lsock.accept()
            except OSError:
                continue
            threading.Thread(target=key.data, args=(conn, peer), daemon=True).start()


def _serve_udpecho(cfg: Mapping[str, Any]) -> None:
    """UDP echo with timestamps: reply = payload + rx_ns + tx_ns (``!QQ``).

    rx is the kernel receive stamp (SO_TIMESTAMPNS); tx is read just before
    ``sendmsg`` (it has to be inside the packet, so it cannot be the kernel's
    transmit stamp). Replies leave from the address the request was sent to
    (IP_PKTINFO), which a wildcard socket would otherwise not guarantee.
    """
    port = int(cfg["port"])
    socks: list[socket.socket] = []
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s4.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
    s4.bind(("0.0.0.0", port))
    socks.append(s4)
    try:
        s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        s6.bind(("::", port))
        socks.append(s6)
    except OSError:
        pass
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    cmsg_space = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(20)
    while True:
        for key, _ in sel.select():
            s: socket.socket = key.fileobj  # type: ignore[no-redef]
            try:
                data, anc, _flags, peer = s.recvmsg(65535, cmsg_space)
            except OSError:
                continue
            rx = 0
            out_anc = []
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == _SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", cdata[:16])
                    rx = sec * 1_000_000_000 + nsec
                elif level == socket.IPPROTO_IP and typ == _IP_PKTINFO:
                    _ifindex, _spec, dst = struct.unpack("I4s4s", cdata[:12])
                    out_anc.append((socket.IPPROTO_IP, _IP_PKTINFO, struct.pack("I4s4s", 0, dst, b"\0" * 4)))
                elif level == socket.IPPROTO_IPV6 and typ == socket.IPV6_PKTINFO:
                    dst6, _ifindex = struct.unpack("16sI", cdata[:20])
                    out_anc.append((socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, struct.pack("16sI", dst6, 0)))
            if rx == 0:
                rx = time.time_ns()
            try:
                s.sendmsg([data, UDPECHO_TRAILER.pack(rx, time.time_ns())], out_anc, 0, peer)
            except OSError:
                pass


def parse_udpecho_reply(reply: bytes) -> tuple[bytes, int, int]:
    """Split a udpecho reply into ``(payload, rx_ns, tx_ns)``."""
    if len(reply) < UDPECHO_TRAILER.size:
        raise ValueError(f"udpecho reply of {len(reply)} bytes is shorter than its {UDPECHO_TRAILER.size}-byte trailer")
    rx, tx = UDPECHO_TRAILER.unpack(reply[-UDPECHO_TRAILER.size:])
    return reply[: -UDPECHO_TRAILER.size], rx, tx


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m marionet.lab.services serve KIND CONFIG`` (run inside a namespace)."""
    ap = argparse.ArgumentParser(prog="python -m marionet.lab.services")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("serve", help="run a Python lab server in the foreground")
    sp.add_argument("kind", choices=["bulk", "udpecho"])
    sp.add_argument("config", help="JSON config written by start_service")
    args = ap.parse_args(argv)
    cfg = json.loads(Path(args.config).read_text())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if args.kind == "bulk":
            _serve_bulk(cfg)
        else:
            _serve_udpecho(cfg)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
