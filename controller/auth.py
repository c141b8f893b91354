"""Who may call: the API's bearer token, or the console's session cookie.

The console's browser never carries the token in a URL or in script-readable storage: the
token form trades it for a cookie (HttpOnly, SameSite=Strict) holding an expiry and an
HMAC of it keyed by the token. Nothing is stored server-side, so any controller that
knows the token accepts the cookie, and changing the token ends every session.

Signing out deletes the cookie in that browser; a copy of it stays valid until it expires
(nothing is stored server-side to revoke it), and an event stream opened with it ends
then.

A cookie travels with any request the browser makes, and without a token the API on
loopback answers any page the operator's browser opens: so a state-changing request
without the bearer token must come from the console's own origin, and without a token
the request must name the server by a loopback address (no DNS rebinding).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

COOKIE = "vfence_session"
TTL = 12 * 3600  # seconds a session lasts
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of any text (compare_digest refuses non-ASCII str)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def bearer_ok(headers: Mapping[str, str], token: str) -> bool:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and _same(value.strip(), token)


def _mac(token: str, expiry: int) -> str:
    return hmac.new(token.encode(), f"vfence-console:{expiry}".encode(),
                    hashlib.sha256).hexdigest()


def new_session(token: str, now: float | None = None) -> str:
    """The cookie's value: ``<expiry>.<hmac>``."""
    expiry = int(now if now is not None else time.time()) + TTL
    return f"{expiry}.{_mac(token, expiry)}"


def expiry(value: str | None, token: str, now: float | None = None) -> int | None:
    """When a valid session cookie ends (epoch seconds), or None if it is not valid:
    malformed, forged, expired, or signed with another token."""
    found = re.fullmatch(r"([0-9]{1,12})\.([0-9a-f]{64})", value or "")
    if found is None:
        return None
    until = int(found[1])
    if until < (now if now is not None else time.time()):
        return None
    return until if _same(found[2], _mac(token, until)) else None


def session_ok(value: str | None, token: str, now: float | None = None) -> bool:
    return expiry(value, token, now) is not None


def cross_site(method: str, headers: Mapping[str, str]) -> bool:
    """A state-changing request a browser sent from another site's page: its Origin is
    not this server's (browsers send Origin on every POST; Sec-Fetch-Site where they send
    that instead). Programs (curl, the CLI) send neither and are not cross-site."""
    if method in SAFE_METHODS:
        return False
    origin = headers.get("origin")
    if origin is not None:  # (the host only: a proxy ending TLS changes the scheme)
        return urlsplit(origin).netloc != headers.get("host", "")
    return headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none")


def loopback_host(headers: Mapping[str, str]) -> bool:
    """Whether the request names this server by a loopback address. Without a token the
    API listens on loopback only; a page of another site that re-points its DNS name at
    127.0.0.1 (DNS rebinding) is same-origin to itself, but its Host is its own name."""
    host = headers.get("host", "")
    return loopback_name(host[1:host.find("]")] if host.startswith("[")
                         else host.rsplit(":", 1)[0])


def loopback_name(name: str) -> bool:
    """``localhost`` or a loopback address (what ``--api-host`` may be without a token)."""
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return name == "localhost"


CROSS_SITE = "a browser request from another site's page"
NOT_LOOPBACK = "without an API token only a loopback Host (127.0.0.1, [::1], localhost) is answered"
NO_CREDENTIALS = "missing or wrong bearer token"


def refusal(method: str, headers: Mapping[str, str], cookies: Mapping[str, str],
            token: str | None) -> str | None:
    """None when the request may go on, else why not (one of the constants above). The
    bearer token always works; a browser's request from another site's page never does,
    whatever it carries; without a token only a loopback Host is answered; with one, the
    console's session cookie works too."""
    if token is not None and bearer_ok(headers, token):
        return None
    if cross_site(method, headers):
        return CROSS_SITE
    if token is None:
        return None if loopback_host(headers) else NOT_LOOPBACK
    return None if session_ok(cookies.get(COOKIE), token) else NO_CREDENTIALS


def stream_until(headers: Mapping[str, str], cookies: Mapping[str, str], token: str | None
                 ) -> float | None:
    """When a long-lived response (the event stream) must end: the session's expiry when
    only a session cookie authenticated it, else never (None)."""
    if token is None or bearer_ok(headers, token):
        return None
    return expiry(cookies.get(COOKIE), token)
