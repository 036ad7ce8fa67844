"""marionet.measure: measurements written once over the packet interface.

Each measurement is asyncio code against a ``PacketSession`` and runs in
all three placements (native, endpoint, remote); see DESIGN.md.
"""

from marionet.measure.dns import dns, plan_dns
from marionet.measure.http import http, plan_http
from marionet.measure.ping import SUPPORTED_METHODS as PING_METHODS_SUPPORTED
from marionet.measure.ping import ping, plan_ping
from marionet.measure.registry import PRIMITIVES, run_primitive
from marionet.measure.tbit import plan_tbit, tbit
from marionet.measure.trace import plan_trace, trace
from marionet.measure.udpprobe import plan_udpprobe, udpprobe
from marionet.measure.sniff import plan_sniff, sniff
from marionet.measure.tracelb import plan_tracelb, tracelb
from marionet.measure.throughput import plan_throughput, throughput

__all__ = ["ping", "plan_ping", "PING_METHODS_SUPPORTED", "trace", "plan_trace", "dns", "plan_dns", "http", "plan_http",
           "udpprobe", "plan_udpprobe", "sniff", "plan_sniff", "tracelb", "plan_tracelb",
           "tbit", "plan_tbit",
           "throughput", "plan_throughput",
           "PRIMITIVES", "run_primitive"]
