"""The README's two commands: CI (.ci/run) runs exactly the README's test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith(("#", "set ", "cd "))]


def test_ci_runs_the_readme_test_command() -> None:
    ci_commands = _commands(ROOT / ".ci" / "run")
    assert len(ci_commands) == 1, f".ci/run must run one command, found {ci_commands}"
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert ci_commands[0] in first_block.splitlines(), (
        f"the README's first code block must hold the test command {ci_commands[0]!r}"
    )


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2, commands
    assert commands[0].startswith("bash scripts/setup.sh && ")
    assert commands[1] == "bash scripts/setup.sh && bash scripts/check.sh"
