"""`nexus-fast info` and the CLI's handling of bad input."""

import subprocess
import sys

import pytest

from nexus_fast import cli
from nexus_fast.info import report
from nexus_fast.ops import OPERATORS


def test_info_lists_every_operator_and_backend() -> None:
    text = report()
    assert "torch" in text and "triton" in text and "extension  nexus_fast._C built" in text
    for name, operator in OPERATORS.items():
        assert f"\n  {name}\n" in text
        for backend in operator.backends:
            assert f"    {backend.name:<10} " in text
    assert "cpu        usable here" in text


def test_info_module_runs_as_a_script() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "nexus_fast.info"], capture_output=True, text=True, check=True
    )
    assert "ema_update_" in run.stdout


def test_unknown_command_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pretrian"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'pretrian'" in capsys.readouterr().err
