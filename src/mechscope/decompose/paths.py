"""``--model PATH``: a local Hugging Face causal language model (or ``smollm2``), decomposed on text contexts.

The compared output is the next-token logits at every position (KL to the target model's). There is no known
truth, so the result has ``mmcs`` and ``true_mechanisms`` null. A language model has hundreds of Linear layers:
choose a few with ``--targets`` (e.g. ``model.layers.0.mlp.*``); the default '*' takes all of them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from mechscope.decompose.toys import KnownModel, TargetConfig
from mechscope.errors import UsageError
from mechscope.evals.splice import model_logits


def path_target(spec: str, cfg: TargetConfig, context_length: int = 32) -> KnownModel:
    from mechscope.data.text import TextCorpusConfig, build_contexts
    from mechscope.models.resolve import language_model

    if spec.lower() not in ("smollm2", "smollm2-135m-instruct") and not Path(spec).is_dir():
        raise UsageError(
            f"`model` {spec!r} is neither a built-in model ({'toy:tms, toy:resid-mlp, zoo:modadd'}) nor a "
            "folder; give a Hugging Face model folder (config.json + *.safetensors)"
        )
    lm = language_model(spec)
    ctx = build_contexts(
        lm.tokenizer, TextCorpusConfig(context_length=context_length, max_tokens=200_000, seed=cfg.seed)
    )
    train, val = ctx.train, ctx.val[: max(1, cfg.n_eval // context_length)]

    def batch(step: int) -> Tensor:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        return train[torch.randint(len(train), (max(1, cfg.batch_size // context_length),), generator=g)]

    def describe(i: int) -> str:
        row, pos = divmod(i, val.shape[1])
        toks = val[row, max(0, pos - 8) : pos + 1].tolist()
        return repr(lm.tokenizer.decode(toks))

    return KnownModel(
        lm.model, batch, val, describe, None, output=model_logits, output_loss="kl", info={"model": lm.model_id}
    )
