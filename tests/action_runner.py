"""Runs a composite GitHub Action (``action.yml``) offline, the way the Actions runner does,
for the forms of expressions the heapgate action uses.

- Inputs get their defaults; an input the action does not declare is an error.
- ``${{ … }}`` in ``env:``, ``with:``, ``working-directory:`` and output values is evaluated
  (contexts ``inputs``, ``steps.<id>.outputs``, ``github``, ``runner``, ``env``; operators
  ``== != && || !``, parentheses, string/number/boolean literals; status functions
  ``always() success() failure() cancelled()``). ``==`` on strings ignores case, as GitHub's.
- ``if:`` is an expression with or without ``${{ }}``; without a status function it means
  ``success() && (…)``.
- ``run:`` steps run as ``bash --noprofile --norc -eo pipefail FILE`` with ``GITHUB_OUTPUT``,
  ``GITHUB_ENV``, ``GITHUB_STEP_SUMMARY`` (fresh files per step, read back after it),
  ``GITHUB_WORKSPACE``, ``GITHUB_ACTION_PATH`` and ``RUNNER_TEMP``.
- ``uses:`` steps are not run; the runner records them with their evaluated ``if:`` and
  ``with:`` so a test can check their pinning and when they would run.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

Value = Union[str, bool, float, None]

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>\d+(?:\.\d+)?)|(?P<op>==|!=|&&|\|\||!|\(|\)|,)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)*))"
)
_STATUS_FUNCTIONS = ("always", "success", "failure", "cancelled")


class ExpressionError(Exception):
    """An expression this emulator does not understand (so the action uses a new form)."""


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ExpressionError(f"cannot parse {text!r} at {text[pos:]!r}")
        kind = m.lastgroup
        assert kind is not None
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _truthy(v: Value) -> bool:
    if isinstance(v, str):
        return v != ""
    if isinstance(v, float):
        return v != 0
    return bool(v)


def _text(v: Value) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else str(v)
    return v


def _equal(a: Value, b: Value) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.casefold() == b.casefold()
    if type(a) is type(b):
        return a == b
    # GitHub coerces mismatched types to numbers; the action compares strings only.
    raise ExpressionError(f"comparison of {a!r} and {b!r}")


class _Parser:
    def __init__(self, text: str, runner: ActionRunner) -> None:
        self.tokens = _tokens(text)
        self.pos = 0
        self.runner = runner
        self.text = text

    def peek(self) -> Optional[str]:
        return self.tokens[self.pos][1] if self.pos < len(self.tokens) else None

    def take(self, expected: Optional[str] = None) -> tuple[str, str]:
        if self.pos >= len(self.tokens):
            raise ExpressionError(f"unexpected end of {self.text!r}")
        tok = self.tokens[self.pos]
        if expected is not None and tok[1] != expected:
            raise ExpressionError(f"expected {expected!r} in {self.text!r}, found {tok[1]!r}")
        self.pos += 1
        return tok

    def parse(self) -> Value:
        v = self.or_()
        if self.pos != len(self.tokens):
            raise ExpressionError(f"trailing {self.tokens[self.pos][1]!r} in {self.text!r}")
        return v

    def or_(self) -> Value:
        v = self.and_()
        while self.peek() == "||":
            self.take()
            right = self.and_()
            v = v if _truthy(v) else right
        return v

    def and_(self) -> Value:
        v = self.cmp()
        while self.peek() == "&&":
            self.take()
            right = self.cmp()
            v = right if _truthy(v) else v
        return v

    def cmp(self) -> Value:
        v = self.unary()
        while self.peek() in ("==", "!="):
            op = self.take()[1]
            right = self.unary()
            v = _equal(v, right) == (op == "==")
        return v

    def unary(self) -> Value:
        if self.peek() == "!":
            self.take()
            return not _truthy(self.unary())
        return self.atom()

    def atom(self) -> Value:
        kind, tok = self.take()
        if tok == "(":
            v = self.or_()
            self.take(")")
            return v
        if kind == "str":
            return tok[1:-1].replace("''", "'")
        if kind == "num":
            return float(tok)
        if kind == "name":
            if tok in ("true", "false"):
                return tok == "true"
            if tok == "null":
                return None
            if self.peek() == "(":
                self.take("(")
                self.take(")")
                return self.runner.status_function(tok)
            return self.runner.lookup(tok)
        raise ExpressionError(f"unexpected {tok!r} in {self.text!r}")


@dataclass
class StepResult:
    """What one step did."""

    index: int
    id: Optional[str]
    kind: str  # "run" or "uses"
    ran: bool
    outcome: str  # "success", "failure" or "skipped"
    exit_code: Optional[int] = None
    stdout: str = ""
    stderr: str = ""
    outputs: dict[str, str] = field(default_factory=dict)
    uses: Optional[str] = None
    if_expr: Optional[str] = None
    with_: dict[str, str] = field(default_factory=dict)
    would_run: Optional[bool] = None  # uses: steps: whether the runner would run it here


@dataclass
class ActionResult:
    """The whole action."""

    status: str  # "success" or "failure"
    outputs: dict[str, str]
    steps: list[StepResult]
    summary: str

    @property
    def stdout(self) -> str:
        return "".join(s.stdout for s in self.steps)

    def workflow_commands(self) -> list[str]:
        """Lines of the steps' standard output that GitHub reads as workflow commands."""
        return [line for line in self.stdout.splitlines() if line.startswith("::")]


