"""Reading and compiling scenario files, once each, with clear errors."""

from __future__ import annotations

from pathlib import Path
from types import CodeType

from engine.runtime.router import RuleSet

__all__ = ["ScenarioError", "ScenarioCompiler"]


class ScenarioError(Exception):
    """A scenario could not be loaded (file, line and reason in the text)."""


class ScenarioCompiler:
    """The compiled scenarios of one directory: ``<name>.py`` read and
    compiled on first use and kept until a new compiler replaces this one
    (a reload).

    :param scenarios_dir: where the scenario files are.
    """

    def __init__(self, scenarios_dir: Path) -> None:
        self.scenarios_dir = Path(scenarios_dir)
        self._code: dict[str, CodeType] = {}
        #: The file names of the code compiled here (what a scenario's
        #: coroutine is recognised by).
        self.files: set[str] = set()

    def compile_rules(self, rules: RuleSet) -> None:
        """Compile every scenario ``rules`` name; raise :class:`ScenarioError`
        with file, line and reason for the first that does not compile."""
        for rule in rules.rules:
            for name in rule.scenarios:
                self.code(name)

    def code(self, name: str) -> CodeType:
        """The compiled scenario ``name``, read and compiled once;
        :class:`ScenarioError` says why it cannot be."""
        code = self._code.get(name)
        if code is None:
            path = self.scenarios_dir / f"{name}.py"
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise ScenarioError(f"{path}: cannot read the scenario: {exc.strerror or exc}") from None
            try:
                source = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = data.count(b"\n", 0, exc.start) + 1
                raise ScenarioError(f"{path}:{line}: not valid UTF-8: {exc.reason}") from None
            try:
                code = compile(source, str(path), "exec")
            except SyntaxError as exc:
                where = f"{path}:{exc.lineno}" if exc.lineno else str(path)
                raise ScenarioError(f"{where}: {exc.msg}") from None
            except ValueError as exc:  # e.g. null bytes, on some Python versions
                raise ScenarioError(f"{path}: {exc}") from None
            self._code[name] = code
            self.files.add(code.co_filename)
        return code

    def recompile(self, rules: RuleSet) -> None:
        """Forget the compiled code and compile what ``rules`` name afresh;
        if one does not compile, raise :class:`ScenarioError` and keep the
        old code. :attr:`files` keeps the old names: tasks of sessions
        started before still belong to their sessions."""
        old = self._code
        self._code = {}
        try:
            self.compile_rules(rules)
        except ScenarioError:
            self._code = old
            raise
