"""Tests of the GCR2P parsers on the seed page, the real captures and pages written by us."""

from __future__ import annotations

import csv
from datetime import date, datetime
from html import escape
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warnsvc.errors import NoRiskInformationError, SourceParseError, UnknownLevelError
from warnsvc.model import GCR2P_SCALE, Observation, Scale, Status
from warnsvc.sources.gcr2p import parse_country_page, parse_index_page

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "gcr2p"
SEED = (FIXTURES / "seed-nagorno-karabakh-2023-08-31.txt").read_text(encoding="utf-8")
INDEX_URL = "https://www.globalr2p.org/populations-at-risk/"

SEED_SUMMARY = (
    "The ongoing blockade of the Lachin corridor by Azerbaijani authorities threatens "
    "populations in Nagorno-Karabakh with violations that may constitute war crimes and "
    "crimes against humanity."
)
SEED_RISK_FACTORS = (
    "Decades of serious violations of International Human Rights Law and International "
    "Humanitarian Law (IHL), as well as impunity for all parties to the conflict.",
    "Evidence of conduct interfering with or impeding delivery or access to supplies, "
    "facilities, equipment, objects or medical or humanitarian support indispensable to the "
    "survival of the civilian population.",
    "Ethnic tensions between Armenians and Azerbaijanis, fueling cycles of violence and lack "
    "of genuine commitment to peace agreements.",
    "Establishment of a new military border point separating Armenia and the primarily "
    "ethnic Armenian enclave, which is surrounded by Azeri territory.",
    "History of atrocity crimes perpetrated against the ethnic Armenian population.",
)
ISRAEL_SUMMARY = (
    "Israeli forces have perpetrated likely atrocity crimes in Gaza and the Occupied West "
    "Bank, including possible war crimes, crimes against humanity, ethnic cleansing and "
    "genocide. Hamas and other Palestinian armed groups have also perpetrated likely atrocity "
    "crimes."
)
UKRAINE_SUMMARY = (
    "Russian forces have perpetrated possible war crimes and crimes against humanity during "
    "their invasion in Ukraine. Ukrainian and Russian forces have also been accused of "
    "committing potential crimes in the Donbas region since 2014."
)
VENEZUELA_SUMMARY = (
    "Systematic human rights violations and abuses, as well as ongoing political conflict in "
    "Venezuela are putting populations at risk of potential crimes against humanity."
)
SOUTH_SUDAN_SUMMARY = (
    "Despite the August 2015 peace agreement, ongoing armed conflict in South Sudan poses a "
    "direct threat to populations who are being targeted on the basis of ethnicity and "
    "presumed political loyalties."
)


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def assert_seed(observation: Observation, *, url: str | None = None) -> None:
    assert observation == Observation(
        situation="gcr2p:nagorno-karabakh",
        name="Nagorno-Karabakh (Armenia/Azerbaijan)",
        level="imminent-risk",
        status=Status.ASSESSED,
        date=date(2023, 8, 31),
        url=url,
        summary=SEED_SUMMARY,
        risk_factors=SEED_RISK_FACTORS,
        key_figure=None,
    )


# --------------------------------------------------------------------------- the seed page


def test_seed_text_is_the_shared_seed() -> None:
    shared = Path(__file__).resolve().parents[3] / "shared" / "seed"
    copies = sorted(shared.glob("000_*.txt")) if shared.is_dir() else []
    if not copies:
        pytest.skip("the shared seed directory is not next to this checkout")
    assert (
        copies[0].read_bytes() == (FIXTURES / "seed-nagorno-karabakh-2023-08-31.txt").read_bytes()
    )


@pytest.mark.parametrize("content_type", [None, "text/plain; charset=utf-8"])
def test_seed_as_plain_text(content_type: str | None) -> None:
    url = "https://www.globalr2p.org/countries/nagorno-karabakh-armenia-azerbaijan/"
    assert_seed(parse_country_page(SEED, url=url, content_type=content_type), url=url)


