"""Tuned lens (Belrose et al. 2023): one learned affine translator per layer, then the final norm and unembedding.

The logit lens reads layer ``L``'s residual ``h`` as ``unembed(final_norm(h))``. Models that write
their answer late in the unembedding's basis (SmolLM2 does) show almost nothing there before the
last layers. The tuned lens first maps ``h`` through a translator ``h + A_L h + b_L`` (identity at
``A_L = 0, b_L = 0``, where it starts) trained so that the lens's next-token distribution matches
the model's final one: the loss is ``KL(p_final ‖ p_lens)`` averaged over tokens of text, summed
over layers (each translator sees only its own layer, so the layers train independently). The
last layer keeps the identity: its lens *is* the model's output.

Training data needs no download: by default the model's own sampled text (the same cached
batches as the key statistics, :func:`knowscope.texts.token_batches`), or any text files /
``hf:<dataset>``. The residuals of the training and held-out tokens are collected once (one
forward per batch); each optimisation step then costs only the translators, the final norm and
the unembedding for a random batch of tokens at every layer (Adam, linear decay to zero).
A trained lens is saved as JSON + safetensors with the model's fingerprint, refused for another
model, and cached by fingerprint and training settings like the key statistics
(:func:`tuned_lens`). Its record holds the held-out KL and top-1 agreement with the final layer,
per layer, for the logit and the tuned lens (:class:`LensQuality`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope.models import Model
from knowscope.paths import cache_dir
from knowscope.probes.lens import lens_logits
from knowscope.progress import progress_bar
from knowscope.results import fmt, load_dir, register, result_kind, save_dir
from knowscope.texts import SELF, Source, source_key, token_batches
from knowscope.work import OnUnit

logger = logging.getLogger(__name__)

KIND = "tuned_lens"

#: Defaults, from measurements on the default model (benchmarks/bench_probes.py, sections ``lens``
#: and ``lens-curve``; README). Learning rate: at 150 steps × 64 tokens, held-out KL averaged over
#: layers 0-28 was lower with 3e-3 than with 1e-3 (mid layers 3.6 vs 4.2 nats; the logit lens: 17).
#: Training tokens: the held-out KL against the token count at the default steps (same held-out set):
#: mean over layers 0-28 3.085 / 2.879 / 2.772 nats at 4,096 / 8,192 / 16,384 tokens (logit lens 14.29);
#: 16,384 is the first count at which a doubling gained less than 5% (-3.7%). More tokens cost only
#: their collection (one forward per batch); the steps dominate (~1.9 s each on 2 cores).
DEFAULT_TRAIN_TOKENS = 16_384
DEFAULT_HELD_OUT_TOKENS = 4_096
DEFAULT_STEPS = 300
DEFAULT_BATCH_TOKENS = 64
DEFAULT_LR = 3e-3
#: the model's own held-out text is sampled with this seed offset: independent of the training text,
#: and the same whatever the number of training tokens (so token-count curves share one held-out set)
HELD_OUT_SEED = 10_000


@dataclass
class LensQuality:
    """Per layer, on held-out tokens: ``KL(p_final ‖ p_lens)`` (nats) and top-1 agreement with the final layer."""

    kl_logit: list[float]
    kl_tuned: list[float]
    top1_logit: list[float]
    top1_tuned: list[float]
    n_tokens: int

    @property
    def n_layers(self) -> int:
        return len(self.kl_logit)

    def rows(self) -> list[dict[str, Any]]:
        return [{"layer": i, "kl_logit": self.kl_logit[i], "kl_tuned": self.kl_tuned[i],
                 "top1_logit": self.top1_logit[i], "top1_tuned": self.top1_tuned[i]} for i in range(self.n_layers)]

    def layers_not_better(self) -> list[int]:
        """Layers (but the last) where the tuned lens's held-out KL is not below the logit lens's."""
        return [i for i in range(self.n_layers - 1) if not self.kl_tuned[i] < self.kl_logit[i]]

    def to_dict(self) -> dict[str, Any]:
        return {"kl_logit": self.kl_logit, "kl_tuned": self.kl_tuned, "top1_logit": self.top1_logit,
                "top1_tuned": self.top1_tuned, "n_tokens": self.n_tokens}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LensQuality:
        return cls(kl_logit=list(d["kl_logit"]), kl_tuned=list(d["kl_tuned"]), top1_logit=list(d["top1_logit"]),
                   top1_tuned=list(d["top1_tuned"]), n_tokens=int(d["n_tokens"]))

    def table(self) -> str:
        lines = [f"{'layer':>5} {'KL logit':>9} {'KL tuned':>9} {'top1 logit':>10} {'top1 tuned':>10}"]
        lines += [f"{r['layer']:>5} {r['kl_logit']:>9.3f} {r['kl_tuned']:>9.3f} {r['top1_logit']:>10.3f} "
                  f"{r['top1_tuned']:>10.3f}" for r in self.rows()]
        return "\n".join(lines)

    def figure(self) -> Any:
        """Two panels by layer: held-out KL (log scale) and top-1 agreement, logit vs tuned lens."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        x = list(range(self.n_layers))
        fig = make_subplots(rows=1, cols=2,
                            subplot_titles=("KL(final ‖ lens), nats", "top-1 agreement with the output"))
        for name, kl, top1, color in (("logit lens", self.kl_logit, self.top1_logit, "#888"),
                                      ("tuned lens", self.kl_tuned, self.top1_tuned, "#1f77b4")):
            fig.add_trace(go.Scatter(x=x, y=kl, name=name, mode="lines+markers", line={"color": color}), 1, 1)
            fig.add_trace(go.Scatter(x=x, y=top1, name=name, mode="lines+markers", line={"color": color},
                                     showlegend=False), 1, 2)
        fig.update_yaxes(type="log", row=1, col=1)
        fig.update_xaxes(title_text="layer")
        fig.update_layout(template="plotly_white", height=380,
                          title=f"Lens quality on {self.n_tokens} held-out tokens")
        return fig


