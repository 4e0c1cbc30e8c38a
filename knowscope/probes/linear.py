"""Linear probes: does a direction in a layer's activations separate two labelled prompt sets?

Activations are collected at a hook (the residual after each block by default) and a position (the
last token by default) for a positive and a negative prompt set. Three probes, one interface
(:func:`fit_probe` → :class:`LinearProbe` with ``direction``, ``score``, ``predict``, ``accuracy``):

* ``mean_diff``: the difference of the class means; threshold halfway between the projected means;
* ``pca``: the first right singular vector of the paired differences ``x⁺_i − x⁻_i`` (uncentred, as
  representation-engineering readers do; sign aligned with the mean difference); same threshold;
* ``logistic``: L2-regularised logistic regression on standardised activations (full-batch L-BFGS);
  the direction is its weight vector mapped back to activation space.

Accuracy is measured on a held-out split (``test_fraction``; the split is seeded). :func:`probe_layers`
fits all three at every layer and reports accuracy by layer and the cosine between the methods'
directions. Everything saves as JSON + safetensors and refuses another model's fingerprint on load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope.models import Model
from knowscope.results import fmt, load_dir, register, save_dir

METHODS = ("mean_diff", "pca", "logistic")
KIND = "linear_probe"
REPORT_KIND = "probe_report"


@torch.no_grad()
def collect_activations(model: Model, prompts: Sequence[str], hooks: Sequence[str], position: int = -1,
                        token_rows: Sequence[Sequence[int]] | None = None) -> dict[str, Float[Tensor, "n ..."]]:
    """Activation at each hook and ``position`` (of each prompt's own length) for every prompt.

    ``token_rows`` replaces tokenizing ``prompts`` (e.g. chat-formatted ids). Prompts run one at a
    time, so no padding enters the model.
    """
    rows = [list(r) for r in token_rows] if token_rows is not None else \
        [model.to_tokens(p)[0].tolist() for p in prompts]
    if not rows:
        raise ValueError("no prompts to collect activations from")
    wanted = set(hooks)
    out: dict[str, list[Tensor]] = {h: [] for h in hooks}
    for r in rows:
        _, cache = model.bridge.run_with_cache(torch.tensor([r], device=model.device),
                                               names_filter=lambda name: name in wanted)
        for h in hooks:
            out[h].append(cache[h][0, position].float().cpu())
    return {h: torch.stack(v) for h, v in out.items()}


@dataclass
class LinearProbe:
    """A direction and a threshold; ``score(x) = x · direction``, positive class when above threshold."""

    method: str
    direction: Float[Tensor, " d"]
    threshold: float
    accuracy: float
    train_accuracy: float
    hook: str = ""
    fingerprint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def score(self, x: Float[Tensor, "n d"]) -> Float[Tensor, " n"]:
        return x.float() @ self.direction

    def predict(self, x: Float[Tensor, "n d"]) -> Tensor:
        return self.score(x) > self.threshold

    def save(self, path: str | Path) -> Path:
        meta = {"method": self.method, "threshold": self.threshold, "accuracy": self.accuracy,
                "train_accuracy": self.train_accuracy, "hook": self.hook, "fingerprint": self.fingerprint,
                "meta": self.meta}
        return save_dir(path, KIND, meta, {"direction": self.direction})

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None) -> LinearProbe:
        meta, arrays = load_dir(path, KIND)
        _check_fingerprint(meta.get("fingerprint", ""), model, path)
        return cls(method=meta["method"], direction=arrays["direction"], threshold=meta["threshold"],
                   accuracy=meta["accuracy"], train_accuracy=meta["train_accuracy"], hook=meta["hook"],
                   fingerprint=meta["fingerprint"], meta=meta.get("meta", {}))


def _check_fingerprint(saved: str, model: Model | None, path: Any) -> None:
    if model is not None and saved and saved != model.fingerprint:
        raise ValueError(f"{path} was fitted on another model (fingerprint {saved}); this model is "
                         f"{model.fingerprint}")


def split(n: int, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded train/test indices (at least one of each when n >= 2)."""
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = min(n - 1, max(1, round(test_fraction * n))) if test_fraction > 0 and n >= 2 else 0
    return perm[n_test:], perm[:n_test]


def _midpoint(direction: Tensor, pos: Tensor, neg: Tensor) -> float:
    return float(0.5 * ((pos @ direction).mean() + (neg @ direction).mean()))


def _logistic(pos: Tensor, neg: Tensor, l2: float, steps: int) -> tuple[Tensor, float]:
    x = torch.cat([pos, neg]).double()
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))]).double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mu) / sd
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, y) + l2 * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    # x·(w/sd) + (b − μ·(w/sd)) > 0  ⇔  x·d > threshold with d = (w/sd)/‖w/sd‖
    raw = (w.detach() / sd)
    norm = raw.norm().clamp_min(1e-12)
    threshold = float(-(b.detach() - mu @ raw) / norm)
    return (raw / norm).float(), threshold


