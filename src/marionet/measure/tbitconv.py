"""tbit's TCP conversation, sans-I/O: bytes in, bytes out (see ``marionet.measure.tbit``).

``TbitConversation`` is scamper's ``scamper_tbit_do.c`` state machine in
Python: it builds every segment we send (ISN, options, ECN marks, blinded
fields), reads every segment the server sends, keeps the receive queue,
and classifies with scamper's result codes. It knows nothing of sockets or
clocks — times are ns on the endpoint's clock, given with each event — so
the driver in ``tbit.py`` is the same in every placement and the unit
tests drive it with a scripted server.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from marionet.measure import tcpseg as T
from marionet.measure.params import NS as _NS
from marionet.results.tbit import Tbit, TbitPkt, TbitResult

if TYPE_CHECKING:
    from marionet.measure.tbit import TbitPlan

__all__ = ["TbitConversation", "http_request", "RST_RULE"]

_TIMEOUT_SACK_NS = 2 * _NS  # scamper's TBIT_TIMEOUT_SACK
_TIMEOUT_BLIND_NS = 2 * _NS  # scamper's TBIT_TIMEOUT_BLINDDATA
_HTTP_UA = "Mozilla/5.0 (X11; U; FreeBSD i386; en-US; rv:1.9.1.2) Gecko/20090806 Firefox/3.5.2"
#: what the VP needs so its kernel does not reset our conversation
RST_RULE = "iptables -A OUTPUT -p tcp --tcp-flags RST RST --sport {sport} -j DROP"

R = TbitResult


def http_request(host: str, file: str) -> bytes:
    """scamper's tbit request (``tbit_app_http_req``), byte for byte."""
    return (f"GET {file} HTTP/1.0\r\nHost: {host}\r\nConnection: Keep-Alive\r\nAccept: */*\r\n"
            f"User-Agent: {_HTTP_UA}\r\n\r\n").encode()


@dataclass
class _Tp:
    """A segment to send (scamper's ``tbit_probe_t``), made into bytes at flush."""

    flags: int
    seq: int
    ack: int
    len: int = 0
    wait_ns: int = 0
    sack: tuple[tuple[int, int], ...] = ()


@dataclass
class _State:
    fin_seen: bool = False
    fin_acked: bool = False
    seen_data: bool = False
    rst_seen: bool = False
    nomoredata: bool = False
    tcpts: bool = False
    noreset: bool = False
    # ecn
    ect: bool = False
    ce_set: bool = False
    ce_sent: bool = False
    cwr_set: bool = False
    ece_seen: bool = False
    # sack-rcvr
    sackr_rx: list[int] = field(default_factory=lambda: [0] * 7)
    sackr_x: int = 0
    sackr_incapable: bool = False
    sackr_shifted: bool = False
    sackr_badopt: bool = False
    sackr_timeout: int = 0
    # icw
    icw_seq: int | None = None
    icw_count: int = 0
    icw_tail: int = 0
    # blind-rst / blind-syn
    blind_challenge: bool = False
    blind_fin: bool = False
    blind_rst: bool = False
    blind_c: int = 0  # blinded segments sent
    blind_sent: bool = False  # one sent for the data segment now outstanding
    blind_ignored: int = 0
    blind_silence: bool = False
    blind_accepted: bool = False
    blind_step: int = 0
    blind_part: tuple[int, int, int] = (0, 0, 0)
    blind_ack: int = 0  # blind-fin: our sequence number once the whole request is acknowledged
    # pmtud
    nodf: bool = False
    ptb_quote: bytes = b""
    ptb_c: int = 0


def _after(a: int, b: int) -> bool:
    return T.seq_diff(a, b) > 0


def _in_range(nxt: int, seq: int, ln: int) -> bool:
    """``scamper_tbit_data_inrange``."""
    return ((seq - nxt) & 0xFFFFFFFF) < 65535 or ((seq + ln - 1 - nxt) & 0xFFFFFFFF) < 65535