@dataclass
class TunedLens:
    """One affine translator per layer: ``h + h A_Lᵀ + b_L`` (the last layer's is fixed at the identity)."""

    weight: Float[Tensor, "n_layers d_model d_model"]  # A_L, the change from identity
    bias: Float[Tensor, "n_layers d_model"]
    fingerprint: str = ""
    model_name: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def identity(cls, model: Model) -> TunedLens:
        """Identity translators: the tuned lens then equals the logit lens (where training starts)."""
        n, d = model.arch.n_layers, model.arch.d_model
        return cls(torch.zeros(n, d, d), torch.zeros(n, d), fingerprint=model.fingerprint, model_name=model.name)

    @property
    def n_layers(self) -> int:
        return int(self.weight.shape[0])

    @property
    def quality(self) -> LensQuality | None:
        q = self.meta.get("quality")
        return LensQuality.from_dict(q) if q else None

    def check_model(self, model: Model) -> None:
        """Refuse a model other than the one this lens was trained for (by weight fingerprint)."""
        if self.fingerprint and self.fingerprint != model.fingerprint:
            raise ValueError(f"this tuned lens was trained for {self.model_name or 'another model'} (fingerprint "
                             f"{self.fingerprint}); {model.name} has fingerprint {model.fingerprint}. Train one "
                             "for this model: tuned_lens(model) or `knowscope lens --tuned --train`")
        if self.n_layers != model.arch.n_layers or self.weight.shape[-1] != model.arch.d_model:
            raise ValueError(f"this tuned lens has {self.n_layers} layers of width {self.weight.shape[-1]}; "
                             f"{model.name} has {model.arch.n_layers} of width {model.arch.d_model}")

    def translate(self, resid: Float[Tensor, "n_layers *rest d_model"]) -> Float[Tensor, "n_layers *rest d_model"]:
        """Every layer's residual through its own translator (``resid[L]`` is layer ``L``'s)."""
        w = self.weight.to(resid.device, resid.dtype)
        b = self.bias.to(resid.device, resid.dtype)
        flat = resid.reshape(resid.shape[0], -1, resid.shape[-1])
        out = flat + torch.bmm(flat, w.transpose(1, 2)) + b[:, None, :]
        return out.reshape(resid.shape)

    def logits(self, model: Model,
               resid: Float[Tensor, "n_layers *rest d_model"]) -> Float[Tensor, "n_layers *rest vocab"]:
        """The tuned lens's logits: translators, then the model's final norm and unembedding."""
        return lens_logits(model, self.translate(resid.float()))

    # --- saving ----------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool | None = None) -> Path:
        meta = {"fingerprint": self.fingerprint, "model_name": self.model_name, "n_layers": self.n_layers,
                "d_model": int(self.weight.shape[-1]), "meta": self.meta}
        return save_dir(path, KIND, meta, {"weight": self.weight.float().contiguous(),
                                           "bias": self.bias.float().contiguous()}, overwrite=overwrite)

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None) -> TunedLens:
        """Load a saved lens; with ``model``, refuse it if it was trained for another model."""
        meta, arrays = load_dir(path, KIND)
        lens = cls(arrays["weight"], arrays["bias"], fingerprint=meta.get("fingerprint", ""),
                   model_name=meta.get("model_name", ""), meta=meta.get("meta", {}))
        if model is not None:
            lens.check_model(model)
        return lens

    def quality_figure(self) -> Any:
        q = self.quality
        if q is None:
            raise ValueError("this lens has no held-out quality record (it was not trained by train_tuned_lens)")
        return q.figure()


