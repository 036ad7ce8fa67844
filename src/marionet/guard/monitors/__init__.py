"""Shipped example monitors (WAT and C sources) and the C build helper.

``path(name)`` finds a shipped source; ``build`` compiles C monitors with
clang (docs/monitors.md)."""

from __future__ import annotations

from pathlib import Path

#: Directory of the shipped sources (.wat, .c, marionet_monitor.h).
HERE = Path(__file__).resolve().parent

#: The shipped examples, by name.
EXAMPLES = ("allow-all", "tcp-only", "icmp-budget", "dst-allow-list", "http-only")


def path(name: str, suffix: str = ".wat") -> Path:
    """The shipped source of example ``name`` (``suffix`` ".wat" or ".c")."""
    p = HERE / f"{name}{suffix}"
    if not p.is_file():
        raise FileNotFoundError(f"no shipped monitor source {p.name} in {HERE}")
    return p
