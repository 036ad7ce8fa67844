"""NTP and SNMP lab services, and the wire formats their clients speak.

Why real daemons: a UDP request/response primitive (``udpprobe``) is only
tested if something other than our own code answers it.  chronyd and snmpd
are what such probes meet on the Internet, and both start in a namespace
with a config that lives entirely in the service's state directory:

* ``ntp``: ``chronyd -x -d`` with ``local stratum N`` serves its (the
  machine's) clock to any client of the lab; ``-x`` means it never adjusts
  the system clock, which the namespace shares with the whole machine.
  ``cmdport 0`` and ``bindcmdaddress /`` keep it off the machine's chronyc
  socket; its pid file is its own.
* ``snmp``: ``snmpd -f -C -c CONF`` reads no system config (``-C``), answers
  SNMPv1/v2c GETs for one read-only community, with sysDescr/sysName/
  sysLocation/sysContact the lab sets; ``MIBS=`` and a private persistent
  dir keep it from touching /var/lib/snmp or complaining about MIB files.

The packet helpers (``ntp_request``/``parse_ntp``, ``snmp_get``/
``parse_snmp``) are small and exact on purpose: tests use them to build
probes by hand and check what the daemons answered, and the readiness checks
here use the same code.
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["start_ntp", "start_snmp", "ntp_request", "parse_ntp", "NtpReply", "NTP_EPOCH_OFFSET",
           "snmp_get", "parse_snmp", "SnmpReply", "SYS_DESCR", "SYS_NAME", "SYS_LOCATION", "SYS_CONTACT"]

#: seconds from the NTP epoch (1900) to the Unix epoch (1970)
NTP_EPOCH_OFFSET = 2_208_988_800

SYS_DESCR = "1.3.6.1.2.1.1.1.0"
SYS_NAME = "1.3.6.1.2.1.1.5.0"
SYS_CONTACT = "1.3.6.1.2.1.1.4.0"
SYS_LOCATION = "1.3.6.1.2.1.1.6.0"


# ------------------------------------------------------------------ NTP wire

def _ntp_ts(ns: int) -> bytes:
    sec, rem = divmod(ns, 1_000_000_000)
    return struct.pack("!II", (sec + NTP_EPOCH_OFFSET) & 0xFFFFFFFF, (rem << 32) // 1_000_000_000)


def _ntp_ns(raw: bytes) -> int:
    sec, frac = struct.unpack("!II", raw)
    return (sec - NTP_EPOCH_OFFSET) * 1_000_000_000 + ((frac * 1_000_000_000) >> 32)


def ntp_request(now_ns: int | None = None) -> bytes:
    """A 48-byte NTPv4 client (mode 3) packet whose transmit timestamp is
    ``now_ns``: the server copies it into the reply's origin field."""
    return bytes([0x23]) + bytes(39) + _ntp_ts(time.time_ns() if now_ns is None else now_ns)


@dataclass(frozen=True)
class NtpReply:
    leap: int
    version: int
    mode: int
    stratum: int
    origin_ns: int
    receive_ns: int
    transmit_ns: int
    origin_raw: bytes


def parse_ntp(data: bytes) -> NtpReply:
    """The header fields of an NTP packet (``ValueError`` if shorter than 48 bytes)."""
    if len(data) < 48:
        raise ValueError(f"an NTP packet has at least 48 bytes, got {len(data)}")
    b0 = data[0]
    return NtpReply(leap=b0 >> 6, version=(b0 >> 3) & 7, mode=b0 & 7, stratum=data[1],
                    origin_ns=_ntp_ns(data[24:32]), receive_ns=_ntp_ns(data[32:40]),
                    transmit_ns=_ntp_ns(data[40:48]), origin_raw=data[24:32])


# ----------------------------------------------------------------- SNMP wire

def _ber_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _ber_len(len(body)) + body


