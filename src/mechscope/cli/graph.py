"""``mechscope graph --prompt "..." --transcoders DIR [--model smollm2|PATH|zoo:NAME] [--store STORE] [--out DIR] [--json]``.

Builds the attribution graph of one prompt over the replacement model made of one transcoder per MLP
(:mod:`mechscope.graph`), and writes ``report.html`` (fidelity table and the interactive graph),
``graph.json`` (the pruned graph) and ``adjacency.safetensors`` (every direct effect, the constants, the replay
values and every node's labels: :mod:`mechscope.graph.saved`) into ``--out``; ``--viewer-json FILE`` also writes
the pruned graph in the graph viewers' JSON. ``--store`` (a store holding the MLP inputs, e.g. the one the
transcoders were trained on) adds each latent's top-activating contexts and fits the rock on its tokens;
without it the rock is fit on the default corpus (LMs) or the zoo task's training targets.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from mechscope.atomic import atomic_write_json
from mechscope.config import add_arguments as add_config_arguments, from_namespace, to_dict
from mechscope.errors import MechscopeError, UsageError, flag_names
from mechscope.graph.build import GraphResult, bos_is_constant, build_graph, check_logit_position, prompt_ids
from mechscope.graph.config import GraphConfig
from mechscope.graph.dashboard import latent_logits, top_contexts, unembedding
from mechscope.graph.freeze import model_kind
from mechscope.graph.html import drawn_nodes, graph_html, graph_json
from mechscope.graph.replacement import find_transcoders, transcoders_folder
from mechscope.graph.saved import load_graph, save_graph, viewer_json
from mechscope.jsonout import add_json_flag, human_lines_to_stderr, plain, print_json
from mechscope.models.resolve import RunOn, resolve_model
from mechscope.preflight import check_inputs, writable_file, writable_folder

if TYPE_CHECKING:
    from mechscope.zoo.transformer import ZooTransformer

EXACT_TOL = 1e-3
"""The exactness check passes when every target's |value − (Σ edges + constant)| ≤ EXACT_TOL · (Σ|edges| + |constant|)
and the replay's logits are the model's to EXACT_TOL (float32 sums over thousands of edges reach ~1e-6)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prompt", required=True, help="the text to explain (zoo models: token ids separated by spaces)"
    )
    parser.add_argument(
        "--transcoders",
        required=True,
        help="folder holding one trained transcoder per MLP (mlp_in.L → mlp_out.L), e.g. the --out folders of `mechscope train`, "
        "or a cross-layer transcoder, or a circuit-tracer transcoder set; or a hub id org/name[:subfolder] in the local cache",
    )
    parser.add_argument(
        "--store",
        default=None,
        help="activation store holding the MLP inputs: top-activating contexts per latent, and the rock's tokens",
    )
    parser.add_argument(
        "--out", default="graph-out", help="output folder: report.html, graph.json, adjacency.safetensors"
    )
    parser.add_argument(
        "--viewer-json",
        default=None,
        metavar="FILE",
        help="also write the pruned graph in the JSON of circuit-tracer's and Neuronpedia's graph viewers "
        "(its slug: the file's name without .json)",
    )
    add_config_arguments(parser, GraphConfig)
    for old in ("--bos-constant", "--no-bos-constant"):  # replaced by --bos-mode: refused with a pointer, not unknown
        parser.add_argument(old, action="append_const", const=old, dest="old_bos_flags", help=argparse.SUPPRESS)
    add_config_arguments(parser, RunOn)
    add_json_flag(parser)


def _load(
    spec: str, on: RunOn
) -> tuple[
    torch.nn.Module,
    Callable[[str, str], torch.Tensor],
    Callable[[int], str],
    Callable[[], torch.Tensor] | None,
    bool,
    int | None,
]:
    """(model, tokenize(prompt, bos), decode(token id), rock's training targets or None, is a language model,
    the tokenizer's BOS id or None)."""
    with flag_names({"model": "--model"}):
        subject = resolve_model(spec, device=on.device, dtype=on.dtype)
    if subject.kind == "zoo":
        zm = subject.zoo
        model = cast("ZooTransformer", subject.model).requires_grad_(False)
        shape = model.shape

        def tok(prompt: str, _bos: str) -> torch.Tensor:
            try:
                ids = torch.tensor([int(t) for t in prompt.split()])
            except ValueError:
                raise UsageError(
                    f"a zoo model's --prompt is token ids separated by spaces (0..{shape.vocab - 1}), got {prompt!r}"
                ) from None
            if not len(ids) or int(ids.min()) < 0 or int(ids.max()) >= shape.vocab or len(ids) > shape.n_ctx:
                raise UsageError(f"--prompt needs 1..{shape.n_ctx} token ids in 0..{shape.vocab - 1}")
            return ids

        lm = shape.causal and shape.n_out == shape.vocab
        return model, tok, str, ((lambda: zm.task.train_targets) if lm else None), lm, None
    if subject.loaded is None:
        raise UsageError(
            f"--model {spec!r} is a {subject.kind} model; graph takes smollm2, a Hugging Face folder or zoo:NAME"
        )
    loaded = subject.loaded
    tk = loaded.tokenizer

    def tok_text(prompt: str, bos: str) -> torch.Tensor:
        return prompt_ids(tk, prompt, bos)

    def corpus_targets() -> torch.Tensor:  # the default corpus, tokenised as the harvests do
        from mechscope.data.text import TextCorpusConfig, build_contexts

        return build_contexts(tk, TextCorpusConfig(max_tokens=300_000)).train[:, 1:]

    return loaded.model, tok_text, lambda t: tk.decode([t]), corpus_targets, True, getattr(tk, "bos_token_id", None)


