"""`import mechscope as ms`: every verb is there, documented and imported only when used; library errors name
parameters and the command line shows them as flags."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import mechscope as ms
from mechscope.errors import UsageError, flag_message, flag_names

VERBS = (
    "load_model",
    "capture",
    "patch",
    "run_to_sites",
    "harvest",
    "open_store",
    "train_sae",
    "load_sae",
    "save_sae",
    "evaluate",
    "frontier",
    "report",
    "attribution_graph",
    "find_circuit",
    "scrub",
    "fit_detector",
    "make_detector",
    "estimate_llc",
    "decompose",
    "splice",
    "Task",
)


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def test_import_mechscope_imports_neither_torch_nor_transformers_nor_any_verb():
    out = _run(
        "import sys, mechscope; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'mechscope')))"
    )
    assert out == "['mechscope']"


@pytest.mark.slow  # fresh interpreters in subprocesses
def test_a_verb_is_imported_on_first_use_only():
    out = _run(
        "import sys, mechscope as ms; ms.load_sae; print('mechscope.sae.io' in sys.modules, 'transformers' in sys.modules)"
    )
    assert out == "True False"


@pytest.mark.parametrize("name", VERBS)
def test_each_verb_is_listed_callable_and_documented(name):
    assert name in ms.__all__ and name in dir(ms)
    verb = getattr(ms, name)
    assert callable(verb)
    fn = getattr(verb, "__verb__", verb)  # ms.report is the package mechscope.report, callable as the verb
    assert fn.__doc__ and len(fn.__doc__.split()) >= 8, f"ms.{name} needs a docstring that says what it does"
    inspect.signature(verb)


def test_verbs_named_like_a_package_call_the_verb_and_keep_the_package():
    import mechscope.decompose.train as T  # the package is still a package …

    assert T.__name__ == "mechscope.decompose.train" and ms.decompose.SPDConfig is not None
    assert ms.report.__verb__ is ms.api.report  # … and calling it calls the verb
    assert list(inspect.signature(ms.report).parameters)[:4] == ["sae", "store", "site", "model"]
    with pytest.raises(UsageError, match="unknown setting.*nope"):
        ms.report(None, None, "s", None, nope=1)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'no_such_verb'"):
        ms.no_such_verb  # noqa: B018


def test_settings_are_refused_by_name_with_the_ones_a_verb_takes():
    with pytest.raises(UsageError, match=r"unknown setting\(s\) lattents; this verb takes .*latents"):
        ms.api.configs({"lattents": 3}, ms.sae.TopKConfig)


def test_library_errors_name_parameters_and_commands_show_flags():
    import argparse

    from mechscope.config import from_namespace
    from mechscope.harvest import HarvestConfig

    with pytest.raises(UsageError, match=r"^`shard_contexts` \(10\) must be a multiple of `batch_contexts` \(4\)$"):
        HarvestConfig(batch_contexts=4, shard_contexts=10)
    with pytest.raises(UsageError, match=r"^--shard-contexts \(10\) must be a multiple of --batch-contexts \(4\)$"):
        from_namespace(HarvestConfig, argparse.Namespace(batch_contexts=4, shard_contexts=10))
    assert (
        flag_message("pass `target_site` (not `rest`)", {"target_site": "--target-site"})
        == "pass --target-site (not `rest`)"
    )
    with pytest.raises(UsageError, match=r"^drop --target-site$"):
        with flag_names({"target_site": "--target-site"}):
            raise UsageError("drop `target_site`")


def test_train_from_store_names_target_site_for_a_notebook_user():
    from mechscope.sae import Member, TrainConfig, TranscoderConfig, train_from_store

    class Store:
        def d(self, site):
            return 4

    with pytest.raises(UsageError, match=r"transcoder reads one site and predicts another; pass `target_site`") as err:
        train_from_store(
            Store(), "a", [Member(TranscoderConfig(d_in=4, latents=8, k=2))], TrainConfig(steps=1), "/nonexistent"
        )
    assert "--" not in str(err.value)
