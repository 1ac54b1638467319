"""Two classes of bad input the campaign found everywhere, fixed once: integers too large for torch and NumPy
(every count and seed), and operating-system errors on a file the user named (permission, a folder where a
file was expected, a full disk), which end in one line instead of a traceback."""

from __future__ import annotations

import argparse
import errno

import pytest

from mechscope import cli
from mechscope.config import INT_LIMIT, bounded_int


def test_bounded_int_refuses_what_overflows():
    assert bounded_int("12") == 12 and bounded_int(str(-INT_LIMIT)) == -INT_LIMIT
    with pytest.raises(argparse.ArgumentTypeError, match="too large"):
        bounded_int("1" + "0" * 30)
    with pytest.raises(argparse.ArgumentTypeError, match="not a whole number"):
        bounded_int("1.5")


def test_a_huge_seed_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["toy", "tms", "--seed", "1" + "0" * 30, "--out", "unused"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--seed" in err and "too large" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "exc",
    [
        PermissionError(errno.EACCES, "Permission denied", "/data/acts/manifest.json"),
        IsADirectoryError(errno.EISDIR, "Is a directory", "/data/acts"),
        OSError(errno.ENOSPC, "No space left on device", "/data/out/shard.tmp"),
    ],
)
def test_an_os_error_on_a_named_file_is_one_line(exc, monkeypatch, capsys):
    def raising(args):
        raise exc

    parser = argparse.ArgumentParser()
    parser.set_defaults(_run=raising)
    monkeypatch.setattr(cli, "command_parser", lambda name: parser)
    assert cli.main(["harvest"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mechscope: error: cannot use {exc.filename}: {exc.strerror}")


def test_an_os_error_without_a_file_is_our_bug_and_keeps_its_traceback(monkeypatch):
    def raising(args):
        raise OSError("something inside went wrong")

    parser = argparse.ArgumentParser()
    parser.set_defaults(_run=raising)
    monkeypatch.setattr(cli, "command_parser", lambda name: parser)
    with pytest.raises(OSError, match="inside"):
        cli.main(["harvest"])


@pytest.mark.parametrize(
    "argv, says",
    [
        (["evaluate", "--sae", "", "--store", "s", "--site", "resid_post.1"], "--sae is empty"),
        (["frontier", "--sae", "s", "--store", "", "--site", "resid_post.1", "--out", "f"], "--store is empty"),
        (
            ["report", "--sae", "s", "--store", "s", "--site", "x", "--frontier", "", "--out", "r.html"],
            "--frontier is empty",
        ),
        (["graph", "--prompt", "hi", "--transcoders", "", "--out", "g"], "--transcoders is empty"),
        (["graph", "--prompt", "hi", "--transcoders", "t", "--store", "", "--out", "g"], "--store is empty"),
        (["graph", "--prompt", "  ", "--transcoders", "t", "--out", "g"], "--prompt is empty"),
        (["toy", "bench", "--device", "nope", "--out", "b"], "nope"),
    ],
)
def test_empty_inputs_and_bad_devices_are_one_line_before_any_work(argv, says, capsys, tmp_path, monkeypatch):
    """Found by the campaign: an empty input path read the current folder or silently meant "none", an empty
    prompt traced BOS alone, and an unknown device crashed inside torch."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mechscope: error:") and says in err[0], err
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_log_row_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import builtins

    from mechscope.atomic import WriteError
    from mechscope.jsonout import append_row

    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file name

    monkeypatch.setattr(
        builtins,
        "open",
        lambda p, mode="r", *a, **k: (
            Full(real_open(p, mode, *a, **k)) if str(p).endswith("log.jsonl") else real_open(p, mode, *a, **k)
        ),
    )
    with pytest.raises(WriteError, match=r"cannot write .*log.jsonl: No space left on device"):
        append_row(tmp_path / "log.jsonl", {"step": 1})
