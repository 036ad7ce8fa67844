"""What an endpoint trusts: operator CAs, the revocation list, and turning a
verified chain into a ``Principal``.

Why one object: the TLS layer, the channel proof (``Auth``) and the
revocation watcher must agree on the same anchors and the same revoked
serials, and a revocation must reach the sessions already open. The
endpoint holds one ``Trust`` and asks it; ``on_revoked`` callbacks end the
sessions whose chains a new list names.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

from cryptography import x509

from marionet.guard import chain as _chain
from marionet.guard.core import Principal

log = logging.getLogger("marionet.guard")


class Trust:
    """Operator anchors and the current revocation set."""

    def __init__(self, anchors: Sequence[x509.Certificate], revocation_paths: Sequence[Path] = ()) -> None:
        if not anchors:
            raise ValueError("a Trust needs at least one operator CA")
        self.anchors = list(anchors)
        self.revocation_paths = [Path(p) for p in revocation_paths]
        self.revoked: Any = None
        self._watcher: Any = None
        self._listeners: list[Callable[[Any], None]] = []
        if self.revocation_paths:
            from marionet.guard.revocation import RevocationSet

            self.revoked = RevocationSet.load(self.revocation_paths, self.anchors)

    @classmethod
    def from_files(cls, ca_paths: Sequence[str | Path], revocation_paths: Sequence[str | Path] = ()) -> "Trust":
        return cls(_chain.trusted_anchors([Path(p) for p in ca_paths]), [Path(p) for p in revocation_paths])

    # ------------------------------------------------------------ verifying
    def verify(self, certs: Sequence[x509.Certificate | bytes], roles: Sequence[str] = ("client",)) -> Any:
        """A ``VerifiedChain``, or ``chain.ChainError`` naming what is wrong."""
        return _chain.verify_chain(certs, self.anchors, roles=roles, revoked=self.revoked)

    @staticmethod
    def principal(vc: Any) -> Principal:
        """The principal a verified chain stands for."""
        from marionet.guard import privileges

        return Principal(name=vc.name, role=vc.role, fingerprint=vc.fingerprint,
                         privileges=privileges.to_doc(vc.grants), auth="chain", grants=vc.grants,
                         serials=tuple(vc.serials), anchor=vc.anchor_fingerprint)

    def revocation_of(self, principal: Principal) -> str | None:
        """Why ``principal``'s chain is revoked now, or None."""
        return self.revoked_reason(principal.name, principal.serials)

    def revoked_reason(self, name: str, serials: Sequence[int]) -> str | None:
        """Why one of ``serials`` (a chain of ``name``) is revoked, or None."""
        if self.revoked is None:
            return None
        for serial in serials:
            reason = self.revoked.reason_for_serial(serial)
            if reason is not None:
                return f"certificate serial {serial:#x} of {name!r} was {reason}"
        return None

    # ------------------------------------------------------------ watching
    def on_revoked(self, callback: Callable[[Any], None]) -> None:
        """Call ``callback(revocation_set)`` whenever the list changes."""
        self._listeners.append(callback)

    def _changed(self, revset: Any) -> None:
        self.revoked = revset
        log.info("revocation list reloaded: %d serials", len(getattr(revset, "serials", ())))
        for cb in list(self._listeners):
            try:
                cb(revset)
            except Exception:  # noqa: BLE001 - one listener must not stop the others
                log.exception("revocation listener failed")

    def start_watching(self, interval_s: float = 1.0) -> None:
        """Reload on change (polled) — call inside the running loop."""
        if not self.revocation_paths or self._watcher is not None:
            return
        from marionet.guard.revocation import RevocationWatcher

        self._watcher = RevocationWatcher(self.revocation_paths, self.anchors, self._changed,
                                          interval_s=interval_s)
        self._watcher.start()

    def reload(self) -> None:
        """Reload now (SIGHUP)."""
        if self._watcher is not None:
            self._watcher.reload()
        elif self.revocation_paths:
            from marionet.guard.revocation import RevocationSet

            self._changed(RevocationSet.load(self.revocation_paths, self.anchors))

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
