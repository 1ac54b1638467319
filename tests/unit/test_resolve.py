"""The one resolver of model specs (:mod:`mechscope.models.resolve`): each kind of subject, and the refusals."""

from __future__ import annotations

import pytest
import torch

from mechscope.errors import UsageError
from mechscope.models.resolve import RunOn, language_model, resolve_model, spec_kind
from tests.helpers_families import build


def test_spec_kind_without_loading():
    assert [spec_kind(s) for s in ("zoo:parens", "toy:tms", "smollm2", "org/name", "./folder")] == [
        "zoo",
        "toy",
        "lm",
        "lm",
        "lm",
    ]
    with pytest.raises(
        UsageError,
        match=r"`model` 'zoo:nosuch': unknown zoo model; choose one of zoo:induction, zoo:modadd, zoo:parens",
    ):
        spec_kind("zoo:nosuch")
    assert spec_kind("zoo:nosuch", check=False) == "zoo"  # a caller with its own list of models says it itself


@pytest.mark.slow  # trains the zoo's parens model when the cache lacks it
def test_zoo_spec_loads_on_device_in_dtype(zoo_parens):
    s = resolve_model("zoo:parens", device="cpu", dtype="bf16")
    assert s.kind == "zoo" and s.name == "parens" and s.zoo.task is not None and s.tokenizer is None
    assert next(s.model.parameters()).dtype == torch.bfloat16 and s.device == torch.device("cpu")
    assert next(zoo_parens.model.parameters()).dtype == torch.float32  # a fresh load, not the fixture's model


def test_toy_spec_is_named_not_built():
    s = resolve_model("toy:tms")
    assert (s.kind, s.name, s.model) == ("toy", "tms", None)


def test_a_module_is_used_as_it_is_unless_asked_to_move():
    m = build("llama")
    s = resolve_model(m)
    assert s.kind == "module" and s.model is m and next(m.parameters()).dtype == torch.float32
    resolve_model(m, dtype="bfloat16")
    assert next(m.parameters()).dtype == torch.bfloat16  # moved in place, as nn.Module.to does
    with pytest.raises(UsageError, match="this needs a Hugging Face causal LM with its tokenizer"):
        language_model(m)


def test_lm_spec_and_loaded_model(tiny_tok_lm_dir, tiny_tok_lm):
    s = resolve_model(str(tiny_tok_lm_dir), dtype="bf16")
    assert s.kind == "lm" and s.loaded is not None and s.tokenizer is not None
    assert next(s.model.parameters()).dtype == torch.bfloat16
    assert language_model(tiny_tok_lm) is tiny_tok_lm


def test_run_on_refuses_bad_values_naming_the_parameter():
    assert RunOn().torch_device == torch.device("cpu") and RunOn(dtype="bf16").torch_dtype == torch.bfloat16
    with pytest.raises(UsageError, match="`dtype` 'int8' is not one of"):
        RunOn(dtype="int8")
    with pytest.raises(UsageError, match="`device` 'potato' is not a torch device"):
        RunOn(device="potato")
    with pytest.raises(UsageError, match="`dtype` float16: x runs in float32 only \\(why\\)"):
        RunOn(dtype="float16").limited_to("x", "why")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="`device` cuda: this torch"):
            RunOn(device="cuda")


def test_load_model_refuses_a_module_naming_the_parameter():
    import pytest
    from torch import nn

    import mechscope as ms
    from mechscope.errors import UsageError

    with pytest.raises(UsageError, match=r"^`spec` is already a model \(Linear\); .*resolve_model"):
        ms.load_model(nn.Linear(2, 2))
    with pytest.raises(UsageError, match=r"^`spec` must be a model name, a folder or a hub id, not a int$"):
        ms.load_model(3)
    subject = ms.resolve_model(nn.Linear(2, 2), dtype="bfloat16")
    assert (
        subject.kind == "module"
        and subject.model.weight.dtype.is_floating_point
        and str(subject.model.weight.dtype) == "torch.bfloat16"
    )