# ------------------------------------------------------------------------------------------------
# data: every layer's residual on text, BOS positions dropped


@torch.no_grad()
def collect_residuals(
    model: Model, source: Source = SELF, n_tokens: int = DEFAULT_TRAIN_TOKENS, seq_len: int = 128,
    batch_size: int = 32, seed: int = 0, skip_batches: int = 0, progress: bool = False,
) -> Float[Tensor, "n_tokens n_layers d_model"]:
    """Every layer's ``resid_post`` on ``n_tokens`` tokens of ``source`` (BOS excluded; it is no text position).

    ``skip_batches`` skips the first batches of the stream, so a held-out set can come after the training text.
    ``progress`` shows a bar of the tokens read (the model's own text is sampled on a first run: minutes).
    """
    names = [model.arch.hook_resid_post(i) for i in range(model.arch.n_layers)]
    rows: list[Tensor] = []
    have = 0
    total = n_tokens + skip_batches * batch_size * (seq_len - 1)
    batches = token_batches(model, source, total, seq_len=seq_len, batch_size=batch_size, seed=seed)
    with progress_bar(total=n_tokens, desc="tuned lens: residuals", unit="tok", disable=not progress) as bar:
        for i, batch in enumerate(batches):
            if i < skip_batches:
                continue
            _, cache = model.bridge.run_with_cache(batch.to(model.device), names_filter=lambda name: name in names)
            resid = torch.stack([cache[nm][:, 1:] for nm in names], dim=2)  # [b, pos-1, n_layers, d]
            rows.append(resid.reshape(-1, *resid.shape[2:]).float().cpu())
            have += rows[-1].shape[0]
            bar.update(min(rows[-1].shape[0], n_tokens - bar.n))
            if have >= n_tokens:
                break
    if not rows:
        raise ValueError(f"text source {source_key(source)} gave no tokens")
    out = torch.cat(rows)[:n_tokens]
    if out.shape[0] < n_tokens:
        logger.warning("only %d of %d tokens available from %s", out.shape[0], n_tokens, source_key(source))
    return out


def _kl_and_top1(logits_lens: Tensor, logp_final: Tensor) -> tuple[Tensor, Tensor]:
    logq = torch.log_softmax(logits_lens, dim=-1)
    kl = (logp_final.exp() * (logp_final - logq)).sum(-1)
    agree = (logits_lens.argmax(-1) == logp_final.argmax(-1)).float()
    return kl, agree


@torch.no_grad()
def lens_quality(model: Model, lens: TunedLens, resid: Float[Tensor, "n_tokens n_layers d_model"],
                 chunk: int = 256) -> LensQuality:
    """Held-out ``KL(p_final ‖ p_lens)`` and top-1 agreement with the final layer, per layer, logit vs tuned lens."""
    n_layers = resid.shape[1]
    sums = torch.zeros(4, n_layers, dtype=torch.float64)
    for start in range(0, resid.shape[0], chunk):
        r = resid[start:start + chunk].transpose(0, 1).to(model.device)  # [n_layers, t, d]
        logp_final = torch.log_softmax(lens_logits(model, r[-1]), dim=-1)
        for row, logits in ((0, lens_logits(model, r)), (1, lens.logits(model, r))):
            kl, agree = _kl_and_top1(logits, logp_final)
            sums[row] += kl.sum(-1).double().cpu()
            sums[row + 2] += agree.sum(-1).double().cpu()
    m = (sums / resid.shape[0]).tolist()
    return LensQuality(kl_logit=m[0], kl_tuned=m[1], top1_logit=m[2], top1_tuned=m[3], n_tokens=int(resid.shape[0]))


# ------------------------------------------------------------------------------------------------
# training


