"""Render a mail once for all its recipients, then fill in each recipient's own parts.

An event mail is the same for every subscriber except three template variables, the
*personal* ones: ``recipient.address``, ``recipient.name`` and ``unsubscribe_url``. Rendering
three Jinja2 templates per recipient costs more than sending the mail, so :func:`prerender`
renders them once with stand-ins (:class:`_Slot`) for the personal variables and keeps the
output as static text with holes (:class:`Prerendered`); :meth:`Prerendered.fill` puts a
recipient's values into the holes, escaped exactly as Jinja2 would have escaped them: ``str()``
in plain-text templates, :func:`markupsafe.escape` in autoescaped HTML ones.

That equals a render per recipient only if the templates do nothing with a personal variable
but print it, which the built-in ones do. An operator's template may do more (``{% if
recipient.name %}``, ``|upper``, ``|truncate``), so a prerender is used only when all of these
hold, and otherwise every mail of the event is rendered in full, as before:

- the stand-ins noticed no use other than printing: truth value, length, comparison,
  iteration, indexing, attribute access, string methods on the printed text all mark the render
  unusable (:class:`_Marker` is the printed text: a ``str`` whose methods report their use);
- every printed stand-in reached the output once and unchanged (each print yields a unique
  marker carrying a random nonce, so text from a source cannot forge one), escaped for HTML in
  HTML templates and not escaped in plain-text ones;
- filling in the values of a few probe recipients (no name, a long name full of characters
  HTML escapes, the longest address) gives exactly what rendering for them gives. This catches
  what no stand-in can see, such as ``recipient.name is none``.

Subjects are cleaned (one line, control characters removed, truncated) *after* filling in, the
same steps as for a full render, so they match too.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, nodes
from markupsafe import Markup, escape

from warnsvc.addresses import MAX_ADDRESS, MAX_NAME
from warnsvc.mail.compose import MailTemplates, Rendered, finish_subject, quoted_printable

__all__ = ["PERSONAL", "Personal", "Prerendered", "only_printed", "prerender", "probes"]

PERSONAL = ("recipient.address", "recipient.name", "unsubscribe_url")
"""The template variables that differ between recipients of one event mail."""

_TEXT, _HTML = "t", "h"


@dataclass(frozen=True, slots=True)
class Personal:
    """One recipient's values of the :data:`PERSONAL` variables."""

    address: str
    name: str | None
    unsubscribe_url: str

    def context(self) -> dict[str, Any]:
        """These values as template variables (for a full render)."""
        return {
            "recipient": {"address": self.address, "name": self.name},
            "unsubscribe_url": self.unsubscribe_url,
        }

    def values(self) -> tuple[str | None, ...]:
        return (self.address, self.name, self.unsubscribe_url)


# --------------------------------------------------------------------------- stand-ins


class _Watch:
    """What the stand-ins of one render saw: markers handed out, uses other than printing."""

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(8)
        self.issued: dict[str, tuple[int, str]] = {}
        self.misuse: str | None = None

    def marker(self, slot: int, kind: str) -> str:
        marker = f"\ue000{self.nonce}{kind}{slot}.{len(self.issued)}\ue001"
        self.issued[marker] = (slot, kind)
        return marker

    def misused(self, what: str) -> None:
        if self.misuse is None:
            self.misuse = what


