"""SPD on any ``nn.Module``: find the target weights (Linear, transformers' Conv1D, Embedding), run the model with
masked subcomponents, the losses.

Shapes: B rows (any leading dims ``...``), C subcomponents per target, S mask samples.

For a batch x, with f(x | W) the target model and f(x | W′) the model whose target weights are replaced by
masked subcomponents W′_l = Σ_c m_{l,c}(x, r) U_{l,c} V_{l,c}ᵀ:

- causal importances g_{l,c}(x) from the inputs each target layer sees in the *unmasked target* model;
- stochastic masks m = g + (1 − g)·r, r ~ U[0, 1] independent per input, subcomponent and sample;
- with ``delta_component``: W′_l += m_{l,Δ} Δ_l, Δ_l = W_l − Σ_c U_{l,c} V_{l,c}ᵀ, m_{l,Δ} ~ U[0, 1] per input and
  sample (the later reference code's delta component), in both reconstruction losses;
- L_faith = Σ_l ‖W_l − Σ_c U_{l,c} V_{l,c}ᵀ‖²_F / N  (N = number of decomposed parameters);
- L_stoch = (1/S) Σ_s D(f(x | W′(x, r_s)), f(x | W))                 (every target masked at once);
- L_layer = (1/(L S)) Σ_l Σ_s D(f(x | W_1, …, W′_l, …, W_L), f(x | W)) (one target masked at a time);
- L_min = mean over inputs of Σ_l Σ_c |g^u_{l,c}(x)|^p                (upper-leaky importances);
- L = c_f L_faith + c_s L_stoch + c_l L_layer + c_m L_min.
D is Σ_last-dim (a − b)² averaged over rows (``mse``) or KL(softmax(target) ‖ softmax(masked)) averaged over
rows (``kl``, for logits). These are the paper's losses; where this code departs from the paper:

- the CI functions read vᵀx at the target model's layer inputs, as the paper; gradients flow into V through
  them (the paper does not say; the reference code does the same);
- the lower-leaky sigmoid leaks only in the backward pass (the paper's leaks in the forward pass too, which
  lets masks leave [0, 1]; see :func:`~mechscope.decompose.components.lower_leaky_hard_sigmoid`);
- the module's bias is kept as it is and never decomposed or masked (as in the paper's toy models).
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mechscope.decompose.components import Components
from mechscope.decompose.config import SPDConfig
from mechscope.errors import UsageError
from mechscope.evals.splice import model_logits
from mechscope.models.families import is_transformer_lens, transformer_lens_refusal

KINDS = "Linear, Conv1D or Embedding"
"""What SPD decomposes, in words (for messages): nn.Linear, transformers' Conv1D, nn.Embedding."""


def weight_kind(module: nn.Module) -> str | None:
    """``linear`` (y = x Wᵀ + b, weight [out, in]), ``conv1d`` (transformers' Conv1D, GPT-2's MLP and attention:
    y = x W + b, weight [in, out]), ``embedding`` (weight [V, d]), or None for anything SPD does not decompose.
    Conv1D is told by its class and module, so transformers is not imported to ask."""
    if isinstance(module, nn.Linear):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    cls = type(module)
    if cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers."):
        return "conv1d"
    return None


def find_targets(model: nn.Module, patterns: tuple[str, ...]) -> dict[str, nn.Module]:
    """Named modules matched by ``patterns`` (fnmatch on the module path); '*' picks every decomposable layer
    (:func:`weight_kind`).

    A pattern naming a module (exactly) that is not decomposable, or has no 2-D weight, is refused in one line;
    so is a model with no decomposable layer at all, and a TransformerLens model (its weights are bare
    parameters) by name."""
    if is_transformer_lens(model):
        raise transformer_lens_refusal(model, "SPD (its weights are bare parameters such as W_in, not layers)")
    named = dict(model.named_modules())
    usable = [n for n, m in named.items() if n and weight_kind(m)]
    if not usable:
        raise UsageError(
            f"{type(model).__name__} has no {KINDS} layer to decompose; SPD decomposes the weights of "
            "nn.Linear, transformers' Conv1D and nn.Embedding (wrap other weights in nn.Linear)"
        )
    chosen: dict[str, nn.Module] = {}
    for pat in patterns:
        if pat in named and pat:
            mod = named[pat]
            w = getattr(mod, "weight", None)
            if not isinstance(w, Tensor) or w.dim() != 2:
                raise UsageError(
                    f"target module {pat!r} ({type(mod).__name__}) has no 2-D weight to decompose; "
                    f"choose among its {KINDS} layers: {', '.join(usable)}"
                )
            if not weight_kind(mod):
                raise UsageError(
                    f"target module {pat!r} is a {type(mod).__name__}, not a {KINDS}; choose among: {', '.join(usable)}"
                )
            chosen[pat] = mod
            continue
        hits = [n for n in usable if fnmatch.fnmatchcase(n, pat)]
        if not hits:
            raise UsageError(f"`targets` pattern {pat!r} matches no {KINDS} layer; choose among: {', '.join(usable)}")
        chosen.update({n: named[n] for n in hits})
    return chosen


