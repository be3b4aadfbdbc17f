"""Tests of config loading: the shipped file, the documented examples, and every error message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

import warnsvc.config as config
from warnsvc.config import (
    SOURCE_KINDS,
    CapSourceSettings,
    FeedSourceSettings,
    Gcr2pIndexSourceSettings,
    Gcr2pPageSourceSettings,
    JsonSourceSettings,
    PageSourceSettings,
    Settings,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)
from warnsvc.errors import ConfigError
from warnsvc.model import GCR2P_SCALE

ROOT = Path(__file__).parents[2]
SHIPPED = ROOT / "config" / "warnsvc.yaml"
DOCS = ROOT / "docs" / "configuration.md"
FILE = "config/warnsvc.yaml"

GCR2P_INDEX = "https://www.globalr2p.org/populations-at-risk/"


def parse(text: str, environ: dict[str, str] | None = None) -> Settings:
    return parse_config(text, filename=FILE, environ=environ or {})


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    """The printed problems of a config that must fail."""
    with pytest.raises(ConfigError) as info:
        parse(text, environ)
    assert str(info.value) == "\n".join(str(p) for p in info.value.problems)
    return [str(p) for p in info.value.problems]


# --------------------------------------------------------------------------- the shipped file


def test_shipped_config_loads() -> None:
    settings = load_config(SHIPPED, environ={})

    assert settings.path == SHIPPED
    assert settings.service.http.host == "127.0.0.1"
    assert settings.service.http.port == 8080
    assert settings.service.base_url == "http://127.0.0.1:8080"
    assert settings.storage.url == "sqlite+aiosqlite:///data/warnsvc.db"
    source, gdacs = settings.sources
    assert (gdacs.id, gdacs.kind, gdacs.scale, gdacs.enabled) == ("gdacs", "feed", "gdacs", False)
    assert isinstance(source, Gcr2pIndexSourceSettings)
    assert (source.id, source.url, source.scale, source.namespace) == (
        "gcr2p",
        GCR2P_INDEX,
        "gcr2p",
        "gcr2p",
    )
    assert source.follow_pages and source.authoritative and source.enabled
    assert (source.interval, source.jitter, source.page_delay) == (6 * 3600, 600, 5)
    assert settings.source("gcr2p") is source


def test_shipped_config_takes_its_settings_from_the_environment() -> None:
    environ = {
        "WARNSVC_HOST": "0.0.0.0",
        "WARNSVC_PORT": "9090",
        "WARNSVC_BASE_URL": "https://alerts.example.org/",
        "WARNSVC_DATABASE_URL": "postgresql+asyncpg://warnsvc@db/warnsvc",
    }

    settings = load_config(SHIPPED, environ=environ)

    assert settings.service.http.host == "0.0.0.0"
    assert settings.service.http.port == 9090
    assert settings.service.base_url == "https://alerts.example.org"
    assert settings.storage.url == "postgresql+asyncpg://warnsvc@db/warnsvc"


# --------------------------------------------------------------------------- the documentation


def doc_blocks() -> list[tuple[str, str]]:
    """Every fenced block of docs/configuration.md as (language, body)."""
    return re.findall(r"^```(\w*)\n(.*?)^```", DOCS.read_text(encoding="utf-8"), re.M | re.S)


def full_examples() -> list[str]:
    return [body for lang, body in doc_blocks() if lang == "yaml" and "# example: full" in body]


def test_docs_have_full_examples() -> None:
    assert len(full_examples()) >= 3


@pytest.mark.parametrize("example", full_examples())
def test_full_examples_in_docs_parse(example: str) -> None:
    parse(example)


def test_broken_example_in_docs_prints_what_the_docs_say() -> None:
    blocks = doc_blocks()
    [index] = [i for i, (_, body) in enumerate(blocks) if body.startswith("# example: broken")]
    broken, (lang, expected) = blocks[index][1], blocks[index + 1]

    assert lang == "text"
    assert problems(broken) == expected.splitlines()


def settings_classes() -> list[type[BaseModel]]:
    """Every settings model of warnsvc.config (by its name, ``...Settings``)."""
    return [
        value
        for name, value in vars(config).items()
        if name.endswith("Settings") and isinstance(value, type) and issubclass(value, BaseModel)
    ]


@pytest.mark.parametrize("model", settings_classes(), ids=lambda m: m.__name__)
def test_every_key_is_documented(model: type[BaseModel]) -> None:
    docs = DOCS.read_text(encoding="utf-8")
    keys = [name for name in model.model_fields if not (model is Settings and name == "path")]

    missing = [key for key in keys if not re.search(rf"`(?:[a-z_]+\.)?{key}`", docs)]

    assert missing == []


# --------------------------------------------------------------------------- malformed files


def test_unknown_top_level_key() -> None:
    text = """\