def seed_html(*, main: bool, nav: str, footer: str) -> str:
    """The seed page in ordinary markup: title, menu, <main> (or not), <h1>, <p>, <ul>, footer."""
    lines = [line.strip() for line in SEED.splitlines()]
    footer_at = lines.index("Sign up for our newsletter and stay up to date on R2P news and alerts")
    content = [f"<h1>{escape(lines[0])}</h1>"]
    items: list[str] = []
    for line in lines[1:footer_at]:
        if line.startswith("•"):
            items.append(f"<li>{escape(line.removeprefix('•').strip())}</li>")
            continue
        if items:
            content.append("<ul class='factors'>" + "\n".join(items) + "</ul>")
            items = []
        if line.startswith("Risk Level:"):
            content.append(
                "<div class='risk'><span>Risk Level:</span> <strong>Imminent Risk</strong></div>"
            )
        elif line:
            content.append(f"<p>{escape(line)}</p>")
    menu = (
        f"<{nav} class='menu'><ul>"
        "<li><a href='/'>Home</a></li>"
        "<li><a href='/populations-at-risk/'>Populations at Risk</a><ul>"
        "<li><a href='/populations-at-risk/#cc'>Current Crisis</a></li>"
        "<li><a href='/populations-at-risk/#ir'>Imminent Risk</a></li></ul></li>"
        f"</ul></{nav}>"
    )
    wrapper = "main" if main else "div"
    foot = "".join(f"<p>{escape(line)}</p>" for line in lines[footer_at:] if line)
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{escape(lines[0])} - Global Centre for the Responsibility to Protect</title>"
        "<script>var levels = ['Risk Level: Current Crisis'];</script></head><body>"
        f"{menu}<{wrapper} id='content'>{''.join(content)}</{wrapper}>"
        f"<{footer} class='footer'>{foot}</{footer}></body></html>"
    )


@pytest.mark.parametrize(
    ("main", "nav", "footer"),
    [
        (True, "nav", "footer"),
        (False, "nav", "footer"),
        (False, "div", "footer"),
        (True, "div", "div"),
        (False, "div", "div"),
    ],
)
@pytest.mark.parametrize("content_type", [None, "text/html; charset=utf-8"])
def test_seed_as_html(main: bool, nav: str, footer: str, content_type: str | None) -> None:
    html = seed_html(main=main, nav=nav, footer=footer)
    assert_seed(parse_country_page(html, content_type=content_type))


def test_seed_html_bytes_survive_a_plain_text_content_type() -> None:
    html = seed_html(main=True, nav="nav", footer="footer")
    assert_seed(parse_country_page(html, content_type="text/plain"))


# --------------------------------------------------------------------------- real captures


def manifest_rows() -> list[dict[str, str]]:
    with (FIXTURES / "MANIFEST.tsv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


COUNTRY_ROWS = [row for row in manifest_rows() if "index" not in row["file"]]
NAMES_NOT_IN_MANIFEST = {
    "16-venezuela-regions-old-pss.txt": "Venezuela",
    "25-ukraine-2022-04-05.txt": "Ukraine",
}
LEVEL_IDS = {
    "Current Crisis": "current-crisis",
    "Imminent Risk": "imminent-risk",
    "Serious Concern": "serious-concern",
}


@pytest.mark.parametrize("row", COUNTRY_ROWS, ids=[row["file"] for row in COUNTRY_ROWS])
def test_capture_matches_manifest(row: dict[str, str]) -> None:
    observation = parse_country_page(fixture(row["file"]), url=row["url"])
    printed_level = row["risk_level_on_page"]
    if printed_level == "Previously Studied Situations":
        assert (observation.level, observation.status) == (None, Status.PREVIOUSLY_STUDIED)
    else:
        assert (observation.level, observation.status) == (
            LEVEL_IDS[printed_level],
            Status.ASSESSED,
        )
    printed_date = row["date_on_page"]
    expected_date = (
        None if printed_date == "none" else datetime.strptime(printed_date, "%d %B %Y").date()
    )
    assert observation.date == expected_date
    expected_name = NAMES_NOT_IN_MANIFEST.get(row["file"], row["title"])
    assert observation.name == expected_name
    assert observation.url == row["url"]
    assert observation.risk_factors == ()


@pytest.mark.parametrize(
    ("file", "situation", "summary", "key_figure"),
    [
        ("16-venezuela-regions-old-pss.txt", "gcr2p:venezuela", VENEZUELA_SUMMARY, None),
        ("23-south-sudan-regions-old-v1.txt", "gcr2p:south-sudan", SOUTH_SUDAN_SUMMARY, None),
        (
            "25-ukraine-2022-04-05.txt",
            "gcr2p:ukraine",
            UKRAINE_SUMMARY,
            "More than 10 million displaced since 24 February",
        ),
        (
            "29-israel-opt-2024-12-01.txt",
            "gcr2p:israel-and-the-occupied-palestinian-territory",
            ISRAEL_SUMMARY,
            None,
        ),
    ],
)
def test_capture_situation_summary_and_key_figure(
    file: str, situation: str, summary: str, key_figure: str | None
) -> None:
    url = next(row["url"] for row in COUNTRY_ROWS if row["file"] == file)
    observation = parse_country_page(fixture(file), url=url)
    assert (observation.situation, observation.summary, observation.key_figure) == (
        situation,
        summary,
        key_figure,
    )


def test_capture_without_url_or_title_names_nothing() -> None:
    observation = parse_country_page(fixture("25-ukraine-2022-04-05.txt"))
    assert (observation.situation, observation.name, observation.level) == (
        None,
        None,
        "current-crisis",
    )


ISRAEL = fixture("29-israel-opt-2024-12-01.txt")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(ISRAEL, id="heading-on-its-own-line"),
        pytest.param(
            ISRAEL.replace("BACKGROUND:\n\nSince", "BACKGROUND:Since"), id="glued-to-text"
        ),
        pytest.param(ISRAEL.replace("BACKGROUND:\n\nSince", "BACKGROUND: Since"), id="glued-space"),
        pytest.param(
            ISRAEL.replace("crimes.\n\nBACKGROUND:\n\nSince", "crimes.BACKGROUND:Since"),
            id="glued-to-summary",
        ),
        pytest.param(
            ISRAEL.replace("crimes.\n\nBACKGROUND:", "crimes.\n\nBackground"), id="title-case"
        ),
        pytest.param(
            ISRAEL.replace(
                "Risk Level: Current Crisis\n\nIsraeli",
                "Risk Level: Current Crisis\nBACKGROUND:Since 7 October 2023 ...\n\nIsraeli",
            ),
            id="background-before-summary",
        ),
    ],
)
def test_background_is_never_the_summary(body: str) -> None:
    observation = parse_country_page(body)
    expected = "" if "Crisis\nBACKGROUND" in body else ISRAEL_SUMMARY
    assert observation.summary == expected
    assert observation.name == "Israel and the Occupied Palestinian Territory"
    assert observation.key_figure is None