def fit_translators(model: Model, train: Float[Tensor, "n_tokens n_layers d_model"], steps: int = DEFAULT_STEPS,
                    batch_tokens: int = DEFAULT_BATCH_TOKENS, lr: float = DEFAULT_LR, seed: int = 0,
                    on_step: Callable[[int, list[float]], None] | None = None) -> tuple[TunedLens, list[float]]:
    """Train identity-initialised translators on collected residuals; returns the lens and the loss per step.

    Each step draws ``batch_tokens`` random training tokens and minimises the mean over them of
    ``Σ_L KL(p_final ‖ p_lens,L)`` with Adam (learning rate ``lr``, linearly decayed to zero).
    The model's weights are frozen during training and restored to their ``requires_grad``. (Cost:
    two vocabulary-sized matmuls per token and layer per step — ~1.8 s per step of 64 tokens × 29
    layers on the default model on 2 CPU cores; bfloat16 autocast was measured slower on this CPU,
    3.8 s, because the elementwise softmax work dominates and the casts add to it.)
    """
    if steps < 1 or batch_tokens < 1 or not lr > 0:
        raise ValueError(f"steps and batch_tokens must be >= 1 and lr > 0, got {steps}, {batch_tokens}, {lr}")
    n_layers, d = train.shape[1], train.shape[2]
    if n_layers != model.arch.n_layers:
        raise ValueError(f"residuals have {n_layers} layers; {model.name} has {model.arch.n_layers}")
    lens = TunedLens.identity(model)
    trained = n_layers - 1  # the last layer's lens is the model's output: identity, not trained
    weight = torch.zeros(trained, d, d, device=model.device, requires_grad=True)
    bias = torch.zeros(trained, d, device=model.device, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / steps)
    gen = torch.Generator().manual_seed(seed)
    params = list(model.hf.parameters())
    flags = [p.requires_grad for p in params]
    losses: list[float] = []
    try:
        for p in params:
            p.requires_grad_(False)
        for step in range(steps):
            idx = torch.randint(0, train.shape[0], (batch_tokens,), generator=gen)
            r = train[idx].transpose(0, 1).to(model.device)  # [n_layers, b, d]
            with torch.no_grad():
                logp_final = torch.log_softmax(lens_logits(model, r[-1]), dim=-1)
            h = r[:-1]
            x = h + torch.bmm(h, weight.transpose(1, 2)) + bias[:, None, :]
            logq = torch.log_softmax(model.bridge.unembed(model.bridge.ln_final(x)).float(), dim=-1)
            kl = (logp_final.exp() * (logp_final - logq)).sum(-1)  # [n_layers - 1, b]
            loss = kl.mean(-1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()) / trained)
            if on_step is not None:
                on_step(step, losses)
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    lens.weight[:trained] = weight.detach().cpu()
    lens.bias[:trained] = bias.detach().cpu()
    return lens, losses


def _log_progress(steps: int, bar: Any = None) -> Callable[[int, list[float]], None]:
    """Log every 50th step (and move ``bar``, a tqdm bar, at every step)."""
    started = time.perf_counter()

    def log(step: int, losses: list[float]) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(kl=f"{losses[-1]:.3f}", refresh=False)
        if (step + 1) % 50 == 0 or step + 1 == steps:
            logger.info("tuned lens: step %d/%d, mean KL per layer %.3f, %.0fs", step + 1, steps, losses[-1],
                        time.perf_counter() - started)

    return log


def _settings(source: Source, n_tokens: int, held_out_tokens: int, steps: int, batch_tokens: int, lr: float,
              seed: int, seq_len: int) -> dict[str, Any]:
    return {"source": source_key(source), "n_tokens": int(n_tokens), "held_out_tokens": int(held_out_tokens),
            "steps": int(steps), "batch_tokens": int(batch_tokens), "lr": float(lr), "seed": int(seed),
            "seq_len": int(seq_len), "version": 1}


def cache_path(model: Model, settings: dict[str, Any]) -> Path:
    key = hashlib.blake2b(json.dumps(settings, sort_keys=True).encode(), digest_size=6).hexdigest()
    return cache_dir() / "lens" / model.fingerprint / f"tuned-{key}"