service:
  name: warnsvc
emial:
  to: ops@example.org
"""
    assert problems(text) == [
        f"{FILE}:3: emial: unknown key 'emial'; allowed keys: cap, detection, email, feeds, "
        "notify, operators, scales, service, sources, storage, webhooks; did you mean 'email'?"
    ]


def test_unknown_nested_key_suggests_the_closest() -> None:
    text = """\
sources:
  - id: gcr2p
    kind: gcr2p-index
    url: https://www.globalr2p.org/populations-at-risk/
    intervall: 6h
"""
    assert problems(text) == [
        f"{FILE}:5: sources[0].intervall: unknown key 'intervall'; allowed keys: authoritative, "
        "cap_category, critical, enabled, fetch, follow_pages, id, interval, jitter, kind, name, "
        "namespace, page_delay, parse, scale, url; did you mean 'interval'?"
    ]


def test_key_of_another_kind_names_that_kind() -> None:
    text = """\
sources:
  - id: sudan
    kind: gcr2p-page
    url: https://www.globalr2p.org/countries/sudan/
    follow_pages: true
"""
    [problem] = problems(text)
    assert problem.startswith(f"{FILE}:5: sources[0].follow_pages: unknown key 'follow_pages';")
    assert problem.endswith("'follow_pages' applies only to kind gcr2p-index")


def test_wrong_type_for_interval() -> None:
    text = """\
sources:
  - id: gcr2p
    kind: gcr2p-index
    url: https://www.globalr2p.org/populations-at-risk/
    interval: [6, h]
"""
    assert problems(text) == [
        f"{FILE}:5: sources[0].interval: expected a duration like 90s, 5m, 6h or 1d, found a list"
    ]


def test_bad_duration() -> None:
    text = """\
sources:
  - id: gcr2p
    kind: gcr2p-index
    url: https://www.globalr2p.org/populations-at-risk/
    interval: often
"""
    assert problems(text) == [
        f"{FILE}:5: sources[0].interval: must be a duration like 90s, 5m, 6h or 1d, not 'often'"
    ]


def test_interval_below_the_minimum() -> None:
    text = """\
sources:
  - {id: gcr2p, kind: gcr2p-index, url: "https://www.globalr2p.org/", interval: 5s}
"""
    assert problems(text) == [f"{FILE}:2: sources[0].interval: must be at least 10s, not 5s"]


def test_missing_required_url_is_reported_at_the_item() -> None:
    text = """\
service:
  name: warnsvc
sources:
  - id: gcr2p
    kind: gcr2p-index
"""
    assert problems(text) == [f"{FILE}:4: sources[0].url: missing required key 'url'"]


def test_unknown_kind() -> None:
    text = """\
sources:
  - id: reliefweb
    kind: rss
    url: https://reliefweb.int/updates/rss.xml
"""
    assert problems(text) == [
        f"{FILE}:3: sources[0].kind: unknown kind 'rss'; "
        "known kinds: gcr2p-index, gcr2p-page, feed, cap, page, json"
    ]


def test_missing_kind() -> None:
    text = """\
sources:
  - id: reliefweb
    url: https://reliefweb.int/updates/rss.xml
"""
    assert problems(text) == [
        f"{FILE}:2: sources[0].kind: missing required key 'kind'; "
        "known kinds: gcr2p-index, gcr2p-page, feed, cap, page, json"
    ]


def test_unknown_scale() -> None:
    text = """\
scales:
  - id: gdacs
    levels: [{id: green}, {id: red}]
sources:
  - id: gcr2p
    kind: gcr2p-index
    url: https://www.globalr2p.org/populations-at-risk/
    scale: gdac