# --------------------------------------------------------------------------- written HTML pages


def test_written_current_layout_html() -> None:
    url = "https://www.globalr2p.org/countries/israel-and-the-occupied-palestinian-territory/"
    observation = parse_country_page(
        fixture("written-country-current-layout.html"), url=url, content_type="text/html"
    )
    assert observation == Observation(
        situation="gcr2p:israel-and-the-occupied-palestinian-territory",
        name="Israel and the Occupied Palestinian Territory",
        level="current-crisis",
        status=Status.ASSESSED,
        date=date(2024, 12, 1),
        url=url,
        summary=ISRAEL_SUMMARY,
        risk_factors=(
            "Widespread attacks on civilians and civilian objects.",
            "Obstruction of humanitarian assistance.",
        ),
        key_figure="More than 44,000 Palestinians killed since October 2023",
    )


def test_written_old_layout_html_ignores_the_menu() -> None:
    url = "http://www.globalr2p.org/regions/burundi"
    observation = parse_country_page(fixture("written-country-old-layout.html"), url=url)
    assert observation == Observation(
        situation="gcr2p:burundi",
        name="Burundi",
        level="serious-concern",
        status=Status.ASSESSED,
        date=None,
        url=url,
        summary=(
            "Political violence and impunity continue to put populations in Burundi at risk of "
            "crimes against humanity."
        ),
        risk_factors=(
            "A history of mass atrocity crimes and impunity for their perpetrators.",
            "Hate speech targeting ethnic and political groups.",
            "Restrictions on civil society and independent media.",
        ),
    )


def test_breadcrumb_outside_main_is_found_in_the_whole_page() -> None:
    html = (
        "<html><body><div class='crumbs'><a href='/regions/'>Populations at Risk</a> "
        "<span>Imminent Risk</span></div><main><h1>Kenya</h1><p>Inter-communal violence "
        "before elections could put populations at risk.</p></main></body></html>"
    )
    observation = parse_country_page(html)
    assert (observation.situation, observation.level) == ("gcr2p:kenya", "imminent-risk")


# --------------------------------------------------------------------------- levels and statuses

HEAD = "Sudan (Darfur)\n\n1 June 2022\n"
TAIL = "\n\nArmed groups have killed civilians in Darfur, and the fighting continues to spread.\n"


@pytest.mark.parametrize(
    ("risk", "level", "status"),
    [
        ("Risk Level: Current Crisis", "current-crisis", Status.ASSESSED),
        ("Risk Level: Current crisis", "current-crisis", Status.ASSESSED),
        ("RISK LEVEL: CURRENT CRISIS", "current-crisis", Status.ASSESSED),
        ("Risk level:    imminent   risk", "imminent-risk", Status.ASSESSED),
        ("Risk Level:Serious Concern.", "serious-concern", Status.ASSESSED),
        ("Risk Level:\nImminent Risk", "imminent-risk", Status.ASSESSED),
        ("Risk Level:\n\n  CURRENT CRISIS  ", "current-crisis", Status.ASSESSED),
        ("Risk Level\nCurrent Crisis", "current-crisis", Status.ASSESSED),
        ("Risk Level \u2013 Current Crisis", "current-crisis", Status.ASSESSED),
        ("Risk Level: Previously Studied Situations", None, Status.PREVIOUSLY_STUDIED),
        ("Risk Level: Previously studied situation", None, Status.PREVIOUSLY_STUDIED),
    ],
)
def test_risk_line_variants(risk: str, level: str | None, status: Status) -> None:
    observation = parse_country_page(HEAD + risk + TAIL)
    assert (observation.level, observation.status) == (level, status)
    assert observation.name == "Sudan (Darfur)"
    assert observation.situation == "gcr2p:sudan"
    assert observation.date == date(2022, 6, 1)
    assert observation.summary == TAIL.strip()


