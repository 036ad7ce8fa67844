"""marionet.lab: emulated Internets in network namespaces (tests, demos, evaluation).

``Lab(spec)`` builds a topology (hosts, VPs, Linux routers, impaired links,
ECMP diamonds) from a TOML spec or a builder such as ``linear_path``, and
exports the ground truth it configured.
"""

from .spec import (Spec, SpecError, diamond_path, linear_path, load_spec, parse_dict, parse_spec, small_world,
                   throughput_path, vp_and_sink)
from .aliaslab import alias_lab, alias_targets, alias_truth
from .plan import rtt_bounds_ms
from .system import LabError, NeedsRoot

__all__ = [
    "Lab", "Spec", "SpecError", "LabError", "NeedsRoot",
    "linear_path", "diamond_path", "small_world", "throughput_path", "vp_and_sink", "load_spec", "parse_spec", "parse_dict",
    "rtt_bounds_ms", "alias_lab", "alias_targets", "alias_truth",
]


def __getattr__(name: str):  # lazy: importing the spec tools must not need root tools
    if name == "Lab":
        from .core import Lab
        return Lab
    raise AttributeError(name)
