"""marionet.wrap: unmodified programs (static and Go binaries too) measure through a VP.

``wrap_program(session, WrapOptions(argv=[...]))`` runs the program in a
network namespace whose only way out is a relay in this process: TCP and
UDP become endpoint sockets, ICMP echo an endpoint raw socket (the guard
sees every one), the rest is refused. See ``netns`` (the namespace),
``tcprelay``, ``udprelay``, ``icmprelay`` and ``report`` (``--timing vp``).
"""

from .options import ResolveEntry, WrapOptions, parse_resolve
from .report import TcpRecord, UdpRecord, WrapReport
from .runner import wrap_program

__all__ = ["wrap_program", "WrapOptions", "ResolveEntry", "parse_resolve", "WrapReport", "TcpRecord", "UdpRecord"]
