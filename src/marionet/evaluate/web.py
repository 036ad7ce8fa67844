"""Web content for C3: the paper's cleaning step and the (site, body) items.

Many sites put per-request tokens into their pages — a request id, a CSP
nonce, the time the page was rendered — so two fetches of the same page
never have the same bytes, whoever fetches them.  Before the bodies of two
sources are compared (Jaccard over ``"site|digest"`` items), those tokens
are replaced by fixed placeholders.  The cleaning is deliberately narrow:
it removes only what is per-request *by its shape*, so a real difference in
content (another text, another link, a truncated body) still changes the
digest.

What :func:`clean_body` replaces, in this order (bytes patterns; the body is
never decoded, so binary bodies pass through unless they happen to hold
these shapes):

===========================  ==================================  ===============
token                        example                             becomes
===========================  ==================================  ===============
``nonce="…"`` attribute       ``<script nonce="r4nd0m+/=">``       ``nonce="<nonce>"``
UUID                         ``3f2b…-…-…-…-…`` (8-4-4-4-12 hex)   ``<uuid>``
hex run of ≥ 16 digits        nginx ``$request_id`` (32 hex)      ``<hex>``
ISO 8601 date-time            ``2026-12-07T12:23:43.123Z``,        ``<time>``
                              ``2026-12-07 12:23:43+00:00``
HTTP / RFC 850 / asctime      ``Mon, 07 Dec 2026 12:23:43 GMT``,   ``<time>``
date                          ``Monday, 07-Dec-2026 12:23:43 GMT``
                              (nginx ``$date_gmt``),
                              ``Mon Dec  7 12:23:43 2026``
Unix time, s or ms            ``1796646223.204`` (nginx           ``<epoch>``
                              ``$msec``), ``1796646223204``
===========================  ==================================  ===============

Unix times are 10-digit second counts from 1000000000 to 2099999999
(2001–2036), optionally with a 1–6 digit fraction, or the same as 13-digit
millisecond counts, standing alone (not inside a longer digit or word run).
Not removed: dates without a time of day, counters, short ids, anything
inside a URL path other than the shapes above — too likely to be content.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["clean_body", "web_item", "body_digest"]

_MONTH = rb"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_WDAY = rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_WDAY_LONG = rb"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_HMS = rb"\d{2}:\d{2}:\d{2}"

_RULES: list[tuple[re.Pattern[bytes], bytes]] = [
    (re.compile(rb"""(\bnonce\s*=\s*)(["'])[^"'<>\s]*\2""", re.I), rb"\1\2<nonce>\2"),
    (re.compile(rb"(?<![0-9A-Za-z])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
                rb"(?![0-9A-Za-z])"), b"<uuid>"),
    (re.compile(rb"(?<![0-9A-Za-z])[0-9a-fA-F]{16,}(?![0-9A-Za-z])"), b"<hex>"),
    (re.compile(rb"\b\d{4}-\d{2}-\d{2}[T ]" + _HMS + rb"(?:[.,]\d{1,9})?(?:Z|[+-]\d{2}:?\d{2}|\s?(?:UTC|GMT))?"),
     b"<time>"),
    (re.compile(rb"\b" + _WDAY + rb", \d{1,2} " + _MONTH + rb" \d{4} " + _HMS + rb" (?:GMT|UTC|[+-]\d{4})"),
     b"<time>"),
    (re.compile(rb"\b" + _WDAY_LONG + rb", \d{2}-" + _MONTH + rb"-\d{2,4} " + _HMS + rb" (?:GMT|UTC)"), b"<time>"),
    (re.compile(rb"\b" + _WDAY + rb" " + _MONTH + rb" [ \d]\d " + _HMS + rb" \d{4}\b"), b"<time>"),
    (re.compile(rb"(?<![0-9A-Za-z.])(?:1\d{9}|20\d{8})(?:\d{3}(?![0-9.])|\.\d{1,6})?(?![0-9A-Za-z])"),
     b"<epoch>"),
]


def clean_body(body: bytes) -> bytes:
    """``body`` with per-request tokens replaced by placeholders (see the module docstring)."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise ValueError(f"clean_body: expected bytes, got {type(body).__name__}")
    out = bytes(body)
    for pattern, repl in _RULES:
        out = pattern.sub(repl, out)
    return out


def body_digest(body: bytes) -> str:
    """sha256 (hex) of the cleaned body."""
    return hashlib.sha256(clean_body(body)).hexdigest()


def web_item(site: str, status: int | None, body: bytes, error: str | None) -> str:
    """The C3 item of one fetch: ``"site|<sha256 of cleaned body>"``.

    A failure matches only the same failure: ``"site|ERROR:<kind>"`` where
    kind is the error's kind (the text before its first ``:``, as the
    ``native`` runners write it), ``no-status`` for a fetch without a status
    and ``http-<code>`` for a status outside 2xx (an error page is not the
    site's content).
    """
    if not isinstance(site, str) or not site or "|" in site:
        raise ValueError(f"web_item: site must be a non-empty name without '|', got {site!r}")
    if error:
        kind = error.split(":", 1)[0].strip() or "error"
        return f"{site}|ERROR:{kind}"
    if status is None:
        return f"{site}|ERROR:no-status"
    if not 200 <= int(status) < 300:
        return f"{site}|ERROR:http-{int(status)}"
    return f"{site}|{body_digest(body)}"
