"""MEMIT: many facts at once, spread over a window of layers (Meng et al., 2023), and a null-space
mode for sequential editing (AlphaEdit's idea, Fang et al., 2025).

For a batch of facts and layers ``L_1 < ... < L_m``:

1. for each fact, ``z`` = the residual stream after ``L_m`` at the subject's last token plus the
   optimised ``δ`` that makes the model say ``target_new`` (:func:`optimize.optimize_delta` on
   ``hook_resid_post``), computed once on the unedited weights;
2. for each layer ``L_i`` in order (earlier layers already updated): keys ``K`` (prefix-averaged,
   ``[d_mlp, n]``), residual ``R = (Z − current residual at L_m) / (m − i + 1)`` and the update

   * plain MEMIT: ``Δ = R Kᵀ (λ C + K Kᵀ)⁻¹`` (``λ = mom2_weight``);
   * null space: ``Δ = R Kᵀ P (P (K Kᵀ + K_p K_pᵀ) + l2 I)⁻¹ᵀ`` — ``P`` projects onto the
     eigenvectors of ``C`` whose eigenvalues are tiny (the keys the model normally sees are left
     alone: ``Δ C ≈ 0``), and ``K_p K_pᵀ``, the running sum over earlier batches, keeps later
     batches from overwriting earlier edits. The row space of ``Δ`` lies in ``P``'s range.

:class:`SequentialMEMIT` keeps ``P`` and ``K_p K_pᵀ`` across batches; the caller applies each result
with :class:`~knowscope.editing.EditSession` before the next batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope.editing.guards import WeightGuard
from knowscope.editing.hparams import MEMITHyperParams
from knowscope.editing.keys import (
    capture,
    check_request,
    compute_keys,
    context_templates,
    facts_meta,
    prompt_ids,
    template_group_weights,
)
from knowscope.editing.layers import LayerSpec
from knowscope.editing.layers import resolve_layers as resolve_spec
from knowscope.editing.optimize import optimize_deltas
from knowscope.editing.session import EditResult
from knowscope.editing.stats import KeyStats, key_stats
from knowscope.facts import Fact
from knowscope.models import Model

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# the closed forms (pure functions, tested against explicit formulas)


def memit_solve(
    K: Float[Tensor, "d_mlp n"], R: Float[Tensor, "d_model n"], C: Float[Tensor, "d_mlp d_mlp"], mom2_weight: float
) -> Float[Tensor, "d_model d_mlp"]:
    """MEMIT's batched least squares: ``Δ = R Kᵀ (λ C + K Kᵀ)⁻¹`` (float64 solve)."""
    Kd, Rd, Cd = K.double(), R.double(), C.double()
    adj = torch.linalg.solve(mom2_weight * Cd + Kd @ Kd.T, Kd)  # (λC + KKᵀ)⁻¹ K
    return Rd @ adj.T


def null_space_projector(C: Float[Tensor, "d_mlp d_mlp"], threshold: float,
                         rule: str = "relative") -> Float[Tensor, "d_mlp d_mlp"]:
    """Projector onto the eigenvectors of ``C`` with eigenvalue < ``threshold`` × the largest one
    (``rule="relative"``) or < ``threshold`` (``"absolute"``, AlphaEdit's rule)."""
    if rule == "relative":
        if not 0 < threshold < 1:
            raise ValueError(f"null_space_threshold must be in (0, 1) with the relative rule, got {threshold}")
    elif rule == "absolute":
        if not threshold > 0:
            raise ValueError(f"null_space_threshold must be > 0 with the absolute rule, got {threshold}")
    else:
        raise ValueError(f"null_space_rule must be 'relative' or 'absolute', got {rule!r}")
    evals, evecs = torch.linalg.eigh(C.double())
    keep = evals < (threshold * evals.max() if rule == "relative" else threshold)
    U = evecs[:, keep]
    return U @ U.T


def null_space_solve(
    K: Float[Tensor, "d_mlp n"],
    R: Float[Tensor, "d_model n"],
    P: Float[Tensor, "d_mlp d_mlp"],
    KpKp: Float[Tensor, "d_mlp d_mlp"],
    l2: float,
) -> Float[Tensor, "d_model d_mlp"]:
    """AlphaEdit's projected solve: ``Δ = [(P (K Kᵀ + K_p K_pᵀ) + l2 I)⁻¹ P K Rᵀ]ᵀ``."""
    Kd, Rd, Pd, Cp = K.double(), R.double(), P.double(), KpKp.double()
    eye = torch.eye(Kd.shape[0], dtype=torch.float64, device=Kd.device)
    X = torch.linalg.solve(Pd @ (Kd @ Kd.T + Cp) + l2 * eye, Pd @ Kd @ Rd.T)
    return X.T