"""
    assert problems(text) == [
        f"{FILE}:8: sources[0].scale: unknown scale 'gdac'; "
        "known scales: cap-severity, gcr2p, gdacs; "
        "did you mean 'gdacs'?"
    ]


def test_duplicate_source_id() -> None:
    text = """\
sources:
  - id: gcr2p
    kind: gcr2p-index
    url: https://www.globalr2p.org/populations-at-risk/
  - kind: gcr2p-page
    id: gcr2p
    url: https://www.globalr2p.org/countries/sudan/
"""
    assert problems(text) == [
        f"{FILE}:6: sources[1].id: duplicate source id 'gcr2p', already used by sources[0] (line 2)"
    ]


def test_yaml_syntax_error() -> None:
    text = """\
service:
  name: warnsvc
 log_level: info
"""
    [problem] = problems(text)
    assert problem.startswith(f"{FILE}:3: invalid YAML: ")


def test_unclosed_flow_collection() -> None:
    text = """\
sources:
  - {id: gcr2p, kind: gcr2p-index
feeds:
  title: x
"""
    [problem] = problems(text)
    assert re.match(rf"{re.escape(FILE)}:3: invalid YAML: .*flow mapping", problem)


def test_invalid_yaml_is_worded_by_the_pure_python_parser() -> None:
    """libyaml reads valid files; an invalid one is described as PyYAML's own parser does."""
    text = """\
service:
  name: *base
"""
    assert problems(text) == [f"{FILE}:2: invalid YAML: found undefined alias 'base'"]


def test_control_character_is_located() -> None:
    text = "service:\n  name: war\x07nsvc\n"
    assert problems(text) == [f"{FILE}:2: invalid YAML: character 0x0007 is not allowed"]


def test_libyaml_and_pure_python_loaders_read_the_same_lines() -> None:
    text = Path(FILE).read_text(encoding="utf-8") + "webhooks:\n  bogus: 1\n"
    fast = problems(text)
    loader = config._FastLoader
    try:
        config._FastLoader = yaml.SafeLoader  # type: ignore[misc,assignment]
        slow = problems(text)
    finally:
        config._FastLoader = loader  # type: ignore[misc]
    assert fast == slow and fast[0].startswith(f"{FILE}:{text.count(chr(10))}: webhooks.bogus:")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql+asyncpg://u:p@db:5432/warnsvc", None),
        ("postgresql+asyncpg://u:p@[::1]:5432/warnsvc?ssl=require", None),
        ("sqlite+aiosqlite:///:memory:", None),
        ("postgresql+asyncpg://u:p@db:port/warnsvc", "must be an SQLAlchemy URL like"),
        ("postgresql+asyncpg://u:p@db:/warnsvc", "must be an SQLAlchemy URL like"),
        ("not a url", "must be an SQLAlchemy URL like"),
        ("mysql+aiomysql://db/warnsvc", "warnsvc runs on 'sqlite+aiosqlite://...' or"),
    ],
)
def test_database_url_is_checked_as_sqlalchemy_reads_it(url: str, message: str | None) -> None:
    from sqlalchemy.engine import make_url

    text = f"storage: {{url: '{url}'}}\n"
    if message is None:
        assert parse(text).storage.url == url
        make_url(url)  # SQLAlchemy agrees
    else:
        [problem] = problems(text)
        assert problem.startswith(f"{FILE}:1: storage.url: {message}")


def test_repeated_css_selectors_are_each_checked() -> None:
    source = """\
  - id: page-{n}
    kind: page
    url: https://example.org/{n}/
    scale: gcr2p
    fields: {{title: {{css: "{title}"}}, level: {{css: .risk}}}}
"""
    text = "sources:\n" + "".join(
        source.format(n=n, title="h2" if n != 2 else "h2[[") for n in range(4)
    )
    [problem] = problems(text)
    assert problem.startswith(f"{FILE}:16: sources[2].fields.title.css: must be a CSS selector")


def test_missing_environment_variable() -> None:
    text = """\
service:
  http:
    port: ${WARNSVC_PORT}
"""
    assert problems(text) == [
        f"{FILE}:3: service.http.port: environment variable WARNSVC_PORT is not set "
        "(write ${WARNSVC_PORT:-default} to give a default)"
    ]


