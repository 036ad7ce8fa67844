"""From an operator's policy file to a running guard: trust, monitors, audit.

Why one function: the endpoint's command line, the lab and tests must
assemble the same pieces the same way — the CAs and revocation list the
policy names, its monitors, its audit file, and the rule that a session's
grants are its certificate's intersected with the policy (or the
anonymous grant when no chain was verified) — or an endpoint started one
way would enforce something else than one started another.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marionet.guard.audit import AuditLog
from marionet.guard.core import Guard, Principal


@dataclass
class GuardRuntime:
    """What an ``Endpoint`` is given: ``Endpoint(config, rt.guard, trust=rt.trust, audit=rt.audit)``."""

    guard: Guard
    trust: Any  # marionet.guard.trust.Trust | None
    audit: AuditLog
    policy: Any  # marionet.guard.policy.Policy

    def start(self) -> None:
        """Inside the running loop: watch the revocation list and take SIGHUP
        as "reload it now"."""
        if self.trust is None:
            return
        self.trust.start_watching()
        import asyncio

        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.trust.reload)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass

    def stop(self) -> None:
        if self.trust is not None:
            self.trust.stop()
        self.audit.close()


def grants_function(policy: Any):
    """``grants_for(principal)`` for ``PolicyGuard``: a verified chain's
    grants within the policy's limits; anything else the anonymous grant."""
    from marionet.guard.policy import effective

    def grants_for(p: Principal):
        if p.auth == "chain" and p.grants is not None:
            return effective(policy, p.name, p.fingerprint, p.anchor, p.grants)
        return effective(policy, p.name, p.fingerprint, None, None)

    return grants_for


def build_guard(policy: Any) -> GuardRuntime:
    """Assemble the guard a ``Policy`` describes."""
    from marionet.guard.enforce import PolicyGuard

    trust = None
    if policy.ca_paths:
        from marionet.guard.trust import Trust

        trust = Trust.from_files(policy.ca_paths, [policy.revocations] if policy.revocations else [])
    installed: dict[str, Any] = {}
    local: list[Any] = []
    if policy.monitor_dir is not None or policy.run_monitors:
        from marionet.guard.monitor import MonitorModule, load_dir

        if policy.monitor_dir is not None:
            installed = dict(load_dir(policy.monitor_dir))
        local = [MonitorModule.from_file(Path(p)) for p in policy.run_monitors]
    audit = AuditLog(policy.audit_file, max_bytes=policy.audit_max_bytes, keep=policy.audit_keep)
    guard = PolicyGuard(grants_function(policy), local_monitors=local, installed_monitors=installed)
    return GuardRuntime(guard=guard, trust=trust, audit=audit, policy=policy)


def load_guard(path: str | Path) -> GuardRuntime:
    from marionet.guard.policy import load_policy

    return build_guard(load_policy(Path(path)))
