"""Loading and matching ``rules.yaml``: which scenarios a dialed number starts.

The file holds a top-level ``rules:`` list in priority order::

    rules:
      - name: Fwd                        # unique
        pattern: "conf_[A-Za-z0-9]+"     # must match the WHOLE user part
        exclude: "conf_test"             # optional veto, also a whole match
        scenarios: [conference]          # stems of files in scenarios/, in order
        description: "one session per conference"   # optional
        kinds: [internal]                # optional: web, sip, internal
        networks: [10.0.0.0/8]           # optional: source addresses (CIDR)
        authenticated: true              # optional: a SIP digest, store user or join token

A rule with ``kinds``, ``networks`` or ``authenticated`` takes only the
callers they describe (:class:`Caller`); for anyone else the rule is passed
over as if its pattern did not match. A number whose matching rules all
refused the caller is forbidden (403, or a digest challenge to a SIP caller
when only ``authenticated`` stood in the way); a number no pattern matches
is not found (404). Either way no session starts.

:func:`load_rules` validates the file completely before anything runs, so that
``callbridge serve`` can stop with the file, line and reason of the first
problem (:class:`RulesError`). The YAML is *composed* (not constructed) with
PyYAML's pure-Python ``SafeLoader``: every node keeps its line, no tag is ever
turned into an object, and error texts do not depend on whether libyaml is
installed. Plain scalars that YAML would read as numbers (``pattern: 5550100``)
are taken as the text that was written; booleans and nulls are rejected.

:meth:`RuleSet.match` runs once per incoming call: it walks a precomputed
tuple of bound ``fullmatch`` methods and allocates nothing of its own.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.reader import ReaderError

__all__ = ["Caller", "Rule", "RuleSet", "RulesError", "RulesWarning", "load_rules", "parse_rules"]

_KEYS = ("name", "pattern", "exclude", "scenarios", "description", "kinds", "networks", "authenticated", "srtp")
#: A rule's ``srtp`` values (engine.sip.offer_answer.SRTP_POLICIES; the router does not import sip/).
SRTP_VALUES = ("mandatory", "optional", "off")
#: Call kinds a rule can be restricted to.
KINDS = ("web", "sip", "internal")
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_REQUIRED = ("name", "pattern", "scenarios")
_TAG = "tag:yaml.org,2002:"
_TEXT_TAGS = frozenset({_TAG + "str", _TAG + "int", _TAG + "float"})
_KINDS = {
    _TAG + "str": "a string",
    _TAG + "int": "an integer",
    _TAG + "float": "a number",
    _TAG + "bool": "a boolean",
    _TAG + "null": "null",
    _TAG + "timestamp": "a date",
}
#: Pattern texts taken to match every destination (for the shadowing warning).
_MATCH_ALL = frozenset({".*", ".*?", "^.*", ".*$", "^.*$", "(.*)", "(?s).*"})


class RulesError(Exception):
    """``rules.yaml`` cannot be used.

    :param path: the file as named in messages.
    :param line: the 1-based line at fault, or ``None`` when the file could not
        be read at all.
    :param reason: what is wrong, prefixed with ``rule 'NAME': `` when one rule
        is at fault.
    """

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        super().__init__(path, line, reason)  # args as given, so it pickles

    def __str__(self) -> str:
        return _located(self.path, self.line, self.reason)


@dataclass(frozen=True)
class RulesWarning:
    """A problem that does not stop the rules from working (e.g. a dead rule).

    ``str()`` has the same ``path:line: reason`` form as :class:`RulesError`.
    """

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return _located(self.path, self.line, self.reason)


@dataclass(frozen=True)
class Rule:
    """One validated rule.

    :param name: unique name of the rule.
    :param pattern: compiled pattern; it must match the whole destination.
    :param exclude: compiled veto pattern, or ``None``.
    :param scenarios: scenario names (file stems) to run, in order, in one
        session.
    :param line: line of the rule in its file (0 for rules not from a file).
    :param description: free text, ``""`` when absent.
    :param srtp: the SRTP policy of SIP calls this rule takes (``mandatory``:
        only SRTP, refused 488 otherwise; ``optional``: answered in kind;
        ``off``: only RTP), or ``None`` for the engine's default (``optional``).
    """

    name: str
    pattern: re.Pattern[str]
    exclude: re.Pattern[str] | None
    scenarios: tuple[str, ...]
    line: int
    description: str = ""
    kinds: frozenset[str] | None = None
    networks: tuple[_Network, ...] | None = None
    authenticated: bool = False
    srtp: str | None = None

    @property
    def restricted(self) -> bool:
        return self.kinds is not None or self.networks is not None or self.authenticated

    def refusal(self, caller: Caller) -> str | None:
        """Why this rule does not take ``caller`` (``"kind"``, ``"network"``,
        ``"authentication"``), or ``None`` when it does."""
        if self.kinds is not None and caller.kind not in self.kinds:
            return "kind"
        if self.networks is not None and not caller.in_networks(self.networks):
            return "network"
        if self.authenticated and not caller.authenticated:
            return "authentication"
        return None

    def restrictions(self) -> dict[str, object]:
        """The restrictions as plain data (``rules check``, the API's explain)."""
        found: dict[str, object] = {}
        if self.kinds is not None:
            found["kinds"] = sorted(self.kinds)
        if self.networks is not None:
            found["networks"] = [str(n) for n in self.networks]
        if self.authenticated:
            found["authenticated"] = True
        return found


@dataclass(frozen=True)
class Caller:
    """Who is calling, as far as rules care.

    :param kind: ``web``, ``sip`` or ``internal`` (a scenario's call into another session).
    :param address: the source address of the signalling, or ``None`` (internal calls).
    :param authenticated: whether the engine verified an identity (see :class:`engine.calls.grants.Grant`).
    """

    kind: str
    address: str | None = None
    authenticated: bool = False

    def in_networks(self, networks: tuple[_Network, ...]) -> bool:
        if self.address is None:
            return False
        try:
            ip = ipaddress.ip_address(self.address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in networks)


_Matcher = Callable[[str], "re.Match[str] | None"]


class RuleSet:
    """Rules in priority order; the first rule that matches wins.

    :param rules: the rules, highest priority first.
    :param warnings: problems found while loading (see :class:`RulesWarning`).
    """

    __slots__ = ("rules", "warnings", "_table")

    def __init__(self, rules: Iterable[Rule], warnings: Iterable[RulesWarning] = ()) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.warnings: list[RulesWarning] = list(warnings)
        self._table: tuple[tuple[_Matcher, _Matcher | None, Rule], ...] = tuple(
            (r.pattern.fullmatch, r.exclude.fullmatch if r.exclude else None, r)
            for r in self.rules
        )

    def match(self, destination: str, caller: Caller | None = None) -> Rule | None:
        """Return the first rule whose pattern matches the whole destination,
        whose exclude does not, and which takes ``caller``; or ``None`` (the
        caller answers :meth:`refusal`'s code).

        :param destination: the dialed user part, already percent-decoded; it is
            matched as given (no trimming, no case folding).
        :param caller: who calls; ``None`` only for tools that ask which rule
            a number reaches regardless of restrictions (``rules check``).
        """
        for pattern, exclude, rule in self._table:
            if pattern(destination) is not None and (
                exclude is None or exclude(destination) is None
            ) and (caller is None or not rule.restricted or rule.refusal(caller) is None):
                return rule
        return None

    def refusal(self, destination: str, caller: Caller) -> tuple[int, str]:
        """Why :meth:`match` found nothing for ``caller``: ``(404, "no rule")``
        when no pattern matches, ``(401, "authentication")`` when a rule
        would take the caller once authenticated, else ``(403, REASON)``."""
        reasons = [rule.refusal(caller) for pattern, exclude, rule in self._table
                   if pattern(destination) is not None and (exclude is None or exclude(destination) is None)]
        if not reasons:
            return 404, "no rule"
        if "authentication" in reasons:
            return 401, "authentication"
        return 403, str(reasons[0])

    def explain(self, destination: str, caller: Caller | None = None) -> list[tuple[Rule, str]]:
        """Say why each rule was passed over, up to and including the match.

        Verdicts are ``"pattern does not match"``, ``"excluded by 'EXCLUDE'"``,
        ``"refused: KIND|NETWORK|AUTHENTICATION"`` (with ``caller``) and
        ``"matched"``; without a match every rule is listed.

        :param destination: as for :meth:`match`.
        """
        verdicts: list[tuple[Rule, str]] = []
        for pattern, exclude, rule in self._table:
            if pattern(destination) is None:
                verdicts.append((rule, "pattern does not match"))
            elif exclude is not None and exclude(destination) is not None:
                assert rule.exclude is not None
                verdicts.append((rule, f"excluded by '{rule.exclude.pattern}'"))
            elif caller is not None and (why := rule.refusal(caller)) is not None:
                verdicts.append((rule, f"refused: {why}"))
            else:
                verdicts.append((rule, "matched"))
                break
        return verdicts

    def __repr__(self) -> str:
        return f"RuleSet({[r.name for r in self.rules]!r})"


def load_rules(path: str | os.PathLike[str], scenarios_dir: Path | None = None) -> RuleSet:
    """Read and validate a rules file.

    :param path: the file; messages name it as given.
    :param scenarios_dir: when given, every scenario must exist there as
        ``<name>.py``.
    :raises RulesError: on the first problem found (unreadable file, bad YAML,
        bad structure, bad pattern, unknown scenario).
    """
    where = os.fspath(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RulesError(where, None, f"cannot read the file: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RulesError(where, line, f"not valid UTF-8: {exc.reason}") from None
    return parse_rules(text, where, scenarios_dir)


def parse_rules(
    text: str, path_for_messages: str = "rules.yaml", scenarios_dir: Path | None = None
) -> RuleSet:
    """Validate rules given as YAML text; see :func:`load_rules`.

    :param text: the YAML document.
    :param path_for_messages: the file name used in errors and warnings.
    :param scenarios_dir: as for :func:`load_rules`.
    :raises RulesError: on the first problem found.
    """
    return _Parser(path_for_messages, scenarios_dir).parse(text)


def _located(path: str, line: int | None, reason: str) -> str:
    return f"{path}: {reason}" if line is None else f"{path}:{line}: {reason}"


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _KINDS.get(node.tag, f"a value tagged '{node.tag}'")


def _is_text(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag in _TEXT_TAGS


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _TAG + "null"


class _Parser:
    """One pass over the composed YAML; raises at the first problem."""

    def __init__(self, path: str, scenarios_dir: Path | None) -> None:
        self.path = path
        self.scenarios_dir = scenarios_dir
        self._known: frozenset[str] | None = None

    def error(self, line: int | None, reason: str) -> RulesError:
        return RulesError(self.path, line, reason)

    def parse(self, text: str) -> RuleSet:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark, start = exc.problem_mark, exc.context_mark
            reason = str(exc.problem)
            if exc.context:  # e.g. "while scanning a quoted scalar (from line 3)"
                since = f" (from line {start.line + 1})" if start and mark and start.line != mark.line else ""
                reason = f"{exc.context}{since}: {reason}"
            at = mark or start
            line = at.line + 1 if at else None
            raise self.error(line, f"invalid YAML: {reason}") from None
        except ReaderError as exc:
            line = text.count("\n", 0, exc.position) + 1
            raise self.error(line, f"invalid YAML: unacceptable character #x{exc.character:04x}") from None
        if root is None:
            raise self.error(1, "the file is empty; expected a top-level 'rules' list")
        if not isinstance(root, MappingNode):
            raise self.error(
                _line(root), f"expected a mapping with a 'rules' list at the top level, got {_kind(root)}"
            )
        top = self.fields(root, ("rules",), "top level: ")
        if "rules" not in top:
            raise self.error(_line(root), "missing required top-level key 'rules'")
        items = top["rules"][1]
        if not isinstance(items, SequenceNode):
            raise self.error(_line(items), f"'rules' must be a list, got {_kind(items)}")

        rules: list[Rule] = []
        first_line: dict[str, int] = {}
        for index, item in enumerate(items.value, 1):
            rule = self.parse_rule(item, index)
            if rule.name in first_line:
                raise self.error(
                    rule.line,
                    f"rule '{rule.name}': name already used by the rule on line {first_line[rule.name]}",
                )
            first_line[rule.name] = rule.line
            rules.append(rule)
        return RuleSet(rules, self.check_shadowing(rules, _line(items)))

    def fields(self, node: MappingNode, allowed: tuple[str, ...], label: str) -> dict[str, tuple[Node, Node]]:
        """Map key text to ``(key node, value node)``, rejecting duplicate,
        unknown and non-string keys."""
        found: dict[str, tuple[Node, Node]] = {}
        for key, value in node.value:
            if key.tag == _TAG + "merge":
                raise self.error(_line(key), f"{label}merge keys ('<<') are not supported")
            if not _is_text(key):
                raise self.error(_line(key), f"{label}keys must be strings, got {_kind(key)}")
            name = str(key.value)
            if name in found:
                first = _line(found[name][0])
                raise self.error(_line(key), f"{label}duplicate key '{name}' (first on line {first})")
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f"did you mean '{close[0]}'?" if close else "expected one of: " + ", ".join(allowed)
                raise self.error(_line(key), f"{label}unknown key '{name}' ({hint})")
            found[name] = (key, value)
        return found

    def parse_rule(self, node: Node, index: int) -> Rule:
        if not isinstance(node, MappingNode):
            raise self.error(_line(node), f"rule #{index} must be a mapping, got {_kind(node)}")
        label = f"rule #{index}"
        for key, value in node.value:  # name the rule in every later message
            if _is_text(key) and key.value == "name" and _is_text(value) and value.value:
                label = f"rule '{value.value}'"
                break
        fields = self.fields(node, _KEYS, label + ": ")
        for key in _REQUIRED:
            if key not in fields:
                raise self.error(_line(node), f"{label}: missing required key '{key}'")

        def text(key: str, optional: bool = False) -> str | None:
            if key not in fields:
                return None
            value = fields[key][1]
            if optional and _is_null(value):
                return None
            if not _is_text(value):
                raise self.error(_line(value), f"{label}: '{key}' must be a string, got {_kind(value)}")
            if not value.value and key != "description":
                raise self.error(_line(value), f"{label}: '{key}' must not be empty")
            return str(value.value)

        def regex(key: str, optional: bool = False) -> re.Pattern[str] | None:
            source = text(key, optional)
            if source is None:
                return None
            try:
                return re.compile(source)
            except re.error as exc:
                raise self.error(
                    _line(fields[key][1]),
                    f"{label}: {key} '{source}' is not a valid regular expression: {exc}",
                ) from None

        name = text("name")
        pattern = regex("pattern")
        exclude = regex("exclude", optional=True)
        assert name is not None and pattern is not None
        return Rule(
            name=name,
            pattern=pattern,
            exclude=exclude,
            scenarios=self.parse_scenarios(fields["scenarios"][1], label),
            line=_line(node),
            description=text("description", optional=True) or "",
            kinds=self.parse_kinds(fields["kinds"][1], label) if "kinds" in fields else None,
            networks=self.parse_networks(fields["networks"][1], label) if "networks" in fields else None,
            authenticated=self.parse_flag(fields["authenticated"][1], label, "authenticated")
            if "authenticated" in fields else False,
            srtp=self.parse_srtp(fields["srtp"][1], label) if "srtp" in fields else None,
        )

    def text_list(self, node: Node, label: str, key: str) -> list[tuple[str, Node]]:
        if not isinstance(node, SequenceNode):
            raise self.error(_line(node), f"{label}: '{key}' must be a list, got {_kind(node)}")
        if not node.value:
            raise self.error(_line(node), f"{label}: '{key}' must not be empty (leave it out to take every caller)")
        items: list[tuple[str, Node]] = []
        for item in node.value:
            if not _is_text(item):
                raise self.error(_line(item), f"{label}: '{key}' entries must be strings, got {_kind(item)}")
            items.append((str(item.value), item))
        return items

    def parse_kinds(self, node: Node, label: str) -> frozenset[str]:
        kinds = []
        for value, item in self.text_list(node, label, "kinds"):
            if value not in KINDS:
                raise self.error(_line(item), f"{label}: unknown call kind '{value}' (use {', '.join(KINDS)})")
            kinds.append(value)
        return frozenset(kinds)

    def parse_networks(self, node: Node, label: str) -> tuple[_Network, ...]:
        networks = []
        for value, item in self.text_list(node, label, "networks"):
            try:
                networks.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                raise self.error(
                    _line(item), f"{label}: '{value}' is not an address or network (e.g. 192.0.2.0/24, ::1)"
                ) from None
        return tuple(networks)

    def parse_srtp(self, node: Node, label: str) -> str:
        # YAML reads a bare `off` as the boolean false: take it as the word.
        if isinstance(node, ScalarNode) and node.tag == _TAG + "bool" and str(node.value).lower() in ("off", "no", "false"):
            return "off"
        if not _is_text(node) or str(node.value) not in SRTP_VALUES:
            shown = repr(str(node.value)) if isinstance(node, ScalarNode) else _kind(node)
            raise self.error(_line(node), f"{label}: srtp must be one of {', '.join(SRTP_VALUES)}, got {shown}")
        return str(node.value)

    def parse_flag(self, node: Node, label: str, key: str) -> bool:
        if not (isinstance(node, ScalarNode) and node.tag == _TAG + "bool"):
            raise self.error(_line(node), f"{label}: '{key}' must be true or false, got {_kind(node)}")
        return str(node.value).lower() in ("true", "yes", "on")

    def parse_scenarios(self, node: Node, label: str) -> tuple[str, ...]:
        if not isinstance(node, SequenceNode):
            hint = f" (write [{node.value}])" if _is_text(node) and node.value else ""
            raise self.error(_line(node), f"{label}: 'scenarios' must be a list, got {_kind(node)}{hint}")
        if not node.value:
            raise self.error(_line(node), f"{label}: 'scenarios' must not be empty")
        names: list[str] = []
        for item in node.value:
            if not (isinstance(item, ScalarNode) and item.tag == _TAG + "str"):
                raise self.error(_line(item), f"{label}: scenario names must be strings, got {_kind(item)}")
            name = str(item.value)
            if not name.isidentifier():
                stem = name[:-3] if name.endswith(".py") else ""
                hint = (
                    f"write '{stem}' without '.py'"
                    if stem.isidentifier()
                    else "a file stem: letters, digits and '_', not starting with a digit"
                )
                raise self.error(_line(item), f"{label}: '{name}' is not a valid scenario name ({hint})")
            self.check_scenario(name, item, label)
            names.append(name)
        return tuple(names)

    def check_scenario(self, name: str, node: Node, label: str) -> None:
        if self.scenarios_dir is None:
            return
        if self._known is None:
            directory = self.scenarios_dir
            self._known = frozenset(
                p.stem for p in directory.glob("*.py") if p.is_file()
            ) if directory.is_dir() else frozenset()
        if name in self._known:
            return
        where = os.path.join(self.scenarios_dir, "")
        if not self.scenarios_dir.is_dir():
            detail = "the directory does not exist"
        else:
            listed = sorted(s for s in self._known if not s.startswith("_"))
            detail = "known: " + (", ".join(listed) if listed else "none")
        raise self.error(_line(node), f"{label}: scenario '{name}' not found in {where} ({detail})")

    def check_shadowing(self, rules: list[Rule], rules_line: int) -> list[RulesWarning]:
        """Warn about rules that an earlier exclude-free rule always beats."""
        if not rules:
            return [RulesWarning(self.path, rules_line, "no rules: every call will be answered 404")]
        found: list[RulesWarning] = []
        for i, rule in enumerate(rules):
            for earlier in rules[:i]:
                if earlier.exclude is not None or earlier.restricted:
                    continue
                if earlier.pattern.pattern in _MATCH_ALL:
                    why = "matches everything"
                elif earlier.pattern == rule.pattern:
                    why = "has the same pattern"
                else:
                    continue
                found.append(
                    RulesWarning(
                        self.path,
                        rule.line,
                        f"rule '{rule.name}' can never match: "
                        f"earlier rule '{earlier.name}' (line {earlier.line}) {why}",
                    )
                )
                break
        return found
