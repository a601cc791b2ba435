import subprocess
import sys

from rasa.cli import main


def test_help_lists_commands(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    assert "data" in capsys.readouterr().out


def test_user_error_is_one_paragraph_without_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rasa",
            "data",
            "tokenize",
            "--annotations",
            str(tmp_path / "missing.json"),
            "--tokenizer",
            "wordpiece:100",
            "--out",
            str(tmp_path / "t.npz"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "missing.json" in proc.stderr
    assert "Traceback" not in proc.stderr