@pytest.mark.parametrize(
    ("breadcrumb", "level", "status"),
    [
        ("Populations at Risk Current Crisis", "current-crisis", Status.ASSESSED),
        ("Populations at Risk CURRENT CRISIS", "current-crisis", Status.ASSESSED),
        ("POPULATIONS AT RISK Imminent risk", "imminent-risk", Status.ASSESSED),
        ("Populations at Risk » Serious Concern", "serious-concern", Status.ASSESSED),
        ("Home » Populations at Risk » Current Crisis » Sudan", "current-crisis", Status.ASSESSED),
        ("Populations at RiskCurrent Crisis", "current-crisis", Status.ASSESSED),
        ("Populations at Risk Previously Studied Situations", None, Status.PREVIOUSLY_STUDIED),
        ("Populations at Risk Previously Studied Situation", None, Status.PREVIOUSLY_STUDIED),
    ],
)
def test_breadcrumb_variants(breadcrumb: str, level: str | None, status: Status) -> None:
    observation = parse_country_page(f"{breadcrumb}\n\nSudan\n{TAIL}")
    assert (observation.level, observation.status) == (level, status)
    assert (observation.name, observation.date, observation.summary) == (
        "Sudan",
        None,
        TAIL.strip(),
    )


@pytest.mark.parametrize(
    ("body", "unknown"),
    [
        (HEAD + "Risk Level: Moderate" + TAIL, "Moderate"),
        (HEAD + "RISK LEVEL: low risk" + TAIL, "low risk"),
        (HEAD + "Risk Level:\nElevated" + TAIL, "Elevated"),
    ],
)
def test_unknown_level_is_an_error(body: str, unknown: str) -> None:
    with pytest.raises(UnknownLevelError) as caught:
        parse_country_page(body)
    assert caught.value.name == unknown
    assert caught.value.known == ["Serious Concern", "Imminent Risk", "Current Crisis"]


def test_unknown_level_of_a_custom_scale() -> None:
    scale = Scale.build("two", "Two levels", [("low", "Low", ()), ("high", "High", ("Severe",))])
    assert parse_country_page(HEAD + "Risk Level: severe" + TAIL, scale=scale).level == "high"
    with pytest.raises(UnknownLevelError):
        parse_country_page(HEAD + "Risk Level: Current Crisis" + TAIL, scale=scale)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("", None),
        ("   \n\n ", None),
        ("Just some text about a country.\nNothing else.", None),
        (SEED[: SEED.index("Risk Level")], None),
        ("<html><body><p>hello</p></body></html>", "text/html"),
        ("<<<>>><div><<p>>&&&;</", "text/html"),
        (
            "<nav><ul><li>Populations at Risk</li><li>Current Crisis</li></ul></nav>"
            "<div><a href='/'>Populations at Risk</a></div><div>Current Crisis</div>"
            "<main><h1>Title</h1></main>",
            None,
        ),
        ("Populations at Risk\nCurrent Crisis\nImminent Risk\n", None),
        ("Populations at Risk Current Crisis Imminent Risk Serious Concern\nTitle\n", None),
        ("Risk Level:\n\n", None),
    ],
)
def test_no_risk_information(body: str, content_type: str | None) -> None:
    with pytest.raises(NoRiskInformationError) as caught:
        parse_country_page(body, content_type=content_type)
    assert "\n" not in str(caught.value)


def test_no_risk_information_message() -> None:
    with pytest.raises(
        NoRiskInformationError, match=r"^no 'Risk Level:' line or level breadcrumb found$"
    ):
        parse_country_page("nothing here")


# --------------------------------------------------------------------------- dates and names


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        ("1 June 2022", date(2022, 6, 1)),
        ("01 June 2022", date(2022, 6, 1)),
        ("June 1, 2022", date(2022, 6, 1)),
        ("June 1 2022", date(2022, 6, 1)),
        ("1 Jun 2022", date(2022, 6, 1)),
        ("Sept. 30, 2021", date(2021, 9, 30)),
        ("Last updated: 15 March 2025", date(2025, 3, 15)),
        ("Wednesday, 31 August 2023", date(2023, 8, 31)),
        ("31 February 2023", None),
        ("2022-06-01", date(2022, 6, 1)),
    ],
)
def test_date_formats(printed: str, expected: date | None) -> None:
    observation = parse_country_page(f"Sudan\n\n{printed}\nRisk Level: Current Crisis{TAIL}")
    assert observation.date == expected
    assert observation.name == ("Sudan" if expected else None)