class _Slot:
    """Stands in for a personal variable: printing yields a marker, anything else is reported."""

    __slots__ = ("_slot", "_watch")

    def __init__(self, watch: _Watch, slot: int) -> None:
        self._watch = watch
        self._slot = slot

    def __str__(self) -> str:
        return self._watch.marker(self._slot, _TEXT)

    def __html__(self) -> Markup:
        return Markup(self._watch.marker(self._slot, _HTML))

    def _misused(self, what: str) -> Any:
        self._watch.misused(f"{PERSONAL[self._slot]}: {what}")
        return NotImplemented

    def __getattr__(self, name: str) -> Any:
        self._watch.misused(f"{PERSONAL[self._slot]}: .{name}")
        raise AttributeError(name)

    def __repr__(self) -> str:
        self._watch.misused(f"{PERSONAL[self._slot]}: repr")
        return "<personal value>"

    def __bool__(self) -> bool:
        self._watch.misused(f"{PERSONAL[self._slot]}: truth value")
        return True

    def __len__(self) -> int:
        self._watch.misused(f"{PERSONAL[self._slot]}: length")
        return 0

    def __iter__(self) -> Any:
        self._watch.misused(f"{PERSONAL[self._slot]}: iteration")
        return iter(())

    def __hash__(self) -> int:
        self._watch.misused(f"{PERSONAL[self._slot]}: hash")
        return id(self)

    def __format__(self, spec: str) -> str:
        self._watch.misused(f"{PERSONAL[self._slot]}: format")
        return ""

    def __eq__(self, other: object) -> bool:
        self._watch.misused(f"{PERSONAL[self._slot]}: comparison")
        return False

    def __ne__(self, other: object) -> bool:
        self._watch.misused(f"{PERSONAL[self._slot]}: comparison")
        return True

    def __lt__(self, other: object) -> Any:
        return self._misused("comparison")

    __le__ = __gt__ = __ge__ = __lt__

    def __getitem__(self, key: object) -> Any:
        return self._misused("indexing")

    def __contains__(self, item: object) -> bool:
        self._watch.misused(f"{PERSONAL[self._slot]}: 'in'")
        return False

    def __add__(self, other: object) -> Any:
        return self._misused("arithmetic")

    __radd__ = __mul__ = __rmul__ = __mod__ = __rmod__ = __sub__ = __truediv__ = __add__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._misused("call")


# --------------------------------------------------------------------------- what templates do

_NAMES = {"recipient", "unsubscribe_url"}
_FIELDS = {"address", "name"}
_PRINTING = (nodes.Template, nodes.Output, nodes.If, nodes.For, nodes.Scope, nodes.With)
"""Statements whose output goes straight into the mail (not captured, filtered or reused)."""


def _personal_print(node: nodes.Node) -> bool:
    """``recipient.address``, ``recipient.name``, ``recipient["name"]``, ``unsubscribe_url``."""
    if isinstance(node, nodes.Name):
        return node.name == "unsubscribe_url" and node.ctx == "load"
    if isinstance(node, nodes.Getattr):
        field = node.attr
    elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        field = node.arg.value
    else:
        return False
    target = node.node
    return (
        field in _FIELDS
        and isinstance(target, nodes.Name)
        and target.name == "recipient"
        and target.ctx == "load"
    )


def only_printed(env: Environment, names: Sequence[str]) -> str | None:
    """None if templates ``names`` (and what they include) only print the personal variables.

    Read from the templates' syntax: every use of ``recipient`` and ``unsubscribe_url`` must be
    a plain ``{{ recipient.address }}``, ``{{ recipient.name }}`` or ``{{ unsubscribe_url }}``
    whose output goes straight into the mail (not inside ``{% filter %}``, ``{% set %}``
    blocks, macros, calls or blocks). Otherwise, why not.
    """
    seen: set[str] = set()

    def template(name: str, printing: bool) -> str | None:
        if name in seen:
            return None
        seen.add(name)
        try:
            source = env.loader.get_source(env, name)[0] if env.loader else ""
            tree = env.parse(source, name)
        except Exception as exc:
            return f"{name}: {type(exc).__name__}"
        return visit(tree, printing, name)

    def visit(node: nodes.Node, printing: bool, where: str) -> str | None:
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                if _personal_print(child):
                    if not printing:
                        return f"{where}: a personal variable printed into something reused"
                    continue
                problem = visit(child, False, where)
                if problem:
                    return problem
            return None
        if isinstance(node, nodes.Name) and node.name in _NAMES:
            return f"{where}: {node.name} used in an expression, line {node.lineno}"
        if isinstance(node, nodes.Include | nodes.Extends | nodes.Import | nodes.FromImport):
            if not isinstance(node.template, nodes.Const) or not isinstance(
                node.template.value, str
            ):
                return f"{where}: a template named at run time, line {node.lineno}"
            inlined = printing and isinstance(node, nodes.Include | nodes.Extends)
            problem = template(node.template.value, inlined)
            if problem:
                return problem
        keep = printing and isinstance(node, _PRINTING)
        for inner in node.iter_child_nodes():
            expression = isinstance(inner, nodes.Expr)
            problem = visit(inner, keep and not expression, where)
            if problem:
                return problem
        return None

    for name in names:
        problem = template(name, True)
        if problem:
            return problem
    return None