def test_every_problem_is_reported_in_line_order() -> None:
    text = """\
colour: blue
service:
  http:
    port: 70000
  log_level: loud
sources:
  - id: a
    kind: gcr2p-index
    url: ftp://example.org/
  - id: a
    kind: gcr2p-page
    url: https://example.org/
    fetch: {max_bytes: lots, retries: yes}
  - id: b
    kind: gcr2p-page
    url: https://example.org/b
    jitter: 2h
    interval: 1h
"""
    found = problems(text)

    assert [p.split(": ")[:2] for p in found] == [
        [f"{FILE}:1", "colour"],
        [f"{FILE}:4", "service.http.port"],
        [f"{FILE}:5", "service.log_level"],
        [f"{FILE}:9", "sources[0].url"],
        [f"{FILE}:10", "sources[1].id"],
        [f"{FILE}:13", "sources[1].fetch.max_bytes"],
        [f"{FILE}:13", "sources[1].fetch.retries"],
        [f"{FILE}:17", "sources[2].jitter"],
    ]
    assert found[1:4] == [
        f"{FILE}:4: service.http.port: must be at most 65535, not 70000",
        f"{FILE}:5: service.log_level: must be one of 'debug', 'info', 'warning' or 'error', "
        "not 'loud'",
        f"{FILE}:9: sources[0].url: must be an http(s) URL like https://example.org/, "
        "not 'ftp://example.org/'",
    ]
    assert found[-1] == f"{FILE}:17: sources[2].jitter: must be shorter than interval (1h), not 2h"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "service:\n  http: {port: true}\n",
            "2: service.http.port: expected an integer, found true",
        ),
        (
            "service:\n  http:\n    port: 8o\n",
            "3: service.http.port: expected an integer, found '8o'",
        ),
        ("service:\n  name: [a]\n", "2: service.name: expected a string, found a list"),
        ("service:\n  name: no\n", "2: service.name: expected a string, found false (YAML reads"),
        ("detection: {announce_initial: maybe}\n", "1: detection.announce_initial: expected true"),
        (
            "detection: {confirmations: 0}\n",
            "1: detection.confirmations: must be at least 1, not 0",
        ),
        ("feeds: []\n", "1: feeds: expected a mapping, found a list"),
        ("sources: {id: a}\n", "1: sources: expected a list, found a mapping"),
        ("- a\n", "1: expected a mapping of sections (cap, detection, email, feeds, notify,"),
        ("storage: {url: 'sqlite:///x.db'}\n", "1: storage.url: needs an async driver"),
        ("service: {base_url: 'https://x.org/?a=1'}\n", "1: service.base_url: must not have a"),
        ("path: x.yaml\n", "1: path: unknown key 'path'; allowed keys: cap, detection, email,"),
        (
            "service:\n  name: a\n  name: b\n",
            "3: service.name: duplicate key 'name' (first at line 2)",
        ),
        ("service: {name: !env X}\n", "1: service.name: unsupported YAML tag '!env'"),
        ("service: {name: '${X'}\n", "1: service.name: '${' without a closing '}'"),
        ("service: {name: '${1X}'}\n", "1: service.name: bad reference '${1X}': write ${NAME}"),
        ("feeds:\n  max_entries: 1e9\n", "2: feeds.max_entries: expected an integer, found '1e9'"),
    ],
)
def test_messages(text: str, expected: str) -> None:
    [problem] = problems(text)
    assert problem.startswith(f"{FILE}:{expected}")


PARTNER_WITH_KEY = """\
webhooks:
  partners:
    - id: ngo-a
      api_key: ${NGO_A_API_KEY}
"""
KEY_RULE = "must be at least 24 characters with no whitespace or control characters"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("k" * 23, f"{KEY_RULE}, not 23 characters"),
        ("", f"{KEY_RULE}, not 0 characters"),
        (" " * 24, f"{KEY_RULE}; this one has some"),
        ("k" * 24 + "\n", f"{KEY_RULE}; this one has some"),
        ("k" * 12 + " " + "k" * 12, f"{KEY_RULE}; this one has some"),
        ("k" * 24 + "\x00", f"{KEY_RULE}; this one has some"),
    ],
)
def test_api_key_rule_is_stated_and_enforced(key: str, expected: str) -> None:
    [problem] = problems(PARTNER_WITH_KEY, {"NGO_A_API_KEY": key})

    assert problem.startswith(f"{FILE}:4: webhooks.partners[0].api_key: {expected}")
    assert "kkkk" not in problem  # never shows the key


