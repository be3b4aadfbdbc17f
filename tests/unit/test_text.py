"""Tests of warnsvc.sources.text: HTML to text lines, links, titles, decoding, sniffing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warnsvc.sources.text import (
    Link,
    decode_body,
    html_links,
    html_title,
    html_to_lines,
    looks_like_html,
    normalize_space,
    render_html,
    text_to_lines,
)


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        pytest.param(
            '<div class="crumbs"><a href="/p">Populations at Risk</a> <span>Current Crisis</span>'
            "</div>",
            ["Populations at Risk Current Crisis"],
            id="breadcrumb-inline-elements-one-line",
        ),
        pytest.param(
            "<p><span>Risk Level:</span> <strong>Imminent Risk</strong></p>",
            ["Risk Level: Imminent Risk"],
            id="risk-line-inline-elements-one-line",
        ),
        pytest.param(
            "<p>One <em>two</em> <a href='#'>three</a></p><p>Four</p>",
            ["One two three", "", "Four"],
            id="paragraphs-separated-by-blank-line",
        ),
        pytest.param(
            "<div>One</div><div>Two</div>",
            ["One", "Two"],
            id="divs-are-lines-without-blank",
        ),
        pytest.param(
            "<ul><li>First item</li><li><p>Second item</p></li><li>  </li></ul>",
            ["• First item", "• Second item"],
            id="list-items-get-bullets",
        ),
        pytest.param(
            "<ul><li>Outer<ul><li>Inner</li></ul></li></ul>",
            ["• Outer", "", "• Inner"],
            id="nested-lists",
        ),
        pytest.param(
            "<p>line one<br>line two<br><br>line three</p>",
            ["line one", "line two", "", "line three"],
            id="br-and-double-br",
        ),
        pytest.param(
            "<p>a\u00a0b \t\n c\u200b\u00add</p>",
            ["a b cd"],
            id="whitespace-normalised",
        ),
        pytest.param(
            "<p>Kept</p><script>var x = 'Risk Level: Current Crisis';</script>"
            "<style>p {}</style><noscript>No JS</noscript><template><p>T</p></template>"
            "<svg><text>S</text></svg><iframe>I</iframe><form><label>F</label></form>",
            ["Kept"],
            id="dropped-elements",
        ),
        pytest.param(
            "<p>Shown</p><p hidden>Hidden</p><span aria-hidden='true'>Icon</span>",
            ["Shown"],
            id="hidden-elements",
        ),
        pytest.param(
            "<table><tr><th>Risk Level:</th><td>Current Crisis</td></tr><tr><td>x</td></tr>"
            "</table>",
            ["Risk Level: Current Crisis", "x"],
            id="table-rows-are-lines",
        ),
        pytest.param(
            "<h1>Title</h1>\n\n<p></p><p> </p><div></div><h2>Next</h2>",
            ["Title", "", "Next"],
            id="blank-runs-collapse",
        ),
        pytest.param("", [], id="empty"),
        pytest.param("<<<>>>", ["<<<>>>"], id="garbage"),
    ],
)
def test_html_to_lines(html: str, expected: list[str]) -> None:
    assert html_to_lines(html) == expected


PAGE = """<html><head><title> Ukraine -
Global Centre for the Responsibility to Protect </title></head><body>
<header><a href="/">Logo</a></header>
<nav><ul><li><a href="/populations-at-risk/">Populations at Risk</a></li>
<li><a href="/x/">Current Crisis</a></li></ul></nav>
<nav aria-label="Breadcrumb"><a href="/">Home</a> &raquo; <span>Ukraine</span></nav>
<main><h1>Ukraine</h1><p>5 April 2022</p></main>
<footer><p>Footer text</p></footer>
</body></html>"""


def test_main_element_is_preferred() -> None:
    assert html_to_lines(PAGE) == ["Ukraine", "", "5 April 2022"]


def test_whole_body_drops_nav_header_footer_but_keeps_breadcrumb() -> None:
    assert html_to_lines(PAGE, prefer_main=False) == [
        "Home » Ukraine",
        "",
        "Ukraine",
        "",
        "5 April 2022",
    ]


def test_single_article_is_used_without_main() -> None:
    html = "<nav><a href='/'>Menu</a></nav><p>Intro</p><article><p>Body</p></article>"
    assert html_to_lines(html) == ["Body"]


def test_several_articles_mean_whole_body() -> None:
    html = "<p>Intro</p><article><p>One</p></article><article><p>Two</p></article>"
    assert html_to_lines(html) == ["Intro", "", "One", "", "Two"]


def test_render_html_reports_main_and_title() -> None:
    rendered = render_html(PAGE)
    assert rendered.used_main is True
    assert rendered.title == "Ukraine - Global Centre for the Responsibility to Protect"
    assert render_html(PAGE, prefer_main=False).used_main is False


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("<title>A &amp; B</title><p>x</p>", "A & B"),
        ("<html><head></head><body>no title</body></html>", None),
        ("<title>   </title>", None),
        ("<svg><title>Icon</title></svg><p>x</p>", None),
        ("<body><svg><title>Icon</title></svg></body><title>Late</title>", "Late"),
    ],
)
def test_html_title(html: str, expected: str | None) -> None:
    assert html_title(html) == expected


def test_links_carry_their_lines() -> None:
    html = (
        "<main><h2>Current Crisis</h2>"
        "<a href='/countries/af/'><img src='a.jpg'></a>"
        "<h3><a href='/countries/af/' title='Afghanistan page'>Afghanistan</a></h3>"
        "<p>Blurb text.</p><a href='/countries/af/' aria-label='More'>Continue <b>Reading</b></a>"
        "<div><a name='anchor-without-href'>x</a></div></main>"
    )
    lines = html_to_lines(html)
    assert lines == [
        "Current Crisis",
        "",
        "Afghanistan",
        "",
        "Blurb text.",
        "",
        "Continue Reading",
        "x",
    ]
    assert html_links(html) == [
        Link("/countries/af/", "", None, 2, 2),
        Link("/countries/af/", "Afghanistan", "Afghanistan page", 2, 2),
        Link("/countries/af/", "Continue Reading", "More", 6, 6),
    ]


def test_link_wrapping_blocks_spans_lines() -> None:
    html = "<a href='/countries/x/'><h3>Name</h3><p>Blurb.</p></a>"
    assert html_links(html) == [Link("/countries/x/", "Name Blurb.", None, 0, 2)]


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        ("<!DOCTYPE html><html><body>x</body></html>", None, True),
        ("\ufeff  <html><p>x</p></html>", "text/plain", True),
        ("<p>one</p><p>two</p>", None, True),
        ("Risk Level: <b>x</b> only one tag", None, False),
        ("<p>x</p>", "text/html; charset=utf-8", True),
        ("<p>one</p><p>two</p>", "text/plain", False),
        ("Plain text only", "text/html", False),
        ("Nagorno-Karabakh (Armenia/Azerbaijan)\n\n31 August 2023\n", None, False),
        ("<?xml version='1.0'?>\n<html xmlns='http://www.w3.org/1999/xhtml'/>", None, True),
        ("", None, False),
    ],
)
def test_looks_like_html(body: str, content_type: str | None, expected: bool) -> None:
    assert looks_like_html(body, content_type) is expected


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        ("café".encode(), "text/html; charset=UTF-8", "café"),
        ("café".encode("latin-1"), 'text/html; charset="ISO-8859-1"', "café"),
        (b"\x93quoted\x94", "text/plain; charset=us-ascii", "\u201cquoted\u201d"),
        (
            b'<meta charset="windows-1252"><p>caf\xe9</p>',
            None,
            '<meta charset="windows-1252"><p>café</p>',
        ),
        (
            b'<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-15">\xa4',
            "text/html",
            '<meta http-equiv="Content-Type" content="text/html; charset=iso-8859-15">€',
        ),
        (b"\xef\xbb\xbfbom", "text/html; charset=latin-1", "bom"),
        ("é".encode("utf-16"), None, "é"),
        (b"bad \xff byte", None, "bad \ufffd byte"),
        (b"x", "text/html; charset=no-such-charset", "x"),
        (b"x", "text/html; charset=rot13", "x"),
        (b"", None, ""),
    ],
)
def test_decode_body(body: bytes, content_type: str | None, expected: str) -> None:
    assert decode_body(body, content_type) == expected


def test_text_to_lines_normalises() -> None:
    text = "\ufeffTitle\r\n\r\n\r\n31\u00a0August  2023\rRisk Level: X\n   • item  \n\n\n"
    assert text_to_lines(text) == ["Title", "", "31 August 2023", "Risk Level: X", "• item"]


def test_normalize_space() -> None:
    assert normalize_space("\u2003a\u00a0\u00a0b\u200b\n") == "a b"


INVISIBLE_MARKS = "\u00ad\u200b\u200c\u200d\u2060\ufeff"


@pytest.mark.parametrize("plane", [range(0x3100), range(0xFE00, 0x10000), range(0x1F000, 0x1F100)])
def test_normalize_space_treats_each_character_by_its_class(plane: range) -> None:
    """Every Unicode space (as str.isspace) is spacing, the six invisible marks vanish and
    every other character stays as it is, between words and at either end."""
    for point in plane:
        char = chr(point)
        if 0xD800 <= point <= 0xDFFF:
            continue
        if char in INVISIBLE_MARKS:
            middle, ends = "ab", "ab"
        elif char.isspace():
            middle, ends = "a b", "a b"
        else:
            middle, ends = f"a{char}{char}b", f"{char}a{char}b{char}"
        assert normalize_space(f"a{char}{char}b") == middle, hex(point)
        assert normalize_space(f"{char}a{char}b{char}") == ends, hex(point)


HTML_TOKENS = st.sampled_from(
    [
        "<p>", "</p>", "<li>", "</li>", "<ul>", "<div>", "</div>", "<br>", "<main>", "</main>",
        "<nav>", "<a href='/countries/x/'>", "<a href='http://[bad'>", "</a>", "<script>",
        "<title>", "</title>", "<!--", "-->", "<svg>", "&nbsp;", "&amp;", "Risk Level:",
        "Current Crisis", "\n", " ", "•", "<td>", "<article>", "<a>", "<li hidden>",
    ]
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(HTML_TOKENS, st.text(max_size=8)), max_size=40).map("".join))
def test_html_functions_never_raise(html: str) -> None:
    rendered = render_html(html)
    assert all(line == line.strip() for line in rendered.lines)
    assert not rendered.lines or (rendered.lines[0] and rendered.lines[-1])
    assert all(0 <= link.line <= link.end_line for link in rendered.links)
    assert html_to_lines(html, prefer_main=False) == render_html(html, prefer_main=False).lines
    html_title(html)
    looks_like_html(html, None)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.one_of(st.none(), st.text(max_size=30)))
def test_decode_body_never_raises(body: bytes, content_type: str | None) -> None:
    assert isinstance(decode_body(body, content_type), str)