class TbitConversation:
    """One tbit test's TCP conversation; no I/O.

    ``start(now)`` and every ``received(raw, rx_ns)`` / ``timeout(now)``
    leave the segments to send in ``outbox`` (``take()`` empties it); each
    is recorded in ``pkts`` at once, and the driver replaces its time with
    the kernel's transmit stamp. ``deadline_ns`` is when ``timeout`` is due;
    ``done`` ends the test; ``result()`` builds the ``Tbit``.
    """

    def __init__(self, plan: TbitPlan, src: str, *, start_ns: int, isn: int | None = None,
                 ipid: int | None = None) -> None:
        rnd = random.SystemRandom()
        self.plan = plan
        self.src = src
        self.start_ns = start_ns
        self.pkts: list[TbitPkt] = []
        self.outbox: list[tuple[TbitPkt, bytes]] = []
        self.mode = "syn"
        self.st = _State(noreset=plan.method == "sack-rcvr")
        self.code = R.NONE
        self.error: str | None = None
        self.server_mss = 0
        self.attempt = 0
        self.snd_nxt = isn if isn is not None else rnd.randrange(0, 0x10000)  # 16-bit, as scamper
        self.rcv_nxt = 0
        self.sa_seq = 0
        self.ts_recent = 0
        self.ts_lastack = 0
        self.icw_start_seq = 1
        self.unacked = b""  # our request bytes from snd_nxt on
        self.rxq: list[tuple[int, int, int]] = []  # (seq, len, flags), out-of-order server data
        self.deadline_ns: int | None = None
        self._ipid = ipid if ipid is not None else rnd.randrange(0, 0x10000)
        self._tx: list[_Tp] = []
        self._want_fin = False
        self._last_raw = b""
        self._now = start_ns

    # -- public ---------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.mode == "done"

    def take(self) -> list[tuple[TbitPkt, bytes]]:
        out, self.outbox = self.outbox, []
        return out

    def start(self, now_ns: int) -> None:
        self._now = now_ns
        self._send_syn()

    def received(self, raw: bytes, rx_ns: int, ts_source: str | None = "kernel") -> bool:
        """Handle one captured packet; False if it is not of this conversation."""
        seg = T.parse_segment(raw)
        p = self.plan
        if (seg is None or seg.src != p.dst or seg.dst != self.src or seg.sport != p.dport
                or seg.dport != p.sport):
            return False
        self._now = rx_ns
        self._last_raw = bytes(raw)
        self.pkts.append(TbitPkt("rx", rx_ns, self._last_raw, ts_source))
        if self.mode == "done":
            return True
        if self.mode != "syn":
            if seg.flags & T.TH_RST:
                self._rst(seg)
                self._flush()
                return True
            if not seg.flags & T.TH_ACK:
                return True
        if self.st.tcpts and seg.ts is not None and \
                T.seq_diff(seg.seq, self.ts_lastack) <= 0 < T.seq_diff(seg.seq + seg.datalen, self.ts_lastack):
            self.ts_recent = seg.ts[0]
        {"syn": self._dl_syn, "data": self._dl_data, "fin": self._dl_fin,
         "moredata": self._dl_moredata, "pmtud": self._dl_pmtud, "blind": self._dl_data}[self.mode](seg)
        self._flush()
        return True

    def timeout(self, now_ns: int) -> None:
        """The deadline passed with nothing that moved it."""
        self._now = now_ns
        self.deadline_ns = None
        if self.mode == "syn":
            if self.attempt >= self.plan.syn_retx:
                self._result(R.TCP_NOCONN)
            else:
                self._send_syn()
        elif self.mode == "data":
            self._timeout_data()
        elif self.mode == "pmtud":
            self._classify()
            if self.mode == "pmtud":
                self.mode = "done"
        elif self.mode == "blind" and self.plan.method == "blind-data":
            self._timeout_blinddata()
        elif self.mode == "blind" and self.plan.method == "blind-fin":
            self._timeout_blindfin()
        elif self.mode == "blind":
            self._classify()
            if self.mode == "blind":
                self.mode = "done"
        elif self.mode in ("fin", "moredata"):
            if self.code == R.NONE:
                self._classify()
            self.mode = "done"
        self._flush()

    def halt(self, code: TbitResult = R.HALTED, error: str | None = None) -> None:
        """Stop now (halted, or the test ran out of ``max_time``)."""
        if self.code == R.NONE:
            self.code = code
        if error and not self.error:
            self.error = error
        self.mode = "done"
        self._tx.clear()

    def result(self, *, vp: str | None = None, extra: dict[str, Any] | None = None) -> Tbit:
        p = self.plan
        pkts = sorted(self.pkts, key=lambda k: k.time_ns)
        return Tbit(type=p.method, dst=p.dst, src=self.src, start_ns=self.start_ns, sport=p.sport,
                    dport=p.dport, userid=p.userid, client_mss=p.mss, server_mss=self.server_mss,
                    ttl=p.ttl, result=self.code, options=p.options, wscale=p.wscale, url=p.url, pkts=pkts,
                    icw_start_seq=self.icw_start_seq, error=self.error, vp=vp or None,
                    mtu=p.mtu if p.method == "pmtud" else None,
                    ptb_retx=p.ptb_retx if p.method == "pmtud" else None,
                    blind_off=p.blind_off if p.method.startswith("blind-") else None,
                    blind_retx=p.blind_retx if p.method.startswith("blind-") else None,
                    syn_retx=p.syn_retx, dat_retx=p.dat_retx, extra=dict(extra or {}))

    # -- sending ---------------------------------------------------------------
    def _tp(self) -> _Tp:
        tp = _Tp(flags=T.TH_ACK, seq=self.snd_nxt, ack=self.rcv_nxt)
        self._tx.append(tp)
        return tp

    def _packet(self, flags: int, seq: int, ack: int, payload: bytes, opts: bytes, tos: int) -> bytes:
        p = self.plan
        seg = T.tcp_segment(self.src, p.dst, p.sport, p.dport, seq=seq, ack=ack, flags=flags,
                            window=65535, options=opts, payload=payload)
        self._ipid = (self._ipid + 1) & 0xFFFF
        return T.ip_tcp(self.src, p.dst, seg, ttl=p.ttl, tos=tos, ipid=self._ipid, df=True)

    def _emit(self, data: bytes, wait_ns: int) -> None:
        pkt = TbitPkt("tx", self._now, data, "user")
        self.pkts.append(pkt)
        self.outbox.append((pkt, data))
        if wait_ns > 0:
            self.deadline_ns = self._now + wait_ns

    def _ts_ms(self) -> int:
        return max(0, (self._now - self.start_ns) // 1_000_000)

    def _send_syn(self) -> None:
        p = self.plan
        flags = T.TH_SYN | (T.TH_ECE | T.TH_CWR if p.method == "ecn" else 0)
        opts = T.tcp_options(mss=p.mss, wscale=p.wscale or None,
                             sack_ok=bool(p.options & 0x02) or p.method == "sack-rcvr",
                             ts=(self._ts_ms(), 0) if p.options & 0x01 else None)
        self.attempt += 1
        self._emit(self._packet(flags, self.snd_nxt, 0, b"", opts, 0), p.wait_probe_ns)

    def _flush(self) -> None:
        """Turn queued probes into packets (scamper's ``tbit_tx_tcp``); what
        an event queued still leaves when it ended the test (the ACK of the
        server's FIN)."""
        if not self._tx and self._want_fin and self.mode != "done":
            self._tx.append(_Tp(flags=T.TH_ACK | (T.TH_FIN if self.mode == "fin" else 0),
                                seq=self.snd_nxt, ack=self.rcv_nxt, wait_ns=self.plan.wait_probe_ns))
        self._want_fin = False
        tx, self._tx = self._tx, []
        for tp in tx:
            payload = b""
            if (tp.len == 0 and tp.flags & T.TH_FIN and self.plan.method == "blind-fin"
                    and self.mode == "blind" and self.st.blind_step == 1):
                self.attempt += 1  # the blinded FIN counts as a try
            if tp.len > 0:
                off = T.seq_diff(tp.seq, self.snd_nxt)
                if off < 0 or not self.unacked:
                    continue  # nothing left to send at that offset (scamper returns 0: no probe)
                payload = self.unacked[off:off + tp.len]
                self.attempt += 1
            flags, tos = tp.flags, 0
            opts = b""
            if self.st.tcpts:
                opts = T.tcp_options(ts=(self._ts_ms(), self.ts_recent), sack=tp.sack)
                self.ts_lastack = tp.ack
            elif tp.sack:
                opts = T.tcp_options(sack=tp.sack)
            if self.plan.method == "ecn" and not flags & T.TH_FIN and payload:
                if self.st.ce_set:
                    tos = T.ECN_CE
                elif self.st.ect:
                    tos = T.ECN_ECT1
                if self.st.cwr_set:
                    flags |= T.TH_CWR
            self._emit(self._packet(flags, tp.seq, tp.ack, payload, opts, tos), tp.wait_ns)

    # -- results ----------------------------------------------------------------
    _FINAL = frozenset({R.NONE, R.TCP_NOCONN, R.TCP_NOCONN_RST, R.TCP_ERROR, R.TCP_RST, R.TCP_BADOPT,
                        R.TCP_FIN, R.TCP_ZEROWIN, R.ERROR, R.ABORTED, R.HALTED, R.PMTUD_NOACK,
                        R.PMTUD_FAIL, R.SACK_INCAPABLE, R.SACK_RCVR_SUCCESS, R.SACK_RCVR_SHIFTED,
                        R.SACK_RCVR_TIMEOUT, R.SACK_RCVR_NOSACK, R.BLIND_RST, R.BLIND_ACCEPTED})

    def _result(self, code: TbitResult) -> None:
        """scamper's ``tbit_result``: record the first result, then close
        gracefully (FIN) unless the code ends the test at once."""
        final = code in self._FINAL or self.st.rst_seen
        if self.code == R.NONE:
            self.code = code
        if final:
            self.mode = "done"
        elif self.mode != "syn":
            self.mode = "fin"
            self._want_fin = True

    def _classify(self) -> None:
        st, m = self.st, self.plan.method
        if self.code != R.NONE:
            if st.rst_seen:
                self.mode = "done"
            return
        if m == "ecn":
            if st.ece_seen:
                self._result(R.ECN_SUCCESS)
            elif st.rst_seen:
                self._result(R.TCP_RST)
            elif st.ce_sent:
                self._result(R.ECN_NOECE)
            elif not st.seen_data:
                self._result(R.ECN_NODATA)
        elif m == "null":
            self._result(R.TCP_RST if st.rst_seen else R.NULL_SUCCESS if st.seen_data else R.NULL_NODATA)
        elif m == "sack-rcvr":
            if st.sackr_incapable:
                self._result(R.SACK_INCAPABLE)
            elif st.sackr_shifted:
                self._result(R.SACK_RCVR_SHIFTED)
            elif st.rst_seen:
                self._result(R.TCP_RST)
            elif st.fin_seen:
                self._result(R.TCP_FIN)
            elif st.sackr_rx[0] > 3:
                self._result(R.SACK_RCVR_NOSACK)
            elif st.sackr_badopt:
                self._result(R.TCP_BADOPT)
            elif st.sackr_timeout > 2:
                self._result(R.SACK_RCVR_TIMEOUT)
            else:
                self._result(R.SACK_RCVR_SUCCESS)
        elif m == "icw":
            self._result(R.TCP_RST if st.rst_seen else R.TCP_FIN if st.fin_seen else R.NONE)
        elif m in ("blind-data", "blind-fin"):
            if st.blind_accepted:
                self._result(R.BLIND_ACCEPTED)
            elif st.blind_challenge:
                self._result(R.BLIND_CHALLENGE)
            elif st.blind_silence:
                self._result(R.BLIND_IGNORED)
            elif st.rst_seen:
                self._result(R.TCP_RST)
            elif st.fin_seen:
                self._result(R.TCP_FIN)
            else:
                self._result(R.NONE)
        elif m in ("blind-rst", "blind-syn"):
            if m == "blind-syn" and st.blind_rst:
                self._result(R.BLIND_RST)
            elif st.blind_challenge:
                self._result(R.BLIND_CHALLENGE)
            elif st.blind_c >= self.plan.blind_retx:
                self._result(R.BLIND_IGNORED)
            elif st.blind_fin or st.fin_seen:
                self._result(R.TCP_FIN)
            elif st.rst_seen:
                self._result(R.TCP_RST)
            elif m == "blind-rst" and st.blind_c == 1 and st.blind_ignored == 0:
                self._result(R.BLIND_ACCEPTED)
            else:
                self._result(R.NONE)
        elif m == "pmtud":
            if st.rst_seen:
                self._result(R.PMTUD_FAIL if st.ptb_c >= 2 else R.TCP_RST)
            elif not st.seen_data:
                self._result(R.PMTUD_NODATA)
            elif st.ptb_c > 0:
                self._result(R.PMTUD_FAIL)
            elif st.nodf:
                self._result(R.PMTUD_NODF)
            else:
                self._result(R.PMTUD_TOOSMALL)

    def _rst(self, seg: T.Segment) -> None:
        st = self.st
        if (self.mode == "blind" and self.plan.method == "blind-syn"
                and seg.ack == (self.snd_nxt + self.plan.blind_off + 1) & 0xFFFFFFFF):
            st.blind_rst = True  # the server reset in answer to our blinded SYN
        if (not st.seen_data and not seg.flags & T.TH_ACK and seg.seq == self.rcv_nxt
                and self.rcv_nxt == (self.sa_seq + 1) & 0xFFFFFFFF):
            self.error = ("the server reset the connection right after the handshake: the VP's own "
                          "kernel most likely answered the SYN-ACK with a RST (no socket owns source "
                          f"port {self.plan.sport}); tbit needs the VP to drop its RSTs for that port, "
                          "e.g. " + RST_RULE.format(sport=self.plan.sport).replace(
                              "iptables", "ip6tables" if ":" in self.plan.dst else "iptables"))
        st.rst_seen = True
        self._classify()
        self.mode = "done"

    # -- SYN ------------------------------------------------------------------
    def _dl_syn(self, seg: T.Segment) -> None:
        p, st = self.plan, self.st
        if not seg.has(T.TH_SYN | T.TH_ACK) or not _after(seg.ack, self.snd_nxt):
            self._result(R.TCP_NOCONN_RST if seg.flags & T.TH_RST else R.TCP_NOCONN)
            self.mode = "done"
            return
        self.snd_nxt = (self.snd_nxt + 1) & 0xFFFFFFFF
        self.sa_seq = seg.seq
        self.rcv_nxt = (seg.seq + 1) & 0xFFFFFFFF
        if seg.ack != self.snd_nxt:  # acks data we never sent on the SYN
            self._result(R.TCP_NOCONN)
            self.mode = "done"
            return
        if p.options & 0x01 and seg.ts is not None:
            st.tcpts = True
            self.ts_recent = seg.ts[0]
        if p.method == "ecn":
            if seg.flags & (T.TH_ECE | T.TH_CWR) != T.TH_ECE:
                self._result(R.ECN_INCAPABLE if not seg.flags & (T.TH_ECE | T.TH_CWR) else R.ECN_BADSYNACK)
            else:
                st.ect = st.ce_set = True
        elif p.method == "sack-rcvr" and not seg.sack_ok:
            st.sackr_incapable = True
        self.server_mss = seg.mss or 0
        self.unacked = http_request(p.host, p.file)
        st.nomoredata = True
        self._tp()  # a pure ACK completes the handshake
        if seg.window == 0:
            self._result(R.TCP_ZEROWIN)  # scamper waits for a window update; we stop
            self.mode = "done"
            return
        tp = self._tp()
        tp.len = len(self.unacked)
        if p.method == "sack-rcvr":
            tp.len, tp.wait_ns = 1, _TIMEOUT_SACK_NS
        elif p.method in ("blind-data", "blind-fin"):
            n = len(self.unacked)
            third = n // 3
            if p.method == "blind-data":
                st.blind_part = (third, third, n - 2 * third)
            else:
                st.blind_part = (third, n - third, 0)
                st.blind_ack = (self.snd_nxt + n) & 0xFFFFFFFF
            tp.len, tp.wait_ns = third, _TIMEOUT_BLIND_NS
        else:
            tp.wait_ns = p.wait_probe_ns
        self.attempt = 0
        self.mode = "blind" if p.method.startswith("blind-") else "data"

    # -- data -------------------------------------------------------------------
    def _dl_data(self, seg: T.Segment) -> None:
        if not self.st.noreset:
            blind = self.plan.method in ("blind-data", "blind-fin") and self.mode == "blind"
            self.deadline_ns = self._now + (_TIMEOUT_BLIND_NS if blind else self.plan.wait_idle_ns)
        if not _in_range(self.rcv_nxt, seg.seq, seg.datalen):
            return
        if _after(seg.ack, self.snd_nxt) and self.unacked:
            ab = min(T.seq_diff(seg.ack, self.snd_nxt), len(self.unacked))
            self.unacked = self.unacked[ab:]
            self.snd_nxt = (self.snd_nxt + ab) & 0xFFFFFFFF
        {"ecn": self._data_ecn, "null": self._data_null, "sack-rcvr": self._data_sack,
         "icw": self._data_icw, "pmtud": self._data_pmtud, "blind-rst": self._data_blind,
         "blind-syn": self._data_blind, "blind-data": self._data_blinddata,
         "blind-fin": self._data_blindfin}[self.plan.method](seg)

    def _data_ecn(self, seg: T.Segment) -> None:
        st = self.st
        if seg.flags & T.TH_ECE:
            if not st.ece_seen:
                st.ece_seen = True
                st.cwr_set = True
        elif st.cwr_set:
            st.cwr_set = False
        if seg.seq != self.rcv_nxt:
            self._tp()
            return
        if st.ce_set:  # the server has our CE-marked segment
            st.ce_set, st.ce_sent = False, True
        fin = bool(seg.flags & T.TH_FIN)
        if seg.datalen:
            st.seen_data = True
            self.rcv_nxt = (self.rcv_nxt + seg.datalen) & 0xFFFFFFFF
        if seg.datalen or fin:
            tp = self._tp()
            # scamper: close if the server closes or ECN is off; we also close
            # once the CE segment is acknowledged and data flows (see module doc).
            if fin or not st.ect or st.ce_sent:
                tp.flags |= T.TH_FIN
                self.mode = "fin"
                if st.ect and self.code == R.NONE:
                    self._classify_ecn_now()
                if fin:
                    st.fin_seen = True
                    self.rcv_nxt = (self.rcv_nxt + 1) & 0xFFFFFFFF
                    tp.ack = self.rcv_nxt

    def _classify_ecn_now(self) -> None:
        self.code = R.ECN_SUCCESS if self.st.ece_seen else R.ECN_NOECE

    def _rxq_add(self, seg: T.Segment) -> None:
        self.rxq.append((seg.seq, seg.datalen, seg.flags))
        self.rxq.sort(key=lambda e: (T.seq_diff(e[0], self.rcv_nxt), e[1]))

    def _data_null(self, seg: T.Segment) -> None:
        st = self.st
        tx_fin = st.nomoredata and not self.unacked
        if seg.datalen == 0 and not seg.flags & T.TH_FIN:
            if tx_fin and st.seen_data:
                self._tp().flags |= T.TH_FIN
                self.mode = "fin"
            return
        self._rxq_add(seg)
        while self.rxq:
            seq, ln, flags = self.rxq[0]
            if not _in_range(self.rcv_nxt, seq, ln):
                self.rxq.pop(0)
                continue
            if ln:
                st.seen_data = True
            off = T.seq_diff(seq, self.rcv_nxt)
            if off > 0:
                tp = self._tp()
                if tx_fin:
                    tp.flags |= T.TH_FIN
                    self.mode = "fin"
                return
            self.rxq.pop(0)
            if ln:
                self.rcv_nxt = (self.rcv_nxt + ln + off) & 0xFFFFFFFF
            tp = self._tp()
            fin = bool(flags & T.TH_FIN)
            if tx_fin or fin:
                tp.flags |= T.TH_FIN
                self.mode = "fin"
                if fin:
                    st.fin_seen = True
                    self.rcv_nxt = (self.rcv_nxt + 1) & 0xFFFFFFFF
                    tp.ack = self.rcv_nxt
                    break

    def _sack_next(self) -> None:
        st = self.st
        if st.sackr_x == 6:  # after six out-of-order segments, classify
            self._classify()
            return
        tp = self._tp()
        tp.len = 1
        tp.seq = (tp.seq + 1 + st.sackr_x * 2) & 0xFFFFFFFF
        tp.wait_ns = _TIMEOUT_SACK_NS
        self.attempt = 0
        st.sackr_x += 1

    def _data_sack(self, seg: T.Segment) -> None:
        st = self.st
        if seg.seq != self.rcv_nxt:
            return
        if seg.flags & T.TH_FIN:
            st.fin_seen = True
            self._classify()
            return
        x = -1
        if seg.bad_options:
            st.sackr_badopt = True
            return
        if not seg.sack:
            x = 0
        else:
            edge = (seg.sack[0][1] - self.snd_nxt) & 0xFFFFFFFF
            if edge & 1 == 0 and edge != 0 and edge // 2 <= st.sackr_x:
                x = edge // 2
            left = (seg.sack[0][0] - self.snd_nxt) & 0xFFFFFFFF
            if left == 0 or left // 2 > st.sackr_x:
                st.sackr_shifted = True
        if x != -1:
            st.sackr_rx[x] += 1
            if st.sackr_rx[x] > 1 and x == 0 and not st.sackr_incapable:
                return
        self._sack_next()

    def _data_icw(self, seg: T.Segment) -> None:
        st = self.st
        fin = bool(seg.flags & T.TH_FIN)
        if fin:
            st.fin_seen = True
        if seg.datalen or fin:
            self._rxq_add(seg)
        if st.nomoredata:
            if st.icw_seq is None:
                self.icw_start_seq = T.seq_diff(self.rcv_nxt, self.sa_seq) & 0xFFFFFFFF
                st.icw_seq = self.rcv_nxt
            if seg.seq == st.icw_seq and seg.datalen:
                st.icw_count += 1
            if st.icw_count < 2:
                if not fin:
                    return
                self._result(R.ICW_TOOSHORT)
                self.mode = "fin"
            else:
                st.icw_tail = self._rxq_tail()
                self.mode = "moredata"
        self._process_rxq(fin_on_ack=self.mode == "moredata")

    def _rxq_tail(self) -> int:
        """The highest sequence number held (``scamper_tbit_tcpq_tail``)."""
        best = 0
        for seq, ln, _f in self.rxq:
            best = max(best, T.seq_diff(seq + ln, self.rcv_nxt))
        return (self.rcv_nxt + best) & 0xFFFFFFFF

    def _process_rxq(self, *, fin_on_ack: bool) -> None:
        """Deliver in-order data, acknowledging each segment."""
        while self.rxq:
            seq, ln, flags = self.rxq[0]
            if not _in_range(self.rcv_nxt, seq, ln):
                self.rxq.pop(0)
                continue
            off = T.seq_diff(seq, self.rcv_nxt)
            if off > 0:
                tp = self._tp()
                if fin_on_ack and not self.st.fin_acked:
                    tp.flags |= T.TH_FIN
                return
            self.rxq.pop(0)
            if ln:
                self.rcv_nxt = (self.rcv_nxt + ln + off) & 0xFFFFFFFF
            tp = self._tp()
            if fin_on_ack and not self.st.fin_acked:
                tp.flags |= T.TH_FIN
            if flags & T.TH_FIN:
                self.st.fin_seen = True
                self.rcv_nxt = (self.rcv_nxt + 1) & 0xFFFFFFFF
                tp.ack = self.rcv_nxt
                return

    def _fin_acked_by(self, seg: T.Segment) -> None:
        if seg.ack == (self.snd_nxt + 1) & 0xFFFFFFFF and not self.st.fin_acked:
            self.st.fin_acked = True
            self.snd_nxt = (self.snd_nxt + 1) & 0xFFFFFFFF

    def _closed(self) -> bool:
        return self.st.fin_seen and self.st.fin_acked

    def _dl_moredata(self, seg: T.Segment) -> None:
        st = self.st
        self._fin_acked_by(seg)
        if seg.datalen == 0 and not seg.flags & T.TH_FIN:
            return
        if not _in_range(self.rcv_nxt, seg.seq, seg.datalen):
            return
        self._rxq_add(seg)
        for seq, ln, _f in self.rxq:
            if not _in_range(self.rcv_nxt, seq, ln):
                continue
            if ln and T.seq_diff(seq + ln, st.icw_tail) >= 0:
                self.mode = "fin"
                self._result(R.ICW_SUCCESS)
                break
            if not ln and T.seq_diff(seq, st.icw_tail) == 0:
                self.mode = "fin"
                self._result(R.ICW_TOOSHORT)
                break
        self._process_rxq(fin_on_ack=True)
        if self._closed():
            if self.code == R.NONE:
                self._classify()
            self.mode = "done"

    # -- blind-rst / blind-syn -------------------------------------------------
    def _data_blind(self, seg: T.Segment) -> None:
        """scamper's ``dl_data_blindrst``: answer each of the first data
        segments with a RST (SYN) ``blind_off`` past the right sequence
        number, then accept it when it comes again; an ACK in between that
        acknowledges nothing new is a challenge ACK (RFC 5961)."""
        st, p = self.st, self.plan
        if self.mode != "blind":
            self._data_null(seg)
            return
        self.rxq.clear()
        if seg.datalen == 0 and not seg.flags & T.TH_FIN:
            if st.blind_c > 0 and seg.ack == self.snd_nxt:
                st.blind_challenge = True
            return
        if seg.seq != self.rcv_nxt:
            self._tp()
            return
        if seg.flags & T.TH_FIN:
            st.blind_fin = True
        if seg.datalen:
            st.seen_data = True
        if st.blind_sent and seg.datalen:
            self.rcv_nxt = (self.rcv_nxt + seg.datalen) & 0xFFFFFFFF
        tp = self._tp()
        if seg.flags & T.TH_FIN and not seg.datalen:
            tp.flags |= T.TH_FIN
            self.rcv_nxt = (self.rcv_nxt + 1) & 0xFFFFFFFF
            tp.ack = self.rcv_nxt
            self.mode = "fin"
            st.fin_seen = True
            return
        if not st.blind_sent:
            tp.flags = T.TH_RST if p.method == "blind-rst" else T.TH_SYN
            tp.seq = (tp.seq + p.blind_off) & 0xFFFFFFFF
            st.blind_sent = True
            st.blind_c += 1
        else:
            st.blind_sent = False
            st.blind_ignored += 1
            if st.blind_c >= p.blind_retx:
                self.mode = "data"
            else:
                self._tx = [tp]  # scamper's tp_flush: only this ACK goes
            if seg.flags & T.TH_FIN:
                tp.flags |= T.TH_FIN
                self.rcv_nxt = (self.rcv_nxt + 1) & 0xFFFFFFFF
                tp.ack = self.rcv_nxt
                self.mode = "fin"
                st.fin_seen = True
        tp.wait_ns = self.plan.wait_idle_ns
        self.attempt = 0

    def _data_blinddata(self, seg: T.Segment) -> None:
        """scamper's ``dl_data_blinddata``: the request in thirds — the first
        normally; the third with an acknowledgement number ``blind_off`` off,
        leaving a hole (``blind_retx`` tries); then the second, filling the
        hole; then the third again, correctly. A server that took the
        blinded third acknowledges everything once the hole is filled."""
        st, p = self.st, self.plan
        part1, part2, part3 = st.blind_part
        if self.mode == "data":
            self._data_null(seg)
            return
        if self.mode != "blind":
            return
        if seg.datalen or not self.unacked:
            if st.blind_step == 2 and not self.unacked:
                st.blind_accepted = True
            self.mode = "data"
            self._tx.clear()
            self._data_null(seg)
            return
        if seg.seq != self.rcv_nxt:
            return
        if seg.flags & T.TH_FIN:
            self._result(R.TCP_FIN)
            return
        if st.blind_step == 0:
            if len(self.unacked) != part2 + part3:
                return
            st.blind_step, self.attempt = 1, 0
            tp = self._tp()
            tp.seq, tp.len = (tp.seq + part2) & 0xFFFFFFFF, part3
            tp.ack = (tp.ack + p.blind_off) & 0xFFFFFFFF
            tp.wait_ns = _TIMEOUT_BLIND_NS
        elif st.blind_step == 1:
            st.blind_challenge = True
            if self.attempt >= p.blind_retx:
                st.blind_step, self.attempt = 2, 0
        elif st.blind_step == 2:
            if len(self.unacked) != part3:
                return
            st.blind_step, self.attempt = 3, 0
            self._tx.clear()
            tp = self._tp()
            tp.len, tp.wait_ns = len(self.unacked), _TIMEOUT_BLIND_NS

    def _timeout_blinddata(self) -> None:
        """scamper's ``timeout_blinddata``."""
        st, p = self.st, self.plan
        part1, part2, part3 = st.blind_part
        if st.blind_step in (0, 3):
            if self.attempt >= p.blind_retx:
                self._result(R.NONE)
                self.mode = "done"
                return
            tp = self._tp()
            tp.len = part1 if st.blind_step == 0 else len(self.unacked)
            tp.wait_ns = _TIMEOUT_BLIND_NS
            return
        tp = self._tp()
        tp.len, tp.wait_ns = len(self.unacked), _TIMEOUT_BLIND_NS
        if self.attempt >= p.blind_retx:
            if st.blind_step == 1 and not st.blind_challenge:
                st.blind_silence = True
            self.attempt = 0
            st.blind_step += 1
        if st.blind_step == 1:
            tp.ack = (tp.ack + p.blind_off) & 0xFFFFFFFF
            tp.seq = (tp.seq + part2) & 0xFFFFFFFF
            tp.len = part3
        else:
            tp.len = part2

    def _blindfin_accepted(self) -> None:
        st = self.st
        st.blind_accepted = st.fin_acked = True
        self.snd_nxt = (self.snd_nxt + 1) & 0xFFFFFFFF
        self.mode = "fin"
        self._tx.clear()

    def _data_blindfin(self, seg: T.Segment) -> None:
        """scamper's ``dl_data_blindfin``: the first third of the request;
        a FIN past a hole with an acknowledgement number ``blind_off`` off
        (``blind_retx`` tries); the rest of the request, filling the hole.
        A server that took the FIN acknowledges it with the request."""
        st, p = self.st, self.plan
        part1, part2, _ = st.blind_part
        if self.mode == "data":
            self._data_null(seg)
            return
        if self.mode != "blind":
            return
        if not self.unacked and st.blind_step == 2 and seg.seq != self.rcv_nxt:
            if seg.ack == st.blind_ack:
                st.blind_step = 3
            elif seg.ack == (st.blind_ack + 1) & 0xFFFFFFFF and not st.fin_acked:
                self._blindfin_accepted()
            return
        if seg.seq != self.rcv_nxt:
            return
        if st.blind_step == 0:
            if len(self.unacked) != part2:
                return
            st.blind_step, self.attempt = 1, 0
            tp = self._tp()
            tp.seq = (tp.seq + part2) & 0xFFFFFFFF
            tp.ack = (tp.ack + p.blind_off) & 0xFFFFFFFF
            tp.flags |= T.TH_FIN
            tp.wait_ns = _TIMEOUT_BLIND_NS
        elif st.blind_step == 1:
            if seg.datalen == 0 and not seg.flags & T.TH_FIN:
                st.blind_challenge = True
            if self.attempt >= p.blind_retx:
                st.blind_step, self.attempt = 2, 0
        else:
            if T.seq_diff(seg.ack, st.blind_ack) < 0:
                return
            st.blind_step = 3
            if T.seq_diff(seg.ack, st.blind_ack) > 1:
                self.halt(R.ERROR, "the server acknowledged data we never sent")
                return
            if seg.datalen:
                st.seen_data = True
                self.rcv_nxt = (self.rcv_nxt + seg.datalen) & 0xFFFFFFFF
                self._tp()
            if seg.ack == (st.blind_ack + 1) & 0xFFFFFFFF and not st.fin_acked:
                self._blindfin_accepted()

    def _timeout_blindfin(self) -> None:
        """scamper's ``timeout_blindfin``."""
        st, p = self.st, self.plan
        part1, part2, _ = st.blind_part
        if st.blind_step == 0:
            if self.attempt >= p.blind_retx:
                self._result(R.NONE)
                self.mode = "done"
                return
            tp = self._tp()
            tp.len, tp.wait_ns = part1, _TIMEOUT_BLIND_NS
            return
        if st.blind_step == 3:
            self._tx.clear()
            st.noreset = False
            self.mode = "data"
            self.deadline_ns = self._now  # classify at once, as scamper's lapsed timer does
            return
        tp = self._tp()
        tp.len, tp.wait_ns = len(self.unacked), _TIMEOUT_BLIND_NS
        if self.attempt >= p.blind_retx:
            if st.blind_step == 1 and not st.blind_challenge:
                st.blind_silence = True
            self.attempt = 0
            st.blind_step += 1
        if st.blind_step == 1:
            tp.ack = (tp.ack + p.blind_off) & 0xFFFFFFFF
            tp.seq = (tp.seq + part2) & 0xFFFFFFFF
            tp.len = 0
            tp.flags |= T.TH_FIN
        else:
            tp.len = part2
            st.noreset = True

    # -- pmtud ----------------------------------------------------------------
    def _send_ptb(self) -> None:
        """An ICMP "fragmentation needed" quoting the too-big segment."""
        p = self.plan
        self._ipid = (self._ipid + 1) & 0xFFFF
        self.attempt += 1
        self.st.ptb_c += 1
        self._emit(T.icmp_frag_needed(self.src, p.dst, p.mtu, self.st.ptb_quote, ipid=self._ipid, ttl=p.ttl),
                   0)

    def _data_pmtud(self, seg: T.Segment) -> None:
        """scamper's ``dl_data_pmtud``: read until a segment too big for
        ``mtu`` arrives with DF set, then answer it with a PTB."""
        st, p = self.st, self.plan
        if seg.seq != self.rcv_nxt:
            self._tp()
            return
        if seg.datalen:
            st.seen_data = True
        if seg.datalen == 0 or not seg.df or seg.size <= p.mtu:
            if seg.datalen:
                self.rcv_nxt = (self.rcv_nxt + seg.datalen) & 0xFFFFFFFF
                if not seg.df and seg.size > p.mtu:
                    st.nodf = True
            if seg.datalen or seg.flags & T.TH_FIN:
                tp = self._tp()
                if seg.flags & T.TH_FIN:
                    tp.flags |= T.TH_FIN
                    self.rcv_nxt = (self.rcv_nxt + 1) & 0xFFFFFFFF
                    tp.ack = self.rcv_nxt
                    self.mode = "fin"
                    st.fin_seen = True
            return
        self.mode = "pmtud"
        st.ptb_quote = self._last_raw[:(self._last_raw[0] & 0x0F) * 4 + 8]
        self.attempt = 0
        st.ptb_c = 0
        self._send_ptb()

    def _dl_pmtud(self, seg: T.Segment) -> None:
        """scamper's ``dl_pmtud``: did the server shrink its segments?"""
        st, p = self.st, self.plan
        if seg.seq != self.rcv_nxt:
            if seg.size <= p.mtu:
                self._tp()
            return
        if seg.size <= p.mtu or not seg.df:
            self.rcv_nxt = (self.rcv_nxt + seg.datalen) & 0xFFFFFFFF
            self._result(R.PMTUD_CLEARDF if not seg.df else R.PMTUD_SUCCESS)
            tp = self._tp()
            if seg.flags & T.TH_FIN:
                tp.flags |= T.TH_FIN
                st.fin_seen = True
                self.rcv_nxt = (self.rcv_nxt + 1) & 0xFFFFFFFF
                tp.ack = self.rcv_nxt
            return
        if self.attempt >= p.ptb_retx:
            self._result(R.PMTUD_FAIL)
            return
        self._send_ptb()

    # -- FIN ------------------------------------------------------------------
    def _dl_fin(self, seg: T.Segment) -> None:
        st = self.st
        self.deadline_ns = self._now + self.plan.wait_idle_ns
        self._fin_acked_by(seg)
        if st.fin_seen and seg.seq == self.rcv_nxt:
            if self._closed():
                if self.code == R.NONE:
                    self._classify()
                self.mode = "done"
            return
        if seg.datalen == 0 and not seg.flags & T.TH_FIN:
            return
        tp = self._tp()
        if _in_range(self.rcv_nxt, seg.seq, seg.datalen):
            self._rxq_add(seg)
            while self.rxq:
                seq, ln, flags = self.rxq[0]
                if not _in_range(self.rcv_nxt, seq, ln):
                    self.rxq.pop(0)
                    continue
                off = T.seq_diff(seq, self.rcv_nxt)
                if off > 0:
                    break
                self.rxq.pop(0)
                self.rcv_nxt = (self.rcv_nxt + ln + off) & 0xFFFFFFFF
                if flags & T.TH_FIN:
                    st.fin_seen = True
                    self.rcv_nxt = (self.rcv_nxt + 1) & 0xFFFFFFFF
                if not st.fin_acked:
                    tp.flags |= T.TH_FIN
                if self._closed():
                    if self.code == R.NONE:
                        self._classify()
                    self.mode = "done"
                    break
        tp.ack = self.rcv_nxt
        if self.mode != "done" and self.st.tcpts is False and self.plan.options & 0x02 and self.rxq:
            tp.sack = self._sack_blocks(4)

    def _sack_blocks(self, count: int) -> tuple[tuple[int, int], ...]:
        blocks: list[list[int]] = []
        for seq, ln, _f in self.rxq:
            if not ln:
                continue
            if blocks and T.seq_diff(seq, blocks[-1][1]) <= 0:
                blocks[-1][1] = max(blocks[-1][1], seq + ln, key=lambda v: T.seq_diff(v, self.rcv_nxt))
            else:
                blocks.append([seq, seq + ln])
        return tuple((a & 0xFFFFFFFF, b & 0xFFFFFFFF) for a, b in blocks[:count])

    # -- timeouts -------------------------------------------------------------
    def _timeout_data(self) -> None:
        if self.unacked:
            if self.attempt >= self.plan.dat_retx:
                if self.plan.method == "sack-rcvr":
                    self.st.sackr_timeout += 1
                    self._sack_next()
                else:
                    self._classify()
                    if self.mode != "fin" and self.mode != "done":
                        self.mode = "fin"
                        self._want_fin = True
                return
            if self.plan.method == "sack-rcvr":
                # scamper resends the whole request here, which would fill the
                # holes the test relies on; count the timeout and go on instead.
                self.st.sackr_timeout += 1
                self._sack_next()
                return
            tp = self._tp()
            tp.len = len(self.unacked)
            tp.wait_ns = self.plan.wait_probe_ns
        else:
            self._classify()
            if self.code != R.NONE and self.mode not in ("fin", "done"):
                self.mode = "fin"
                self._want_fin = True
            elif self.code == R.NONE:
                self.mode = "done"