def train_tuned_lens(model: Model, source: Source = SELF, n_tokens: int = DEFAULT_TRAIN_TOKENS,
                     held_out_tokens: int = DEFAULT_HELD_OUT_TOKENS, steps: int = DEFAULT_STEPS,
                     batch_tokens: int = DEFAULT_BATCH_TOKENS, lr: float = DEFAULT_LR, seed: int = 0,
                     seq_len: int = 128, batch_size: int = 32, on_unit: OnUnit | None = None,
                     progress: bool = False) -> TunedLens:
    """Collect residuals on ``n_tokens`` training and ``held_out_tokens`` held-out tokens, train, measure.

    The held-out tokens are never trained on: for the model's own text, samples drawn with another
    seed (:data:`HELD_OUT_SEED`); for files or datasets, the text after the training tokens. The returned
    lens's ``meta`` records the settings, the token counts, the seconds spent, the loss curve and
    the held-out :class:`LensQuality`. ``on_unit(step, steps)`` is called after each training step
    (:mod:`knowscope.work`; when it raises, training stops and nothing is returned). ``progress`` shows bars
    of the tokens read and of the optimisation steps.
    """
    if n_tokens < batch_tokens:
        raise ValueError(f"n_tokens ({n_tokens}) must be at least batch_tokens ({batch_tokens})")
    if held_out_tokens < 1:
        raise ValueError(f"held_out_tokens must be >= 1, got {held_out_tokens}")
    started = time.perf_counter()
    train = collect_residuals(model, source, n_tokens, seq_len=seq_len, batch_size=batch_size, seed=seed,
                              progress=progress)
    if isinstance(source, str) and source == SELF:  # independent samples, the same for any n_tokens
        held = collect_residuals(model, source, held_out_tokens, seq_len=seq_len, batch_size=batch_size,
                                 seed=seed + HELD_OUT_SEED, progress=progress)
    else:  # the text after the training tokens
        skip = math.ceil(n_tokens / (batch_size * (seq_len - 1)))
        held = collect_residuals(model, source, held_out_tokens, seq_len=seq_len, batch_size=batch_size, seed=seed,
                                 skip_batches=skip, progress=progress)
    collected = time.perf_counter()
    with progress_bar(total=steps, desc="tuned lens", unit="step", disable=not progress) as bar:
        log = _log_progress(steps, bar)

        def on_step(step: int, losses: list[float]) -> None:
            log(step, losses)
            if on_unit is not None:
                on_unit(step + 1, steps)

        lens, losses = fit_translators(model, train, steps=steps, batch_tokens=batch_tokens, lr=lr, seed=seed,
                                       on_step=on_step)
    trained = time.perf_counter()
    quality = lens_quality(model, lens, held)
    lens.meta = {"settings": _settings(source, n_tokens, held_out_tokens, steps, batch_tokens, lr, seed, seq_len),
                 "train_tokens": int(train.shape[0]), "held_out_tokens": int(held.shape[0]),
                 "seconds_collect": collected - started, "seconds_train": trained - collected,
                 "seconds_total": time.perf_counter() - started,
                 "loss_curve": [round(x, 5) for x in losses], "quality": quality.to_dict()}
    logger.info("tuned lens for %s: %d train / %d held-out tokens, %d steps, %.0fs", model.name, train.shape[0],
                held.shape[0], steps, lens.meta["seconds_total"])
    return lens


def tuned_lens(model: Model, source: Source = SELF, n_tokens: int = DEFAULT_TRAIN_TOKENS,
               held_out_tokens: int = DEFAULT_HELD_OUT_TOKENS, steps: int = DEFAULT_STEPS,
               batch_tokens: int = DEFAULT_BATCH_TOKENS, lr: float = DEFAULT_LR, seed: int = 0,
               seq_len: int = 128, retrain: bool = False, on_unit: OnUnit | None = None,
               progress: bool = False) -> TunedLens:
    """The tuned lens for ``model`` with these settings: loaded from the cache, or trained (``on_unit`` and
    ``progress`` as in :func:`train_tuned_lens`) and cached."""
    settings = _settings(source, n_tokens, held_out_tokens, steps, batch_tokens, lr, seed, seq_len)
    path = cache_path(model, settings)
    if not retrain and result_kind(path) == KIND:
        lens = TunedLens.load(path, model)
        lens.meta.update(cached=str(path), from_cache=True)
        return lens
    lens = train_tuned_lens(model, source, n_tokens, held_out_tokens, steps, batch_tokens, lr, seed, seq_len,
                            on_unit=on_unit, progress=progress)
    lens.save(path, overwrite=True)
    lens.meta.update(cached=str(path), from_cache=False)
    return lens


def cached_tuned_lens(model: Model) -> TunedLens | None:
    """The most recently trained tuned lens cached for ``model`` (any settings), or None if there is none."""
    folder = cache_dir() / "lens" / model.fingerprint
    found = sorted((p for p in folder.glob("tuned-*") if result_kind(p) == KIND),
                   key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    if not found:
        return None
    lens = TunedLens.load(found[0], model)
    lens.meta.update(cached=str(found[0]), from_cache=True)
    return lens


def _headline(m: dict[str, Any]) -> str:
    q = (m.get("meta") or {}).get("quality") or {}
    kl = q.get("kl_tuned") or []
    mid = len(kl) // 2
    return (f"{m.get('model_name')}: {m.get('n_layers')} layers"
            + (f", held-out KL at layer {mid} {fmt(kl[mid])} (logit lens {fmt(q['kl_logit'][mid])})" if kl else ""))


register(KIND, TunedLens.load, _headline)

