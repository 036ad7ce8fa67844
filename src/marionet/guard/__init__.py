"""Operator guard: one call site for every operation (see ``core``)."""

from marionet.guard.core import Guard, GuardDenied, Principal

__all__ = ["Guard", "GuardDenied", "Principal"]