def test_date_on_the_risk_line() -> None:
    html = (
        "<main><h1>Sudan</h1><div class='meta'><span>5 April 2022</span> <span>Risk Level:</span>"
        " <b>Current Crisis</b></div><p>Armed groups have killed civilians in Darfur, and the "
        "fighting continues to spread.</p></main>"
    )
    observation = parse_country_page(html)
    assert (observation.name, observation.date, observation.level, observation.summary) == (
        "Sudan",
        date(2022, 4, 5),
        "current-crisis",
        TAIL.strip(),
    )


def test_risk_level_inside_a_sentence_is_not_a_risk_line() -> None:
    body = "Sudan\n\nThe risk level: it is rising, observers say.\n" + TAIL
    with pytest.raises(NoRiskInformationError):
        parse_country_page(body)


def test_date_after_the_risk_line() -> None:
    observation = parse_country_page(f"Sudan\nRisk Level: Current Crisis\n5 April 2022{TAIL}")
    assert (observation.name, observation.date, observation.summary) == (
        "Sudan",
        date(2022, 4, 5),
        TAIL.strip(),
    )


NO_TITLE = "5 April 2022\nRisk Level: Current Crisis" + TAIL


@pytest.mark.parametrize(
    ("title", "hint", "url", "name", "situation"),
    [
        (
            "Ukraine - Global Centre for the Responsibility to Protect",
            None,
            None,
            "Ukraine",
            "gcr2p:ukraine",
        ),
        (
            "Ukraine | Global Centre for the Responsibility to Protect",
            None,
            None,
            "Ukraine",
            "gcr2p:ukraine",
        ),
        (
            "Ukraine \u2013 Global Centre for the Responsibility to Protect",
            "x",
            None,
            "Ukraine",
            "gcr2p:ukraine",
        ),
        (
            "Nagorno-Karabakh (Armenia/Azerbaijan) - "
            "Global Centre for the Responsibility to Protect",
            None,
            None,
            "Nagorno-Karabakh (Armenia/Azerbaijan)",
            "gcr2p:nagorno-karabakh",
        ),
        ("Global Centre for the Responsibility to Protect", "Mali", None, "Mali", "gcr2p:mali"),
        (
            "Some page",
            None,
            "https://www.globalr2p.org/countries/ukraine/",
            "Ukraine",
            "gcr2p:ukraine",
        ),
        (
            None,
            "  ",
            "http://www.globalr2p.org/regions/south_sudan",
            "South Sudan",
            "gcr2p:south-sudan",
        ),
        (
            None,
            None,
            "https://globalr2p.org/countries/democratic-republic-of-the-congo?x=1#top",
            "Democratic Republic of the Congo",
            "gcr2p:democratic-republic-of-the-congo",
        ),
        (None, None, "https://www.globalr2p.org/populations-at-risk/", None, None),
        (None, None, "http://[broken", None, None),
        (None, None, None, None, None),
    ],
)
def test_name_fallbacks(
    title: str | None, hint: str | None, url: str | None, name: str | None, situation: str | None
) -> None:
    if title is None:
        body, content_type = NO_TITLE, None
    else:
        paragraphs = "".join(f"<p>{escape(line)}</p>" for line in NO_TITLE.splitlines() if line)
        body, content_type = f"<title>{escape(title)}</title><main>{paragraphs}</main>", "text/html"
    observation = parse_country_page(body, url=url, content_type=content_type, name_hint=hint)
    assert (observation.name, observation.situation, observation.url) == (name, situation, url)
    assert (observation.level, observation.date) == ("current-crisis", date(2022, 4, 5))


def test_custom_namespace() -> None:
    assert parse_country_page(SEED, namespace="r2p").situation == "r2p:nagorno-karabakh"


def test_share_buttons_are_not_a_title() -> None:
    body = "Sudan\n\nShare\n5 April 2022\nRisk Level: Current Crisis" + TAIL
    assert parse_country_page(body, name_hint="Sudan (hint)").name == "Sudan (hint)"


def test_title_must_look_like_a_title() -> None:
    body = "This sentence is not a title.\n5 April 2022\nRisk Level: Current Crisis" + TAIL
    assert parse_country_page(body, name_hint="Sudan").name == "Sudan"


# --------------------------------------------------------------------------- risk factors