def _rock(targets: Callable[[], torch.Tensor] | None, store: Any, vocab: int) -> Any:
    """The rock fit on the store's tokens, else on the model's own training targets (None: no rock)."""
    from mechscope.evals.rock import Rock

    if store is not None:
        return Rock.fit(store.tokens()[:, 1:], vocab, what="unigram (store)")
    return None if targets is None else Rock.fit(targets(), vocab, what="unigram")


def _extra(
    result: GraphResult, model: torch.nn.Module, tcs: list, store: Any, decode: Callable[[int], str]
) -> dict[int, dict[str, Any]]:
    """Per drawn latent node: its logit effects and (with a store) its top contexts."""
    n = result.nodes
    W_U = unembedding(model)
    drawn = [i for i in drawn_nodes(result) if i < n.n_lat]
    out: dict[int, dict[str, Any]] = {
        i: {"logits": latent_logits(tcs[int(n.layer[i])], int(n.latent[i]), W_U, decode)} for i in drawn
    }
    if store is not None and result.cfg.top_contexts > 0:
        for l in sorted({int(n.layer[i]) for i in drawn}):
            mine = [i for i in drawn if int(n.layer[i]) == l]
            ctx = top_contexts(
                store,
                tcs[l],
                sorted({int(n.latent[i]) for i in mine}),
                result.cfg.dashboard_rows,
                result.cfg.top_contexts,
                decode,
            )
            for i in mine:
                out[i]["contexts"] = ctx.get(int(n.latent[i]), [])
    return out


def _fidelity_html(s: dict[str, Any]) -> str:
    from mechscope.report.markup import table

    c, L = s["checks"], s["losses"]

    def f(v: Any, fmt: str = "{:.4f}") -> str:
        return "n/a" if v is None or (isinstance(v, float) and v != v) else fmt.format(v)

    rows = [
        (
            "nodes (latents / errors / tokens / logits)",
            f"{s['nodes']['latents']:,} / {s['nodes']['errors']} / {s['nodes']['tokens']} / {s['nodes']['logits']}",
        ),
        (
            "kept after pruning: nodes (latents, errors), edges",
            f"{s['kept']['nodes']} ({s['kept']['latents']}, {s['kept']['errors']}), {s['kept']['edges']:,} of {s['kept']['edges_nonzero']:,}",
        ),
        ("replacement score", f(s["replacement_score"], "{:.3f}")),
        ("completeness score", f(s["completeness_score"], "{:.3f}")),
        (
            "exactness: max |value − (Σ edges + constant)|, relative",
            f"{c['max_residual']:.3g}, {c['max_relative_residual']:.3g}  ({'pass' if s['exact'] else 'FAIL'})",
        ),
        ("replay with error nodes vs model: max |Δ logit|", f"{c['max_logit_gap']:.3g}"),
        ("loss on the prompt: clean model", f(L["clean"])),
        (
            "loss: replacement model (all MLPs → transcoders, no errors"
            + (", BOS exact)" if "replacement_bos_transcoded" in L else ")"),
            f(L["replacement"]),
        ),
        *(
            [("loss: replacement model with BOS's MLPs transcoded too", f(L["replacement_bos_transcoded"]))]
            if "replacement_bos_transcoded" in L
            else []
        ),
        ("loss: rock (unigram)", f(L["rock"])),
        ("KL(clean ‖ replacement) per prediction", f(L["kl_replacement"])),
    ]
    return table(None, rows, row_headers=True)