def fit_probe(pos: Float[Tensor, "n d"], neg: Float[Tensor, "m d"], method: str = "mean_diff",
              test_fraction: float = 0.25, seed: int = 0, l2: float = 1e-2, steps: int = 100,
              hook: str = "", fingerprint: str = "") -> LinearProbe:
    """Fit one probe on positive vs negative activations; accuracy on the held-out split."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if len(pos) < 2 or len(neg) < 2:
        raise ValueError(f"need at least 2 examples per class, got {len(pos)} and {len(neg)}")
    pos, neg = pos.float(), neg.float()
    tr_p, te_p = split(len(pos), test_fraction, seed)
    tr_n, te_n = split(len(neg), test_fraction, seed + 1)
    P, N = pos[tr_p], neg[tr_n]
    mean_dir = P.mean(0) - N.mean(0)
    if method == "mean_diff":
        direction = mean_dir / mean_dir.norm().clamp_min(1e-12)
        threshold = _midpoint(direction, P, N)
    elif method == "pca":
        m = min(len(P), len(N))
        diffs = P[:m] - N[:m]
        _, _, v = torch.linalg.svd(diffs, full_matrices=False)  # uncentred: the shared shift dominates
        direction = v[0]
        if float(direction @ mean_dir) < 0:
            direction = -direction
        threshold = _midpoint(direction, P, N)
    else:
        direction, threshold = _logistic(P, N, l2, steps)
    probe = LinearProbe(method=method, direction=direction, threshold=threshold, accuracy=float("nan"),
                        train_accuracy=float("nan"), hook=hook, fingerprint=fingerprint)
    probe.train_accuracy = _accuracy(probe, P, N)
    probe.accuracy = _accuracy(probe, pos[te_p], neg[te_n]) if len(te_p) and len(te_n) else probe.train_accuracy
    return probe


def _accuracy(probe: LinearProbe, pos: Tensor, neg: Tensor) -> float:
    right = int(probe.predict(pos).sum()) + int((~probe.predict(neg)).sum())
    return right / (len(pos) + len(neg))


@dataclass
class ProbeReport:
    """All methods at all layers: held-out accuracy by layer and the cosine between methods."""

    hooks: list[str]
    accuracy: dict[str, list[float]]
    cosine: dict[str, list[float]]
    probes: dict[str, list[LinearProbe]]
    fingerprint: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def best(self, method: str = "logistic") -> tuple[int, float]:
        acc = self.accuracy[method]
        i = max(range(len(acc)), key=lambda j: acc[j])
        return i, acc[i]

    def save(self, path: str | Path) -> Path:
        arrays = {f"{m}/{i}": p.direction for m, ps in self.probes.items() for i, p in enumerate(ps)}
        thresholds = {m: [p.threshold for p in ps] for m, ps in self.probes.items()}
        train = {m: [p.train_accuracy for p in ps] for m, ps in self.probes.items()}
        return save_dir(path, REPORT_KIND, {"hooks": self.hooks, "accuracy": self.accuracy, "cosine": self.cosine,
                                            "thresholds": thresholds, "train_accuracy": train,
                                            "fingerprint": self.fingerprint, "meta": self.meta}, arrays)

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None) -> ProbeReport:
        meta, arrays = load_dir(path, REPORT_KIND)
        _check_fingerprint(meta.get("fingerprint", ""), model, path)
        probes = {m: [LinearProbe(method=m, direction=arrays[f"{m}/{i}"], threshold=meta["thresholds"][m][i],
                                  accuracy=meta["accuracy"][m][i], train_accuracy=meta["train_accuracy"][m][i],
                                  hook=h, fingerprint=meta["fingerprint"]) for i, h in enumerate(meta["hooks"])]
                  for m in meta["accuracy"]}
        return cls(hooks=meta["hooks"], accuracy=meta["accuracy"], cosine=meta["cosine"], probes=probes,
                   fingerprint=meta["fingerprint"], meta=meta.get("meta", {}))

    def figure(self) -> Any:
        import plotly.graph_objects as go

        fig = go.Figure([go.Scatter(y=acc, mode="lines+markers", name=m) for m, acc in self.accuracy.items()])
        fig.update_layout(title="Probe accuracy by layer (held out)", xaxis_title="layer", yaxis_title="accuracy",
                          template="plotly_white", yaxis_range=[0, 1.02])
        return fig


def probe_layers(model: Model, positive: Sequence[str], negative: Sequence[str], layers: Sequence[int] | None = None,
                 methods: Sequence[str] = METHODS, position: int = -1, test_fraction: float = 0.25,
                 seed: int = 0) -> ProbeReport:
    """Fit every method on the residual after each of ``layers`` (default: all)."""
    layers = list(range(model.arch.n_layers)) if layers is None else [model.arch.check_layer(x) for x in layers]
    hooks = [model.arch.hook_resid_post(x) for x in layers]
    pos = collect_activations(model, positive, hooks, position)
    neg = collect_activations(model, negative, hooks, position)
    probes = {m: [fit_probe(pos[h], neg[h], m, test_fraction, seed, hook=h, fingerprint=model.fingerprint)
                  for h in hooks] for m in methods}
    accuracy = {m: [p.accuracy for p in ps] for m, ps in probes.items()}
    cosine: dict[str, list[float]] = {}
    ms = list(methods)
    for i, a in enumerate(ms):
        for b in ms[i + 1:]:
            cosine[f"{a}~{b}"] = [float(pa.direction @ pb.direction) for pa, pb in zip(probes[a], probes[b],
                                                                                         strict=True)]
    return ProbeReport(hooks=hooks, accuracy=accuracy, cosine=cosine, probes=probes, fingerprint=model.fingerprint,
                       meta={"n_positive": len(positive), "n_negative": len(negative), "layers": layers})


def _report_headline(m: dict[str, Any]) -> str:
    acc = m.get("accuracy") or {}
    best = {k: max(v) for k, v in acc.items() if v}
    return "best held-out accuracy " + ", ".join(f"{k} {fmt(v, '.2f')}" for k, v in best.items())


register(KIND, LinearProbe.load,
         lambda m: f"{m.get('method')} probe at {m.get('hook')}: accuracy {fmt(m.get('accuracy'), '.2f')}")
register(REPORT_KIND, ProbeReport.load, _report_headline)
