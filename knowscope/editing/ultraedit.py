"""UltraEdit: a closed-form lifelong weight editor without covariance statistics or training.

Reference: Gu et al. 2025, "UltraEdit: Training-, Subject-, and Memory-Free Lifelong Editing in Large
Language Models" (arXiv 2505.14679). What the method does, in knowscope's words:

1. **Keys and gradients.** The edit prompt followed by the new answer is run teacher-forced, and the mean
   negative log-likelihood of the answer tokens is back-propagated once. At every edited linear layer
   (here the MLP output projection of each chosen layer, ``v = W k``) two things are read at the
   positions that predict an answer token: the layer's input ``k`` (a key) and the gradient ``g`` of
   the loss with respect to its output. No subject position is needed, and nothing is trained.
2. **Lifelong normalisation.** Each row ``[k, g]`` is appended to running statistics (count, mean and
   sum of squared deviations, merged batch by batch with Chan's parallel update) that live for the
   whole life of the edited model: every edit so far, not only the current one. As in the paper, layers
   whose weights have the same shape share one set of statistics. After the current rows are added,
   keys and gradients are standardised per dimension: ``x̂ = (x − mean) / (std + ε)`` with
   ``std² = M2 / (n − 1 + ε)`` and ``ε`` float32's machine epsilon.
3. **Target shifts.** Each row's desired output change is a gradient step in normalised units, scaled
   by its normalised key's squared length: ``u = −lr · ‖k̂‖² · ĝ``.
4. **Closed-form update.** With ``K`` the *raw* keys (rows) and ``U`` the shifts, the weight change is
   the ridge least-squares map from keys to shifts, ``ΔW = argmin ‖K ΔW − U‖² + λ‖ΔW‖²
   = (KᵀK + λI)⁻¹ KᵀU`` (``[d_in, d_out]``), added to the weight in its stored layout. It is computed
   here in float64 through the identical small system ``Kᵀ(KKᵀ + λI)⁻¹U`` (Woodbury; ``n`` rows
   instead of ``d_in``); the unit tests check it against the normal equations.

Defaults of the paper's code: ``lr = 1e-6``, ``λ = 1``, keys at the answer tokens; on LLaMA/Qwen it
edits the gate/up projections of several middle-to-late layers, on GPT-J the MLP output projection of
layers 18-26 of 28. knowscope edits the MLP output projection (the parameter every editor here can name on
any architecture, :attr:`~knowscope.models.arch.ArchInfo.mlp_out_names`). Its per-model defaults for the
default SmolLM2-135M were chosen on the lifelong benchmark's tuning split (:meth:`for_model`).

Two details differ from that code, on purpose: the running variance merges the exact sum of squared
deviations (the code adds ``m ×`` the batch's unbiased variance, which is undefined for one row and off
by ``m / (m − 1)`` otherwise), and the solve is done in float64.

**State across edits.** The statistics after an edit travel with it (``EditResult.extra["lifelong"]``,
exact float64 numbers in JSON). An edit starts from the statistics of the last UltraEdit edit applied to
the model (the edit ledger of its :class:`~knowscope.editing.session.EditSession`), so undo, save/load
of a session and a resumed sequential run all continue from the right state; ``state=`` overrides it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope.editing.hparams import is_smollm2_135m
from knowscope.editing.keys import check_request, facts_meta, pad, prompt_ids
from knowscope.editing.layers import LayerSpec, resolve_layers
from knowscope.editing.session import EditResult, applied_edits
from knowscope.facts import Fact
from knowscope.models import Model

logger = logging.getLogger(__name__)

METHOD = "ultraedit"
#: the paper's ε (float32 machine epsilon), in the variance's and the standardisation's denominators
EPS = float(torch.finfo(torch.float32).eps)


@dataclass(frozen=True)
class UltraEditHyperParams:
    """UltraEdit's settings: ``layers`` (MLP output projections edited), ``lr`` (scale of the target
    shifts), ``ridge`` (λ of the closed-form solve)."""

    layers: tuple[int, ...] = tuple(range(19, 28))
    lr: float = 1e-6
    ridge: float = 1.0

    def __post_init__(self) -> None:
        if not self.layers or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in self.layers) \
                or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must be distinct layer indices, got {self.layers!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not self.ridge > 0:
            raise ValueError(f"ridge must be > 0, got {self.ridge!r}")

    @classmethod
    def for_model(cls, model: Model, **overrides: Any) -> UltraEditHyperParams:
        """Defaults for ``model``, with ``overrides`` applied.

        SmolLM2-135M: chosen on the lifelong benchmark's tuning split (every 4th fact of the extended set),
        see ``scripts/tune_ultraedit.py`` and docs/findings.md. Other models: the paper's GPT-J choice
        scaled to depth (the MLP output projections of the layers from 65% to 95% of the depth) and its lr.
        """
        if is_smollm2_135m(model):
            base = cls(**_SMOLLM2)
        else:
            n = model.arch.n_layers
            first, last = min(n - 1, int(0.65 * n)), min(n - 1, max(int(0.65 * n), int(0.95 * n) - 1))
            base = cls(layers=tuple(range(first, last + 1)))
        return replace(base, **overrides)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d


# SmolLM2-135M, chosen on the tuning split: the first 40 tuning facts edited one at a time, ranked by CounterFact's
# score (harmonic mean of efficacy, paraphrase, neighbourhood) after the 40 edits (runs/tune_ultraedit.jsonl;
# docs/findings.md). Layers 19-27 at lr 1e-4 and 3e-4 tie (0.527); 1e-4 keeps more of the probe's locality
# (0.56 vs 0.15). lr 1e-5 / 3e-5 keep locality (0.90 / 0.75) but take 0.03 / 0.25 of the edits; layers 3-7,
# 10-16 and 24-28 score lower (0.27-0.45, 0.45, 0.15).
_SMOLLM2: dict[str, Any] = dict(layers=tuple(range(19, 28)), lr=1e-4, ridge=1.0)


@dataclass
class RunningStats:
    """Count, per-dimension mean and sum of squared deviations (M2) of every row seen so far (float64)."""

    n: int = 0
    mean: Tensor | None = None
    m2: Tensor | None = None

    def update(self, rows: Float[Tensor, "m d"]) -> None:
        """Merge ``rows`` in (Chan et al.'s parallel update: exact for any batch size, one row included)."""
        x = rows.double()
        m = x.shape[0]
        if m == 0:
            return
        b_mean = x.mean(0)
        b_m2 = ((x - b_mean) ** 2).sum(0)
        if self.mean is None or self.m2 is None or self.n == 0:
            self.n, self.mean, self.m2 = m, b_mean, b_m2
            return
        if self.mean.shape != b_mean.shape:
            raise ValueError(f"rows of width {b_mean.shape[0]} for statistics of width {self.mean.shape[0]}")
        total = self.n + m
        delta = b_mean - self.mean
        self.mean = self.mean + delta * (m / total)
        self.m2 = self.m2 + b_m2 + delta**2 * (self.n * m / total)
        self.n = total

    def std(self) -> Float[Tensor, " d"]:
        assert self.m2 is not None
        return (self.m2 / (self.n - 1 + EPS)).sqrt()

    def standardise(self, rows: Float[Tensor, "m d"]) -> Float[Tensor, "m d"]:
        assert self.mean is not None
        return (rows.double() - self.mean) / (self.std() + EPS)

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "mean": [] if self.mean is None else self.mean.tolist(),
                "m2": [] if self.m2 is None else self.m2.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunningStats:
        if not data.get("n"):
            return cls()
        return cls(n=int(data["n"]), mean=torch.tensor(data["mean"], dtype=torch.float64),
                   m2=torch.tensor(data["m2"], dtype=torch.float64))


@dataclass
class LifelongState:
    """The running statistics of every shape group (``"{d_in}x{d_out}"``), carried from edit to edit."""

    groups: dict[str, RunningStats] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {k: s.to_json() for k, s in sorted(self.groups.items())}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LifelongState:
        return cls({k: RunningStats.from_json(v) for k, v in data.items()})

    def copy(self) -> LifelongState:
        return LifelongState.from_json(self.to_json())

    @classmethod
    def of_model(cls, model: Model) -> LifelongState:
        """The statistics after the last UltraEdit edit applied to ``model`` (empty when there is none)."""
        for result in reversed(applied_edits(model)):
            if result.method == METHOD and "lifelong" in result.extra:
                return cls.from_json(result.extra["lifelong"])
        return cls()


def shape_group(d_in: int, d_out: int) -> str:
    return f"{d_in}x{d_out}"


def ridge_update(keys: Float[Tensor, "n d_in"], shifts: Float[Tensor, "n d_out"], ridge: float
                 ) -> Float[Tensor, "d_in d_out"]:
    """``(KᵀK + λI)⁻¹ KᵀU`` computed as ``Kᵀ (KKᵀ + λI)⁻¹ U`` (the same matrix; an ``n × n`` solve), float64."""
    K, U = keys.double(), shifts.double()
    gram = K @ K.T + ridge * torch.eye(K.shape[0], dtype=torch.float64, device=K.device)
    return K.T @ torch.linalg.solve(gram, U)


def target_shifts(keys_hat: Float[Tensor, "n d_in"], grads_hat: Float[Tensor, "n d_out"], lr: float
                  ) -> Float[Tensor, "n d_out"]:
    """Each row's desired output change, ``−lr · ‖k̂‖² · ĝ`` (normalised units)."""
    return -lr * (keys_hat**2).sum(-1, keepdim=True) * grads_hat


def keys_and_gradients(model: Model, requests: Sequence[Fact], layers: Sequence[int]
                       ) -> dict[int, tuple[Float[Tensor, "n d_mlp"], Float[Tensor, "n d_model"]]]:
    """Per layer: the MLP output projection's input and the loss gradient at its output, at every position
    that predicts an answer token (rows in request order), from one teacher-forced forward and backward pass
    of the mean NLL of the answer tokens on the model as it is now."""
    rows, spans = [], []
    for r in requests:
        ids, _ = prompt_ids(model, r.prompt, r.subject)
        target = model.encode_target(r.new_continuation)
        rows.append((ids + target)[:-1])
        spans.append((len(ids) - 1, target))
    tokens = pad(model, rows)
    acts: dict[str, Tensor] = {}

    def keep(name: str) -> Any:
        def hook(act: Tensor, hook: Any) -> Tensor:
            acts[name] = act
            return act
        return hook

    def trace(name: str) -> Any:
        def hook(act: Tensor, hook: Any) -> Tensor:
            if act.requires_grad:  # downstream of an earlier traced layer: keep its gradient, the graph whole
                act.retain_grad()
            else:
                act = act.detach().requires_grad_(True)
            acts[name] = act
            return act
        return hook

    hooks = [(model.arch.hook_mlp_key(layer), keep(model.arch.hook_mlp_key(layer))) for layer in layers]
    hooks += [(model.arch.hook_mlp_out(layer), trace(model.arch.hook_mlp_out(layer))) for layer in layers]
    with torch.enable_grad():
        logits = model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
        picked, answers = [], []
        for i, (start, target) in enumerate(spans):
            picked.append(logits[i, start : start + len(target)])
            answers += target
        logp = torch.log_softmax(torch.cat(picked).float(), dim=-1)
        loss = -logp.gather(1, torch.tensor(answers, device=logp.device)[:, None]).mean()
        loss.backward()
    out = {}
    for layer in layers:
        k_act, g_act = acts[model.arch.hook_mlp_key(layer)], acts[model.arch.hook_mlp_out(layer)]
        if g_act.grad is None:
            raise RuntimeError(f"no gradient reached the MLP output of layer {layer}")
        ks = [k_act[i, s : s + len(t)].detach() for i, (s, t) in enumerate(spans)]
        gs = [g_act.grad[i, s : s + len(t)] for i, (s, t) in enumerate(spans)]
        out[layer] = (torch.cat(ks).double(), torch.cat(gs).double())
    return out


def edit(model: Model, requests: Sequence[Fact], layers: LayerSpec = None, hparams: UltraEditHyperParams | None = None,
         stats: Any = None, state: LifelongState | None = None) -> EditResult:
    """Write ``requests`` into the MLP output projections of ``layers`` with one UltraEdit step.

    ``state``: the lifelong statistics to continue from (default: those of the last UltraEdit edit applied
    to ``model``, see the module docstring); it is not changed, the statistics after this edit are in the
    result's ``extra["lifelong"]``. ``stats`` is accepted for the common editor signature and unused
    (UltraEdit needs no key covariance). The model's weights are not changed.
    """
    requests = list(requests)
    if not requests:
        raise ValueError("no requests to edit: give at least one Fact")
    for r in requests:
        check_request(model, r)
    hp = hparams if hparams is not None else UltraEditHyperParams.for_model(model)
    chosen = resolve_layers(model, requests, layers, hp.layers, method="UltraEdit")
    start = time.perf_counter()
    lifelong = (state if state is not None else LifelongState.of_model(model)).copy()
    traced = keys_and_gradients(model, requests, chosen)
    for layer in chosen:  # all rows enter the statistics before any update is computed, as in the paper
        keys, grads = traced[layer]
        group = lifelong.groups.setdefault(shape_group(keys.shape[1], grads.shape[1]), RunningStats())
        group.update(torch.cat([keys, grads], dim=1))
    deltas: dict[str, Tensor] = {}
    for layer in chosen:
        keys, grads = traced[layer]
        d_in = keys.shape[1]
        z_hat = lifelong.groups[shape_group(d_in, grads.shape[1])].standardise(torch.cat([keys, grads], dim=1))
        shifts = target_shifts(z_hat[:, :d_in], z_hat[:, d_in:], hp.lr)
        dw = ridge_update(keys, shifts, hp.ridge)  # [d_mlp, d_model]: v' = v + ΔWᵀ k
        param = model.mlp_out_weight(layer)
        deltas[model.arch.mlp_out_name(layer)] = model.to_param_layout(layer, dw.T).to(param.dtype).cpu().contiguous()
    seconds = time.perf_counter() - start
    logger.info("UltraEdit at layers %s: %d key rows, %.2f s", chosen, len(traced[chosen[0]][0]), seconds)
    return EditResult(method=METHOD, deltas=deltas, fingerprint=model.fingerprint, layers=chosen,
                      hparams=replace(hp, layers=tuple(chosen)).to_dict(), requests=facts_meta(requests),
                      model_name=model.name, seconds=seconds,
                      extra={"lifelong": lifelong.to_json(), "key_rows": int(traced[chosen[0]][0].shape[0])})


__all__ = ["LifelongState", "RunningStats", "UltraEditHyperParams", "edit", "keys_and_gradients", "ridge_update",
           "target_shifts"]
