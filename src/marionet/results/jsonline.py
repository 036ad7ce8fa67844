"""``to_json()`` for every result class: scamper's JSON line for one object.

Why a module of its own: the result classes cannot import ``jsonfmt`` at
module level (it imports them), and ``jsonfmt.to_json`` finds writers
registered by other modules by exact class, so a subclass (the scamper
compatibility layer's ``ScamperHost``, ``ScamperTrace``) is looked up
along its bases here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["json_line", "json_dict"]


def json_dict(obj: Any) -> dict[str, Any]:
    """The dict scamper would write for ``obj`` (a result or cycle marker)."""
    from . import jsonfmt

    try:
        return jsonfmt.to_json(obj)
    except TypeError:
        for cls in type(obj).__mro__[1:]:
            writer = jsonfmt._WRITERS.get(cls)
            if writer is not None:
                return writer(obj)
        raise


def json_line(obj: Any) -> str:
    """``obj`` as one line of scamper JSON (no trailing newline)."""
    from . import jsonfmt

    return jsonfmt.dumps(json_dict(obj))
