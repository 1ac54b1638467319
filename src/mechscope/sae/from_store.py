"""Training from an activation store: the widths of its sites, one sweep over one site (or a pair of sites for a
transcoder, several for a crosscoder or CLT) with held-out metrics, and one sweep per site dealt out over ranks."""

from __future__ import annotations

import dataclasses
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from mechscope.atomic import atomic_write_json
from mechscope.distributed import World
from mechscope.errors import MechscopeError, UsageError
from mechscope.sae.base import REGISTRY
from mechscope.sae.held_out import evaluate
from mechscope.sae.trainer import Member, TrainConfig, Trainer


def site_widths(
    store: Any, config_cls: type, site: str | tuple[str, ...], target_site: str | tuple[str, ...] | None = None
) -> dict[str, int]:
    """The config fields the store fixes for an SAE at ``site``: ``d_in`` (several sites: their widths added),
    ``d_out`` (transcoders: the width of ``target_site``), and ``sites`` / ``layers`` (crosscoders and cross-layer
    transcoders: one input site each)."""

    def width(s: str | tuple[str, ...]) -> int:
        return sum(store.d(x) for x in s) if isinstance(s, tuple) else store.d(s)

    fields = config_cls.__dataclass_fields__  # type: ignore[attr-defined]
    several = {name: len(site) for name in ("sites", "layers") if isinstance(site, tuple) and name in fields}
    return {"d_in": width(site), **({"d_out": width(target_site)} if target_site else {}), **several}


def train_from_store(
    store: Any,
    site: str | tuple[str, ...],
    members: Sequence[Member],
    cfg: TrainConfig,
    out_dir: str | Path,
    metadata: dict[str, Any] | None = None,
    target_site: str | tuple[str, ...] | None = None,
    world: World | None = None,
) -> dict[str, dict[str, float]]:
    """Train from an activation store (a path or an opened ``ActivationStore``), resuming from ``out_dir``.

    Members whose ``d_in`` differs from the site's width are given the site's width. With ``target_site``
    every member must be a transcoder (``paired``): it reads ``site`` and predicts ``target_site``, from
    paired rows of the two sites at the same tokens, and is given ``d_out`` = the target's width.
    A tuple of sites (equal widths) trains crosscoders on the sites side by side.
    Saves every SAE to ``out_dir/<name>/`` with ``eval.json`` (metrics of the saved SAE on the store's
    held-out rows) and returns those metrics by member name (on rank 0 under torchrun; on every rank, for every
    member, with ``cfg.distribute_members``). ``world``: this process's place in a torchrun job
    (:meth:`World.from_env` on ``cfg.device`` when None).
    """
    if isinstance(store, (str, Path)):
        # the store is only needed on this path
        from mechscope.store import ActivationStore

        store = ActivationStore(store)
    for m in members:
        paired = getattr(REGISTRY[m.arch], "paired", False)
        if paired and target_site is None:
            raise UsageError(
                f"{m.arch} reads one site and predicts another; pass `target_site` "
                f"(e.g. `site` mlp_in.6 and `target_site` mlp_out.6)"
            )
        if target_site is not None and not paired:
            raise UsageError(
                f"`target_site` needs a transcoder architecture (transcoder, skip_transcoder); "
                f"{m.arch} reconstructs the site it reads: drop `target_site`"
            )
    if isinstance(
        site, (tuple, list)
    ):  # several sites side by side: a crosscoder (CrosscoderConfig.sites = their number)
        site = tuple(site)  # or a cross-layer transcoder (CLTConfig.layers = their number)
        for m in members:
            if (getattr(m.sae, "sites", None) or getattr(m.sae, "layers", None)) != len(site):
                raise UsageError(
                    f"{len(site)} sites ({', '.join(site)}) need a crosscoder that reads {len(site)} sites; "
                    f"{m.arch} reads " + (f"{m.sae.sites}" if hasattr(m.sae, "sites") else "one")
                )
    elif getattr(members[0].sae, "sites", 1) != 1:
        raise UsageError(
            f"{members[0].arch} reads several sites: give `site` several (e.g. resid_post.4 and resid_post.6)"
        )
    d = sum(store.d(s) for s in site) if isinstance(site, tuple) else store.d(site)
    if isinstance(target_site, (tuple, list)):  # a cross-layer transcoder writes several sites
        target_site = tuple(target_site)
    out_w = (
        {}
        if target_site is None
        else {"d_out": sum(store.d(s) for s in target_site) if isinstance(target_site, tuple) else store.d(target_site)}
    )
    members = [dataclasses.replace(m, sae=dataclasses.replace(m.sae, d_in=d, **out_w)) for m in members]
    sites: str | tuple[str | tuple[str, ...], ...] = site if target_site is None else (site, target_site)
    where = {"site": site, **({"target_site": target_site} if target_site is not None else {})}
    trainer = Trainer(
        members,
        cfg,
        out_dir,
        world=world,
        metadata={**where, "store": str(getattr(store, "path", "")), **(metadata or {})},
    )
    start = trainer.resume()
    batches = store.batches(
        sites, cfg.batch_size, seed=cfg.seed, start_batch=start, epochs=None
    )  # as many passes as the steps need

    def val_batches() -> Iterable[Tensor]:
        return store.batches(sites, cfg.batch_size, seed=0, drop_last=False, split="val")

    trainer.fit(batches, start_step=start, val_batches=val_batches)
    results: dict[str, dict[str, float]] = {}
    held_out = store.n_rows("val")
    if held_out == 0 and trainer.writes:
        note = f"the store {getattr(store, 'path', store)} has no held-out rows: no eval.json is written"
        trainer._record({"step": trainer.step, "note": note})
        warnings.warn(note, stacklevel=2)
    for i, path in enumerate(trainer.save()):
        if held_out == 0:
            break
        try:
            results[trainer.members[i].name] = evaluate(trainer.export(i), val_batches())
        except MechscopeError as e:
            raise MechscopeError(f"evaluating the SAE saved at {path} (step {trainer.step}) failed: {e}") from e
        except Exception as e:  # our bug: keep the traceback, say where it happened
            note = (
                f"while evaluating the SAE saved at {path} (step {trainer.step}) on the held-out rows of "
                f"{getattr(store, 'path', store)}; no eval.json was written"
            )
            if sys.version_info >= (3, 11):
                e.add_note(note)
            else:  # Python 3.10 has no exception notes: say it as a warning, just before the traceback
                warnings.warn(note, stacklevel=2)
            raise
        atomic_write_json(path / "eval.json", results[trainer.members[i].name])
    if (
        trainer.sharded
    ):  # each rank evaluated its own members: every rank's metrics, in the sweep's order, on every rank
        gathered = {
            k: v
            for part in trainer.world.gather(results, "the held-out metrics of every rank's SAEs")
            for k, v in part.items()
        }
        results = {m.name: gathered[m.name] for m in trainer.sweep if m.name in gathered}
    return results


