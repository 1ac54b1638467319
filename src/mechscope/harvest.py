"""Harvest: run a model over token contexts and stream the activations at its sites into a store.

Resumable by construction: contexts are fixed by the corpus config and seed, shard i always holds
contexts ``[i·C, (i+1)·C)``, each shard is written to a temporary file and renamed, and the
manifest (rewritten atomically after every shard) lists only finished shards. A re-run of the same
command skips finished shards and redoes the rest, so an interrupted harvest (SIGINT or kill -9)
ends with the same bytes as one that was never interrupted. Memory holds one shard at a time.
On a re-run, every shard the manifest lists is checked against its sha256 (not only its size) and
redone if it fails; the manifest itself must match its digest (:func:`mechscope.store.read_manifest`).
The output folder is checked to be writable before the model loads, and a run that fails before
writing anything leaves no empty folder behind.

Under ``torchrun`` (:class:`mechscope.distributed.World`) each rank runs the model on its own device over its
share of the shards: rank 0 lists the finished shards and broadcasts them; the unfinished ones, in their fixed
order, go to ranks in turn (shard j of that list to rank j mod world size), so the shares are disjoint and follow
from what is on disk. Rank 0 records its shards in the manifest, rank r > 0 in ``progress-rank<r>.json``; after
a barrier rank 0 folds the progress records into the manifest, writes it complete, and removes them. A shard
holds the same contexts whichever rank computes it, so the store is the one a single process makes. A re-run
(any number of ranks, or one process) folds the records a killed job left behind and redoes only what is
missing.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mechscope import faults
from mechscope.atomic import save_safetensors
from mechscope.config import to_dict
from mechscope.data.text import TextCorpusConfig, build_contexts
from mechscope.distributed import World
from mechscope.errors import UsageError
from mechscope.models.families import check_positions
from mechscope.preflight import writable_folder
from mechscope.sites import capture, resolve_sites, stop_after
from mechscope.store import (
    FORMAT,
    MANIFEST,
    ActivationStore,
    StoreCorruptError,
    read_manifest,
    sha256_file,
    write_manifest,
)

PROGRESS = "progress-rank{}.json"
"""Name of a rank's progress record while a torchrun harvest runs ({} is the rank)."""
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class HarvestConfig:
    """What to harvest and how to lay it out on disk."""

    model: str = "smollm2"
    """'smollm2' (embedded) or a local Hugging Face model directory."""
    sites: tuple[str, ...] = ("resid_post.6",)
    """Sites to read (module paths, wildcards or aliases such as resid_post.6)."""
    tokens: int = 100_000
    """Training tokens to harvest (rows ≈ tokens; capped by the corpus size)."""
    val_tokens: int = 8_192
    """Held-out tokens harvested from validation contexts."""
    batch_contexts: int = 16
    """Contexts per forward pass."""
    shard_contexts: int = 256
    """Contexts per shard file (a multiple of batch_contexts); the unit of resumption."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Storage dtype of activations."""
    skip_bos: bool = True
    """Leave out position 0 (BOS): its residual is an outlier that carries no information about the text."""
    stop_after: bool = True
    """Stop each forward pass after the last site (much faster for early layers)."""

    def __post_init__(self) -> None:
        if not self.sites:
            raise UsageError("no site given; pass at least one in `sites` (e.g. resid_post.6)")
        if self.batch_contexts <= 0 or self.shard_contexts <= 0:
            raise UsageError(
                f"`batch_contexts` ({self.batch_contexts}) and `shard_contexts` ({self.shard_contexts}) must be positive"
            )
        if self.shard_contexts % self.batch_contexts:
            raise UsageError(
                f"`shard_contexts` ({self.shard_contexts}) must be a multiple of `batch_contexts` ({self.batch_contexts})"
            )
        if self.tokens <= 0 or self.val_tokens < 0:
            raise UsageError(
                f"`tokens` ({self.tokens}) must be positive and `val_tokens` ({self.val_tokens}) non-negative"
            )


def check_takes_token_ids(model: nn.Module) -> None:
    """Refuse, by class, a model whose forward cannot be called as ``model(input_ids=ids)`` (a TransformerLens
    model takes ``input``; a classifier of vectors takes no token ids): harvest reads causal language models."""
    import inspect

    params = inspect.signature(model.forward).parameters
    if "input_ids" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        raise UsageError(
            f"harvest feeds token ids as `input_ids`, which a {type(model).__name__} does not take "
            f"(its forward takes {', '.join(params) or 'nothing'}); harvest reads Hugging Face causal LMs — "
            "for another model read its sites with mechscope.capture or run_to_sites"
        )


