"""Train one SAE, or a sweep of SAEs in one pass over the same batches.

Shapes: B rows in the global batch, d width, n latents.

The trainer consumes any iterator of batches ``Tensor[B, d]`` (the activation store, or a model run
online) and a ``start_step``; every batch trains every member of the sweep, so data loading is
shared. Per step and member: lr and sparsity-coefficient schedules → forward → backward → mean of
gradients over data-parallel ranks → project the decoder gradient → Adam → renormalise → count fired
latents. At step 0 the first batch fixes the input scale s = √d / E‖x‖ and initialises b_dec
(geometric median, in scaled units); both are checkpointed, so a resumed run never recomputes them.
Paired rows [x | y] (transcoders) get one scale per half, s = √d_in / E‖x‖ and s_y = √d_out / E‖y‖:
an MLP's input and output differ in norm by ~10× on SmolLM2, and one scale for both would leave the
encoder reading inputs far smaller than the codes it must produce.

Schedules (t = step, T = ``TrainConfig.steps``):
  lr(t)       = lr · min(1, (t+1)/warmup_steps) · decay(t),  decay = 1 before ``decay_start``·T, then
                falls to 0 at T (linearly, or along a half cosine);
  sparsity(t) = min(1, (t+1)/sparsity_warmup_steps)  (multiplies the architecture's coefficient).

Dead latents: a latent is dead once it has not fired on the last W rows. Gao et al. use W = 10M
tokens; a run that sees fewer rows than that would never call a latent dead, so AuxK would never
run and the logged dead fraction would stay 0. By default (``dead_window=0``) the window follows
the run: W = min(10M, max(R/4, min(4·B, R))) with R = steps·B the rows the run will see (never
longer than the run). An explicit W
longer than the run is kept but reported loudly (a warning and a line in the log).

Several processes (torchrun): by default every rank trains every member on its slice of each global batch
(data parallelism, :mod:`mechscope.distributed`). With ``distribute_members`` the members are dealt out
instead: member i lives only on rank i mod N (:meth:`World.share`), which trains it alone on whole batches
with the arithmetic of one process (its seed is still seed + i), writes its own checkpoint
``checkpoint.rank<r>-of-<N>.safetensors`` and log ``train_log.rank<r>-of-<N>.jsonl``, and saves its own
members; only the final metrics are gathered. A sweep, or one SAE per layer, that no single device can hold
then fits on N. Its weights are those of a one-process run of the same sweep; a killed job resumes with the
same N (each rank from its own checkpoint).

With ``shard_layers`` each cross-layer transcoder of the sweep is split by layers instead (model parallelism,
:mod:`mechscope.sae.clt`): rank r holds the latents of its contiguous :meth:`World.block` of the L layers (W_enc's
columns and W_dec's rows of those latents: ~1/N of the parameters and of Adam's state), every rank reads every
global batch whole, one all-reduce per step sums the partial outputs, and the loss is the same on every rank (no
gradient averaging). Each rank writes its shard's checkpoint ``checkpoint.rank<r>-of-<N>.safetensors`` (and log,
with its own latents' L0 and dead fraction); :meth:`Trainer.save` gathers the shards to rank 0, which saves one
ordinary CLT, the layout a single process saves. Its weights are those of a single process up to float rounding
(the sums over latents are cut in N parts); a killed job resumes with the same N.

On start (:meth:`Trainer.resume`) half-written ``*.tmp`` files of a killed run are removed, and the
log is cut back to the resumed step, so that replayed steps are logged once.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor
from tqdm.auto import tqdm

from mechscope import checkpoint, faults, training
from mechscope.config import (
    to_dict,
)
from mechscope.distributed import World, without_data_parallelism
from mechscope.errors import MechscopeError, UsageError
from mechscope.evals.metrics import fvu, l0
from mechscope.jsonout import append_row, cut_rows
from mechscope.sae.base import (
    REGISTRY,
    ForwardOutput,
    SparseAutoencoder,
    SparseCodes,
    fired_latents,
)
from mechscope.sae.clt import join_shards
from mechscope.sae.held_out import evaluate
from mechscope.sae.io import save_sae
from mechscope.sae.maths import DeadLatentTracker, geometric_median, input_scale
from mechscope.sae.train_config import PAPER_DEAD_WINDOW, Member, OptimConfig, TrainConfig

CHECKPOINT = "checkpoint.safetensors"
LOG = "train_log.jsonl"


class NonFiniteError(MechscopeError, RuntimeError):
    """NaN or Inf in a batch or a loss; the message names the step, and the last good checkpoint is kept."""


class Trainer:
    """Trains ``members`` on shared batches; checkpoints and final SAEs go to ``out_dir``."""

    def __init__(
        self,
        members: Sequence[Member],
        cfg: TrainConfig,
        out_dir: str | Path | None = None,
        world: World | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        if not members:
            raise ValueError("a sweep needs at least one member")
        cfg = dataclasses.replace(cfg, dead_window=cfg.resolved_dead_window())
        self.cfg, self.world = cfg, world or World.from_env(cfg.device)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.metadata = metadata or {}
        names = [m.name or m.arch for m in members]
        self.sweep = [
            dataclasses.replace(m, name=n if names.count(n) == 1 else f"{n}-{i}")
            for i, (m, n) in enumerate(zip(members, names))
        ]
        if cfg.shard_layers:
            self._check_layer_sharding()
        self.sharded = cfg.distribute_members and self.world.size > 1
        if self.sharded and len(members) < self.world.size:
            raise UsageError(
                f"`distribute_members` deals {len(members)} SAE(s) out over {self.world.size} ranks: a rank "
                "would train nothing; start at most as many ranks as SAEs, or drop `distribute_members`"
            )
        self.layer_sharded = cfg.shard_layers and self.world.size > 1
        """Whether each member is a shard of a CLT split by layers over the ranks (``shard_layers``)."""
        self.per_rank = self.sharded or self.layer_sharded
        """Whether each rank writes its own checkpoint and log (``distribute_members`` or ``shard_layers``)."""
        self.owned = self.world.share(len(self.sweep)) if self.sharded else list(range(len(self.sweep)))
        """Indices (in the sweep) of the members this rank trains; every member unless ``sharded``."""
        self.members = [self.sweep[i] for i in self.owned]
        self.replicas = self.world.alone() if self.per_rank else self.world
        """The ranks that share each batch and each gradient: all of them, or this one alone when it reads whole
        batches (``sharded``, ``layer_sharded``: a shard's loss is every rank's, so nothing is averaged)."""
        self.saes: list[SparseAutoencoder] = []
        for i, m in zip(self.owned, self.members):
            gen = torch.Generator().manual_seed(cfg.seed + i)
            shard = (
                {"held": self.world.block(m.sae.layers), "partial_sum": self.world.sum_partials}  # type: ignore[attr-defined]
                if self.layer_sharded
                else {}
            )
            self.saes.append(REGISTRY[m.arch](m.sae, generator=gen, **shard).to(self.world.device).train())
        self._joined: dict[int, tuple[int, SparseAutoencoder | None]] = {}
        """``layer_sharded``: member index → (step, the whole CLT joined on rank 0 at that step, None elsewhere)."""
        # fused: one pass over each tensor per step (the unfused CPU Adam makes several, ~8x slower here)
        self.opts = [
            training.build_optimizer(s.parameters(), m.optim.to_training()) for s, m in zip(self.saes, self.members)
        ]
        self.trackers = [DeadLatentTracker(s.latents, cfg.dead_window) for s in self.saes]
        self.step, self.scale = 0, 1.0
        self.history: list[dict[str, Any]] = []  # one dict per log/eval line
        self.target_scale: float | None = None  # paired rows only: the scale of the target half
        self.split = 0  # paired rows only: the input half's width d_in
        self.window_note = self._check_dead_window()

    def _check_layer_sharding(self) -> None:
        """Refuse ``shard_layers`` where it cannot split the members (named errors; module docstring)."""
        from mechscope.sae.clt import CrossLayerTranscoderSAE

        if self.cfg.distribute_members:
            raise UsageError(
                "`shard_layers` and `distribute_members` split the work over the ranks in two different ways "
                "(a CLT's layers, or whole SAEs): pass one of them"
            )
        for m in self.sweep:
            if not issubclass(REGISTRY[m.arch], CrossLayerTranscoderSAE):
                raise UsageError(
                    f"`shard_layers` splits a cross-layer transcoder's latents by layer; SAE {m.name!r} is a "
                    f"{m.arch} (use clt or jumprelu_clt, or `distribute_members` for a sweep of other SAEs)"
                )
            if self.world.size > m.sae.layers:  # type: ignore[attr-defined]
                raise UsageError(
                    f"`shard_layers` over {self.world.size} ranks: SAE {m.name!r} has {m.sae.layers} layer(s), and "  # type: ignore[attr-defined]
                    "a rank would hold none; start at most as many ranks as layers"
                )
            if m.optim.max_grad_norm > 0:
                raise UsageError(
                    f"`max_grad_norm` ({m.optim.max_grad_norm}) with `shard_layers`: the gradient's global norm "
                    "spans every rank's shard and is not computed across ranks; set `max_grad_norm` 0"
                )

    def _check_dead_window(self) -> str | None:
        """A warning when the dead-latent window is longer than the run (AuxK could never start)."""
        rows = self.cfg.steps * self.cfg.batch_size
        if self.cfg.dead_window <= rows:
            return None
        note = (
            f"dead_window={self.cfg.dead_window:,} rows is longer than the run ({rows:,} rows): no latent can "
            "count as dead, so AuxK never runs and the logged dead fraction stays 0; set dead_window=0 to "
            "derive it from the run"
        )
        if self.world.is_main:
            warnings.warn(note, stacklevel=3)
        return note

    # ---- the loop -------------------------------------------------------------------------------
    def fit(
        self,
        batches: Iterable[Tensor],
        start_step: int | None = None,
        val_batches: Callable[[], Iterable[Tensor]] | None = None,
    ) -> list[dict[str, Any]]:
        """Train until ``cfg.steps`` (or the batches run out); ``start_step`` must match the resumed step.

        ``batches`` must yield the global batches from number ``start_step`` on. Returns the log lines.
        """
        if start_step is not None and start_step != self.step:
            raise ValueError(
                f"batches start at step {start_step} but the trainer is at step {self.step} (resume() first?)"
            )
        if self.window_note and self.step == 0:
            self._record({"step": 0, "note": self.window_note})
        bar = tqdm(
            total=self.cfg.steps, initial=self.step, unit="step", disable=not (self.cfg.progress and self.world.is_main)
        )
        clock = (time.perf_counter(), self.step)
        for x in batches:
            if self.step >= self.cfg.steps:
                break
            x, outs = self.train_step(x)
            faults.point("train.step", self.world.rank)  # tests kill the process here (mechscope.faults)
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                clock = self._log(x, outs, clock, bar)
            if self.cfg.eval_every and val_batches is not None and self.step % self.cfg.eval_every == 0:
                self._log_eval(val_batches)
            if self.cfg.checkpoint_every and self.step % self.cfg.checkpoint_every == 0:
                self.save_checkpoint()
            bar.update(1)
        bar.close()
        if self.step < self.cfg.steps:
            self._record({"step": self.step, "note": f"the batches ran out before step {self.cfg.steps}"})
        self.save_checkpoint()
        return self.history

    def train_step(self, x: Tensor) -> tuple[Tensor, list[ForwardOutput]]:
        """One optimiser step of every member on the global batch x: [B, d]; returns (this rank's scaled rows, outputs)."""
        # alone (distribute_members, or one site per rank): BatchTopK's cut over this rank's batch, not the group's
        with without_data_parallelism() if self.replicas.size == 1 else contextlib.nullcontext():
            x = self._prepare(x)
            outs = [self._train_member(i, x) for i in range(len(self.saes))]
        self.step += 1
        return x, outs

    def _train_member(self, i: int, x: Tensor) -> ForwardOutput:
        sae, opt, tracker, m = self.saes[i], self.opts[i], self.trackers[i], self.members[i]
        training.set_lr(opt, m.optim.lr_at(self.step, self.cfg.steps))
        out = sae(x, dead_mask=tracker.dead_mask().to(x.device), sparsity_scale=m.optim.sparsity_at(self.step))
        if not torch.isfinite(out.loss):
            self._fail(f"loss of SAE {m.name!r} is {float(out.loss.detach())}")
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        self.replicas.average_gradients(sae.parameters())
        sae.before_step()
        training.clip_gradients(sae.parameters(), m.optim.max_grad_norm)
        opt.step()
        sae.after_step()
        fired = self.replicas.all_reduce(fired_latents(out.codes, sae.latents).to(torch.int32), op="max").bool()
        tracker.update(fired.cpu(), x.shape[0] * self.replicas.size)
        return out

    # ---- helpers --------------------------------------------------------------------------------
    def _prepare(self, x: Tensor) -> Tensor:
        """Check, slice to this rank, scale; at step 0 also fix the input scale and b_dec."""
        if x.ndim != 2 or x.shape[0] != self.cfg.batch_size:
            raise ValueError(
                f"step {self.step}: expected a batch of shape [{self.cfg.batch_size}, d], got {list(x.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            self._fail("the batch contains NaN or Inf")
        x = self.replicas.local_rows(x).to(self.world.device, torch.float32)
        if self.step == 0:
            self._initialise(x)
        return self._scaled(x)

    def _scaled(self, x: Tensor) -> Tensor:
        """x times the input scale; paired rows: each half times its own scale."""
        if self.target_scale is not None:
            return torch.cat([x[:, : self.split] * self.scale, x[:, self.split :] * self.target_scale], 1)
        return x * self.scale if self.scale != 1.0 else x

    @torch.no_grad()
    def _initialise(self, x: Tensor) -> None:
        x_in, target = self.saes[0].split_rows(x)
        if x_in is not target:  # paired rows: the halves are scaled apart (module docstring)
            self.split = x_in.shape[1]
            self.target_scale = input_scale(target, self.replicas.all_reduce) if self.cfg.normalize_input else 1.0
        self.scale = input_scale(x_in, self.replicas.all_reduce) if self.cfg.normalize_input else 1.0
        xs = self._scaled(x)
        if self.cfg.init_b_dec == "zeros":
            return
        done: dict[tuple[int, int], Tensor] = {}  # b_dec per (input width, target width): SAEs share one
        for sae in self.saes:
            key = (sae.d_in, sae.d_out)
            if key not in done:
                target = sae.split_rows(xs)[1]  # what b_dec offsets: the input (SAE) or the target site (transcoder)
                if self.cfg.init_b_dec == "median":
                    done[key] = geometric_median(target, all_reduce=self.replicas.all_reduce)
                else:
                    done[key] = self.replicas.all_reduce(target.double().sum(0)) / (
                        target.shape[0] * self.replicas.size
                    )
            sae.b_dec.copy_(done[key].to(sae.b_dec))

    def _fail(self, what: str) -> None:
        kept = self.checkpoint_path if self.checkpoint_path is not None and self.checkpoint_path.exists() else None
        where = f"the last good checkpoint is kept at {kept}" if kept else "no checkpoint was written yet"
        raise NonFiniteError(f"step {self.step}: {what}; training stopped, {where}")

    def _log(self, x: Tensor, outs: list[ForwardOutput], clock: tuple[float, int], bar: tqdm) -> tuple[float, int]:
        now = time.perf_counter()
        rows_s = (self.step - clock[1]) * self.cfg.batch_size / max(now - clock[0], 1e-9)
        line: dict[str, Any] = {"step": self.step, "rows_per_s": rows_s, "members": {}}
        for m, sae, out, tracker in zip(self.members, self.saes, outs, self.trackers):
            codes = (
                out.codes.values if isinstance(out.codes, SparseCodes) else out.codes
            )  # L0 counts non-zeros either way
            line["members"][m.name] = {
                "fvu": fvu(sae.split_rows(x)[1], out.x_hat),
                "l0": l0(codes),
                "dead": tracker.dead_fraction(),
                **{k: float(v) for k, v in out.parts.items()},
            }
        self._record(line)
        first = next(iter(line["members"].values()))
        bar.set_postfix(
            rows_s=f"{rows_s:,.0f}", fvu=f"{first['fvu']:.3f}", l0=f"{first['l0']:.1f}", dead=f"{first['dead']:.3f}"
        )
        return now, self.step

    def _log_eval(self, val_batches: Callable[[], Iterable[Tensor]]) -> None:
        results = {
            m.name: evaluate(sae, (self._scaled(x) for x in val_batches())) for m, sae in zip(self.members, self.saes)
        }
        self._record({"step": self.step, "eval": results})

    def _record(self, line: dict[str, Any]) -> None:
        self.history.append(line)
        if self.out_dir is not None and self.writes:
            append_row(self.out_dir / self._own_name(LOG), line)

    # ---- checkpoints and results ------------------------------------------------------------------
    @property
    def writes(self) -> bool:
        """Whether this rank writes checkpoints and logs: rank 0, or every rank its own when ``per_rank``
        (SAEs: rank 0, or every rank its own members when ``sharded``)."""
        return self.world.is_main or self.per_rank

    def _own_name(self, name: str) -> str:
        """``name`` (checkpoint.safetensors, train_log.jsonl), or this rank's own file when ``sharded``:
        checkpoint.rank<r>-of-<N>.safetensors (``distribute_members``, ``shard_layers``)."""
        if not self.per_rank:
            return name
        stem, dot, ext = name.partition(".")
        return f"{stem}.rank{self.world.rank}-of-{self.world.size}{dot}{ext}"

    @property
    def checkpoint_path(self) -> Path | None:
        """The checkpoint this rank writes and resumes from (None without ``out_dir``)."""
        return None if self.out_dir is None else self.out_dir / self._own_name(CHECKPOINT)

    def _identity(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed by this trainer (the whole sweep, also when ``sharded``)."""
        return {
            "members": [
                {"name": m.name, "arch": m.arch, "sae": to_dict(m.sae), "optim": to_dict(m.optim)} for m in self.sweep
            ],
            "batch_size": self.cfg.batch_size,
            "seed": self.cfg.seed,
            **({"ranks": self.world.size} if self.per_rank else {}),
            **({"shard_layers": True} if self.layer_sharded else {}),
        }

    def save_checkpoint(self) -> Path | None:
        """Write weights, Adam state, counters, step, input scale and RNG atomically (rank 0; each rank its own
        members when ``sharded``). Tensors are keyed by the member's index in the sweep."""
        path = self.checkpoint_path
        if path is None:
            return None
        if self.writes:
            tensors: dict[str, Tensor] = {"rng.torch": torch.get_rng_state()}
            for i, m, sae, opt, tracker in zip(self.owned, self.members, self.saes, self.opts, self.trackers):
                for k, v in sae.state_dict().items():
                    if not bool(torch.isfinite(v).all()):
                        self._fail(f"SAE {m.name!r} has non-finite {k}")
                    tensors[f"{i}.sae.{k}"] = v
                tensors.update(checkpoint.flatten_optimizer(f"{i}.optim.", opt))
                tensors[f"{i}.dead.rows_since_fired"] = tracker.rows_since_fired
            meta = {
                "step": self.step,
                "scale": self.scale,
                "target_scale": self.target_scale,
                "split": self.split,
                **self._identity(),
                "train": to_dict(self.cfg),
            }
            checkpoint.write_atomic(path, tensors, meta)
        if not self.sharded:  # sharded ranks share nothing, and resume from different steps (each from its own file)
            self.world.barrier(f"the checkpoint at step {self.step}")
        return path

    def resume(self) -> int:
        """Load ``out_dir``'s checkpoint if there is one; returns the step to continue from (0 if none).

        First removes the ``*.tmp`` files a killed run left in ``out_dir`` and its members' folders;
        then cuts ``train_log.jsonl`` back to the resumed step (those steps will be run and logged again).
        With ``shard_layers`` the ranks' shards must come from the same step (checked over the ranks).
        """
        step = self._resume_own()
        if self.layer_sharded:
            steps = self.world.gather(step, "the resumed step of every rank's shard")
            if len(set(steps)) > 1:
                raise MechscopeError(
                    f"the shards in {self.out_dir} were checkpointed at different steps ({steps}, by rank): a rank "
                    "died while writing its checkpoint; delete the checkpoint.rank*-of-*.safetensors files to train "
                    "from the start"
                )
        return step

    def _resume_own(self) -> int:
        """:meth:`resume` of this rank's own checkpoint."""
        path = self.checkpoint_path
        if path is None:
            return self.step
        if self.writes:
            self._sweep_temporaries()
        self._refuse_other_layouts()
        if not path.exists():
            if self.writes:
                self._truncate_log(-1)  # nothing to resume: the run starts over, so does its log
            return self.step
        try:
            tensors, meta = checkpoint.read(path)
        except MechscopeError:
            raise
        except (
            SafetensorError,
            ValueError,
            OSError,
        ) as err:  # safetensors' own errors carry no path; say which file and what to do
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise MechscopeError(
                f"checkpoint {path} cannot be read ({first}): the file is damaged (truncated or overwritten); "
                "delete it to train from the start"
            ) from err
        mine, theirs = self._identity(), {k: meta.get(k) for k in self._identity()}
        if mine != theirs:
            raise UsageError(
                f"{path} was written by a different run (members, batch size or seed differ); "
                "use another `out_dir` folder, delete the checkpoint, or repeat that run's settings to resume it"
            )
        for i, sae, opt, tracker in zip(self.owned, self.saes, self.opts, self.trackers):
            sae.load_state_dict({k[len(f"{i}.sae.") :]: v for k, v in tensors.items() if k.startswith(f"{i}.sae.")})
            checkpoint.restore_optimizer(f"{i}.optim.", opt, tensors)
            tracker.load_state_dict({"rows_since_fired": tensors[f"{i}.dead.rows_since_fired"]})
        torch.set_rng_state(tensors["rng.torch"])
        self.step, self.scale = int(meta["step"]), float(meta["scale"])
        self.target_scale = None if meta.get("target_scale") is None else float(meta["target_scale"])
        self.split = int(meta.get("split", 0))
        if self.writes:
            self._truncate_log(self.step)
        return self.step

    def _refuse_other_layouts(self) -> None:
        """A checkpoint of the other layout (one file, or one per rank of another number of ranks) in ``out_dir``
        cannot be resumed here: say which run wrote it and how to resume it."""
        assert self.out_dir is not None
        mine = self.checkpoint_path
        theirs = sorted(
            p.name
            for p in self.out_dir.glob("checkpoint*.safetensors")
            if p != mine and (not self.per_rank or not p.name.endswith(f"-of-{self.world.size}.safetensors"))
        )
        if theirs:
            how = "`shard_layers`" if self.layer_sharded else "`distribute_members`"
            now = f"{self.world.size} ranks with {how}" if self.per_rank else "one checkpoint file"
            raise UsageError(
                f"{self.out_dir} holds {', '.join(theirs)}, written by a run laid out otherwise than this one ({now}); "
                "resume it as it was started (the same number of ranks, with `distribute_members` or `shard_layers` "
                "as before for files named checkpoint.rank<r>-of-<N>), or use another `out_dir` folder"
            )

    def _sweep_temporaries(self) -> None:
        """Delete half-written files (:mod:`mechscope.atomic` temporaries) of a killed checkpoint or save: this rank's own."""
        assert self.out_dir is not None
        ours = [self._own_name(CHECKPOINT), self._own_name(LOG)]
        for stale in self.out_dir.glob("*.tmp"):
            if not self.per_rank or stale.name.startswith(tuple(f"{n}." for n in ours)):
                stale.unlink()
        if self.layer_sharded and not self.world.is_main:
            return  # the saved CLTs are rank 0's to write, and to clean up
        for folder in (self.out_dir / m.name for m in self.members):
            for stale in folder.glob("*.tmp"):
                stale.unlink()

    def _truncate_log(self, step: int) -> None:
        """Keep only the log lines of steps ≤ ``step`` (a torn last line from a kill is dropped too)."""
        assert self.out_dir is not None
        cut_rows(self.out_dir / self._own_name(LOG), step)

    def whole(self, sae_index: int) -> SparseAutoencoder | None:
        """Member ``sae_index`` whole: itself, or with ``shard_layers`` the CLT joined from every rank's shard on
        rank 0 (None on the other ranks). Joining is a collective that every rank must call; :meth:`save` does and
        keeps the result, so that rank 0 alone may call this (and :meth:`export`) at the same step after it."""
        if not self.layer_sharded:
            return self.saes[sae_index]
        step, sae = self._joined.get(sae_index, (-1, None))
        if step != self.step:
            shard = self.saes[sae_index]
            parts = self.world.collect(
                {k: v.detach().cpu() for k, v in shard.state_dict().items()},
                f"the shards of SAE {self.members[sae_index].name!r} at step {self.step}",
            )
            sae = None
            if parts is not None:
                # its own generator: the weights are overwritten, and torch's global RNG state is left alone
                sae = REGISTRY[self.members[sae_index].arch](self.members[sae_index].sae, generator=torch.Generator())
                sae.load_state_dict(join_shards(parts))
            self._joined[sae_index] = (self.step, sae)
        return sae

    def export(self, sae_index: int) -> SparseAutoencoder:
        """A copy of member ``sae_index`` that reads raw activations (input scale folded in), in eval mode
        (with ``shard_layers``: the whole CLT, on rank 0 after :meth:`save`)."""
        whole = self.whole(sae_index)
        if whole is None:
            raise UsageError("with `shard_layers` the whole CLT is joined on rank 0: export it there")
        sae = copy.deepcopy(whole).cpu().eval()
        sae.fold_input_scale_(self.scale, self.target_scale)
        return sae

    def save(self) -> list[Path]:
        """Save every member, folded, to ``out_dir/<name>/`` (cfg.json + sae.safetensors); rank 0 only, or each
        rank its own members when ``sharded``. With ``shard_layers`` every rank must call it: the shards are
        joined on rank 0, which saves each CLT whole (the file a single process writes)."""
        if self.out_dir is None:
            return []
        if self.layer_sharded:
            for i in range(len(self.saes)):
                self.whole(i)
        if not (self.world.is_main or self.sharded):
            return []
        return [
            save_sae(
                self.export(i),
                self.out_dir / m.name,
                metadata={
                    **self.metadata,
                    "steps": self.step,
                    "rows": self.step * self.cfg.batch_size,
                    "input_scale": self.scale,
                    "optim": to_dict(m.optim),
                    **({"target_scale": self.target_scale} if self.target_scale is not None else {}),
                },
            )
            for i, m in enumerate(self.members)
        ]


__all__ = ["PAPER_DEAD_WINDOW", "Member", "NonFiniteError", "OptimConfig", "TrainConfig", "Trainer"]