# --------------------------------------------------------------------------- prerendered mail

_Hole = tuple[int, str]
_Segments = tuple[str | _Hole, ...]
_Lines = tuple[str | _Segments, ...]


@dataclass(frozen=True, slots=True)
class Prerendered:
    """A mail rendered once: static text and personal holes, per part.

    ``text_qp`` and ``html_qp`` are the bodies by lines, ready for :meth:`encoded`: runs of lines
    without a hole already quoted-printable, lines with holes as segments to fill and encode.
    """

    subject: _Segments
    text: _Segments
    html: _Segments
    fixed_subject: str | None
    text_qp: _Lines
    html_qp: _Lines

    @classmethod
    def make(cls, subject: _Segments, text: _Segments, html: _Segments) -> Prerendered:
        fixed = None
        if all(isinstance(s, str) for s in subject):
            fixed = finish_subject("".join(s for s in subject if isinstance(s, str)))
        return cls(subject, text, html, fixed, _lines(text), _lines(html))

    def fill(self, personal: Personal) -> Rendered:
        """The mail for one recipient: what rendering it with ``personal`` gives."""
        join = _Filler(personal).join
        subject = self.fixed_subject
        if subject is None:
            subject = finish_subject(join(self.subject))
        return Rendered(subject=subject, text=join(self.text), html=join(self.html))

    def encoded(self, personal: Personal) -> tuple[str, str, str]:
        """The subject and the quoted-printable text and HTML of :meth:`fill`, made faster."""
        filler = _Filler(personal)
        if not filler.plain:  # empty, or line breaks: encode the whole text, like a full render
            rendered = self.fill(personal)
            html = quoted_printable(rendered.html)
            return rendered.subject, quoted_printable(rendered.text), html
        subject = self.fixed_subject
        if subject is None:
            subject = finish_subject(filler.join(self.subject))
        return subject, filler.encode(self.text_qp), filler.encode(self.html_qp)


class _Filler:
    """One recipient's values, escaped per kind of hole on first use."""

    __slots__ = ("filled", "plain", "values")

    def __init__(self, personal: Personal) -> None:
        self.values = personal.values()
        self.filled: dict[_Hole, str] = {}
        self.plain = all(v is None or (v and "\r" not in v and "\n" not in v) for v in self.values)

    def value(self, hole: _Hole) -> str:
        value = self.filled.get(hole)
        if value is None:
            raw = self.values[hole[0]]
            value = self.filled[hole] = str(escape(raw) if hole[1] == _HTML else raw)
        return value

    def join(self, segments: _Segments) -> str:
        return "".join(s if isinstance(s, str) else self.value(s) for s in segments)

    def encode(self, lines: _Lines) -> str:
        return "".join(
            line if isinstance(line, str) else quoted_printable(self.join(line)) for line in lines
        )


def _lines(segments: _Segments) -> _Lines:
    """``segments`` by lines, runs of lines without a hole made quoted-printable.

    Line ends are made ``\\n`` in the static text only. That is what encoding the filled-in
    whole does as long as no value is empty or holds a line break (a CR before a hole and an LF
    after it could then meet): :meth:`Prerendered.encoded` checks that.
    """
    items: list[str | _Segments] = []
    static: list[str] = []
    line: list[str | _Hole] = []

    def close() -> None:
        if all(isinstance(s, str) for s in line):
            static.append("".join(s for s in line if isinstance(s, str)))
        else:
            if static:
                items.append(quoted_printable("".join(static)))
                static.clear()
            items.append(tuple(line))
        line.clear()

    merged: list[str | _Hole] = []
    for segment in segments:  # adjacent static text: a CR and an LF may meet
        if isinstance(segment, str) and merged and isinstance(merged[-1], str):
            merged[-1] += segment
        else:
            merged.append(segment)
    for segment in merged:
        if not isinstance(segment, str):
            line.append(segment)
            continue
        *ended, rest = segment.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        for piece in ended:
            line.append(piece + "\n")
            close()
        if rest:
            line.append(rest)
    if line:
        close()
    if static:
        items.append(quoted_printable("".join(static)))
    return tuple(items)


