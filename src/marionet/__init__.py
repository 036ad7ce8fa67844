"""marionet: distributed active Internet measurement.

Two models behind one guard: the packet model (socket-like operations
exported by an endpoint) and the primitive model (vetted measurements run
on the endpoint and driven through ``Ctrl``).
"""

__version__ = "0.1.0"

from marionet.client.ctrl import Ctrl  # noqa: E402
from marionet.client.inst import Inst, InstError, Task, VpInfo  # noqa: E402
from marionet.results import File  # noqa: E402

__all__ = ["Ctrl", "Inst", "Task", "InstError", "VpInfo", "File", "__version__"]
