"""Who may use the console: the token, its cookie, and the origin check of POSTs.

The console is only mounted with a token. A request is let in when it carries
``Authorization: Bearer <token>`` or the console's cookie, which holds an HMAC of the token
(not the token itself), set HttpOnly and SameSite=Strict by the login form. Both are compared
in constant time (``hmac.compare_digest``). Nothing here logs the token or the cookie.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final
from urllib.parse import urlsplit

from starlette.requests import Request

__all__ = ["COOKIE", "cookie_value", "is_authorized", "is_token", "same_origin"]

COOKIE: Final = "app_console"
"""The name of the console's session cookie."""


def cookie_value(token: str) -> str:
    """The value of the console's cookie for ``token``: an HMAC of it, so the cookie never
    holds the token and changes when the token does."""
    return hmac.new(token.encode(), b"app.console cookie", hashlib.sha256).hexdigest()


def is_token(given: str, token: str) -> bool:
    """Whether ``given`` is ``token``, compared in constant time."""
    return hmac.compare_digest(given.encode(), token.encode())


def is_authorized(request: Request, token: str) -> bool:
    """Whether ``request`` carries the token (as a bearer) or the console's cookie; never
    raises."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials:
        return is_token(credentials.strip(), token)
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and is_token(cookie, cookie_value(token))


def same_origin(request: Request) -> bool:
    """Whether a state-changing request comes from the console's own origin: its ``Origin``
    (or, without one, ``Referer``) names the host the request was sent to. A request with
    neither is accepted only with a bearer token, which browsers never add on their own."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if not claimed or claimed == "null":
        return request.headers.get("authorization", "").lower().startswith("bearer ")
    host = request.headers.get("host", "")
    return bool(host) and urlsplit(claimed).netloc.lower() == host.lower()
