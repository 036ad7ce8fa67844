"""marionet.results: result objects and result files.

Result classes carry what a researcher analyses (``Ping``, ``Trace`` and
their replies/hops) with nanosecond integers inside and scamper-style
``datetime``/``timedelta`` views outside.  ``File`` reads and writes them as
scamper JSON lines (compressed or not), so scamper-era analysis code keeps
working on marionet data.  ``to_frame``/``to_parquet``/``read_parquet``
(module ``frames``) export them to pandas and Parquet; they are loaded on
first use, so the endpoint never loads the analysis code.
"""

from .common import Addr, ns_to_datetime, ns_to_timedelta
from .cycle import CycleStart, CycleStop, UnknownResult
from .dealias import Dealias, DealiasProbe, DealiasProbedef, DealiasReply
from .dns import DnsMX, DnsQuery, DnsResult, DnsRR, DnsSOA, DnsStop
from .errors import FormatError
from .file import File
from .http import Http, HttpBuf, HttpHeaders, HttpStop
from .jsonfmt import dumps, from_json, loads, to_json
from .ping import PING_METHODS, Ping, PingReply, PingStop, PingTsReply, PingV4TS
from .tbit import Tbit, TbitPkt, TbitResult
from .trace import (TRACE_METHODS, IcmpExt, MplsLabel, Trace, TraceHop,
                    TraceStop)
from .udpprobe import Udpprobe, UdpprobeProbe, UdpprobeReply, UdpprobeStop
from .sniff import Sniff, SniffPkt, SniffStop
from .throughput import Throughput, ThroughputStop
from .tracelb import (TRACELB_METHODS, Tracelb, TracelbLink, TracelbNode, TracelbProbe,
                      TracelbProbeset, TracelbReply, TracelbStop)
from . import warts_host, warts_http  # noqa: F401,E402 - register their warts records
from . import warts_dealias  # noqa: F401,E402 - registers warts type 9 (dealias)

__all__ = [
    "Addr", "ns_to_datetime", "ns_to_timedelta",
    "CycleStart", "CycleStop", "UnknownResult", "FormatError", "File",
    "to_json", "from_json", "dumps", "loads",
    "Ping", "PingReply", "PingStop", "PING_METHODS", "PingV4TS", "PingTsReply",
    "Trace", "TraceHop", "TraceStop", "IcmpExt", "MplsLabel", "TRACE_METHODS",
    "Http", "HttpBuf", "HttpHeaders", "HttpStop",
    "Tracelb", "TracelbNode", "TracelbLink", "TracelbProbeset", "TracelbProbe", "TracelbReply",
    "TracelbStop", "TRACELB_METHODS",
    "Tbit", "TbitPkt", "TbitResult",
    "DnsResult", "DnsQuery", "DnsRR", "DnsMX", "DnsSOA", "DnsStop",
    "Udpprobe", "UdpprobeProbe", "UdpprobeReply", "UdpprobeStop", "Sniff", "SniffPkt", "SniffStop",
    "Throughput", "ThroughputStop",
    "Dealias", "DealiasProbe", "DealiasProbedef", "DealiasReply",
    "to_frame", "to_parquet", "read_parquet",
]

_FRAMES = ("to_frame", "to_parquet", "read_parquet")


def __getattr__(name: str) -> object:
    """Load ``frames`` only when its functions are asked for (PEP 562)."""
    if name in _FRAMES:
        from . import frames
        return getattr(frames, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