@pytest.mark.parametrize(
    ("bullets", "expected"),
    [
        (
            "• One risk factor here.\n• Two risk factors here.",
            ("One risk factor here.", "Two risk factors here."),
        ),
        (
            "- One risk factor here.\n\n- Two risk factors here.",
            ("One risk factor here.", "Two risk factors here."),
        ),
        (
            "* One risk factor here.\n*   Two risk factors here.",
            ("One risk factor here.", "Two risk factors here."),
        ),
        ("•No space after bullet here.", ("No space after bullet here.",)),
        ("• Share\n• Print\n\nText.\n\n• Real factor number one.", ("Real factor number one.",)),
        ("No list at all.", ()),
    ],
)
def test_risk_factor_lists(bullets: str, expected: tuple[str, ...]) -> None:
    body = HEAD + "Risk Level: Current Crisis" + TAIL + "\nAnalysis text.\n\n" + bullets + "\n"
    assert parse_country_page(body).risk_factors == expected


def test_risk_factors_prefer_the_list_under_their_heading() -> None:
    body = (
        HEAD + "Risk Level: Current Crisis" + TAIL
        + "\n• An earlier list of recent events.\n• Another recent event here.\n"
        + "\nATROCITY RISK ASSESSMENT:\nThe following factors apply:\n"
        + "• The first actual risk factor.\n• The second actual risk factor.\n"
        + "\nNECESSARY ACTION:\nSomething must be done.\n"
    )  # fmt: skip
    assert parse_country_page(body).risk_factors == (
        "The first actual risk factor.",
        "The second actual risk factor.",
    )


# --------------------------------------------------------------------------- the index


def test_real_index_capture() -> None:
    observations = parse_index_page(fixture("03-index-populations-at-risk-new.txt"), url=INDEX_URL)
    assert [(o.situation, o.name, o.level, o.status, o.url) for o in observations] == [
        (None, None, "current-crisis", Status.ASSESSED, None),
        (None, None, "current-crisis", Status.ASSESSED, None),
        (
            "gcr2p:central-sahel",
            "Central Sahel (Burkina Faso, Mali and Niger)",
            "current-crisis",
            Status.ASSESSED,
            None,
        ),
        (None, None, "current-crisis", Status.ASSESSED, None),
        (
            "gcr2p:democratic-republic-of-the-congo",
            "Democratic Republic of the Congo",
            "current-crisis",
            Status.ASSESSED,
            None,
        ),
        (None, None, "current-crisis", Status.ASSESSED, None),
    ]
    assert [o.summary for o in observations] == [
        "Populations in Afghanistan remain at risk of further mass atrocity crimes under Taliban "
        "rule. Other armed extremist groups also threaten civilians.",
        "Civilians in the Anglophone regions of Cameroon continue to face atrocity crimes due to "
        "widespread violence between government forces and armed separatists.",
        "Populations in the Central Sahel – Burkina Faso, Mali and Niger – face atrocity crimes "
        "as a result of attacks by Islamist armed groups and security forces, as well as growing "
        'conflict between ethnic militias and community "self-defense groups."',
        "The systematic persecution of Uyghurs and other majority-Muslim ethnic groups in China "
        "may amount to crimes against humanity and genocide.",
        "Various armed groups in the Democratic Republic of the Congo continue to perpetrate "
        "crimes against humanity, resulting in the largest displacement crisis in Africa.",
        "Parties to the conflict in the Tigray, Amhara and Afar regions have perpetrated possible "
        "war crimes and crimes against humanity. Populations across Ethiopia are also at risk as "
        "a result of a surge",
    ]
    assert all(
        o.date is None and o.risk_factors == () and o.key_figure is None for o in observations
    )


