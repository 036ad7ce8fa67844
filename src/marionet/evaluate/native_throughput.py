"""The native throughput client: the PAM'25 method on plain blocking sockets.

This is the baseline marionet's placements are compared against, so it is as
plain as a client can be: one TCP socket in this process, the MNTPUT1
protocol (``marionet.measure.throughput_proto``), and the receiver's kernel
timestamps — its own (``SO_TIMESTAMPNS``) for downloads, the server's report
for uploads. Run it inside a VP's namespace with
``lab.exec(vp, [sys.executable, "-m", "marionet.evaluate.native_throughput",
HOST, PORT, DIR, SIZE, SKIP])``; it prints one JSON line.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from collections.abc import Sequence
from typing import Any

from marionet.measure.throughput_proto import (
    DEFAULT_PORT,
    MAX_LINE,
    MAX_REPORT,
    ProtocolError,
    Request,
    format_request,
    parse_report,
    throughput_bps,
)

__all__ = ["run", "main", "SAMPLE_INTERVAL_NS"]

SO_TIMESTAMPNS = 35
_STAMP_CMSG = socket.CMSG_SPACE(16)
SAMPLE_INTERVAL_NS = 10_000_000
_RECV_BUF = 1 << 20
_CHUNK = 256 << 10


def _stamp(anc: Sequence[tuple[int, int, bytes]]) -> int | None:
    for level, typ, data in anc:
        if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            return sec * 1_000_000_000 + nsec
    return None


def run(host: str, port: int = DEFAULT_PORT, direction: str = "download", size: int = 25 << 20,
        skip: int = 1 << 20, timeout: float = 60.0) -> dict[str, Any]:
    """One transfer; the receiver's figures as a dict.

    Keys: ``direction, size, skip, bytes, b, t0_ns, t1_ns, bps, samples``
    (``[[kernel rx ns, cumulative bytes], ...]``, at most one per 10 ms plus
    first and last), ``ts_source`` and ``error`` (``None`` on success; on
    failure ``bps`` is ``None`` and the other figures are what was measured).
    ``timeout`` bounds the whole transfer. Bad arguments raise ValueError.
    """
    req = Request(direction, size, skip)            # ProtocolError (a ValueError) on bad input
    out: dict[str, Any] = {"direction": direction, "size": size, "skip": skip, "bytes": 0, "b": 0, "t0_ns": 0,
                           "t1_ns": 0, "bps": None, "samples": [], "ts_source": "kernel", "error": None}
    deadline = time.monotonic() + timeout
    try:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            s.connect((host, port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if direction == "download":
                s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                s.sendall(format_request(req))
                _download(s, req, out, deadline)
            else:
                _upload(s, req, out, deadline)
    except TimeoutError:
        out["error"] = f"timeout: transfer not done within {timeout:g} s (got {out['bytes']} of {size} bytes)"
    except ProtocolError as e:
        out["error"] = str(e)
    except OSError as e:
        out["error"] = f"connection: {e.strerror or e}"
    if out["error"] is None:
        try:
            out["bps"] = throughput_bps(size, out["b"], out["t0_ns"], out["t1_ns"])
        except ValueError as e:
            out["error"] = str(e)
    return out


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError()
    return left


def _download(s: socket.socket, req: Request, out: dict[str, Any], deadline: float) -> None:
    buf = memoryview(bytearray(_RECV_BUF))
    size, skip = req.size, req.skip
    total = 0
    head = bytearray()                   # the first bytes, in case they are an ERR line
    samples: list[list[int]] = []
    seen_skip = False
    t1 = 0
    while True:
        s.settimeout(_left(deadline))
        n, anc, _flags, _addr = s.recvmsg_into([buf], _STAMP_CMSG)
        if n == 0:
            break
        st = _stamp(anc)
        if st is None:
            st, out["ts_source"] = time.time_ns(), "user"
        if len(head) < MAX_LINE:
            head += buf[:min(n, MAX_LINE - len(head))]
        total += n
        if not seen_skip and total >= skip:
            seen_skip, out["b"], out["t0_ns"] = True, total, st
        if not samples or st - samples[-1][0] >= SAMPLE_INTERVAL_NS:
            samples.append([st, total])
        t1 = st
        if total >= size:
            break
    out["bytes"] = total
    if total and (not samples or samples[-1] != [t1, total]):
        if samples and samples[-1][0] >= t1:
            samples[-1] = [t1, total]
        else:
            samples.append([t1, total])
    out["samples"], out["t1_ns"] = samples, t1
    if total < size:
        if head.startswith(b"ERR") and b"\n" in head:
            out["error"] = "server: " + head[3:head.index(b"\n")].decode("utf-8", "replace").strip()
        else:
            out["error"] = f"short download: connection closed after {total} of {size} bytes"
        return
    # The server sends FIN right after the data; anything more is a protocol error.
    s.settimeout(min(2.0, _left(deadline)))
    try:
        extra = s.recv(65536)
    except TimeoutError:
        extra = b""
    if extra:
        out["error"] = f"server sent more than size {size} bytes"


def _upload(s: socket.socket, req: Request, out: dict[str, Any], deadline: float) -> None:
    s.settimeout(_left(deadline))
    s.sendall(format_request(req))
    from marionet.measure.throughput_server import payload_chunks

    try:
        for chunk in payload_chunks(req.size, _CHUNK):
            s.settimeout(_left(deadline))
            s.sendall(chunk)
        s.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError) as e:
        # The server gave up (ERR, or a reset); its answer, if any, says why.
        reply = _read_reply(s, deadline, tolerate_reset=True)
        if reply:
            _take_report(reply, out)
            if out["error"] is None:
                out["error"] = f"connection: {e.strerror or e} while sending"
            return
        raise
    _take_report(_read_reply(s, deadline), out)


def _read_reply(s: socket.socket, deadline: float, tolerate_reset: bool = False) -> bytes:
    data = bytearray()
    while len(data) <= MAX_REPORT:
        try:
            s.settimeout(_left(deadline))
            d = s.recv(65536)
        except ConnectionResetError:
            if tolerate_reset:
                break
            raise
        if not d:
            break
        data += d
        if data.endswith(b"\n"):
            break
    if len(data) > MAX_REPORT:
        raise ProtocolError(f"server report longer than {MAX_REPORT} bytes")
    return bytes(data)


def _take_report(reply: bytes, out: dict[str, Any]) -> None:
    if not reply:
        raise ProtocolError("server closed without a report")
    rep = parse_report(reply.rstrip(b"\n"))       # ProtocolError for ERR lines and bad JSON
    out.update(bytes=rep.bytes, b=rep.b, t0_ns=rep.t0_ns, t1_ns=rep.t1_ns,
               samples=[list(x) for x in rep.samples], ts_source=rep.ts_source)
    if not rep.ok:
        out["error"] = "server: " + (rep.error or "upload failed")
    elif rep.bytes != out["size"]:
        out["error"] = f"server received {rep.bytes} of {out['size']} bytes"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m marionet.evaluate.native_throughput HOST PORT DIR SIZE SKIP [TIMEOUT]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (5, 6):
        print("usage: python -m marionet.evaluate.native_throughput HOST PORT download|upload SIZE SKIP [TIMEOUT]",
              file=sys.stderr)
        return 2
    try:
        host, port, direction = args[0], int(args[1]), args[2]
        size, skip = int(args[3]), int(args[4])
        timeout = float(args[5]) if len(args) == 6 else 60.0
        res = run(host, port, direction, size, skip, timeout)
    except ValueError as e:
        print(f"native_throughput: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res, separators=(",", ":")), flush=True)
    return 0 if res["error"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
