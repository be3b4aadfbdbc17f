"""What every HTML page of the service shares for safety: headers, sessions, CSRF, throttling.

- :data:`CSP`: a strict Content-Security-Policy. Nothing inline (no script at all, styles
  only from the service's own stylesheet), nothing fetched from another origin, forms post only
  to the service, no framing.
- :class:`Sessions`: a signed, expiring session cookie (HttpOnly, ``SameSite=Strict``,
  ``Secure`` when ``service.base_url`` is https). The cookie holds who signed in, until when, and
  a random CSRF token; it is signed with HMAC-SHA256 under a key derived from the secret that
  let them in (the console token; the partner's key digest with the portal's server secret),
  so changing that secret signs everyone out. No secret is ever put in the cookie.
- CSRF: every form carries the session's token in a hidden field; a POST whose field does not
  match (compared in constant time) is refused with 403, as is one whose ``Origin`` names
  another site (a sign-in form too).
- :class:`LoginThrottle`: a few failed sign-ins per client address, then 429 for a while.
- :class:`Gate`: the sign-in, sign-out and form handling an area (console, portal) builds on.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

__all__ = [
    "CSP",
    "Gate",
    "LoginThrottle",
    "Session",
    "Sessions",
    "html_headers",
    "same_origin",
    "see_other",
]

log = logging.getLogger(__name__)

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
"""No script, no inline style, nothing from elsewhere, forms only to this service."""


def html_headers(response: web.StreamResponse, *, private: bool = False) -> web.StreamResponse:
    """Put the page headers on ``response``; ``private`` pages (console, portal, tokens) are
    never stored by a browser or a proxy."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer" if private else "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    if private:
        response.headers["Cache-Control"] = "no-store"
    elif "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-cache"
    return response


def same_origin(request: web.Request) -> bool:
    """Whether a state-changing request came from a page of this service, or says nothing of
    its origin: non-browser clients send none, and browsers send ``null`` from pages with
    ``Referrer-Policy: no-referrer`` (the CSRF token and ``SameSite=Strict`` still hold)."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return True
    return urlsplit(origin).netloc == request.host


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Session:
    """Who is signed in (``subject``: ``operator`` or a partner id), until when, and the CSRF
    token of their forms."""

    subject: str
    expires: float
    csrf: str


class Sessions:
    """Signed session cookies named ``cookie`` for one area (console, portal).

    ``key_for(subject)`` gives the signing secret of a subject, or None when it may no longer
    sign in (a partner removed from the config): its cookies are then refused.
    """

    def __init__(
        self,
        *,
        cookie: str,
        path: str,
        key_for: Callable[[str], bytes | None],
        secure: bool,
        lifetime: float = 8 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cookie = cookie
        self.path = path
        self.key_for = key_for
        self.secure = secure
        self.lifetime = lifetime
        self.clock = clock

    def _signature(self, subject: str, body: str) -> str | None:
        secret = self.key_for(subject)
        if secret is None:
            return None
        key = hmac.new(secret, b"warnsvc session " + self.cookie.encode(), hashlib.sha256)
        return _b64(hmac.new(key.digest(), body.encode("ascii"), hashlib.sha256).digest())

    def start(self, response: web.StreamResponse, subject: str) -> Session:
        """Sign ``subject`` in: set the cookie on ``response``."""
        session = Session(subject, self.clock() + self.lifetime, secrets.token_urlsafe(24))
        body = _b64(
            json.dumps(
                {"s": session.subject, "e": int(session.expires), "c": session.csrf},
                separators=(",", ":"),
            ).encode()
        )
        signature = self._signature(subject, body)
        if signature is None:
            raise ValueError(f"no signing key for {subject!r}")
        response.set_cookie(
            self.cookie,
            f"{body}.{signature}",
            max_age=int(self.lifetime),
            path=self.path,
            httponly=True,
            secure=self.secure,
            samesite="Strict",
        )
        return session

    def end(self, response: web.StreamResponse) -> None:
        response.del_cookie(
            self.cookie, path=self.path, secure=self.secure, httponly=True, samesite="Strict"
        )

    def read(self, request: web.Request) -> Session | None:
        """The valid session the request carries, or None."""
        raw = request.cookies.get(self.cookie, "")
        body, _, signature = raw.partition(".")
        if not body or not signature or len(raw) > 1000:
            return None
        try:
            data: Any = json.loads(_unb64(body))
            subject, expires, csrf = str(data["s"]), float(data["e"]), str(data["c"])
        except (ValueError, KeyError, TypeError):
            return None
        expected = self._signature(subject, body)
        if expected is None or not hmac.compare_digest(expected, signature):
            return None
        if expires <= self.clock():
            return None
        return Session(subject, expires, csrf)

    @staticmethod
    def check_csrf(request: web.Request, session: Session, sent: object) -> None:
        """Refuse (403) a form that does not carry the session's token or comes from elsewhere."""
        if not same_origin(request):
            raise web.HTTPForbidden(reason="the form came from another site")
        if not isinstance(sent, str) or not hmac.compare_digest(sent, session.csrf):
            raise web.HTTPForbidden(reason="the form has expired; reload the page and try again")