WRITTEN_INDEX = fixture("written-index-sections.html")
BASE = "https://www.globalr2p.org"
EXPECTED_WRITTEN_INDEX = [
    (
        "gcr2p:afghanistan",
        "Afghanistan",
        "current-crisis",
        Status.ASSESSED,
        f"{BASE}/countries/afghanistan/",
        "Populations in Afghanistan remain at risk of further mass atrocity crimes under "
        "Taliban rule.",
    ),
    (
        "gcr2p:cameroon",
        "Cameroon",
        "current-crisis",
        Status.ASSESSED,
        f"{BASE}/countries/cameroon/",
        "Civilians in the Anglophone regions of Cameroon continue to face atrocity crimes due to "
        "widespread violence.",
    ),
    (
        "gcr2p:israel-and-the-occupied-palestinian-territory",
        "Israel and the Occupied Palestinian Territory",
        "current-crisis",
        Status.ASSESSED,
        f"{BASE}/countries/israel-and-the-occupied-palestinian-territories/",
        "Israeli forces and Palestinian armed groups have perpetrated likely atrocity crimes.",
    ),
    (
        "gcr2p:democratic-republic-of-the-congo",
        "Democratic Republic of the Congo",
        "current-crisis",
        Status.ASSESSED,
        f"{BASE}/countries/drc/",
        "Various armed groups continue to perpetrate crimes against humanity in the east of the "
        "country.",
    ),
    (
        "gcr2p:ethiopia",
        "Ethiopia",
        "imminent-risk",
        Status.ASSESSED,
        f"{BASE}/countries/ethiopia/",
        "Populations across Ethiopia are at risk as a result of a surge in identity-based "
        "violence.",
    ),
    (
        "gcr2p:central-sahel",
        "Central Sahel (Burkina Faso, Mali and Niger)",
        "imminent-risk",
        Status.ASSESSED,
        f"{BASE}/countries/central-sahel/",
        "Populations in the Central Sahel face atrocity crimes as a result of attacks by armed "
        "groups.",
    ),
    (
        "gcr2p:burundi",
        "Burundi",
        "serious-concern",
        Status.ASSESSED,
        f"{BASE}/regions/burundi",
        "Political violence and impunity continue to put populations in Burundi at risk.",
    ),
    (
        "gcr2p:kenya",
        "Kenya",
        "serious-concern",
        Status.ASSESSED,
        f"{BASE}/regions/kenya",
        "Inter-communal violence before elections could put populations at risk.",
    ),
    (
        "gcr2p:venezuela",
        "Venezuela",
        None,
        Status.PREVIOUSLY_STUDIED,
        f"{BASE}/regions/venezuela",
        "",
    ),
    (
        "gcr2p:south-sudan",
        "South Sudan",
        None,
        Status.PREVIOUSLY_STUDIED,
        f"{BASE}/regions/south_sudan",
        "",
    ),
]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(WRITTEN_INDEX, id="with-main"),
        pytest.param(
            WRITTEN_INDEX.replace("<main", "<div").replace("</main>", "</div>"), id="whole-body"
        ),
        pytest.param(
            WRITTEN_INDEX.replace("<header", "<div")
            .replace("</header>", "</div>")
            .replace("<nav", "<div")
            .replace("</nav>", "</div>")
            .replace("<main", "<div")
            .replace("</main>", "</div>"),
            id="menu-without-nav-elements",
        ),
    ],
)
def test_written_index(body: str) -> None:
    observations = parse_index_page(body, url=INDEX_URL, content_type="text/html")
    assert [
        (o.situation, o.name, o.level, o.status, o.url, o.summary) for o in observations
    ] == EXPECTED_WRITTEN_INDEX


def test_index_links_stay_relative_without_a_base_url() -> None:
    observations = parse_index_page(WRITTEN_INDEX)
    assert [o.url for o in observations][:2] == [
        "/countries/afghanistan/",
        f"{BASE}/countries/cameroon/",
    ]


def test_index_as_plain_text_with_several_sections() -> None:
    text = (
        "Populations At Risk\n\nCurrent Crisis\nImminent Risk\n\n"
        "CURRENT CRISIS\n\nSudan\n\nFighting in Sudan has killed thousands of civilians.\n"
        "Continue Reading\n\nImminent risk\n\nHaiti\n\nGang violence threatens populations in "
        "Haiti.\nRead more\n\nPreviously Studied Situations\n\nBurundi\n\nPolitical violence "
        "has declined in Burundi.\nContinue Reading\n"
    )
    observations = parse_index_page(text)
    assert [(o.situation, o.level, o.status, o.summary) for o in observations] == [
        (
            "gcr2p:sudan",
            "current-crisis",
            Status.ASSESSED,
            "Fighting in Sudan has killed thousands of civilians.",
        ),
        (
            "gcr2p:haiti",
            "imminent-risk",
            Status.ASSESSED,
            "Gang violence threatens populations in Haiti.",
        ),
        (
            "gcr2p:burundi",
            None,
            Status.PREVIOUSLY_STUDIED,
            "Political violence has declined in Burundi.",
        ),
    ]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("", None),
        ("Populations At Risk\n\nSome text.\nContinue Reading\n", None),
        (
            "Populations at Risk\n\nCurrent Crisis\n\nMass atrocity crimes are occurring "
            "and urgent action is needed.\n\nImminent Risk\n\nThe situation is reaching a "
            "critical threshold.\n",
            None,
        ),
        ("<html><body><h2>Current Crisis</h2><p>No cards.</p></body></html>", "text/html"),
        (
            "<nav><a href='/countries/x/'>X</a></nav><main><h2>Imminent Risk</h2></main>",
            "text/html",
        ),
    ],
)
def test_index_without_situations(body: str, content_type: str | None) -> None:
    with pytest.raises(
        NoRiskInformationError, match=r"^no situation listed under a level section$"
    ):
        parse_index_page(body, content_type=content_type)