def test_api_key_of_24_characters_is_accepted() -> None:
    settings = parse(PARTNER_WITH_KEY, {"NGO_A_API_KEY": "k" * 24})

    assert settings.webhooks.partners[0].api_key == "k" * 24


def test_default_jitter_longer_than_interval_is_reported_at_the_source() -> None:
    text = """\
sources:
  - id: a
    kind: gcr2p-page
    url: https://example.org/
    interval: 1m
"""
    assert problems(text) == [
        f"{FILE}:2: sources[0].jitter: must be shorter than interval (1m), not 5m (the default); "
        "set a smaller jitter"
    ]


def test_scale_problems() -> None:
    text = """\
scales:
  - id: gdacs
    levels:
      - {id: green}
      - {id: green}
      - {id: current-crisis}
  - id: gdacs
    levels: [{id: blue}]
  - id: colours
    levels:
      - {id: amber, name: Amber}
      - {id: orange, aliases: [amber]}
  - id: empty
    levels: []
"""
    assert problems(text) == [
        f"{FILE}:5: scales[0].levels[1].id: duplicate level id 'green', "
        "already used by scale 'gdacs' at scales[0].levels[0] (line 4)",
        f"{FILE}:6: scales[0].levels[2].id: duplicate level id 'current-crisis', "
        "already used by the built-in scale 'gcr2p'",
        f"{FILE}:7: scales[1].id: duplicate scale id 'gdacs', already used by scales[0] (line 2)",
        f"{FILE}:12: scales[2].levels[1].aliases[0]: 'amber' also names level 'amber' "
        "of scale 'colours'",
        f"{FILE}:14: scales[3].levels: must not be empty",
    ]


def test_cross_checks_run_even_when_other_keys_are_wrong() -> None:
    text = """\
service: {log_level: loud}
sources:
  - {id: a, kind: gcr2p-page, url: "https://example.org/", scale: nope}
  - {id: a, kind: gcr2p-page, url: "https://example.org/", enabled: perhaps}
"""
    assert [p.split(": ")[1] for p in problems(text)] == [
        "service.log_level",
        "sources[0].scale",
        "sources[1].enabled",
        "sources[1].id",
    ]


def test_anchors_and_merge_keys() -> None:
    text = """\
sources:
  - &sudan
    <<: {kind: gcr2p-page, interval: 1h}
    id: sudan
    url: https://www.globalr2p.org/countries/sudan/
    interval: 2h
  - <<: *sudan
    id: drc
    url: https://www.globalr2p.org/countries/drc/
"""
    settings = parse(text)

    assert [(s.id, s.kind, s.interval) for s in settings.sources] == [
        ("sudan", "gcr2p-page", 7200),
        ("drc", "gcr2p-page", 7200),
    ]


def test_empty_file_and_empty_sections_mean_defaults() -> None:
    assert parse("") == parse("service:\nstorage:\nscales:\ndetection:\nsources:\nfeeds:\n")
    assert parse("").sources == []


def test_load_config_reports_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert [str(p) for p in info.value.problems] == [f"{path}: file not found"]


def test_load_config_names_the_file_in_problems(tmp_path: Path) -> None:
    path = tmp_path / "warnsvc.yaml"
    path.write_text("feeds:\n  max_entries: 0\n", encoding="utf-8")

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert str(info.value) == f"{path}:2: feeds.max_entries: must be at least 1, not 0"


