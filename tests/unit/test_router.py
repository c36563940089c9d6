"""Tests for :mod:`engine.runtime.router`: rules.yaml loading, matching, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from engine.runtime.router import Rule, RulesError, RuleSet, load_rules, parse_rules

DATA = Path(__file__).parent / "data" / "rules"
CANONICAL = DATA / "canonical.yaml"
SCENARIOS = ("conference", "gatekeeper", "p2p", "pstn_gatekeeper")


@pytest.fixture
def canonical() -> RuleSet:
    return load_rules(CANONICAL)


@pytest.fixture
def scenarios_dir(tmp_path: Path) -> Path:
    """A scenarios/ directory holding the four shipped scenarios and a helper."""
    directory = tmp_path / "scenarios"
    directory.mkdir()
    for name in (*SCENARIOS, "_shared", "__init__"):
        (directory / f"{name}.py").write_text("")
    (directory / "README.md").write_text("")
    return directory


def error_of(text: str, scenarios_dir: Path | None = None) -> str:
    with pytest.raises(RulesError) as info:
        parse_rules(text, scenarios_dir=scenarios_dir)
    return str(info.value)


# -- the canonical rules ------------------------------------------------------


def test_canonical_rules_load(canonical: RuleSet) -> None:
    """Check the shipped rules load in file order with names, scenarios and lines."""
    assert [(r.name, r.scenarios, r.line) for r in canonical.rules] == [
        ("InboundFromPSTN", ("pstn_gatekeeper",), 3),
        ("InboundCall", ("gatekeeper",), 6),
        ("Fwd", ("conference",), 9),
        ("P2P", ("p2p",), 10),
    ]
    assert canonical.rules[2].pattern.pattern == "conf_[A-Za-z0-9]+"
    assert canonical.rules[2].exclude is None
    assert canonical.rules[2].description == ""
    assert canonical.rules[3].description == "browser-to-browser call, signalling relayed"
    assert canonical.warnings == []


@pytest.mark.parametrize(
    ("destination", "rule"),
    [
        ("5550100", "InboundFromPSTN"),
        ("+15550100", "InboundFromPSTN"),
        ("5550100x", "P2P"),  # fullmatch: a prefix match is not enough
        ("x5550100", "P2P"),
        ("15550100", "P2P"),
        ("joinconf", "InboundCall"),
        ("joinconf2", "P2P"),
        ("conf_12", "Fwd"),  # Fwd comes before the catch-all
        ("conf_Team7", "Fwd"),
        ("conf_", "P2P"),
        ("conf_a-b", "P2P"),
        ("alice", "P2P"),
        ("", "P2P"),
    ],
)
def test_canonical_match(canonical: RuleSet, destination: str, rule: str) -> None:
    """Check which canonical rule each destination hits."""
    matched = canonical.match(destination)
    assert matched is not None and matched.name == rule


def test_no_match_returns_none() -> None:
    """Check a destination no rule matches gives None (the caller answers 404)."""
    rules = parse_rules("rules:\n  - {name: A, pattern: 'a+', scenarios: [x]}\n")
    assert rules.match("b") is None
    assert rules.match("aaa") is rules.rules[0]


def test_scenarios_run_in_order() -> None:
    """Check several scenarios are kept in the order written."""
    rules = parse_rules("rules:\n  - {name: A, pattern: a, scenarios: [first, second, first_b]}\n")
    assert rules.rules[0].scenarios == ("first", "second", "first_b")


def test_numeric_pattern_is_taken_as_written() -> None:
    """Check an unquoted number keeps its source text (no int or octal conversion)."""
    rules = parse_rules(
        "rules:\n"
        "  - {name: 0100, pattern: 0100, scenarios: [a]}\n"
        "  - {name: B, pattern: 5550100, scenarios: [b]}\n"
    )
    assert [(r.name, r.pattern.pattern) for r in rules.rules] == [("0100", "0100"), ("B", "5550100")]
    match = rules.match("5550100")
    assert match is not None and match.name == "B"


# -- exclude --------------------------------------------------------------------

EXCLUDE_RULES = """\
rules:
  - name: Fwd
    pattern: "conf_[A-Za-z0-9]+"
    exclude: "conf_(test|debug)[0-9]*"
    scenarios: [conference]
  - {name: P2P, pattern: ".*", scenarios: [p2p]}
