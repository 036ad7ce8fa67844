"""A researcher's certificate chain and key, to prove to an endpoint.

Why the client carries them beyond TLS: through a controller the endpoint
never sees the client's TLS handshake, so the client proves its identity
to the endpoint itself — it presents its chain and signs the endpoint's
nonce bound to the VP name it meant (``marionet.guard.chain``). The same
proof is sent on direct connections, where it also carries the delegation
chain Python's ssl cannot show the endpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from marionet.wire import messages as m


@dataclass(frozen=True)
class Credentials:
    key: ed25519.Ed25519PrivateKey
    chain: tuple[bytes, ...]  # DER, leaf first
    monitors: tuple[bytes, ...] = field(default=())  # wasm modules the certificate mandates

    @classmethod
    def load(cls, cert: str | os.PathLike[str], key: str | os.PathLike[str],
             monitors: Sequence[str | os.PathLike[str]] = ()) -> "Credentials":
        """``cert``: a PEM file with the leaf first, then any delegation CAs."""
        from marionet.guard import pki

        certs = pki.load_certs(cert)
        return cls(key=pki.load_key(key),
                   chain=tuple(c.public_bytes(serialization.Encoding.DER) for c in certs),
                   monitors=tuple(Path(p).read_bytes() for p in monitors))

    def auth(self, rid: int, nonce: bytes, vp_name: str) -> m.Auth:
        from marionet.guard.chain import sign_auth
        from marionet.guard.pki import fingerprint

        sig = sign_auth(self.key, nonce, vp_name, fingerprint(self.chain[0]))
        return m.Auth(id=rid, chain=list(self.chain), signature=sig, monitors=list(self.monitors))
