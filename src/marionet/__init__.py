"""marionet: distributed active Internet measurement.

Two models behind one guard: the packet model (socket-like operations
exported by an endpoint) and the primitive model (vetted measurements run
on the endpoint and driven through ``Ctrl``).
"""

__version__ = "0.1.0"
