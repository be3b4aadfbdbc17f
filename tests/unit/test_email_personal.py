"""Render once, fill in per recipient: the same mail as a full render, or a full render."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from warnsvc.channels.email import EmailOptions, Mailer, sender_from
from warnsvc.filters import Filter as Filters
from warnsvc.mail import personal
from warnsvc.mail.compose import Rendered, event_view, quoted_printable
from warnsvc.mail.personal import Personal, Prerendered, prerender, probes
from warnsvc.mail.smtp import SmtpConfig
from warnsvc.store import subscriptions as mailstore

BASE_URL = "https://alerts.example.org"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def payload(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "evt_1",
        "type": "risk.escalated",
        "source": {"id": "gcr2p", "name": "Global Centre <R2P> & co"},
        "situation": {
            "id": "gcr2p:sudan",
            "name": "Sudan <b>",
            "url": "https://www.globalr2p.org/countries/sudan/",
        },
        "level": {"id": "imminent-risk", "name": "Imminent Risk"},
        "previous_level": {"id": "serious-concern", "name": "Serious Concern"},
        "summary": "First & <i>second</i>.\n\nThird paragraph \ue000 with a private-use char.",
        "risk_factors": ["<script>x</script>", "Another one."],
        "occurred_at": "2024-04-30T00:00:00Z",
    }
    return {**base, **changes}


def mailer(templates_dir: Path | None = None) -> Mailer:
    return Mailer(
        EmailOptions(
            service_name="warnsvc",
            base_url=BASE_URL,
            sender=sender_from("Alerts <alerts@example.org>", None, BASE_URL),
            smtp=SmtpConfig(host="127.0.0.1", port=1),
            templates_dir=templates_dir,
        )
    )


def subscriber(n: int, address: str, name: str | None) -> mailstore.Subscriber:
    return mailstore.Subscriber(
        id=n,
        address=address,
        name=name,
        origin="self",
        status=mailstore.ACTIVE,
        mode=mailstore.IMMEDIATE,
        filters=Filters(),
        unsubscribe_token=mailstore.new_token(),
        hard_failures=0,
    )


SUBSCRIBERS = [
    subscriber(1, "ana@example.org", "Ana"),
    subscriber(2, "bo@example.org", None),
    subscriber(3, "o'hara+x@example.org", 'Ümit "Q" <b>&amp; O\'Hara'),
    subscriber(4, "long@example.org", "N" * 200),
]


def full(m: Mailer, view: dict[str, Any], sub: mailstore.Subscriber) -> Rendered:
    """What rendering the templates for this one subscriber gives."""
    return m.templates.mail("event", m._context(sub, event=view))


def parsed(data: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


def same_mail(a: bytes, b: bytes) -> None:
    """Equal but for the random MIME boundary."""
    ma, mb = parsed(a), parsed(b)
    skip = {"content-type"}
    assert [(k, v) for k, v in ma.items() if k.lower() not in skip] == [
        (k, v) for k, v in mb.items() if k.lower() not in skip
    ]
    for kind in ("plain", "html"):
        pa, pb = ma.get_body((kind,)), mb.get_body((kind,))
        assert pa is not None and pb is not None
        assert pa.get_content() == pb.get_content()


def override(tmp_path: Path, files: dict[str, str]) -> Path:
    (tmp_path / "email").mkdir(exist_ok=True)
    for name, text in files.items():
        (tmp_path / "email" / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_the_built_in_templates_render_once_and_fill_in_like_a_full_render() -> None:
    m = mailer()
    view = event_view(payload())
    mails = m.event_mails(view)
    assert mails.prerendered is not None, mails.why_not
    for sub in SUBSCRIBERS:
        assert mails.prerendered.fill(m.personal(sub)) == full(m, view, sub)
        same_mail(mails.build(sub, NOW).data, m.event_mail(view, sub, now=NOW).data)


def test_each_mail_keeps_its_own_link_headers_and_message_id() -> None:
    m = mailer()
    mails = m.event_mails(event_view(payload()))
    ana, bo = (parsed(mails.build(s, NOW).data) for s in SUBSCRIBERS[:2])
    for message, sub in ((ana, SUBSCRIBERS[0]), (bo, SUBSCRIBERS[1])):
        url = m.options.unsubscribe_url(sub.unsubscribe_token)
        assert message["List-Unsubscribe"] == f"<{url}>"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert message["Message-ID"] == f"<evt_1.{sub.id}@example.org>"
        assert sub.address in message["To"]
        body = message.get_body(("plain",))
        assert body is not None and url in body.get_content()
    assert ana["Message-ID"] != bo["Message-ID"]


def test_an_override_that_only_prints_the_personal_parts_is_rendered_once(
    tmp_path: Path,
) -> None:
    m = mailer(
        override(
            tmp_path,
            {
                "event_subject.txt": "For {{ recipient.name }}: {{ event.situation_name }}\n",
                "event.txt": (
                    "Dear {{ recipient.name }} <{{ recipient['address'] }}>,\n"
                    "{% for f in event.risk_factors %}- {{ f }} ({{ recipient.address }})\n"
                    "{% endfor %}{% if event.url %}{{ unsubscribe_url }}{% endif %}\n"
                    '{% include "email/_footer.txt" %}'
                ),
                "event.html": (
                    '<p title="{{ recipient.name }}">{{ event.situation_name }}</p>'
                    '<a href="{{ unsubscribe_url }}">{{ recipient.address }}</a>'
                ),
            },
        )
    )
    view = event_view(payload())
    mails = m.event_mails(view)
    assert mails.prerendered is not None, mails.why_not
    for sub in SUBSCRIBERS:
        filled = mails.prerendered.fill(m.personal(sub))
        assert filled == full(m, view, sub)
        assert f"Dear {sub.name} <{sub.address}>" in filled.text
    html = mails.prerendered.fill(m.personal(SUBSCRIBERS[2])).html
    assert 'title="Ümit &#34;Q&#34; &lt;b&gt;&amp;amp; O&#39;Hara"' in html


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("event.txt", "Dear {{ recipient.name or recipient.address }}"),
        ("event.txt", "{% if recipient.name %}Hi {{ recipient.name }}{% endif %}"),
        ("event.txt", "{% if recipient.name is none %}Hello{% endif %}"),
        ("event.txt", "{{ recipient.name|upper }} {{ recipient.address|length }}"),
        ("event.txt", "{{ (recipient.name ~ '!')[:60] }}"),
        ("event.txt", "{% set who = recipient.name %}{{ who|replace('N', 'M') }}"),
        ("event.txt", "{% filter replace('N', 'M') %}{{ recipient.name }}{% endfilter %}"),
        ("event.txt", "{% set b %}{{ recipient.name }}{% endset %}{{ b|truncate(20) }}"),
        ("event.txt", "{% macro hi() %}{{ recipient.name }}{% endmacro %}{{ hi()|upper }}"),
        ("event.txt", "{{ unsubscribe_url|urlencode }}"),
        ("event.html", "{{ recipient.name|safe }}"),
        ("event.html", "{{ recipient.name|e|replace('N', 'M') }}"),
        ("event_subject.txt", "{{ recipient.name|default('friend', true) }}"),
    ],
)
def test_an_override_that_does_more_is_rendered_for_each_recipient(
    tmp_path: Path, name: str, text: str
) -> None:
    m = mailer(override(tmp_path, {name: text}))
    view = event_view(payload())
    mails = m.event_mails(view)
    assert mails.prerendered is None and mails.why_not
    for sub in SUBSCRIBERS:
        same_mail(mails.build(sub, NOW).data, m.event_mail(view, sub, now=NOW).data)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{% if recipient.name %}Hi{% endif %}", "truth value"),
        ("{{ recipient.address|length }}", "length"),
        ("{{ recipient.name|string|upper }}", "not printed"),
        ("{% if recipient.name is none %}Hello{% endif %}", "differs from a full render"),
        ("{% if unsubscribe_url is string %}U{% endif %}", "differs from a full render"),
    ],
)
def test_behind_the_syntax_check_stand_ins_and_probes_still_catch_misuse(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, why: str
) -> None:
    """Defence in depth: with the syntax check switched off, the run-time checks refuse too."""
    monkeypatch.setattr(personal, "only_printed", lambda env, names: None)
    m = mailer(override(tmp_path, {"event.txt": text}))
    context = m.shared_context(event=event_view(payload()))
    made = prerender(m.templates, "event", context, probes(m.options.unsubscribe_url))
    assert isinstance(made, str) and why in made


def test_source_text_cannot_pose_as_a_personal_part() -> None:
    m = mailer()
    view = event_view(payload(summary="\ue000" + "0" * 16 + "t0.0\ue001 and \ue001"))
    mails = m.event_mails(view)
    assert mails.prerendered is not None
    for sub in SUBSCRIBERS:
        assert mails.prerendered.fill(m.personal(sub)) == full(m, view, sub)


def test_encoding_by_lines_equals_encoding_the_filled_in_whole() -> None:
    """Static lines are made quoted-printable once; the result is the same for any values."""
    rng = random.Random(4)
    pieces = ["a", " ", "\t", "=", ".", "\n", "\r\n", "\r", "é", "日本", "x" * 90, "<&>"]
    values = ["", "v", "Ünlü <b>", "a\nb", "c\r", " edge ", "y" * 120, None]
    for _ in range(400):
        parts: list[list[str | tuple[int, str]]] = [[], [], []]
        for part in parts:
            for _ in range(rng.randint(0, 12)):
                if rng.random() < 0.3:
                    part.append((rng.randint(0, 2), rng.choice("th")))
                else:
                    part.append("".join(rng.choice(pieces) for _ in range(rng.randint(1, 6))))
        made = Prerendered.make(*(tuple(p) for p in parts))
        for _ in range(5):
            address, url = rng.choice(values) or "a@example.org", rng.choice(values) or "u"
            person = Personal(address=address, name=rng.choice(values), unsubscribe_url=url)
            rendered = made.fill(person)
            assert made.encoded(person) == (
                rendered.subject,
                quoted_printable(rendered.text),
                quoted_printable(rendered.html),
            )


@given(token=st.text(max_size=48))
def test_an_unsubscribe_link_quotes_its_token_as_quote_does(token: str) -> None:
    url = mailer().options.unsubscribe_url(token)
    assert url == f"{BASE_URL}/email/unsubscribe?token={quote(token, safe='')}"