KEYS = ["service", "http", "port", "sources", "id", "kind", "url", "interval", "jitter", "scale"]
KEYS += ["scales", "levels", "aliases", "fetch", "max_bytes", "feeds", "name", "path", "zzz"]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=True),
    st.sampled_from(["6h", "often", "gcr2p", "gcr2p-index", "https://x.org/", "${X}", "5MB"]),
    st.text(alphabet="a-Z ${}:#\n", max_size=6),
)
TREES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(KEYS), children, max_size=4)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.sampled_from(KEYS), TREES, max_size=4))
def test_any_yaml_gives_settings_or_a_config_error(data: dict[str, object]) -> None:
    text = yaml.safe_dump(data)
    try:
        parse(text)
    except ConfigError as exc:
        assert exc.problems
        assert all(p.file == FILE for p in exc.problems)


# --------------------------------------------------------------------------- ${VAR} substitution


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("${NAME}", {"NAME": "alerts"}, "alerts"),
        ("${NAME:-fallback}", {}, "fallback"),
        ("${NAME:-fallback}", {"NAME": ""}, "fallback"),
        ("${NAME:-fallback}", {"NAME": "set"}, "set"),
        ("${NAME}", {"NAME": ""}, ""),
        ("${NAME:-}", {}, ""),
        ("$${NAME}", {"NAME": "x"}, "${NAME}"),
        ("a ${A}-${B:-b} c", {"A": "1"}, "a 1-b c"),
        ("${A:-x y: z}", {}, "x y: z"),
        ("$$ and $NAME stay", {"NAME": "x"}, "$$ and $NAME stay"),
    ],
)
def test_substitution(value: str, environ: dict[str, str], expected: str) -> None:
    settings = parse(f"service:\n  user_agent: '{value}'\n", environ)

    assert settings.service.user_agent == expected


def test_substituted_values_are_never_parsed_as_yaml() -> None:
    injected = "x\nsources: [1]\n  - {id: evil}"

    settings = parse("feeds:\n  title: ${TITLE}\n", {"TITLE": injected})

    assert settings.feeds.title == injected
    assert settings.sources == []


def test_numbers_and_booleans_from_variables() -> None:
    text = """\
service:
  http: {port: "${PORT}"}
detection:
  announce_initial: ${ANNOUNCE:-false}
  confirmations: ${CONFIRMATIONS:-3}
"""
    settings = parse(text, {"PORT": "9000", "ANNOUNCE": "true"})

    assert settings.service.http.port == 9000
    assert settings.detection.announce_initial is True
    assert settings.detection.confirmations == 3


def test_environ_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARNSVC_TEST_TITLE", "from the environment")

    settings = parse_config("feeds: {title: '${WARNSVC_TEST_TITLE}'}\n", filename=FILE)

    assert settings.feeds.title == "from the environment"


# --------------------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (1.5, 1.5),
        (0, 0.0),
        ("90", 90.0),
        ("90s", 90.0),
        ("5m", 300.0),
        ("6h", 21600.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("1h30m", 5400.0),
        ("1h 30m 15s", 5415.0),
        ("1.5h", 5400.0),
        (" 10m ", 600.0),
        ("0s", 0.0),
    ],
)
def test_parse_duration(value: str | int | float, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value", ["", "often", "-5m", "5 minutes", "1e3", "h", "5x", -1, float("inf"), True]
)
def test_parse_duration_rejects(value: str | int | float) -> None:
    with pytest.raises(ValueError, match=r"duration like 90s, 5m, 6h or 1d"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59, "59s"), (90, "1m30s"), (3600, "1h"), (93784, "1d2h3m4s"), (1.5, "1.5s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.integers(min_value=0, max_value=10**9))
def test_format_duration_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(
    st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from("wdhms")), min_size=1, max_size=5),
    st.sampled_from(["", " "]),
)
def test_parse_duration_adds_its_parts(parts: list[tuple[int, str]], separator: str) -> None:
    units = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
    text = separator.join(f"{amount}{unit}" for amount, unit in parts)

    assert parse_duration(text) == sum(amount * units[unit] for amount, unit in parts)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (1048576, 1048576),
        ("1048576", 1048576),
        ("5MB", 5_000_000),
        ("5mb", 5_000_000),
        ("5M", 5_000_000),
        ("512KiB", 524288),
        ("1 MB", 1_000_000),
        ("2MiB", 2_097_152),
        ("1.5GB", 1_500_000_000),
        ("0.5KiB", 512),
        ("10kB", 10_000),
        ("100B", 100),
        (0, 0),
    ],
)
def test_parse_size(value: str | int, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["", "lots", "5 XB", "-1", "1.5B", "MB", -1, True])
def test_parse_size_rejects(value: str | int) -> None:
    with pytest.raises(ValueError, match=r"size like 1048576, 512KiB or 5MB"):
        parse_size(value)