def _split(output: str, watch: _Watch, kind: str, seen: set[str]) -> _Segments | str:
    """``output`` as segments, or why it cannot be filled in exactly."""
    pattern = re.compile(f"\ue000{watch.nonce}[{_TEXT}{_HTML}][0-9]+\\.[0-9]+\ue001")
    segments: list[str | tuple[int, str]] = []
    position = 0
    for found in pattern.finditer(output):
        marker = found.group()
        where = watch.issued.get(marker)
        if where is None or marker in seen:
            return "a personal value was printed in a changed form"
        if where[1] != kind:
            return "a personal value was escaped differently than its template escapes"
        seen.add(marker)
        segments.append(output[position : found.start()])
        segments.append(where)
        position = found.end()
    segments.append(output[position:])
    if "\ue000" + watch.nonce in "".join(s for s in segments if isinstance(s, str)):
        return "a personal value was printed in a changed form"
    return tuple(s for s in segments if s != "")


def prerender(
    templates: MailTemplates,
    kind: str,
    context: Mapping[str, Any],
    checks: Sequence[Personal],
) -> Prerendered | str:
    """Mail ``kind`` rendered once for every recipient, or why it must be rendered per recipient.

    ``context`` holds every variable but the personal ones. ``checks``: recipients whose full
    render must equal the filled-in one (see :func:`probes`).
    """
    problem = only_printed(
        templates.env, [f"email/{kind}_subject.txt", f"email/{kind}.txt", f"email/{kind}.html"]
    )
    if problem:
        return problem
    watch = _Watch()
    shared = {
        **context,
        "recipient": {"address": _Slot(watch, 0), "name": _Slot(watch, 1)},
        "unsubscribe_url": _Slot(watch, 2),
    }
    try:
        subject = templates.render(f"email/{kind}_subject.txt", shared)
        text = templates.render(f"email/{kind}.txt", shared)
        html = templates.render(f"email/{kind}.html", shared)
    except Exception as exc:  # e.g. a filter that needs a real string: render per recipient
        return f"the templates cannot render stand-ins: {type(exc).__name__}"
    if watch.misuse:
        return f"a template does more than print {watch.misuse}"
    seen: set[str] = set()
    parts = [
        _split(out, watch, k, seen) for out, k in ((subject, _TEXT), (text, _TEXT), (html, _HTML))
    ]
    for part in parts:
        if isinstance(part, str):
            return part
    if seen != watch.issued.keys():
        return "a personal value was used but not printed"
    subject_parts, text_parts, html_parts = parts
    assert not isinstance(subject_parts, str)
    assert not isinstance(text_parts, str) and not isinstance(html_parts, str)
    made = Prerendered.make(subject_parts, text_parts, html_parts)
    for personal in checks:
        try:
            full = templates.mail(kind, {**context, **personal.context()})
        except Exception as exc:
            return f"a full render fails: {type(exc).__name__}"
        if made.fill(personal) != full:
            return "filling in differs from a full render"
        encoded = (full.subject, quoted_printable(full.text), quoted_printable(full.html))
        if made.encoded(personal) != encoded:
            return "encoding by lines differs from encoding the whole"
    return made


def probes(unsubscribe_url: Callable[[str], str]) -> tuple[Personal, ...]:
    """Recipients that tell a prerender from a full render if the templates treat them apart.

    No name and a name, short and long values (the longest the service accepts), and the
    characters HTML escapes.
    """
    local = "o'hara+alerts." + "x" * 50  # 64 characters, the most an address may have
    domain = f"{'d' * 63}.{'e' * 63}.{'f' * (MAX_ADDRESS - 64 - 1 - 128 - 4)}.org"
    name = 'Ana <b>&amp; "O\'Brien" Ümit Ünlü 日本'
    long_name = " ".join([name] * (MAX_NAME // (len(name) + 1) + 1))[:MAX_NAME].strip()
    return (
        Personal(address="a@example.org", name=None, unsubscribe_url=unsubscribe_url("a")),
        Personal(
            address=f"{local}@{domain}",
            name=long_name,
            unsubscribe_url=unsubscribe_url(secrets.token_urlsafe(32) + "&x=<y>"),
        ),
        Personal(address="B@Example.org", name="b", unsubscribe_url=unsubscribe_url("t")),
    )