def _site_acts(model: nn.Module, sites: list, names: list[str], ids: Tensor, use_stop: bool) -> dict[str, Tensor]:
    with torch.no_grad(), capture(model, sites) as acts:
        if use_stop:
            with stop_after(model, sites):
                model(input_ids=ids)
        else:
            model(input_ids=ids)
    missing = [n for n in names if n not in acts]
    if missing:
        raise RuntimeError(f"sites {missing} did not run in the forward pass")
    return acts


def harvest(
    cfg: HarvestConfig,
    corpus: TextCorpusConfig,
    out: str | os.PathLike,
    loaded: Any | None = None,
    progress: bool = True,
    after_shard: Callable[[int], None] | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
    world: World | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> ActivationStore:
    """Harvest ``cfg.sites`` over ``corpus`` into the store at ``out`` (resuming if it exists).

    ``loaded`` is a :class:`mechscope.models.LoadedModel` (loaded from ``cfg.model`` if None); ``device`` and
    ``dtype`` are where and in which dtype the model runs (:func:`mechscope.models.resolve.resolve_model`; the
    store's dtype is ``cfg.dtype``). ``after_shard(i)`` is called after shard i is committed (tests use it to
    simulate a crash). ``world`` is this process's place in a torchrun job (:meth:`World.from_env` on ``device``
    when None; alone it is rank 0 of 1); the model runs on ``world.device``. ``device_map`` loads ``cfg.model`` spread
    over devices by accelerate instead (a model too large for one device; :func:`mechscope.models.load_model`): each
    layer runs where the map puts it, and the activations at the sites are copied to the cpu in the store's dtype as
    they are read, so the store is the one a model on one device makes. A ``loaded`` model that accelerate already
    dispatched is used where it is.
    """
    from mechscope.models.resolve import RunOn

    RunOn(device or "cpu", dtype or "float32")  # a bad device or dtype is refused before anything is written
    world = world or World.from_env(device or "cpu")
    if device_map is not None and world.size > 1:
        raise UsageError(
            f"`device_map` spreads one model over this machine's devices, but {world.size} ranks run: "
            "run one process with `device_map`, or drop it and give each rank its own device"
        )
    out = writable_folder(out, "`out`")
    created = not out.exists()
    try:
        return _harvest(cfg, corpus, out, loaded, progress, after_shard, world, dtype, device_map)
    except BaseException:
        if world.is_main and created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that failed before writing anything leaves no empty folder
        raise


def _harvest(
    cfg: HarvestConfig,
    corpus: TextCorpusConfig,
    out: Path,
    loaded: Any | None,
    progress: bool,
    after_shard: Callable[[int], None] | None,
    world: World,
    dtype: str | None,
    device_map: str | dict[str, Any] | None = None,
) -> ActivationStore:
    from mechscope.models.resolve import resolve_model

    subject = resolve_model(
        cfg.model if loaded is None else loaded, device=world.device, dtype=dtype, device_map=device_map
    )
    if subject.kind != "lm":
        raise UsageError(
            f"harvest reads a Hugging Face causal LM with its tokenizer; `model` {subject.spec!r} is a {subject.kind} model"
        )
    model, tok = subject.model, subject.tokenizer
    loaded = subject.loaded
    assert model is not None and loaded is not None  # kind lm always brings both
    check_takes_token_ids(model)
    check_positions(model, corpus.context_length, "the corpus's `context_length`")
    sites = resolve_sites(model, list(cfg.sites))  # fails here, before any forward, on a bad name
    names = [str(s) for s in sites]
    aliases = {
        spec: str(s) for spec, s in zip(cfg.sites, sites) if spec != str(s) and len(resolve_sites(model, spec)) == 1
    }

    ctx = build_contexts(tok, corpus)
    T = corpus.context_length
    first = 1 if cfg.skip_bos else 0
    per_ctx = T - first

    def n_ctx(tokens: int, available: int) -> int:
        want = -(-tokens // per_ctx)
        return min(available, -(-want // cfg.batch_contexts) * cfg.batch_contexts)

    plan = {
        "train": ctx.train[: n_ctx(cfg.tokens, len(ctx.train))],
        "val": ctx.val[: n_ctx(cfg.val_tokens, len(ctx.val))],
    }
    settings = {
        "harvest": to_dict(cfg),
        "corpus": to_dict(corpus),
        "model_id": loaded.model_id,
        "contexts": {k: len(v) for k, v in plan.items()},
    }
    model_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    if (
        model_dtype != "float32"
    ):  # a resumed harvest must not mix activations of two dtypes (float32 stores stay as they were)
        settings["model_dtype"] = model_dtype
    out.mkdir(parents=True, exist_ok=True)
    manifest = None
    if world.is_main:
        manifest = _load_or_start(out, settings)
        for stale in out.glob("*.tmp"):  # half-written files of a killed run (no rank writes before the broadcast)
            stale.unlink()
    first_settings, done = world.broadcast(
        (settings, {s["file"] for s in manifest["shards"]}) if manifest else None,
        "the start of harvest (rank 0 sends the finished shards)",
    )
    if first_settings != settings:
        raise UsageError(
            f"rank {world.rank} was started with other settings than rank 0 "
            f"({_settings_diff(first_settings, settings, 'on rank 0', 'here')}); start every rank with the same command"
        )
    record_name = MANIFEST if world.is_main else progress_name(world.rank)
    record = manifest or {
        "format": FORMAT,
        "version": 1,
        "rank": world.rank,
        "settings": settings,
        "sites": [],
        "shards": [],
    }

    todo = []
    for split, ids in plan.items():
        for i, start in enumerate(range(0, len(ids), cfg.shard_contexts)):
            todo.append((split, f"{split}-{i:05d}.safetensors", ids[start : start + cfg.shard_contexts]))
    mine = [t for t in todo if t[1] not in done][world.rank :: world.size]  # this rank's share of the unfinished shards
    total_tokens = sum(len(t[2]) * per_ctx for t in mine)
    bar = tqdm(
        total=total_tokens, unit="tok", unit_scale=True, desc="harvest", disable=not (progress and world.is_main)
    )
    t0 = time.time()
    for shard_no, (split, fname, ids) in enumerate(mine):
        chunks: dict[str, list[Tensor]] = {n: [] for n in names}
        for b in range(0, len(ids), cfg.batch_contexts):
            acts = _site_acts(model, sites, names, ids[b : b + cfg.batch_contexts].to(subject.device), cfg.stop_after)
            for n in names:
                a = acts[n][:, first:, :]  # [batch, T-first, d]
                chunks[n].append(a.reshape(-1, a.shape[-1]).to("cpu", _TORCH_DTYPES[cfg.dtype]).contiguous())
            bar.update(a.shape[0] * per_ctx)
            bar.set_postfix(tok_s=f"{bar.n / max(time.time() - t0, 1e-9):,.0f}")
        tensors = {f"acts/{n}": torch.cat(chunks[n]) for n in names}
        tensors["tokens"] = ids.to(torch.int32).contiguous()
        path = out / fname
        faults.point("harvest.before_shard", world.rank)
        save_safetensors(path, tensors)
        faults.point("harvest.shard_saved", world.rank)
        if not record["sites"]:
            record["sites"] = [{"name": n, "d": int(tensors[f"acts/{n}"].shape[1]), "dtype": cfg.dtype} for n in names]
        record["shards"].append(
            {
                "file": fname,
                "split": split,
                "contexts": len(ids),
                "rows": len(ids) * per_ctx,
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
            }
        )
        record["shards"].sort(key=_shard_order)
        write_manifest(out, record, record_name)
        faults.point("harvest.manifest_written", world.rank)
        if after_shard is not None:
            after_shard(shard_no)
    bar.close()
    world.barrier("the end of harvest (every rank has written its shards)")
    if manifest is not None:
        folded = _fold_progress(out, manifest, settings)
        listed = {s["file"] for s in manifest["shards"]}
        missing = [fname for _, fname, _ in todo if fname not in listed]
        if missing:  # never a complete manifest without them: a rank wrote where rank 0 cannot see
            _write_folded(out, manifest, folded)
            raise StoreCorruptError(
                f"rank 0 of {world.size} finds no record of {', '.join(missing)} in {out} after every rank reported its "
                "shards done: all ranks must write to one folder that each of them sees (a shared file system across "
                "nodes); re-run the same command there to redo them"
            )
        rows = {split: sum(s["rows"] for s in manifest["shards"] if s["split"] == split) for split in plan}
        manifest.update(
            complete=True, aliases=aliases, context_length=T, first_position=first, rows_per_context=per_ctx, rows=rows
        )
        faults.point("harvest.before_final_manifest")
        _write_folded(out, manifest, folded)
    world.barrier("the commit of the manifest by rank 0")
    return ActivationStore(out)


def progress_name(rank: int) -> str:
    """File name of rank ``rank``'s progress record (rank 0's progress is the manifest itself)."""
    return PROGRESS.format(rank)


def _shard_order(shard: dict[str, Any]) -> tuple[bool, str]:
    return shard["split"] != "train", shard["file"]


def _fold_progress(out: Path, manifest: dict[str, Any], settings: dict[str, Any]) -> list[Path]:
    """Add to ``manifest`` the intact shards that the ranks' progress records list and it does not; returns the
    records read (to remove once the manifest that lists their shards is written)."""
    records = sorted(out.glob(PROGRESS.format("*")))
    listed = {s["file"] for s in manifest["shards"]}
    for p in records:
        rec = read_manifest(out, p.name)
        if rec.get("settings") != settings:
            raise UsageError(
                f"{p} records shards of a harvest with other settings ({_settings_diff(rec.get('settings'), settings)}); "
                "choose another `out`, delete it, or repeat its settings to resume"
            )
        for s in rec["shards"]:
            if s["file"] in listed:
                continue
            if not _intact(out / s["file"], s):
                print(f"harvest: {out / s['file']} is missing or fails its sha256; redoing it", file=sys.stderr)
                continue
            manifest["shards"].append(s)
            listed.add(s["file"])
        manifest["sites"] = manifest["sites"] or rec["sites"]
    manifest["shards"].sort(key=_shard_order)
    return records


def _load_or_start(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The manifest to continue from (the existing one if it was made with the same settings, else a new one), with
    the shards of the progress records a killed torchrun job left folded in (the manifest written, the records
    removed); a single-process harvest never leaves records, so it meets none."""
    manifest = (
        _existing(out, settings)
        if (out / MANIFEST).is_file()
        else {
            "format": FORMAT,
            "version": 1,
            "complete": False,
            "settings": settings,
            "model_id": settings["model_id"],
            "context_length": settings["corpus"]["context_length"],
            "seed": settings["corpus"]["seed"],
            "first_position": 1 if settings["harvest"]["skip_bos"] else 0,
            "rows_per_context": settings["corpus"]["context_length"] - (1 if settings["harvest"]["skip_bos"] else 0),
            "sites": [],
            "shards": [],
            "aliases": {},
        }
    )
    folded = _fold_progress(out, manifest, settings)
    if folded:
        _write_folded(out, manifest, folded)
    return manifest


def _write_folded(out: Path, manifest: dict[str, Any], folded: list[Path]) -> None:
    """Write the manifest, then remove the progress records folded into it (only once it lists their shards)."""
    write_manifest(out, manifest)
    for p in folded:
        p.unlink()


def _existing(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The store's manifest, refused if made with other settings, without the shards damaged on disk."""
    old = read_manifest(out)
    if old.get("settings") != settings:
        raise UsageError(
            f"{out} already holds a store made with other settings ({_settings_diff(old.get('settings'), settings)}); "
            "choose another `out`, delete it, or repeat its settings to resume"
        )
    # Shards listed in the manifest but damaged on disk are redone rather than trusted.
    kept = [s for s in old["shards"] if _intact(out / s["file"], s)]
    for s in old["shards"]:
        if s not in kept:
            print(f"harvest: {out / s['file']} is missing or fails its sha256; redoing it", file=sys.stderr)
    old["shards"] = kept
    old["complete"] = False  # until the missing shards are redone and the final manifest written
    return old


def _intact(path: Path, shard: dict[str, Any]) -> bool:
    """The shard file exists with the size and sha256 the manifest records."""
    return path.is_file() and path.stat().st_size == shard["bytes"] and sha256_file(path) == shard["sha256"]


def _settings_diff(
    old: dict[str, Any] | None, new: dict[str, Any], old_name: str = "there", new_name: str = "asked"
) -> str:
    """Where two harvests' settings differ, one ``key: value there, value asked`` per differing leaf."""
    return "; ".join(f"{k}: {a!r} {old_name}, {b!r} {new_name}" for k, a, b in _differences(old or {}, new))


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, value in a, value in b) for every leaf where two nested dicts differ."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append((prefix + k, x, y))
    return out