# ------------------------------------------------------------------------------------------------


def resolve_layers(model: Model, requests: Sequence[Fact], layers: LayerSpec, hp: MEMITHyperParams) -> list[int]:
    """MEMIT's layers (:func:`knowscope.editing.layers.resolve_layers`; ``"auto"``/``"locate"`` choose a
    window of ``len(hp.layers)`` layers; ``None``: ``hp.layers``)."""
    return resolve_spec(model, requests, layers, hp.layers, method="MEMIT", window=len(hp.layers))


def _stats(model: Model, layers: list[int], hp: MEMITHyperParams, stats: Any,
           null_space: bool = False) -> dict[int, Tensor]:
    if stats is None:
        n_tokens = hp.null_space_stats_tokens if null_space and hp.null_space_stats_tokens else hp.stats_tokens
        got = key_stats(model, layers, n_tokens=n_tokens, source=hp.stats_source)
        return {layer: s.mom2.float() for layer, s in got.items()}
    out = {}
    for layer in layers:
        if layer not in stats:
            raise ValueError(f"stats has layers {sorted(stats)}; missing edited layer {layer}")
        s = stats[layer]
        if isinstance(s, KeyStats):
            if s.fingerprint != model.fingerprint:
                raise ValueError(f"key statistics come from another model (fingerprint {s.fingerprint})")
            s = s.mom2
        out[layer] = s.float()
    return out


def compute_zs(
    model: Model, requests: Sequence[Fact], z_layer: int, templates: Sequence[str], hp: MEMITHyperParams
) -> tuple[Float[Tensor, "d_model n"], list[dict[str, Any]]]:
    """MEMIT's target residuals ``z = h_L(subject last token) + δ`` at layer ``z_layer`` for each request."""
    zs, infos = [], []
    requests = list(requests)
    for start in range(0, len(requests), hp.z_batch):
        group = requests[start:start + hp.z_batch]
        for fact, d in zip(group, optimize_deltas(model, model.arch.hook_resid_post(z_layer), group, templates, hp),
                           strict=True):
            zs.append(d.init + d.delta)
            infos.append({"subject": fact.subject, "steps": len(d.losses), "final": d.losses[-1]})
    return torch.stack(zs, dim=1).double(), infos


