"""The single ``cianna`` command exposes every sub-command group and its sub-commands."""
import pytest

from cianna.cli import build_parser, main


@pytest.mark.parametrize("argv", [["demo"], ["sdc1", "simulate"], ["sdc1", "score"], ["sdc1", "baseline"],
                                  ["sdc1", "train"], ["sdc1", "detect"], ["sdc2", "simulate"], ["sdc2", "score"],
                                  ["sdc2", "baseline"], ["sdc2", "train"], ["sdc2", "detect"]])
def test_sub_commands_are_registered(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--help"])
    assert exc.value.code == 0
    assert "usage: cianna " + " ".join(argv) in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_demo_rejects_bad_iterations(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--iterations", "0"]) == 1
    assert "--iterations=0" in capsys.readouterr().err


def test_version():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
