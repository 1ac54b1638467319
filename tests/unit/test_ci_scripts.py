"""CI cannot be green without a peer package (sae-lens, eai-sparsify, dictionary-learning): each .ci/setup-* fails
when it cannot build its venv, .ci/run then fails naming it, and each interoperability test fails instead of
skipping in CI (waiting first for a venv that .ci/run is still building beside the tests)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/usr/bin/env bash\n" + body + "\n")
    path.chmod(0o755)


def test_setup_saelens_exits_non_zero_when_the_venv_cannot_be_built(tmp_path):
    env = {**os.environ, "MECHSCOPE_SAELENS_VENV": "/dev/null/cannot/be/a/folder"}
    run = subprocess.run(
        ["bash", str(ROOT / ".ci" / "setup-saelens")], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode != 0, run.stdout + run.stderr
    assert "could not install sae-lens" in run.stderr


PEERS = {
    "saelens": "MECHSCOPE_SAELENS_VENV",
    "sparsify": "MECHSCOPE_SPARSIFY_VENV",
    "dictlearn": "MECHSCOPE_DICTLEARN_VENV",
    "circuittracer": "MECHSCOPE_CIRCUITTRACER_VENV",
}


@pytest.mark.parametrize(
    "setup, package",
    [
        ("setup-sparsify", "eai-sparsify"),
        ("setup-dictlearn", "dictionary-learning"),
        ("setup-circuittracer", "circuit-tracer"),
    ],
)
def test_setup_peer_scripts_exit_non_zero_when_the_venv_cannot_be_built(setup, package):
    env = {**os.environ, **{var: "/dev/null/cannot/be/a/folder" for var in PEERS.values()}}
    run = subprocess.run(
        ["bash", str(ROOT / ".ci" / setup)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode != 0, run.stdout + run.stderr
    assert f"could not install {package}" in run.stderr


@pytest.mark.parametrize("missing", list(PEERS))
def test_ci_run_fails_naming_the_one_peer_venv_that_cannot_be_built(missing, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    marker = tmp_path / "make-ran"
    _stub(bin_dir, "chromium", "exit 0")  # setup-extras then has nothing to install
    # records each call and where the peer jobs' statuses are; a test run would pass
    _stub(bin_dir, "make", f'echo "$@ pending=${{MECHSCOPE_PEERS_PENDING:-}}" >> {marker}; exit 0')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for peer, var in PEERS.items():  # the others are venvs that import anything: only `missing` cannot be built
        venv = tmp_path / peer
        (venv / "bin").mkdir(parents=True)
        _stub(venv / "bin", "python", "exit 0")
        env[var] = "/dev/null/nope" if peer == missing else str(venv)
    run = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode != 0, run.stdout + run.stderr  # although the (stub) tests passed
    assert f"the {missing} venv could not be built" in run.stderr
    assert [p for p in PEERS if f"the {p} venv could not be built" in run.stderr] == [missing]
    test_calls = [c for c in marker.read_text().splitlines() if c.startswith("test ")]
    assert len(test_calls) == 1, test_calls  # the tests run beside the peer jobs, told where their statuses go
    pending = Path(test_calls[0].split("pending=")[1])
    assert (pending / f"{missing}.rc").read_text().strip() != "0"
    assert all((pending / f"{p}.rc").read_text().strip() == "0" for p in PEERS if p != missing)


def test_a_peer_test_waits_for_its_venv_and_fails_in_ci_when_it_could_not_be_built(tmp_path, monkeypatch):
    import threading

    from tests import helpers_peers

    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")  # a venv being built has its python long before its packages
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("MECHSCOPE_PEERS_PENDING", str(tmp_path))

    def finish(rc: str) -> None:
        (tmp_path / "sparsify.rc").write_text(rc)

    timer = threading.Timer(1.5, finish, ["0"])
    timer.start()
    helpers_peers.require_peer(python, "sparsify", "setup-sparsify", "X")  # returns once the job has written 0
    assert (tmp_path / "sparsify.rc").exists()
    finish("1")
    with pytest.raises(pytest.fail.Exception, match="setup-sparsify exited 1"):
        helpers_peers.require_peer(python, "sparsify", "setup-sparsify", "X")
    (tmp_path / "sparsify.rc").unlink()
    monkeypatch.setattr(helpers_peers, "PEERS_WAIT_S", 0.5)
    with pytest.raises(pytest.fail.Exception, match="did not finish within"):
        helpers_peers.require_peer(python, "sparsify", "setup-sparsify", "X")


def test_saelens_test_fails_in_ci_when_its_venv_is_missing(tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "saelens_test", ROOT / "tests" / "integration" / "test_sae_saelens.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "PYTHON", tmp_path / "no-python")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run the SAELens interoperability test"):
        module.test_saelens_files_load_and_encode_identically_both_ways(tmp_path)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="no SAELens venv"):
        module.test_saelens_files_load_and_encode_identically_both_ways(tmp_path)


def _dry_run(target: str) -> list[str]:
    """The commands ``make TARGET`` would run (``make -n``: nothing is run), one per line."""
    run = subprocess.run(["make", "-n", "-C", str(ROOT), target], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout.splitlines()


@pytest.mark.parametrize("target", ["test", "test-fast"])
def test_make_test_and_the_fast_lane_run_the_linter_the_format_check_and_mypy_before_the_tests(target):
    lines = _dry_run(target)
    lint = [i for i, line in enumerate(lines) if "ruff check src tests scripts bench" in line]
    fmt = [i for i, line in enumerate(lines) if "ruff format --check src tests scripts bench" in line]
    types = [i for i, line in enumerate(lines) if line.rstrip().endswith("/mypy")]
    tests = [i for i, line in enumerate(lines) if "-m pytest" in line]
    assert len(lint) == 1 and len(fmt) == 1 and len(types) == 1 and len(tests) == 1, lines
    assert max(lint[0], fmt[0], types[0]) < tests[0], lines
    assert ('-m "not slow"' in lines[tests[0]]) == (target == "test-fast"), lines[tests[0]]


def test_e2e_and_integration_tests_are_slow_unit_tests_are_not_and_unit_tests_run_first():
    from types import SimpleNamespace

    from tests import conftest, warm_cache

    marks: list[tuple[str, str]] = []

    def item(nodeid: str) -> SimpleNamespace:
        return SimpleNamespace(nodeid=nodeid, add_marker=lambda mark: marks.append((nodeid, mark.name)))

    items = [
        item(n)
        for n in (
            "tests/e2e/test_demo.py::test_x",
            "tests/integration/test_store.py::test_y",
            "tests/unit/test_sites.py::test_z",
        )
    ]
    conftest.pytest_collection_modifyitems(None, items)
    assert sorted(marks) == [
        ("tests/e2e/test_demo.py::test_x", "slow"),
        ("tests/integration/test_store.py::test_y", "slow"),
    ]
    # and they run unit → integration → e2e (conftest.RUN_ORDER), so unit tests overlap the warm cache's training
    assert [i.nodeid.split("/")[1] for i in items] == ["unit", "integration", "e2e"]
    # within a folder, by the warm cache's order of the entries a module needs (none, SmolLM2, modadd, parens,
    # induction, Gemma 3), a module kept whole (its module-scoped fixtures are built once)
    needs = {
        "tests/unit/test_a.py::test_1": ("zoo_induction",),
        "tests/unit/test_b.py::test_1": ("tmp_path",),
        "tests/unit/test_b.py::test_2": ("zoo_parens", "tmp_path"),
        "tests/unit/test_c.py::test_1": ("tiny_lm",),
        "tests/unit/test_d.py::test_1": (),
        "tests/integration/test_e.py::test_1": ("gemma3",),
        "tests/integration/test_f.py::test_1": ("zoo_modadd",),
    }
    items = [SimpleNamespace(nodeid=n, fixturenames=f, add_marker=lambda mark: None) for n, f in needs.items()]
    conftest.pytest_collection_modifyitems(None, items)
    assert [i.nodeid for i in items] == [
        "tests/unit/test_d.py::test_1",
        "tests/unit/test_c.py::test_1",
        "tests/unit/test_b.py::test_1",
        "tests/unit/test_b.py::test_2",
        "tests/unit/test_a.py::test_1",
        "tests/integration/test_f.py::test_1",
        "tests/integration/test_e.py::test_1",
    ]
    assert set(conftest.FIXTURE_NEEDS.values()) <= {name for _, name in warm_cache.STEPS}


def test_the_lock_waits_are_summed_and_named_longest_first_by_who_waited(tmp_path):
    from tests import conftest

    log = tmp_path / "waits"
    log.write_text("0.3\t/c/zoo/parens\t7\n34.2\t/c/zoo/parens\t7\n65.0\t/c/zoo/induction\t7\n2.0\t/c/gemma\t9\n")
    assert conftest._waits(log, warm_pid=9) == (
        "lock waits (101 s in all): tests waited 65 s for induction; tests waited 34 s for parens; "
        "warm cache waited 2 s for gemma"
    )
    log.write_text("0.3\t/c/zoo/parens\t7\n")
    assert conftest._waits(log, warm_pid=9) == "lock waits: none of a second or more"


@pytest.mark.parametrize(
    "test_file, test_name, package",
    [
        ("test_sae_sparsify.py", "test_sparsify_folders_load_identically_both_ways", "sparsify"),
        (
            "test_sae_dictlearn.py",
            "test_every_trainer_loads_with_the_packages_codes_and_reconstructions",
            "dictionary_learning",
        ),
        ("test_sae_circuittracer.py", "test_circuittracer_transcoders_load_identically_both_ways", "circuit-tracer"),
    ],
)
def test_peer_tests_fail_in_ci_when_their_venv_is_missing(test_file, test_name, package, tmp_path, monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location(test_file[:-3], ROOT / "tests" / "integration" / test_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "PYTHON", tmp_path / "no-python")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=f"CI must run the {package} interoperability test"):
        getattr(module, test_name)(tmp_path)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match=f"no {package} venv"):
        getattr(module, test_name)(tmp_path)
