"""User errors end in one line naming the problem (exit 1, or 2 for usage), never a traceback."""

from __future__ import annotations

from mechscope.testing import assert_one_line_error, run_cli


def test_missing_sae_folder_is_one_line(tmp_path):
    assert_one_line_error(["evaluate", "--sae", str(tmp_path / "nope"), "--store", str(tmp_path), "--site", "resid_post.6"],
                          r"no such SAE folder")


def test_unknown_command_is_usage_error():
    assert_one_line_error(["frobnicate"], r"invalid choice", code=2)


def test_debug_shows_the_traceback(tmp_path):
    proc = run_cli(["evaluate", "--debug", "--sae", str(tmp_path / "nope"), "--store", str(tmp_path), "--site", "x"])
    assert proc.returncode != 0 and "Traceback" in proc.stderr