def run(args: argparse.Namespace) -> int:
    from mechscope.report.html import Section, write_report

    if getattr(args, "old_bos_flags", None):
        raise UsageError(
            f"{args.old_bos_flags[0]} is gone: pass --bos-mode constant (the old default), --bos-mode "
            "position (the old --no-bos-constant) or --bos-mode circuit-tracer"
        )
    check_inputs(args, ["transcoders", "store", "model"])
    if not args.prompt.strip():
        raise UsageError("--prompt is empty; give the text (or, on a zoo model, the token ids) to trace")
    cfg = from_namespace(GraphConfig, args)
    on = from_namespace(RunOn, args)
    out = writable_folder(args.out)
    viewer = writable_file(args.viewer_json, "--viewer-json") if args.viewer_json is not None else None
    transcoders_folder(args.transcoders)  # a missing folder is refused before the model loads
    store = None
    with human_lines_to_stderr(args.json) as stdout:
        model, tokenize, decode, rock_targets, lm, bos_id = _load(cfg.model, on)
        model_kind(model)  # a family graphs cannot freeze is refused by name before its transcoders are read
        tcs = find_transcoders(model, args.transcoders)
        for tc in tcs:  # the transcoders run beside the model, on its device and in its dtype
            tc.sae.to(on.torch_device, on.torch_dtype)
        if args.store:
            from mechscope.store import ActivationStore

            store = ActivationStore(args.store)
            missing = [f"{tc.mlp}:input" for tc in tcs if f"{tc.mlp}:input" not in store.sites]
            if missing:
                raise MechscopeError(
                    f"store {args.store} lacks the MLP inputs {', '.join(missing[:3])}"
                    f"{' …' if len(missing) > 3 else ''}; pass the store the transcoders were trained on, or no --store"
                )
        ids = tokenize(args.prompt, cfg.bos).to(on.torch_device)
        check_logit_position(
            cfg.logit_position,
            ids.numel(),
            bos_is_constant(cfg, ids, bos_id),
            "--logit-position",
            "--bos-mode position",
        )
        vocab = int(unembedding(model).shape[1])
        rock = _rock(rock_targets, store, vocab) if lm else None
        torch.set_grad_enabled(True)
        with flag_names({"max_memory_gb": "--max-memory-gb", "max_latents": "--max-latents"}):
            result = build_graph(
                model, ids, tcs, cfg, decode=decode, rock=rock, lm=lm, bos_id=bos_id, progress=not args.json
            )
        s = result.summary()
        c = s["checks"]
        s["exact"] = bool(
            c["max_relative_residual"] <= EXACT_TOL
            and c["max_logit_gap"] <= EXACT_TOL * max(1.0, float(result.rec.logits[-1].abs().max()))
        )
        extra = _extra(result, model, tcs, store, decode)
        data = graph_json(result)
        data["summary"] = s
        atomic_write_json(out / "graph.json", plain(data))
        save_graph(
            out / "adjacency.safetensors",
            result,
            model=cfg.model,
            prompt=args.prompt,
            transcoders=str(Path(args.transcoders).resolve()),
        )
        if viewer is not None:  # from the saved file, as a later reader would
            viewer.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(viewer, viewer_json(load_graph(out / "adjacency.safetensors"), viewer.stem))
        report = write_report(
            out / "report.html",
            title=f"attribution graph: {args.prompt[:60]}",
            config={**to_dict(cfg), "transcoders": str(Path(args.transcoders).resolve()), "store": args.store},
            sections=[
                Section(
                    "Fidelity",
                    text="Scores and losses of the replacement model on this prompt "
                    "(Ameisen et al. 2025); the exactness check is the graph's known answer.",
                    html=_fidelity_html(s),
                ),
                Section("Attribution graph", html=graph_html(result, extra)),
            ],
        )
        print(
            f"graph: {s['nodes']['total']:,} nodes ({s['nodes']['latents']:,} latents), kept {s['kept']['nodes']} nodes and "
            f"{s['kept']['edges']:,} edges; replacement score {s['replacement_score']:.3f}, completeness {s['completeness_score']:.3f}"
        )
        print(
            f"exactness: max relative residual {c['max_relative_residual']:.2g}, max logit gap {c['max_logit_gap']:.2g} "
            f"({'pass' if s['exact'] else 'FAIL'})"
        )
        L = s["losses"]
        print(
            f"loss on the prompt: clean {L['clean']:.4f}, replacement {L['replacement']:.4f}, rock {L['rock']:.4f} nats"
        )
        print(f"report: {report}")
    if args.json:
        print_json({**s, "report": report, "graph": out / "graph.json"}, stdout)
    return 0 if s["exact"] else 1