class LoginThrottle:
    """At most ``failures`` failed sign-ins per client address in ``window`` seconds."""

    def __init__(
        self,
        failures: int = 5,
        window: float = 900.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.window = window
        self.clock = clock
        self._seen: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        now = self.clock()
        seen = self._seen.setdefault(client, deque())
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        return seen

    def wait(self, client: str) -> float:
        """0 if ``client`` may try to sign in now, else seconds until it may."""
        seen = self._recent(client)
        if len(seen) < self.failures:
            return 0.0
        return seen[0] + self.window - self.clock()

    def failed(self, client: str) -> None:
        self._recent(client).append(self.clock())
        if len(self._seen) > 10_000:
            now = self.clock()
            self._seen = {k: v for k, v in self._seen.items() if v and v[-1] > now - self.window}

    def succeeded(self, client: str) -> None:
        self._seen.pop(client, None)


def see_other(location: str) -> web.Response:
    """A 303 to ``location`` that nobody stores."""
    response = web.Response(status=303, headers={"Location": location})
    response.headers["Cache-Control"] = "no-store"
    return response


class Gate:
    """Signing in and out of one area (``area``: console, portal) and reading its forms.

    ``refused(message, status)`` renders the area's sign-in page with ``message``. Secrets
    presented are never logged; the throttle counts failures per client address.
    """

    def __init__(
        self,
        sessions: Sessions,
        *,
        area: str,
        home: str,
        refused: Callable[[str, int], web.Response],
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.sessions = sessions
        self.area = area
        self.home = home
        self.refused = refused
        self.throttle = throttle or LoginThrottle()

    async def sign_in(
        self,
        request: web.Request,
        field: str,
        subject_of: Callable[[str], str | None],
        *,
        wrong: str,
    ) -> web.Response:
        """Sign in whoever the form's ``field`` names (``subject_of`` compares it in constant
        time and gives the subject, or None); refused with 403 saying ``wrong``, or 429 while
        throttled."""
        client = request.remote or "unknown"
        wait = self.throttle.wait(client)
        if wait > 0:
            response = self.refused("Too many failed attempts. Try again later.", 429)
            response.headers["Retry-After"] = str(int(wait) + 1)
            return response
        if not same_origin(request):
            return self.refused("Sign in from this site's own page.", 403)
        form = await request.post()
        sent = form.get(field)
        subject = subject_of(sent) if isinstance(sent, str) and sent else None
        if subject is None:
            self.throttle.failed(client)
            log.warning(
                "%s sign-in refused",
                self.area,
                extra={"action": f"{self.area}_login_failed", "client": client},
            )
            return self.refused(wrong, 403)
        self.throttle.succeeded(client)
        response = see_other(self.home)
        self.sessions.start(response, subject)
        log.info(
            "%s sign-in",
            self.area,
            extra={"action": f"{self.area}_login", "client": client, "subject": subject},
        )
        return response

    async def form(self, request: web.Request) -> tuple[Session, Mapping[str, Any]]:
        """The session and the posted form of an action; no session sends the browser to the
        sign-in page (303), a missing or wrong CSRF token is a 403."""
        session = self.sessions.read(request)
        if session is None:
            raise web.HTTPSeeOther(self.home)
        form = await request.post()
        self.sessions.check_csrf(request, session, form.get("csrf"))
        return session, form

    async def sign_out(self, request: web.Request) -> web.Response:
        await self.form(request)
        response = see_other(self.home)
        self.sessions.end(response)
        return response