def test_sizes_and_durations_in_the_file() -> None:
    text = """\
sources:
  - id: a
    kind: gcr2p-index
    url: https://example.org/
    interval: 1h30m
    jitter: 90
    page_delay: 500ms
    fetch: {max_bytes: 512KiB, timeout: "45"}
"""
    assert problems(text) == [
        f"{FILE}:7: sources[0].page_delay: must be a duration like 90s, 5m, 6h or 1d, not '500ms'"
    ]
    settings = parse(text.replace("500ms", "0.5s"))
    source = settings.source("a")
    assert (source.interval, source.jitter, source.fetch.max_bytes) == (5400, 90, 524288)
    assert isinstance(source, Gcr2pIndexSourceSettings)
    assert (source.page_delay, source.fetch.timeout) == (0.5, 45)


# --------------------------------------------------------------------------- the settings API


SCALES = """\
scales:
  - id: gdacs
    name: GDACS alert level
    levels:
      - {id: green, name: Green}
      - {id: orange}
      - {id: red, name: Red, aliases: [Red alert]}
  - id: gcr2p
    name: GCR2P, two levels
    levels: [{id: worrying}, {id: dire}]
"""


def test_scale_map_puts_the_built_in_scale_first() -> None:
    settings = parse(SCALES.replace("id: gcr2p", "id: other"))

    scales = settings.scale_map()

    assert list(scales) == ["gcr2p", "gdacs", "cap-severity", "other"]
    assert scales["gcr2p"] is GCR2P_SCALE
    gdacs = scales["gdacs"]
    assert [(lv.id, lv.name, lv.rank) for lv in gdacs.levels] == [
        ("green", "Green", 1),
        ("orange", "Orange", 2),
        ("red", "Red", 3),
    ]
    assert gdacs.match("RED ALERT").id == "red"


def test_a_configured_gcr2p_scale_replaces_the_built_in_one() -> None:
    scales = parse(SCALES).scale_map()

    assert list(scales) == ["gcr2p", "gdacs", "cap-severity"]
    assert scales["gcr2p"].name == "GCR2P, two levels"
    assert [lv.id for lv in scales["gcr2p"].levels] == ["worrying", "dire"]


def test_replacing_gcr2p_frees_its_level_ids() -> None:
    parse("scales:\n  - id: gcr2p\n    levels: [{id: imminent-risk}, {id: current-crisis}]\n")


def test_source_lookup() -> None:
    settings = parse("""\
sources:
  - {id: index, kind: gcr2p-index, url: "https://www.globalr2p.org/populations-at-risk/"}
  - {id: sudan, kind: gcr2p-page, url: "https://www.globalr2p.org/countries/sudan/"}
""")

    sudan = settings.source("sudan")
    assert isinstance(sudan, Gcr2pPageSourceSettings)
    assert (sudan.name, sudan.scale, sudan.namespace) == ("sudan", "gcr2p", "gcr2p")
    with pytest.raises(KeyError):
        settings.source("absent")


def test_settings_are_frozen() -> None:
    settings = parse("")

    with pytest.raises(ValidationError):
        settings.feeds.max_entries = 5  # type: ignore[misc]


def test_settings_built_in_code_are_cross_checked_too() -> None:
    source = Gcr2pPageSourceSettings(id="a", url="https://example.org/", scale="nope")

    with pytest.raises(ValidationError, match=r"sources\[0\]\.scale: unknown scale 'nope'"):
        Settings(sources=[source])


def test_source_kinds_registry() -> None:
    assert dict(SOURCE_KINDS) == {
        "gcr2p-index": Gcr2pIndexSourceSettings,
        "gcr2p-page": Gcr2pPageSourceSettings,
        "feed": FeedSourceSettings,
        "cap": CapSourceSettings,
        "page": PageSourceSettings,
        "json": JsonSourceSettings,
    }