def test_index_names_only_the_line_right_above_a_blurb() -> None:
    text = (
        "Current Crisis\n\nR2P Monitor\n\nThe quarterly bulletin applies an atrocity prevention "
        "lens to each situation.\n\nArmed groups threaten civilians across the whole country.\n"
        "Continue Reading\n\nMyanmar (Burma)\n\n12 March 2025\n\nThe military has "
        "perpetrated crimes against humanity against the Rohingya.\nContinue Reading\n"
    )
    observations = parse_index_page(text)
    assert [(o.name, o.situation, o.summary) for o in observations] == [
        (None, None, "Armed groups threaten civilians across the whole country."),
        (
            "Myanmar (Burma)",
            "gcr2p:myanmar",
            "The military has perpetrated crimes against humanity against the Rohingya.",
        ),
    ]


def test_index_link_list_does_not_take_later_text_as_blurb() -> None:
    html = (
        "<body><h2>Previously Studied Situations</h2><ul>"
        "<li><a href='/regions/kenya'>Kenya</a></li></ul><div class='foot'>"
        "<p>The Global Centre monitors many other situations around the world as well.</p>"
        "</div></body>"
    )
    observations = parse_index_page(html, url=INDEX_URL)
    assert [(o.situation, o.status, o.summary) for o in observations] == [
        ("gcr2p:kenya", Status.PREVIOUSLY_STUDIED, ""),
    ]


def test_index_keeps_one_card_per_url_preferring_the_one_with_a_blurb() -> None:
    html = (
        "<main><h2>Current Crisis</h2><ul><li><a href='/countries/mali/'>Mali</a></li></ul>"
        "<h2>Imminent Risk</h2><h3>Mali</h3>"
        "<p>Attacks by armed groups threaten civilians in Mali.</p>"
        "<a href='/countries/mali'>Continue Reading</a></main>"
    )
    observations = parse_index_page(html, url=INDEX_URL)
    assert [(o.situation, o.level, o.url) for o in observations] == [
        ("gcr2p:mali", "imminent-risk", f"{BASE}/countries/mali"),
    ]


# --------------------------------------------------------------------------- never crash

TOKENS = st.sampled_from(
    [
        "Risk Level:", "Risk Level: Current Crisis", "RISK LEVEL: current crisis", "Risk level:\n",
        "Risk Level: Moderate", "Populations at Risk ", "Previously Studied Situations",
        "Current Crisis", "Imminent Risk", "Serious Concern", "Continue Reading", "Read more",
        "31 August 2023", "31 February 2023", "June 1, 2022", "BACKGROUND:", "Risk factors:",
        "• ", "- ", "* ", "\n", "\n\n", "\r\n", "\u00a0", " ", ".", "(", ")", "»", ":",
        "<p>", "</p>", "<li>", "</li>", "<ul>", "<h2>", "</h2>", "<main>", "</main>", "<br>",
        "<a href='/countries/x-y/'>", "<a href='http://[x'>", "<a href=''>", "</a>", "<title>",
        "</title>", " - Global Centre for the Responsibility to Protect", "<nav>", "<article>",
        "A sentence long enough to be a paragraph of the page text.", "\ud800", "日本",
    ]
)  # fmt: skip
BODIES = st.one_of(
    st.text(max_size=200),
    st.lists(st.one_of(TOKENS, st.text(max_size=6)), max_size=60).map("".join),
)
CONTENT_TYPES = st.sampled_from([None, "text/html", "text/plain", "application/octet-stream"])
URLS = st.sampled_from(
    [None, "", "https://www.globalr2p.org/countries/x/", "http://[::1", "/regions/", "mailto:x"]
)


@settings(max_examples=300, deadline=None)
@given(BODIES, CONTENT_TYPES, URLS, st.one_of(st.none(), st.text(max_size=10)))
def test_country_parser_raises_only_parse_errors(
    body: str, content_type: str | None, url: str | None, hint: str | None
) -> None:
    try:
        observation = parse_country_page(body, url=url, content_type=content_type, name_hint=hint)
    except SourceParseError:
        return
    assert (observation.status is Status.ASSESSED) == (observation.level is not None)
    assert observation.level is None or GCR2P_SCALE.get(observation.level)
    assert observation.situation is None or observation.situation.startswith("gcr2p:")
    assert observation.url == url


@settings(max_examples=300, deadline=None)
@given(BODIES, CONTENT_TYPES, URLS)
def test_index_parser_raises_only_parse_errors(
    body: str, content_type: str | None, url: str | None
) -> None:
    try:
        observations = parse_index_page(body, url=url, content_type=content_type)
    except SourceParseError:
        return
    assert observations
    for observation in observations:
        assert (observation.status is Status.ASSESSED) == (observation.level is not None)