def _ber_int(v: int) -> bytes:
    return _tlv(0x02, v.to_bytes(max(1, (v.bit_length() + 8) // 8), "big", signed=True))


def _ber_oid(oid: str) -> bytes:
    parts = [int(x) for x in oid.strip(".").split(".")]
    if len(parts) < 2 or parts[0] > 2:
        raise ValueError(f"bad OID {oid!r}")
    out = bytearray([parts[0] * 40 + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def snmp_get(oids: Sequence[str], community: str = "public", request_id: int = 1, version: int = 1) -> bytes:
    """An SNMP GetRequest (``version`` 0 = v1, 1 = v2c) for ``oids``."""
    binds = b"".join(_tlv(0x30, _ber_oid(o) + b"\x05\x00") for o in oids)
    pdu = _tlv(0xA0, _ber_int(request_id) + _ber_int(0) + _ber_int(0) + _tlv(0x30, binds))
    return _tlv(0x30, _ber_int(version) + _tlv(0x04, community.encode()) + pdu)


def _read_tlv(buf: bytes, off: int) -> tuple[int, bytes, int]:
    if off + 2 > len(buf):
        raise ValueError("BER: truncated")
    tag, n = buf[off], buf[off + 1]
    off += 2
    if n & 0x80:
        k = n & 0x7F
        if k == 0 or k > 4 or off + k > len(buf):
            raise ValueError("BER: bad length")
        n = int.from_bytes(buf[off:off + k], "big")
        off += k
    if off + n > len(buf):
        raise ValueError("BER: value runs past the end")
    return tag, buf[off:off + n], off + n


def _oid_text(raw: bytes) -> str:
    if not raw:
        raise ValueError("BER: empty OID")
    parts = [min(raw[0] // 40, 2), raw[0] - 40 * min(raw[0] // 40, 2)]
    v = 0
    for b in raw[1:]:
        v = (v << 7) | (b & 0x7F)
        if not b & 0x80:
            parts.append(v)
            v = 0
    return ".".join(map(str, parts))


@dataclass(frozen=True)
class SnmpReply:
    version: int
    community: str
    pdu_type: int
    request_id: int
    error_status: int
    error_index: int
    varbinds: dict[str, Any]


def parse_snmp(data: bytes) -> SnmpReply:
    """Decode an SNMP v1/v2c message: values are bytes (OCTET STRING), int,
    an OID string, or None (NULL/noSuchObject…); ``ValueError`` if malformed."""
    tag, msg, _ = _read_tlv(data, 0)
    if tag != 0x30:
        raise ValueError("SNMP: not a SEQUENCE")
    t, v, off = _read_tlv(msg, 0)
    version = int.from_bytes(v, "big", signed=True)
    t, comm, off = _read_tlv(msg, off)
    pdu_type, pdu, _ = _read_tlv(msg, off)
    vals = []
    off = 0
    for _ in range(3):
        t, v, off = _read_tlv(pdu, off)
        vals.append(int.from_bytes(v, "big", signed=True))
    t, vbl, _ = _read_tlv(pdu, off)
    binds: dict[str, Any] = {}
    off = 0
    while off < len(vbl):
        t, vb, off = _read_tlv(vbl, off)
        ot, oraw, o2 = _read_tlv(vb, 0)
        vt, vraw, _ = _read_tlv(vb, o2)
        value: Any
        if vt == 0x04:
            value = bytes(vraw)
        elif vt in (0x02, 0x41, 0x42, 0x43, 0x46):
            value = int.from_bytes(vraw, "big", signed=vt == 0x02)
        elif vt == 0x06:
            value = _oid_text(vraw)
        else:
            value = None
        binds[_oid_text(oraw)] = value
    return SnmpReply(version, comm.decode("utf-8", "replace"), pdu_type, vals[0], vals[1], vals[2], binds)


# ------------------------------------------------------------------ services

def _ask(netns: str, addr: str, port: int, payload: bytes, timeout: float = 0.3) -> bytes | None:
    from .services import netns_socket
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with netns_socket(netns, fam, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, (addr, port))
        try:
            return s.recv(4096)
        except (TimeoutError, ConnectionRefusedError):
            return None


def start_ntp(netns: str, name: str, d: Path, options: Mapping[str, Any]) -> Any:
    """chronyd serving its local clock at ``stratum`` (default 8) on ``port``
    (default 123) of the host's addresses."""
    from .services import (ServiceConfigError, ServiceHandle, ServiceStartError, _addresses, _launch, _opt, _port,
                           _public_first, _wait_ready)
    import shutil
    port = _port(options, "port", 123, "ntp")
    stratum = _opt(options, "stratum", int, 8, "ntp")
    if not 1 <= stratum <= 15:
        raise ServiceConfigError(f"ntp.stratum: {stratum} is outside 1..15")
    addrs = _public_first(_addresses(netns, options, "ntp"))
    if shutil.which("chronyd") is None:
        raise ServiceStartError("ntp: chronyd is not installed (apt-get install -y chrony)")
    # chronyd binds one address per family (bindaddress); the wildcard serves
    # them all, and replies leave from the address asked (it uses PKTINFO).
    conf = (f"# generated by marionet.lab.udpservices\nport {port}\ncmdport 0\nbindcmdaddress /\n"
            f"local stratum {stratum}\nallow all\nallow ::/0\npidfile {d}/chronyd.pid\n"
            f"driftfile {d}/chrony.drift\nlogdir {d}\n")
    (d / "chrony.conf").write_text(conf)
    proc = _launch("ntp", name, netns, d, ["chronyd", "-x", "-d", "-u", "root", "-f", str(d / "chrony.conf")])
    h = ServiceHandle("ntp", name, netns, d, addrs, {"ntp": port}, {"stratum": stratum}, proc)

    def ready() -> bool:
        got = _ask(netns, addrs[0], port, ntp_request())
        return got is not None and len(got) >= 48 and got[0] & 7 == 4 and got[1] != 0

    _wait_ready(h, ready)
    return h


def _snmp_text(options: Mapping[str, Any], key: str, default: str) -> str:
    from .services import ServiceConfigError, _opt
    v = _opt(options, key, str, default, "snmp")
    if not v or "\n" in v or "\r" in v or len(v) > 255:
        raise ServiceConfigError(f"snmp.{key}: expected one line of 1..255 characters, got {v!r}")
    return v


def start_snmp(netns: str, name: str, d: Path, options: Mapping[str, Any]) -> Any:
    """snmpd answering community ``community`` (default "public", read-only)
    on ``port`` (default 161) with the given sysDescr/sysName/…"""
    from .services import ServiceConfigError, ServiceHandle, ServiceStartError, _addresses, _launch, _port, _public_first, \
        _wait_ready
    import shutil
    port = _port(options, "port", 161, "snmp")
    addrs = _public_first(_addresses(netns, options, "snmp"))
    host = name[:-len("-snmp")] if name.endswith("-snmp") else netns
    community = _snmp_text(options, "community", "public")
    if any(c.isspace() for c in community):
        raise ServiceConfigError(f"snmp.community: no spaces allowed, got {community!r}")
    info = {"community": community,
            "sysdescr": _snmp_text(options, "sysdescr", f"marionet lab host {host}"),
            "sysname": _snmp_text(options, "sysname", host),
            "syslocation": _snmp_text(options, "syslocation", "marionet lab"),
            "syscontact": _snmp_text(options, "syscontact", "lab@marionet.invalid")}
    if shutil.which("snmpd") is None:
        raise ServiceStartError("snmp: snmpd is not installed (apt-get install -y snmpd)")
    listen = ",".join(f"udp6:[{a}]:{port}" if ipaddress.ip_address(a).version == 6 else f"udp:{a}:{port}"
                      for a in addrs)
    conf = (f"# generated by marionet.lab.udpservices\nagentAddress {listen}\n"
            f"rocommunity {community} default\nrocommunity6 {community} default\n"
            f"sysDescr {info['sysdescr']}\nsysName {info['sysname']}\n"
            f"sysLocation {info['syslocation']}\nsysContact {info['syscontact']}\n"
            "sysServices 72\ndontLogTCPWrappersConnects yes\n")
    (d / "snmpd.conf").write_text(conf)
    (d / "persist").mkdir(exist_ok=True)
    proc = _launch("snmp", name, netns, d, [
        "env", "MIBS=", f"SNMP_PERSISTENT_DIR={d / 'persist'}", f"SNMPCONFPATH={d}",
        "snmpd", "-f", "-C", "-c", str(d / "snmpd.conf"), "-Lo", "-p", str(d / "snmpd.pid"),
        "-I", "-smux,mteTrigger,mteTriggerConf"])
    h = ServiceHandle("snmp", name, netns, d, addrs, {"snmp": port}, info, proc)

    def ready() -> bool:
        rid = random.randrange(1, 1 << 30)
        got = _ask(netns, addrs[0], port, snmp_get([SYS_NAME], community, rid))
        if got is None:
            return False
        try:
            return parse_snmp(got).request_id == rid
        except ValueError:
            return False

    _wait_ready(h, ready)
    return h

