"""The `ovi-attn` command itself: version, usage mistakes, render-only installs."""

import subprocess
import sys

import pytest

from ovi_attn_render.cli import main


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("ovi-attn ")


@pytest.mark.parametrize("argv", [
    ["render"],  # missing file argument
    ["render", "x.h5", "--frame"],  # an option without its value
    ["render", "--bogus", "x.h5"],  # unknown option
    ["no-such-command"],
])
def test_usage_mistakes_print_one_sentence_and_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err and "--help" in err


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    assert main(["--debug", "info", str(tmp_path / "missing.h5")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "does not exist" in err


BLOCK_TORCH = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked for this test")
sys.meta_path.insert(0, Block())
from ovi_attn_render.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_capture_without_torch_says_which_extra_to_install(tmp_path):
    r = subprocess.run([sys.executable, "-c", BLOCK_TORCH, "capture", "data/prompts/example.yaml",
                        "-o", str(tmp_path / "x.h5")], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "pip install 'ovi-attn[capture]'" in r.stderr and "Traceback" not in r.stderr


def test_info_prints_the_token_table_with_pieces_as_written_not_as_markup(run, capsys, monkeypatch):
    from ovi_attn_render.contract.reader import Capture

    rows = Capture.token_table
    monkeypatch.setattr(Capture, "token_table", lambda self: [dict(r, piece="[bold]x") for r in rows(self)])
    assert main(["info", str(run), "--tokens"]) == 0
    out = capsys.readouterr().out
    assert "token table (positive prompt)" in out and "[bold]x" in out and "man#2" in out