def target_matrix(module: nn.Module) -> Tensor:
    """The weight as the map y = M x [d_out, d_in]: a Linear's weight, a Conv1D's or an Embedding's weightᵀ
    (a Conv1D computes x W, so M = Wᵀ; the subcomponents then act exactly as the layer does)."""
    w = module.get_parameter("weight").detach()
    return w if weight_kind(module) == "linear" else w.T


def output_distance(kind: str, masked: Tensor, target: Tensor) -> Tensor:
    """D(masked, target): ``mse`` Σ_last (a − b)² mean over rows; ``kl`` KL(softmax target ‖ softmax masked).

    The reference code's mse also averages over the last dim, so its importance coefficients are ours divided
    by the output width (the resid-MLP paper's 1e-5 at 100 outputs is 1e-3 here)."""
    if kind == "mse":
        return (masked - target).pow(2).sum(-1).mean()
    logp_t = F.log_softmax(target, -1)
    return (logp_t.exp() * (logp_t - F.log_softmax(masked, -1))).sum(-1).mean()


class SPD(nn.Module):
    """The decomposition of ``model``'s target weights (the model itself is frozen and never changed).

    ``output`` maps the model's output to the part that is compared (e.g. logits at one position); by default
    the logits (a tensor as it is, a Hugging Face output's ``.logits``). The subcomponents are float32 and live on
    the device of the model's target weights (:attr:`device`): move the model first, then build the SPD; inputs
    must be on that device too. Masks are drawn from a cpu generator and moved there, so a run is the same draw
    on every device."""

    model: nn.Module
    """The decomposed model, frozen; held as a plain attribute, not a submodule (see ``__init__``)."""

    def __init__(
        self, model: nn.Module, cfg: SPDConfig, output: Callable[[Any], Tensor] = model_logits, output_loss: str = "mse"
    ):
        super().__init__()
        self.cfg = cfg
        self.output = output
        self.output_loss = output_loss if cfg.output_loss == "auto" else cfg.output_loss
        object.__setattr__(self, "model", model)  # not a submodule: its parameters are not ours to train
        for p in model.parameters():
            p.requires_grad_(False)
        self.targets = find_targets(model, cfg.targets)
        g = torch.Generator().manual_seed(cfg.seed)
        self.names = list(self.targets)
        self.components = nn.ModuleDict(
            {
                self.key(n): Components(target_matrix(m), cfg.C, cfg.ci_hidden, weight_kind(m) == "embedding", g)
                for n, m in self.targets.items()
            }
        )
        self._replace: dict[str, Tensor | None] = {}
        self._delta: dict[str, Tensor] = {}

    @property
    def device(self) -> torch.device:
        """Where the subcomponents (and the target weights, and the inputs) are."""
        return next(self.components.parameters()).device

    @staticmethod
    def key(name: str) -> str:
        return name.replace(".", "__")

    def comp(self, name: str) -> Components:
        return self.components[self.key(name)]  # type: ignore[return-value]

    @contextlib.contextmanager
    def _hooked(self, inputs: dict[str, Tensor] | None) -> Iterator[None]:
        """Inside: targets named in ``self._replace`` run through their subcomponents (with that mask);
        every target's input is recorded into ``inputs`` when given. Hooks are removed in ``finally``."""
        handles = []

        def hook(name: str):
            def fn(mod: nn.Module, args: tuple, out: Tensor) -> Tensor | None:
                x = args[0]
                if inputs is not None:
                    inputs[name] = x.detach()
                if name not in self._replace:
                    return None
                comp = self.comp(name)
                y = comp(x, self._replace[name])
                if name in self._delta:  # + m_Δ Δ x, Δ = W − Σ_c U_c V_cᵀ
                    y = y + self._delta[name][..., None] * comp.apply_matrix(x, target_matrix(mod) - comp.weight())
                bias = getattr(mod, "bias", None)
                return y + bias if isinstance(bias, Tensor) else y

            return fn

        try:
            for n, m in self.targets.items():
                handles.append(m.register_forward_hook(hook(n)))
            yield
        finally:
            for h in handles:
                h.remove()
            self._replace, self._delta = {}, {}

    def run_target(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(compared output of the unchanged model, each target's input), no gradients."""
        inputs: dict[str, Tensor] = {}
        with torch.no_grad(), self._hooked(inputs):
            y = self.output(self.model(x))
        return y, inputs

    def run_masked(
        self, x: Tensor, masks: Mapping[str, Tensor | None], delta_masks: Mapping[str, Tensor] | None = None
    ) -> Tensor:
        """Compared output with the named targets replaced by their (masked; None = unmasked) subcomponents, plus,
        for targets named in ``delta_masks`` (mask [...], one per input), m_Δ Δ x with Δ = W − Σ_c U_c V_cᵀ."""
        with self._hooked(None):
            self._replace, self._delta = dict(masks), dict(delta_masks or {})
            return self.output(self.model(x))

    def importances(self, inputs: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor]]:
        """name → (g_lower, g_upper) [..., C] from the inputs the target model gave each layer."""
        return {n: self.comp(n).importances(inputs[n], self.cfg.leak, self.cfg.upper_leak) for n in self.names}

    def faithfulness(self) -> Tensor:
        """Σ_l ‖W_l − Σ_c U_c V_cᵀ‖²_F / N."""
        sq = cast(Tensor, sum(((target_matrix(m) - self.comp(n).weight()) ** 2).sum() for n, m in self.targets.items()))
        N = sum(target_matrix(m).numel() for m in self.targets.values())
        return sq / N

    def losses(self, x: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """Every loss term on batch ``x`` and the weighted total (``loss``); masks drawn from ``generator`` (a cpu
        generator; the draws are moved to the importances' device)."""
        cfg = self.cfg
        target, inputs = self.run_target(x)
        ci = self.importances(inputs)
        parts: dict[str, Tensor] = {"faithfulness": self.faithfulness()}
        p = cfg.pnorm
        parts["importance_minimality"] = cast(  # a Tensor: there is at least one target
            Tensor, sum((g_up + (1e-12 if p < 1 else 0.0)).pow(p).sum(-1).mean() for _, g_up in ci.values())
        )
        stoch, layer = [], []
        for _ in range(cfg.n_mask_samples):
            masks, deltas = {}, {}
            for n, (g, _) in ci.items():
                r = torch.rand(g.shape, generator=generator).to(g.device)
                masks[n] = g + (1 - g) * r
                if cfg.delta_component:
                    deltas[n] = torch.rand(g.shape[:-1], generator=generator).to(g.device)
            if cfg.recon_coeff:
                stoch.append(output_distance(self.output_loss, self.run_masked(x, masks, deltas), target))
            if cfg.recon_layerwise_coeff:
                layer += [
                    output_distance(
                        self.output_loss, self.run_masked(x, {n: masks[n]}, {n: deltas[n]} if deltas else None), target
                    )
                    for n in self.names
                ]
        zero = torch.zeros((), device=x.device)
        parts["stochastic_recon"] = torch.stack(stoch).mean() if stoch else zero
        parts["stochastic_recon_layerwise"] = torch.stack(layer).mean() if layer else zero
        parts["loss"] = (
            cfg.faithfulness_coeff * parts["faithfulness"]
            + cfg.recon_coeff * parts["stochastic_recon"]
            + cfg.recon_layerwise_coeff * parts["stochastic_recon_layerwise"]
            + cfg.importance_coeff * parts["importance_minimality"]
        )
        return parts

    @torch.no_grad()
    def causal_importances(self, x: Tensor) -> dict[str, Tensor]:
        """name → g_lower [..., C] clamped to [0, 1] on inputs ``x`` (what each input needs)."""
        _, inputs = self.run_target(x)
        return {n: g.clamp(0, 1) for n, (g, _) in self.importances(inputs).items()}