def train_per_site(
    store: Any,
    sites: Sequence[str],
    members: Sequence[Member],
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    target_sites: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
    world: World | None = None,
) -> dict[str, dict[str, dict[str, float]]]:
    """The sweep ``members`` trained at each of ``sites`` (with ``target_sites``: transcoders from ``sites[j]`` to
    ``target_sites[j]``, e.g. one per layer), each into ``out_dir/<site>/`` exactly as :func:`train_from_store`
    trains it there alone. Under torchrun the sites are dealt out (site j to rank j mod N, :meth:`World.share`),
    each trained by its rank alone, so that no device holds more than its share of the dictionaries; each resumes
    from its own checkpoint, and the held-out metrics are gathered: {site: {member name: metrics}} on every rank."""
    world = world or World.from_env(cfg.device)
    if cfg.shard_layers:
        raise UsageError(
            "`shard_layers` splits one cross-layer transcoder over the ranks, and one sweep per site deals whole sites "
            "out to them: pass one of them"
        )
    if target_sites is not None and len(target_sites) != len(sites):
        raise UsageError(f"{len(sites)} `sites` but {len(target_sites)} `target_sites`: give one target per site")
    if len(set(sites)) != len(sites):
        raise UsageError(f"`sites` {', '.join(sites)} name a site twice: each site trains into its own folder")
    if world.size > len(sites):
        raise UsageError(
            f"{len(sites)} site(s) dealt out over {world.size} ranks: a rank would train nothing; start at "
            "most as many ranks as sites"
        )
    if isinstance(store, (str, Path)):
        from mechscope.store import ActivationStore

        store = ActivationStore(store)
    alone = dataclasses.replace(cfg, distribute_members=False)
    mine = {
        sites[j]: train_from_store(
            store,
            sites[j],
            members,
            alone,
            Path(out_dir) / sites[j],
            metadata=metadata,
            target_site=None if target_sites is None else target_sites[j],
            world=world.alone(),
        )
        for j in world.share(len(sites))
    }
    gathered = {
        k: v for part in world.gather(mine, "the held-out metrics of every rank's sites") for k, v in part.items()
    }
    return {s: gathered[s] for s in sites}