"""


@pytest.mark.parametrize(
    ("destination", "rule"),
    [("conf_12", "Fwd"), ("conf_test", "P2P"), ("conf_test1", "P2P"), ("conf_testx", "Fwd")],
)
def test_exclude_vetoes_rule(destination: str, rule: str) -> None:
    """Check an exclude that fully matches passes the call on to the next rule."""
    matched = parse_rules(EXCLUDE_RULES).match(destination)
    assert matched is not None and matched.name == rule


def test_exclude_null_is_absent() -> None:
    """Check an empty ``exclude:`` means no exclude, as does an empty description."""
    rules = parse_rules("rules:\n  - name: A\n    pattern: a\n    exclude:\n    description: ~\n    scenarios: [x]\n")
    assert rules.rules[0].exclude is None and rules.rules[0].description == ""


# -- explain ------------------------------------------------------------------


def test_explain_up_to_match(canonical: RuleSet) -> None:
    """Check explain() gives a verdict for each rule up to and including the match."""
    verdicts = [(rule.name, verdict) for rule, verdict in canonical.explain("conf_12")]
    assert verdicts == [
        ("InboundFromPSTN", "pattern does not match"),
        ("InboundCall", "pattern does not match"),
        ("Fwd", "matched"),
    ]


def test_explain_excluded() -> None:
    """Check explain() names the exclude that vetoed a rule."""
    verdicts = [(rule.name, verdict) for rule, verdict in parse_rules(EXCLUDE_RULES).explain("conf_test")]
    assert verdicts == [("Fwd", "excluded by 'conf_(test|debug)[0-9]*'"), ("P2P", "matched")]


def test_explain_without_match() -> None:
    """Check explain() lists every rule when none matches."""
    rules = parse_rules("rules:\n  - {name: A, pattern: a, scenarios: [x]}\n  - {name: B, pattern: b, scenarios: [x]}\n")
    assert [v for _, v in rules.explain("c")] == ["pattern does not match"] * 2
    assert rules.match("c") is None


# -- warnings -------------------------------------------------------------------


def test_warn_rules_after_catch_all() -> None:
    """Check rules after an exclude-free ``.*`` rule, or with an earlier identical pattern, are reported."""
    rules = parse_rules(
        "rules:\n"
        "  - {name: A, pattern: 'a', scenarios: [x]}\n"
        "  - {name: A2, pattern: 'a', scenarios: [x]}\n"
        "  - {name: All, pattern: '.*', scenarios: [x]}\n"
        "  - {name: Late, pattern: 'conf_.+', scenarios: [x]}\n"
    )
    assert [str(w) for w in rules.warnings] == [
        "rules.yaml:3: rule 'A2' can never match: earlier rule 'A' (line 2) has the same pattern",
        "rules.yaml:5: rule 'Late' can never match: earlier rule 'All' (line 4) matches everything",
    ]
    assert rules.warnings[1].line == 5


def test_no_warning_when_earlier_rule_has_exclude() -> None:
    """Check a catch-all with an exclude does not shadow later rules."""
    rules = parse_rules(
        "rules:\n"
        "  - {name: All, pattern: '.*', exclude: 'conf_.+', scenarios: [x]}\n"
        "  - {name: Fwd, pattern: 'conf_.+', scenarios: [y]}\n"
    )
    assert rules.warnings == []
    match = rules.match("conf_1")
    assert match is not None and match.name == "Fwd"


def test_warn_empty_rules() -> None:
    """Check an empty rules list loads, matches nothing and is reported."""
    rules = parse_rules("rules: []\n")
    assert rules.rules == () and rules.match("x") is None
    assert [str(w) for w in rules.warnings] == ["rules.yaml:1: no rules: every call will be answered 404"]


# -- scenarios directory --------------------------------------------------------


def test_scenarios_dir_ok(scenarios_dir: Path) -> None:
    """Check the canonical rules validate against a directory holding their scenarios."""
    assert len(load_rules(CANONICAL, scenarios_dir).rules) == 4


def test_scenario_not_found(scenarios_dir: Path) -> None:
    """Check a misspelt scenario is reported with the known ones (helpers omitted)."""
    assert error_of("rules:\n  - name: Fwd\n    pattern: conf_.+\n    scenarios: [confernce]\n", scenarios_dir) == (
        f"rules.yaml:4: rule 'Fwd': scenario 'confernce' not found in {scenarios_dir}/ "
        "(known: conference, gatekeeper, p2p, pstn_gatekeeper)"
    )


def test_scenarios_dir_missing(tmp_path: Path) -> None:
    """Check a missing scenarios directory is reported at the first scenario."""
    missing = tmp_path / "nowhere"
    assert error_of("rules:\n  - {name: A, pattern: a, scenarios: [p2p]}\n", missing) == (
        f"rules.yaml:2: rule 'A': scenario 'p2p' not found in {missing}/ (the directory does not exist)"
    )


def test_scenarios_dir_empty(tmp_path: Path) -> None:
    """Check an empty scenarios directory says there are no known scenarios."""
    assert error_of("rules:\n  - {name: A, pattern: a, scenarios: [p2p]}\n", tmp_path).endswith("(known: none)")


# -- errors -----------------------------------------------------------------------

RULE = "rules:\n  - name: Fwd\n    pattern: conf_.+\n"

ERRORS = [
    # YAML syntax
    ("rules:\n  - name: A\n   pattern: x\n",
     "rules.yaml:3: invalid YAML: while parsing a block collection (from line 2): "
     "expected <block end>, but found '<block mapping start>'"),
    ("rules:\n  - name: 'A\n    pattern: x\n",
     "rules.yaml:4: invalid YAML: while scanning a quoted scalar (from line 2): found unexpected end of stream"),
    ("rules:\n\t- x\n",
     "rules.yaml:2: invalid YAML: while scanning for the next token: found character '\\t' that cannot start any token"),
    ("rules: []\n---\nrules: []\n",
     "rules.yaml:2: invalid YAML: expected a single document in the stream (from line 1): but found another document"),
    ("rules:\n  - \x07\n", "rules.yaml:2: invalid YAML: unacceptable character #x0007"),
    ("rules: *base\n", "rules.yaml:1: invalid YAML: found undefined alias 'base'"),
    # top level
    ("", "rules.yaml:1: the file is empty; expected a top-level 'rules' list"),
    ("# nothing\n", "rules.yaml:1: the file is empty; expected a top-level 'rules' list"),
    ("- a\n", "rules.yaml:1: expected a mapping with a 'rules' list at the top level, got a list"),
    ("\nrules\n", "rules.yaml:2: expected a mapping with a 'rules' list at the top level, got a string"),
    ("{}\n", "rules.yaml:1: missing required top-level key 'rules'"),
    ("rule: []\n", "rules.yaml:1: top level: unknown key 'rule' (did you mean 'rules'?)"),
    ("rules: []\nversion: 2\n", "rules.yaml:2: top level: unknown key 'version' (expected one of: rules)"),
    ("rules: []\nrules: []\n", "rules.yaml:2: top level: duplicate key 'rules' (first on line 1)"),
    ("rules:\n", "rules.yaml:1: 'rules' must be a list, got null"),
    ("rules: {name: A}\n", "rules.yaml:1: 'rules' must be a list, got a mapping"),
    # rule shape
    ("rules:\n  - A\n", "rules.yaml:2: rule #1 must be a mapping, got a string"),
    ("rules:\n  - {name: A, pattern: a, scenarios: [x]}\n  - [1]\n",
     "rules.yaml:3: rule #2 must be a mapping, got a list"),
    (RULE + "    scenario: [conference]\n",
     "rules.yaml:4: rule 'Fwd': unknown key 'scenario' (did you mean 'scenarios'?)"),
    ("rules:\n  - name: Fwd\n    patern: x\n", "rules.yaml:3: rule 'Fwd': unknown key 'patern' (did you mean 'pattern'?)"),
    (RULE + "    priority: 1\n",
     "rules.yaml:4: rule 'Fwd': unknown key 'priority' "
     "(expected one of: name, pattern, exclude, scenarios, description, kinds, networks, authenticated, srtp)"),
    (RULE + "    pattern: x\n", "rules.yaml:4: rule 'Fwd': duplicate key 'pattern' (first on line 3)"),
    (RULE + "    1: x\n", "rules.yaml:4: rule 'Fwd': unknown key '1' (expected one of: name, pattern, exclude, scenarios, description, kinds, networks, authenticated, srtp)"),
    (RULE + "    true: x\n", "rules.yaml:4: rule 'Fwd': keys must be strings, got a boolean"),
    (RULE + "    <<: {exclude: x}\n", "rules.yaml:4: rule 'Fwd': merge keys ('<<') are not supported"),
    # required keys and types
    ("rules:\n  - pattern: x\n    scenarios: [a]\n", "rules.yaml:2: rule #1: missing required key 'name'"),
    (RULE, "rules.yaml:2: rule 'Fwd': missing required key 'scenarios'"),
    ("rules:\n  - {name: Fwd, scenarios: [a]}\n", "rules.yaml:2: rule 'Fwd': missing required key 'pattern'"),
    ("rules:\n  - {name: [Fwd], pattern: a, scenarios: [a]}\n", "rules.yaml:2: rule #1: 'name' must be a string, got a list"),
    ("rules:\n  - {name: '', pattern: a, scenarios: [a]}\n", "rules.yaml:2: rule #1: 'name' must not be empty"),
    ("rules:\n  - {name: A, pattern: a, scenarios: [a]}\n  - {name: yes, pattern: a, scenarios: [a]}\n",
     "rules.yaml:3: rule #2: 'name' must be a string, got a boolean"),
    ("rules:\n  - {name: Fwd, pattern: , scenarios: [a]}\n", "rules.yaml:2: rule 'Fwd': 'pattern' must be a string, got null"),
    ("rules:\n  - {name: Fwd, pattern: '', scenarios: [a]}\n", "rules.yaml:2: rule 'Fwd': 'pattern' must not be empty"),
    (RULE + "    exclude: [a]\n    scenarios: [a]\n", "rules.yaml:4: rule 'Fwd': 'exclude' must be a string, got a list"),
    (RULE + "    description: 2024-01-01\n    scenarios: [a]\n",
     "rules.yaml:4: rule 'Fwd': 'description' must be a string, got a date"),
    ("rules:\n  - {name: A, pattern: a, scenarios: [a]}\n  - {name: B, pattern: b, scenarios: [b]}\n"
     "  - {name: A, pattern: c, scenarios: [c]}\n",
     "rules.yaml:4: rule 'A': name already used by the rule on line 2"),
    # patterns
    (RULE.replace("conf_.+", "'conf_['") + "    scenarios: [a]\n",
     "rules.yaml:3: rule 'Fwd': pattern 'conf_[' is not a valid regular expression: "
     "unterminated character set at position 5"),
    (RULE + "    exclude: '(a'\n    scenarios: [a]\n",
     "rules.yaml:4: rule 'Fwd': exclude '(a' is not a valid regular expression: "
     "missing ), unterminated subpattern at position 0"),
    # scenarios
    (RULE + "    scenarios: conference\n",
     "rules.yaml:4: rule 'Fwd': 'scenarios' must be a list, got a string (write [conference])"),
    (RULE + "    scenarios: {a: 1}\n", "rules.yaml:4: rule 'Fwd': 'scenarios' must be a list, got a mapping"),
    (RULE + "    scenarios: []\n", "rules.yaml:4: rule 'Fwd': 'scenarios' must not be empty"),
    (RULE + "    scenarios:\n      - conference\n      - 42\n",
     "rules.yaml:6: rule 'Fwd': scenario names must be strings, got an integer"),
    (RULE + "    scenarios: [conf-x]\n",
     "rules.yaml:4: rule 'Fwd': 'conf-x' is not a valid scenario name "
     "(a file stem: letters, digits and '_', not starting with a digit)"),
    (RULE + "    scenarios: [conference.py]\n",
     "rules.yaml:4: rule 'Fwd': 'conference.py' is not a valid scenario name (write 'conference' without '.py')"),
    (RULE + "    scenarios: ['../x']\n",
     "rules.yaml:4: rule 'Fwd': '../x' is not a valid scenario name "
     "(a file stem: letters, digits and '_', not starting with a digit)"),
    (RULE + "    scenarios: [x]\n    srtp: required\n",
     "rules.yaml:5: rule 'Fwd': srtp must be one of mandatory, optional, off, got 'required'"),
    (RULE + "    scenarios: [x]\n    srtp: yes\n",
     "rules.yaml:5: rule 'Fwd': srtp must be one of mandatory, optional, off, got 'yes'"),
    (RULE + "    scenarios: [x]\n    srtp: [mandatory]\n",
     "rules.yaml:5: rule 'Fwd': srtp must be one of mandatory, optional, off, got a list"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_error_message(text: str, message: str) -> None:
    """Check each invalid file is rejected with the exact ``file:line: reason``."""
    assert error_of(text) == message


def test_error_fields_from_file() -> None:
    """Check the error names the file as given, the line and the reason."""
    with pytest.raises(RulesError) as info:
        load_rules(DATA / "bad_pattern.yaml")
    error = info.value
    assert (error.path, error.line) == (str(DATA / "bad_pattern.yaml"), 12)
    assert error.reason == (
        "rule 'Fwd': pattern 'conf_[' is not a valid regular expression: unterminated character set at position 5"
    )
    assert str(error) == f"{DATA / 'bad_pattern.yaml'}:12: {error.reason}"


def test_error_path_for_messages() -> None:
    """Check parse_rules uses the given name in messages."""
    with pytest.raises(RulesError, match=r"^conf/rules\.yaml:1: missing required"):
        parse_rules("{}", "conf/rules.yaml")


def test_missing_file(tmp_path: Path) -> None:
    """Check a missing file is reported without a line."""
    with pytest.raises(RulesError) as info:
        load_rules(tmp_path / "rules.yaml")
    assert info.value.line is None
    assert str(info.value) == f"{tmp_path / 'rules.yaml'}: cannot read the file: No such file or directory"


def test_not_utf8(tmp_path: Path) -> None:
    """Check bytes that are not UTF-8 are reported with their line."""
    path = tmp_path / "rules.yaml"
    path.write_bytes(b"rules:\n  - name: caf\xe9\n")
    with pytest.raises(RulesError) as info:
        load_rules(path)
    assert str(info.value) == f"{path}:2: not valid UTF-8: invalid continuation byte"


def test_utf8_bom_accepted(tmp_path: Path) -> None:
    """Check a UTF-8 byte order mark (as some editors write) is ignored."""
    path = tmp_path / "rules.yaml"
    path.write_bytes("\ufeffrules:\n  - {name: Café, pattern: a, scenarios: [x]}\n".encode())
    assert load_rules(path).rules[0].name == "Café"


def test_rule_is_frozen(canonical: RuleSet) -> None:
    """Check rules cannot be changed after loading."""
    rule: Rule = canonical.rules[0]
    with pytest.raises(AttributeError):
        rule.name = "x"  # type: ignore[misc]


def test_error_pickles() -> None:
    """Check a RulesError survives pickling (e.g. from a worker process)."""
    error = pickle.loads(pickle.dumps(RulesError("rules.yaml", 3, "rule 'A': bad")))
    assert (str(error), error.line) == ("rules.yaml:3: rule 'A': bad", 3)


def test_repr(canonical: RuleSet) -> None:
    """Check the repr lists the rule names in order."""
    assert repr(canonical) == "RuleSet(['InboundFromPSTN', 'InboundCall', 'Fwd', 'P2P'])"


@pytest.mark.parametrize("value", ["mandatory", "optional", "off", "'off'"])
def test_srtp_policy(value: str) -> None:
    """Check each SRTP policy is read (a bare YAML ``off`` included), and a rule without one has none."""
    rules = parse_rules(f"rules:\n  - {{name: A, pattern: a, scenarios: [x], srtp: {value}}}\n  - {{name: B, pattern: b, scenarios: [x]}}\n")
    assert [r.srtp for r in rules.rules] == [value.strip("'"), None]
