"""The GitHub Action in ``action/`` run offline the way the Actions runner runs it
(tests/action_runner.py), on a small project whose tests break their memory limits; and the
repository's workflows checked by actionlint.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from action_runner import ActionResult, ActionRunner

REPO = Path(__file__).resolve().parent.parent
ACTION_DIR = REPO / "action"
WORKFLOWS = REPO / ".github" / "workflows"
PINNED = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_./-]+@[0-9a-f]{40}$")

# The project under test: one test within its limit, one over it (a 20 MB bytearray on a
# known line), one that only passes. Line numbers matter: the annotation must point at ALLOC_LINE.
PROJECT_TESTS = textwrap.dedent(
    """\
    import pytest


    @pytest.mark.limit_memory("64 MB")
    def test_fits():
        data = bytearray(4_000_000)
        assert len(data) == 4_000_000


    @pytest.mark.limit_memory("8 MB")
    def test_too_big():
        data = bytearray(20_000_000)
        assert len(data) == 20_000_000


    def test_plain():
        assert True
    """
)
ALLOC_LINE = 12
HOSTILE_ID = "::error::x%0A<script>alert(1)</script>`code`|pipe"


def _project(workspace: Path, body: str = PROJECT_TESTS, name: str = "test_mem.py") -> Path:
    project = workspace / "proj"
    project.mkdir(parents=True, exist_ok=True)
    (project / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (project / name).write_text(body, encoding="utf-8")
    return project


def _run_action(tmp_path: Path, inputs: dict[str, str], workspace: Path) -> tuple[ActionResult, ActionRunner]:
    temp = tmp_path / "runner-temp"
    temp.mkdir(exist_ok=True)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("GITHUB_", "PYTEST_"))}
    env.update(GITHUB_SERVER_URL="https://github.com", GITHUB_REPOSITORY="acme/widgets", GITHUB_SHA="f" * 40, GITHUB_RUN_ID="42")
    runner = ActionRunner(ACTION_DIR, workspace, temp, env)
    inputs = {"python": sys.executable, **inputs}
    return runner.run(inputs), runner


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    ws.mkdir()
    return ws


def _failing_run(tmp_path: Path, workspace: Path) -> ActionResult:
    _project(workspace)
    result, runner = _run_action(
        tmp_path, {"working-directory": "proj", "pytest-args": "-p no:cacheprovider -q"}, workspace
    )
    upload = [s for s in result.steps if s.kind == "uses"]
    assert upload and all(PINNED.match(s.uses or "") for s in upload), [s.uses for s in upload]
    for step in upload:
        assert runner.uses_would_run(step, failed=True), f"{step.uses} must run when tests failed (if: always())"
        assert step.would_run
    return result


def test_the_action_fails_with_the_failing_test_in_summary_annotation_and_outputs(tmp_path: Path, workspace: Path) -> None:
    result = _failing_run(tmp_path, workspace)
    pytest_step = next(s for s in result.steps if s.id == "pytest")
    assert pytest_step.outputs["status"] == "1", pytest_step.stdout + pytest_step.stderr
    assert result.status == "failure"

    # Summary: the failing test with its limit and peak, linked at the commit.
    summary = result.summary
    assert "❌ heapgate: 1 of 2 tracked tests failed a memory check" in summary
    row = next(line for line in summary.splitlines() if line.startswith("| `test_mem.py::test_too_big`"))
    assert "8.0MiB (8388608 B)" in row
    peak = int(re.search(r"19\.1MiB \((\d+) B\)", row).group(1))  # type: ignore[union-attr]
    assert 20_000_000 <= peak < 20_000_200
    assert f"https://github.com/acme/widgets/blob/{'f' * 40}/proj/test_mem.py#L{ALLOC_LINE}" in row
    assert "artifact `heapgate-report` of [this run](https://github.com/acme/widgets/actions/runs/42#artifacts)" in summary

    # One annotation, at the allocating line of the project's file, relative to the workspace.
    commands = result.workflow_commands()
    assert len(commands) == 1, commands
    assert commands[0].startswith(
        f"::error file=proj/test_mem.py,line={ALLOC_LINE},title=heapgate%3A test_mem.py%3A%3Atest_too_big::"
    ), commands[0]
    assert f"peak 19.1MiB ({peak} bytes) over its limit of 8.0MiB" in commands[0]

    # Outputs, and the report directory (under RUNNER_TEMP) that the upload step would take.
    out = result.outputs
    assert out["failed"] == "true"
    assert out["peak-max-bytes"] == str(peak)
    report = Path(out["report-path"])
    assert report == tmp_path / "runner-temp" / "heapgate-report" / "heapgate.json"
    data = json.loads(report.read_text(encoding="utf-8"))
    assert [t["nodeid"] for t in data["tests"] if t["memory_failed"]] == ["test_mem.py::test_too_big"]
    assert Path(out["summary-path"]).read_text(encoding="utf-8") == summary
    files = {p.name for p in report.parent.iterdir()}
    assert any(n.endswith(".svg") for n in files) and "junit.xml" in files, files
    upload = next(s for s in result.steps if s.kind == "uses")
    assert upload.with_ == {"name": "heapgate-report", "path": str(report.parent), "if-no-files-found": "warn"}


def test_the_action_passes_when_the_tests_pass(tmp_path: Path, workspace: Path) -> None:
    body = PROJECT_TESTS.replace('limit_memory("8 MB")', 'limit_memory("64 MB")')
    _project(workspace, body)
    report_dir = tmp_path / "reports"
    result, _ = _run_action(
        tmp_path,
        {"working-directory": "proj", "pytest-args": "-p no:cacheprovider", "report-dir": str(report_dir), "upload": "false"},
        workspace,
    )
    assert result.status == "success", [(s.id, s.stderr) for s in result.steps]
    assert result.outputs["failed"] == "false"
    assert result.workflow_commands() == []
    assert "✅ heapgate: 0 of 2 tracked tests failed" in result.summary
    assert "artifact" not in result.summary  # nothing uploaded, none named
    assert (report_dir / "heapgate.json").is_file()
    upload = next(s for s in result.steps if s.kind == "uses")
    assert not upload.would_run


def test_pytest_args_keep_shell_quoting_and_reach_pytest_unexpanded(tmp_path: Path, workspace: Path) -> None:
    _project(workspace)
    marker = workspace / "pwned"
    result, _ = _run_action(
        tmp_path,
        {"working-directory": "proj", "pytest-args": f"-p no:cacheprovider -k 'fits or plain' $(touch {marker})", "upload": "false"},
        workspace,
    )
    step = next(s for s in result.steps if s.id == "pytest")
    # `$(touch …)` reached pytest as a literal argument (a file or -k name it cannot find).
    assert not marker.exists()
    assert "$(touch" in step.stdout + step.stderr


def test_a_hostile_parametrized_id_injects_nothing(tmp_path: Path, workspace: Path) -> None:
    body = textwrap.dedent(
        f"""\
        import pytest


        @pytest.mark.limit_memory("1 MB")
        @pytest.mark.parametrize("n", [3_000_000], ids=[{HOSTILE_ID!r}])
        def test_hostile(n):
            data = bytearray(n)
            assert data
        """
    )
    _project(workspace, body)
    result, _ = _run_action(tmp_path, {"working-directory": "proj", "pytest-args": "-p no:cacheprovider"}, workspace)
    assert result.status == "failure"
    nodeid = f"test_mem.py::test_hostile[{HOSTILE_ID}]"
    data = json.loads(Path(result.outputs["report-path"]).read_text(encoding="utf-8"))
    assert [t["nodeid"] for t in data["tests"]] == [nodeid]

    # Workflow commands (lines starting with `::` in any step's output, pytest's included):
    # exactly the one annotation; the id's `::error::` and `%0A` are escaped.
    commands = result.workflow_commands()
    assert len(commands) == 1, commands
    assert commands[0].startswith("::error file=proj/test_mem.py,line=7,title=heapgate%3A test_mem.py%3A%3Atest_hostile[%3A%3Aerror%3A%3Ax%250A<script>")
    assert "%0A" not in commands[0].split("::", 2)[1].replace("%250A", "")  # no newline in the properties

    # Summary: the id only inside code (table) or escaped <code> (details); no markup, no tag.
    summary = result.summary
    assert "<script>" not in summary.replace(f"``{'test_mem.py::test_hostile[' + HOSTILE_ID.replace('|', chr(92) + '|')}]``", "")
    row = next(line for line in summary.splitlines() if line.startswith("| ``test_mem.py::test_hostile["))
    assert row.startswith("| ``test_mem.py::test_hostile[::error::x%0A<script>alert(1)</script>`code`\\|pipe]`` |")
    assert len(re.findall(r"(?<!\\)\|", row)) == 6  # five cells: the id's `|` is escaped
    assert "<code>test_mem.py::test_hostile[::error::x%0A&lt;script&gt;alert(1)&lt;/script&gt;`code`|pipe]</code>" in summary


def test_merge_mode_over_two_shards_equals_the_unsplit_run(tmp_path: Path, workspace: Path) -> None:
    second = PROJECT_TESTS.replace("test_fits", "test_fits_too").replace("test_too_big", "test_also_too_big")
    second = second.replace("def test_plain", "def test_plain_too")
    _project(workspace)
    _project(workspace, second, "test_mem2.py")

    def shard(name: str, args: str) -> Path:
        result, _ = _run_action(
            tmp_path,
            {"working-directory": "proj", "pytest-args": f"-p no:cacheprovider {args}", "report-dir": str(tmp_path / name), "upload": "false"},
            workspace,
        )
        assert result.status == "failure"
        return tmp_path / name

    whole = json.loads((shard("whole", "") / "heapgate.json").read_text(encoding="utf-8"))
    merge_dir = tmp_path / "merged"
    # As actions/download-artifact leaves them: one folder per shard artifact.
    shutil.copytree(shard("shard-1", "test_mem.py"), merge_dir / "heapgate-report-1")
    shutil.copytree(shard("shard-2", "test_mem2.py"), merge_dir / "heapgate-report-2")
    result, _ = _run_action(
        tmp_path, {"mode": "merge", "report-dir": str(merge_dir), "upload": "false"}, workspace
    )
    assert result.status == "failure"
    assert not any(s.id == "pytest" and s.ran for s in result.steps)
    merged = json.loads(Path(result.outputs["report-path"]).read_text(encoding="utf-8"))

    def by_test(data: dict[str, Any]) -> dict[str, tuple[bool, int]]:
        return {t["nodeid"]: (t["memory_failed"], t["peak_bytes"]) for t in data["tests"]}

    assert by_test(merged) == by_test(whole)
    assert sorted(n for n, (failed, _) in by_test(merged).items() if failed) == [
        "test_mem.py::test_too_big",
        "test_mem2.py::test_also_too_big",
    ]
    # Flamegraph paths still lead to the files, now inside the shard folders.
    for test in merged["tests"]:
        if test["artifacts"]["flamegraph"]:
            assert (merge_dir / test["artifacts"]["flamegraph"]).is_file()
    assert len(result.workflow_commands()) == 2
    assert result.outputs["failed"] == "true"
    assert "2 of 4 tracked tests failed a memory check" in result.summary


def test_merge_mode_without_shards_is_a_clear_error(tmp_path: Path, workspace: Path) -> None:
    empty = tmp_path / "empty"
    result, _ = _run_action(tmp_path, {"mode": "merge", "report-dir": str(empty), "upload": "false"}, workspace)
    assert result.status == "failure"
    publish = next(s for s in result.steps if s.id == "publish")
    assert f"heapgate: {empty}: no heapgate.json below it to merge" in publish.stderr


def _run_scripts(path: Path) -> list[str]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    steps: list[dict[str, Any]] = []
    if "runs" in data:
        steps = data["runs"].get("steps", [])
    for job in (data.get("jobs") or {}).values():
        steps += job.get("steps", [])
    return [s["run"] for s in steps if "run" in s]


def _workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.yml"))


def test_no_expression_inside_any_run_script() -> None:
    files = [ACTION_DIR / "action.yml", *_workflow_files()]
    assert len(files) >= 4
    for path in files:
        for script in _run_scripts(path):
            assert "${{" not in script, f"{path.name}: {script}"


def test_every_action_used_is_pinned_to_a_commit() -> None:
    for path in [ACTION_DIR / "action.yml", *_workflow_files()]:
        for line in path.read_text(encoding="utf-8").splitlines():
            m = re.match(r"\s*(?:-\s+)?uses:\s*(\S+)(.*)", line)
            if m and not m.group(1).startswith("./"):
                assert PINNED.match(m.group(1)), f"{path.name}: {line.strip()}"
                assert re.match(r"\s*# v\d+(\.\d+)*$", m.group(2)), f"{path.name}: version comment missing: {line.strip()}"


def test_actionlint_passes_on_every_workflow() -> None:
    actionlint = shutil.which("actionlint", path=sysconfig.get_path("scripts"))
    assert actionlint, "actionlint is in the test extra (pip install -e '.[test]')"
    files = [str(p) for p in _workflow_files()]
    assert {Path(f).name for f in files} >= {"ci.yml", "dogfood.yml", "release.yml"}
    proc = subprocess.run([actionlint, "-no-color", *files], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_finds_an_expression_in_a_run_script(tmp_path: Path) -> None:
    """The lint is live: the injection pattern this action avoids is reported."""
    actionlint = shutil.which("actionlint", path=sysconfig.get_path("scripts"))
    assert actionlint
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on: pull_request\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo \"${{ github.event.pull_request.title }}\"\n",
        encoding="utf-8",
    )
    proc = subprocess.run([actionlint, "-no-color", str(bad)], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1 and "potentially untrusted" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed (.ci/test installs it)")
def test_the_actions_scripts_pass_shellcheck(tmp_path: Path) -> None:
    for n, script in enumerate(_run_scripts(ACTION_DIR / "action.yml")):
        path = tmp_path / f"step{n}.sh"
        path.write_text(script, encoding="utf-8")
        proc = subprocess.run(["shellcheck", "-s", "bash", str(path)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"step {n}:\n{script}\n{proc.stdout}"