def parse_output_file(text: str) -> dict[str, str]:
    """``$GITHUB_OUTPUT``/``$GITHUB_ENV`` content: ``name=value`` and ``name<<DELIM`` blocks."""
    out: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            value = []
            while i < len(lines) and lines[i] != delimiter:
                value.append(lines[i])
                i += 1
            if i >= len(lines):
                raise ValueError(f"unterminated {name}<<{delimiter} in an output file")
            i += 1
            out[name] = "\n".join(value)
        elif "=" in line:
            name, value_ = line.split("=", 1)
            out[name] = value_
        else:
            raise ValueError(f"bad line in an output file: {line!r}")
    return out


class ActionRunner:
    """Runs one composite action with given inputs in a workspace."""

    def __init__(self, action_dir: Path, workspace: Path, temp: Path, env: Optional[dict[str, str]] = None) -> None:
        self.action_dir = action_dir
        self.meta: dict[str, Any] = yaml.safe_load((action_dir / "action.yml").read_text(encoding="utf-8"))
        if self.meta["runs"]["using"] != "composite":
            raise ValueError("not a composite action")
        self.workspace = workspace
        self.temp = temp
        self.base_env = dict(os.environ if env is None else env)
        self.inputs: dict[str, str] = {}
        self.steps: dict[str, dict[str, Any]] = {}
        self.env: dict[str, str] = {}
        self.failed = False

    # -- expressions
    def status_function(self, name: str) -> bool:
        if name == "always":
            return True
        if name == "success":
            return not self.failed
        if name == "failure":
            return self.failed
        if name == "cancelled":
            return False
        raise ExpressionError(f"unknown function {name}()")

    def lookup(self, dotted: str) -> Value:
        parts = dotted.split(".")
        head = parts[0]
        if head == "inputs" and len(parts) == 2:
            if parts[1] not in self.inputs:
                raise ExpressionError(f"unknown input {parts[1]!r}")
            return self.inputs[parts[1]]
        if head == "steps" and len(parts) == 4 and parts[2] in ("outputs",):
            return self.steps.get(parts[1], {}).get("outputs", {}).get(parts[3])
        if head == "steps" and len(parts) == 3 and parts[2] in ("outcome", "conclusion"):
            return self.steps.get(parts[1], {}).get(parts[2])
        if head == "github" and len(parts) == 2:
            return {"action_path": str(self.action_dir), "workspace": str(self.workspace)}.get(parts[1])
        if head == "runner" and len(parts) == 2:
            return {"temp": str(self.temp), "os": "Linux"}.get(parts[1])
        if head == "env" and len(parts) == 2:
            return self.env.get(parts[1])
        raise ExpressionError(f"unknown context {dotted!r}")

    def evaluate(self, expr: str) -> Value:
        return _Parser(expr, self).parse()

    def template(self, value: Any) -> str:
        """A string with ``${{ }}`` parts replaced by their values."""
        if not isinstance(value, str):
            return _text(value)
        return re.sub(r"\$\{\{(.*?)\}\}", lambda m: _text(self.evaluate(m.group(1))), value)

    def condition(self, expr: Any) -> bool:
        if expr is None:
            return not self.failed
        text = str(expr).strip()
        m = re.fullmatch(r"\$\{\{(.*)\}\}", text, re.S)
        if m:
            text = m.group(1)
        if not any(re.search(rf"\b{f}\s*\(", text) for f in _STATUS_FUNCTIONS):
            text = f"success() && ({text})"
        return _truthy(self.evaluate(text))

    # -- running
    def run(self, inputs: dict[str, str]) -> ActionResult:
        declared = self.meta.get("inputs") or {}
        unknown = set(inputs) - set(declared)
        if unknown:
            raise ValueError(f"inputs the action does not declare: {sorted(unknown)}")
        self.inputs = {name: str(spec.get("default", "")) for name, spec in declared.items()}
        self.inputs.update(inputs)
        results: list[StepResult] = []
        summary = []
        for index, step in enumerate(self.meta["runs"]["steps"]):
            result = self._step(index, step)
            results.append(result)
            if result.id:
                self.steps[result.id] = {"outputs": result.outputs, "outcome": result.outcome, "conclusion": result.outcome}
            summary.append(self._last_summary)
        outputs = {name: self.template(spec["value"]) for name, spec in (self.meta.get("outputs") or {}).items()}
        return ActionResult("failure" if self.failed else "success", outputs, results, "".join(summary))

    _last_summary = ""

    def _step(self, index: int, step: dict[str, Any]) -> StepResult:
        self._last_summary = ""
        step_id = step.get("id")
        if_expr = step.get("if")
        if "uses" in step:
            would_run = self.condition(if_expr)
            with_ = {k: self.template(v) for k, v in (step.get("with") or {}).items()}
            return StepResult(
                index, step_id, "uses", False, "skipped", uses=step["uses"], if_expr=if_expr, with_=with_, would_run=would_run
            )
        if not self.condition(if_expr):
            return StepResult(index, step_id, "run", False, "skipped", if_expr=if_expr)
        if step.get("shell") != "bash":
            raise ValueError(f"step {index}: only `shell: bash` is emulated")
        (self.temp / "_runner").mkdir(exist_ok=True)
        step_dir = Path(tempfile.mkdtemp(prefix=f"step-{index}-", dir=self.temp / "_runner"))
        files = {name: step_dir / name.lower() for name in ("GITHUB_OUTPUT", "GITHUB_ENV", "GITHUB_STEP_SUMMARY")}
        for path in files.values():
            path.touch()
        script = step_dir / "script.sh"
        script.write_text(step["run"], encoding="utf-8")
        env = dict(self.base_env)
        env.update(self.env)
        env.update({name: self.template(value) for name, value in (step.get("env") or {}).items()})
        env.update({name: str(path) for name, path in files.items()})
        env.update(
            GITHUB_WORKSPACE=str(self.workspace),
            GITHUB_ACTION_PATH=str(self.action_dir),
            RUNNER_TEMP=str(self.temp),
            GITHUB_ACTIONS="true",
            CI="true",
        )
        cwd = self.workspace / self.template(step.get("working-directory", "."))
        proc = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        outputs = parse_output_file(files["GITHUB_OUTPUT"].read_text(encoding="utf-8"))
        self.env.update(parse_output_file(files["GITHUB_ENV"].read_text(encoding="utf-8")))
        self._last_summary = files["GITHUB_STEP_SUMMARY"].read_text(encoding="utf-8")
        outcome = "success" if proc.returncode == 0 else "failure"
        if proc.returncode != 0:
            self.failed = True
        return StepResult(
            index, step_id, "run", True, outcome, proc.returncode, proc.stdout, proc.stderr, outputs, if_expr=if_expr
        )

    def uses_would_run(self, step: StepResult, *, failed: bool) -> bool:
        """Whether a recorded ``uses:`` step runs when the job has (not) failed by then."""
        saved = self.failed
        self.failed = failed
        try:
            return self.condition(step.if_expr)
        finally:
            self.failed = saved
