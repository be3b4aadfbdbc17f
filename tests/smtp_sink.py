"""An SMTP server on loopback for tests and the benchmark: aiosmtpd with a collecting handler.

:class:`Sink` records every accepted message (with its MAIL FROM options) and can be told to
refuse senders or recipients (5xx or 4xx), fail DATA a number of times, require STARTTLS and
AUTH, or offer SMTPUTF8. :func:`make_certificate` writes a throw-away self-signed certificate
for 127.0.0.1/localhost with ``cryptography``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    authenticated: bool
    mail_options: list[str] = field(default_factory=list)

    def message(self) -> EmailMessage:
        parsed = BytesParser(policy=policy.default).parsebytes(self.data)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Sink:
    """The handler: collects messages; refuses what it is told to."""

    received: list[Received] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    """address -> reply to RCPT TO, e.g. ``"550 5.1.1 no such user"``."""
    refuse_from: dict[str, str] = field(default_factory=dict)
    """sender -> reply to MAIL FROM."""
    data_failures: int = 0
    """Answer DATA with 451 this many times first."""
    data_reply: str | None = None
    """A fixed reply to DATA (e.g. ``"554 5.7.1 rejected"``)."""
    sessions: int = 0
    store: bool = True
    count: int = 0

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.refuse_from.get(address)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        reply = self.refuse.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_failures > 0:
            self.data_failures -= 1
            return "451 4.3.0 try again later"
        if self.data_reply:
            return self.data_reply
        self.count += 1
        if self.store:
            self.received.append(
                Received(
                    mail_from=envelope.mail_from,
                    rcpt_tos=list(envelope.rcpt_tos),
                    data=bytes(envelope.original_content or envelope.content),
                    tls=session.ssl is not None
                    or server.transport.get_extra_info("ssl_object") is not None,
                    authenticated=bool(session.authenticated),
                    mail_options=list(envelope.mail_options),
                )
            )
        return "250 Message accepted"


class Authenticator:
    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user.encode(), password.encode()

    def __call__(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == self.user
            and auth_data.password == self.password
        )
        return AuthResult(success=ok, handled=False)


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A throw-away self-signed certificate for 127.0.0.1 and localhost: (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def start_sink(
    sink: Sink,
    port: int,
    *,
    tls_context: ssl.SSLContext | None = None,
    implicit_tls: bool = False,
    auth: tuple[str, str] | None = None,
    smtputf8: bool = False,
) -> Controller:
    """Start aiosmtpd on 127.0.0.1:``port`` (STARTTLS with ``tls_context``, or implicit TLS)."""
    kwargs: dict[str, Any] = {
        "hostname": "127.0.0.1",
        "port": port,
        "data_size_limit": 10_000_000,
        "enable_SMTPUTF8": smtputf8,
    }
    if tls_context is not None and implicit_tls:
        kwargs["ssl_context"] = tls_context
        kwargs["server_hostname"] = "localhost"
    elif tls_context is not None:
        kwargs["tls_context"] = tls_context
        kwargs["require_starttls"] = True
    if auth is not None:
        kwargs["authenticator"] = Authenticator(*auth)
        kwargs["auth_required"] = True
        kwargs["auth_require_tls"] = tls_context is not None
    controller = Controller(sink, **kwargs)
    controller.start()
    return controller
