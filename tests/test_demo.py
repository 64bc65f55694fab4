"""`tfprune demo` through the entry point: tests/test_cli.py."""

import pytest

from tfprune import __main__ as cli


def test_cli_help(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "demo" in capsys.readouterr().out