class SequentialMEMIT:
    """MEMIT over successive batches; with ``null_space=True`` it keeps AlphaEdit's state.

    State: the projector ``P`` per layer (from the key statistics) and ``K_p K_pᵀ``, the running
    sum of the keys edited so far. Apply each returned result before calling :meth:`edit` again
    (the keys and residuals of the next batch are read from the model's current weights).
    """

    def __init__(
        self,
        model: Model,
        layers: Any = None,
        hparams: MEMITHyperParams | None = None,
        null_space: bool = True,
        stats: Any = None,
    ) -> None:
        self.model = model
        self.hp = hparams or MEMITHyperParams.for_model(model)
        self.null_space = bool(null_space)
        self._layers_arg = layers
        self._stats_arg = stats
        lazy = layers in ("auto", "locate")  # chosen on the first batch's requests
        self.layers: list[int] | None = None if lazy else resolve_layers(model, [], layers, self.hp)
        self.C: dict[int, Tensor] = {}
        self.P: dict[int, Tensor] = {}
        self.KpKp: dict[int, Tensor] = {}
        self.n_batches = 0
        self.n_edits = 0

    def _setup(self, requests: Sequence[Fact]) -> list[int]:
        if self.layers is None:
            self.layers = resolve_layers(self.model, requests, self._layers_arg, self.hp)
        if not self.C:
            self.C = _stats(self.model, self.layers, self.hp, self._stats_arg, self.null_space)
            d = self.model.arch.d_mlp
            for layer in self.layers:
                if self.null_space:
                    self.P[layer] = null_space_projector(self.C[layer], self.hp.null_space_threshold,
                                                         self.hp.null_space_rule)
                self.KpKp[layer] = torch.zeros(d, d, dtype=torch.float64)
        return self.layers

    def edit(self, requests: Sequence[Fact], targets: tuple[Tensor, list[dict[str, Any]]] | None = None
             ) -> EditResult:
        """Compute one batch's MEMIT (or null-space) update on the model's current weights.

        ``targets``: the ``(Z, infos)`` that :func:`compute_zs` returned for these requests on the model
        as it is now (same weights, layers and hyperparameters); given, the z optimisation is skipped —
        for comparing solve settings (threshold, ridge, statistics) on the same targets.
        """
        t0 = time.perf_counter()
        requests = list(requests)
        if not requests:
            raise ValueError("requests is empty; give at least one Fact to edit")
        for fact in requests:
            check_request(self.model, fact)
        layers = self._setup(requests)
        model, hp = self.model, self.hp
        templates = context_templates(model, hp.context_lengths, hp.seed)
        key_weights = template_group_weights(hp.context_lengths) if hp.key_averaging == "groups" else None
        z_layer = layers[-1]
        z_hook = model.arch.hook_resid_post(z_layer)
        names = [model.arch.mlp_out_name(layer) for layer in layers]
        deltas: dict[int, Tensor] = {}
        new_keys: dict[int, Tensor] = {}
        infos = []
        with WeightGuard(model, names), torch.random.fork_rng(devices=[]):
            torch.manual_seed(hp.seed)
            Z, infos = targets if targets is not None else compute_zs(model, requests, z_layer, templates, hp)
            if Z.shape[1] != len(requests):
                raise ValueError(f"targets hold {Z.shape[1]} z vectors for {len(requests)} requests")
            rows, idx = zip(*(prompt_ids(model, f.prompt, f.subject) for f in requests), strict=True)
            for i, layer in enumerate(layers):
                K = compute_keys(model, layer, requests, templates, key_weights).T.double().cpu()  # [d_mlp, n]
                cur = capture(model, z_hook, list(rows), list(idx)).T.double().cpu()  # [d_model, n]
                R = (Z.cpu() - cur) / (len(layers) - i)
                if self.null_space:
                    dW = null_space_solve(K, R, self.P[layer], self.KpKp[layer], hp.null_space_l2)
                else:
                    dW = memit_solve(K, R, self.C[layer].cpu(), hp.mom2_weight)
                new_keys[layer] = K
                deltas[layer] = dW
                W = model.mlp_out_weight(layer)
                with torch.no_grad():
                    W.add_(model.to_param_layout(layer, dW.to(W.dtype).to(W.device)))
        for layer, K in new_keys.items():
            self.KpKp[layer] += K @ K.T
        self.n_batches += 1
        self.n_edits += len(requests)
        return EditResult(
            method="memit-null-space" if self.null_space else "memit",
            deltas={model.arch.mlp_out_name(layer): model.to_param_layout(layer, dW.float()).contiguous().cpu()
                    for layer, dW in deltas.items()},
            fingerprint=model.fingerprint,
            layers=list(layers),
            hparams={**hp.to_dict(), "null_space": self.null_space},
            requests=facts_meta(requests),
            model_name=model.name,
            seconds=time.perf_counter() - t0,
            extra={"per_request": infos, "batch_index": self.n_batches - 1, "edits_so_far": self.n_edits,
                   "update_norms": {str(layer): float(dW.norm()) for layer, dW in deltas.items()}},
        )


def edit(
    model: Model,
    requests: Sequence[Fact],
    layers: Any = None,
    hparams: MEMITHyperParams | None = None,
    stats: Any = None,
    *,
    null_space: bool = False,
) -> EditResult:
    """MEMIT-edit a batch of requests at once (weights unchanged on return; apply with EditSession).

    Args:
        layers: ``None`` (the hyperparameters' window), ``"auto"`` (a window of the same size
            centred on the layer a recorded sweep measured best, else on ``locate()``'s), ``"locate"``
            or a list of layers (:mod:`knowscope.editing.layers`).
        null_space: AlphaEdit's projected update (with no earlier batches); for sequential
            batches use :class:`SequentialMEMIT`.
        stats: ``{layer: KeyStats or tensor}``; default computed/cached from model-generated text.
    """
    return SequentialMEMIT(model, layers=layers, hparams=hparams, null_space=null_space, stats=stats).edit(requests)
