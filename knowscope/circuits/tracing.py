"""Causal tracing (ROME's "locate" step), batched and architecture-agnostic.

ROME's causal trace corrupts the subject: Gaussian noise is added to the token embeddings of the
subject's tokens (``hook_embed``; for GPT-2 before the position embedding is added), which makes
the model lose the answer. Then, one *cell* at a time, the clean state of one (token, layer) site
is restored into the corrupted run and the probability of the answer's first token at the last
position is read, averaged over the noise samples. Kinds of site:

* ``hidden``: the residual stream after layer L (``blocks.L.hook_resid_post``) at token t;
* ``mlp`` / ``attn``: the MLP / attention outputs (``hook_mlp_out`` / ``hook_attn_out``) at token t
  of a window of ``window`` layers centred on L (ROME: layers ``L - window//2 .. L + ceil(window/2) - 1``,
  clipped at the ends);
* ``hidden_frozen_mlp`` / ``hidden_frozen_attn``: ROME's severed trace - restore the hidden state at
  (t, L) while the MLP / attention outputs at token t of every later layer are kept at their
  corrupted values.

Three methods compute the same table:

* ``"reference"``: the plain loop, one forward pass of the ``samples`` noised copies per cell,
  through the bridge's hooks (what ROME does);
* ``"fast"`` (default): exact, much faster. Restoring a cell at token t cannot change positions
  before t, nor layers before the first restored layer, so the corrupted run is recorded once
  (residual stream at every layer, keys/values at every layer) and each cell starts its forward
  pass at its first restored layer, computing only positions t..end, with the corrupted keys and
  values of positions < t fed in as a KV cache. Cells of the same token are batched together
  (cells x samples rows per pass, chunked to ``max_rows``), and a block's rows grow as cells
  with later start layers join. Cells before the subject equal the corrupted run and are not run.
  The first/last hidden states of the recorded clean run are checked against the bridge's own
  forward pass, so a model the partial forward does not support fails loudly, not silently;
* ``"attribution"``: attribution patching - a first-order estimate of every cell from one clean
  forward pass, one corrupted forward pass and one backward pass: ``low + sum_s (clean - corrupt_s)
  . d P / d act_s``.

The noise scale follows ROME: ``noise`` x the standard deviation of token-embedding entries over
many subjects (the bundled facts' subjects; see :func:`embedding_std`), or an absolute standard
deviation ``noise_std``. The same noise draws (seeded) are used for every cell of one trace.

Many facts: :func:`trace_facts` averages indirect effects (score - low score) by token class as in
ROME's summary figure; :func:`locate` picks the layer with the largest MLP indirect effect at the
last subject token (the layer ROME edits; a window of layers around it for MEMIT).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope.circuits.patching import cache_activations
from knowscope.compat import FIX_HINT
from knowscope.facts import Fact, load_bundled_facts
from knowscope.models import Model
from knowscope.results import fmt, load_dir, register, save_dir

logger = logging.getLogger(__name__)

KINDS = ("hidden", "mlp", "attn")
SEVERED_KINDS = ("hidden_frozen_mlp", "hidden_frozen_attn")
ALL_KINDS = KINDS + SEVERED_KINDS
METHODS = ("fast", "reference", "attribution")
FAST_MODES = ("suffix", "full")
TOKEN_CLASSES = ("first_subject", "middle_subject", "last_subject", "first_subsequent", "further", "last")
TOKEN_CLASS_LABELS = {
    "first_subject": "First subject token",
    "middle_subject": "Middle subject tokens",
    "last_subject": "Last subject token",
    "first_subsequent": "First subsequent token",
    "further": "Further tokens",
    "last": "Last token",
}

# used for the noise scale when no bundled facts are available (e.g. a fresh checkout)
FALLBACK_SUBJECTS = (
    "Eiffel Tower", "Lionel Messi", "Mexico", "Michael Jordan", "Apple", "Microsoft", "Danielle Darrieux",
    "Colosseum", "Tokyo", "Barack Obama", "Albert Einstein", "Toyota", "Amazon River", "Mount Everest",
    "William Shakespeare", "Google", "Germany", "Pablo Picasso", "BBC", "Nintendo",
)


# --------------------------------------------------------------------------------------------
# inputs: subject positions, noise, kinds


def subject_token_range(model: Model, prompt: str, subject: str) -> tuple[int, int]:
    """Half-open range of the subject's token positions in the BOS-prepended prompt.

    The prefix before the subject and the prefix + subject are tokenized separately; their token
    counts give the range. Raises ValueError if the subject is not in the prompt, or if its
    boundary falls inside a token of the full prompt.
    """
    if not isinstance(subject, str) or not subject.strip():
        raise ValueError(f"subject {subject!r} is empty")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt {prompt!r} is empty")
    idx = prompt.find(subject)
    if idx < 0:
        raise ValueError(f"subject {subject!r} does not occur in prompt {prompt!r}")
    full = model.to_tokens(prompt)[0].tolist()
    with_subject = model.to_tokens(prompt[: idx + len(subject)])[0].tolist()
    ranges = []
    # "The Eiffel" usually tokenizes as "The", " Eiffel": the space before the subject belongs to it
    for prefix in (prompt[:idx], prompt[:idx].rstrip()):
        head = model.to_tokens(prefix)[0].tolist() if prefix else full[:1]
        s0, s1 = len(head), len(with_subject)
        if full[:s0] == head and full[:s1] == with_subject and s1 > s0:
            ranges.append((s0, s1))
    if not ranges:
        raise ValueError(f"subject {subject!r} does not start and end on token boundaries of prompt {prompt!r}")
    return ranges[0]


_STD_CACHE: dict[tuple[str, int], float] = {}


def embedding_std(model: Model, subjects: Sequence[str] | None = None) -> float:
    """Standard deviation of the token-embedding entries of many subjects (ROME's noise unit).

    ``subjects`` defaults to the bundled facts' subjects (a fixed fallback list when none are
    bundled). Each subject is tokenized on its own, without BOS, as ROME does. Cached per model.
    """
    if subjects is None:

        try:
            subjects = sorted({f.subject for f in load_bundled_facts()})
        except Exception:  # noqa: BLE001 - a missing/partial data file must not break tracing
            subjects = []
        if not subjects:
            logger.warning("no bundled facts: noise scale from %d built-in subjects", len(FALLBACK_SUBJECTS))
            subjects = list(FALLBACK_SUBJECTS)
    key = (model.fingerprint, hash(tuple(subjects)))
    if key in _STD_CACHE:
        return _STD_CACHE[key]
    ids: list[int] = []
    for s in subjects:
        ids.extend(model.tokenizer.encode(s, add_special_tokens=False))
    if not ids:
        raise ValueError("no subject tokens to estimate the embedding std from")
    with torch.no_grad():
        emb = model.hf.get_input_embeddings()
        weight = emb.weight if hasattr(emb, "weight") else emb.original_component.weight
        std = float(weight[torch.tensor(ids, device=weight.device)].float().std())
    _STD_CACHE[key] = std
    return std


def _check_kinds(kinds: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(kinds, str):
        kinds = KINDS if kinds == "all" else (kinds,)
    out = tuple(dict.fromkeys(kinds))
    bad = [k for k in out if k not in ALL_KINDS]
    if bad or not out:
        raise ValueError(f"unknown kind(s) {bad or list(out)}; valid: {', '.join(ALL_KINDS)} or 'all'")
    return out


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """Layers restored for an mlp/attn cell at ``layer``: ``window`` layers centred on it, clipped (ROME)."""
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def _hook_for(kind: str, layer: int) -> str:
    if kind in ("mlp", "hidden_frozen_mlp"):
        return f"blocks.{layer}.hook_mlp_out"
    if kind in ("attn", "hidden_frozen_attn"):
        return f"blocks.{layer}.hook_attn_out"
    return f"blocks.{layer}.hook_resid_post"


# --------------------------------------------------------------------------------------------
# the result


@dataclass
class TraceResult:
    """A causal trace of one prompt: scores per kind, ``[token, layer]``, plus the run's settings.

    ``scores[kind][t, L]`` is the mean probability of the target's first token with cell (t, L)
    restored; ``low_score`` with nothing restored, ``high_score`` on the clean run. The indirect
    effect of a cell is ``score - low_score``.
    """

    prompt: str
    subject: str
    tokens: list[str]
    subject_range: tuple[int, int]
    target: str
    target_id: int
    scores: dict[str, Float[Tensor, "pos layer"]]
    low_score: float
    high_score: float
    samples: int
    noise: float | None
    noise_std: float
    window: int
    seed: int
    method: str
    seconds: float = 0.0
    forward_passes: int = 0
    model_name: str = ""
    fingerprint: str = ""

    @property
    def kinds(self) -> list[str]:
        return list(self.scores)

    @property
    def n_layers(self) -> int:
        return int(next(iter(self.scores.values())).shape[1])

    def indirect_effect(self, kind: str) -> Float[Tensor, "pos layer"]:
        return self.scores[kind] - self.low_score

    def peak(self, kind: str) -> dict[str, int]:
        """The (token, layer) cell with the highest score of ``kind``."""
        s = torch.nan_to_num(self.scores[kind], nan=-math.inf)
        flat = int(s.argmax())
        return {"layer": flat % s.shape[1], "token": flat // s.shape[1]}

    def token_classes(self) -> dict[str, list[int]]:
        """Token positions of each of ROME's token classes (empty where a class does not occur)."""
        return token_classes(self.subject_range, len(self.tokens))

    def class_summary(self) -> list[dict[str, Any]]:
        """ROME's token-class summary of this trace: per kind and token class, the largest mean
        indirect effect over layers and the layer where it occurs (classes absent from the prompt
        or untraced are left out)."""
        agg = aggregate([self])
        rows = []
        for kind in self.kinds:
            for c in TOKEN_CLASSES:
                if agg.class_counts[c] == 0:
                    continue
                eff = agg.effect(kind, c)
                layer = int(torch.nan_to_num(eff, nan=-math.inf).argmax())
                rows.append({"kind": kind, "token_class": c, "peak_effect": float(eff[layer]), "peak_layer": layer})
        return rows

    def located_layer(self, kind: str = "mlp") -> int:
        """The layer :func:`locate` would pick from this trace alone: the largest ``kind`` indirect
        effect at the last subject token."""
        if kind not in self.scores:
            raise ValueError(f"kind {kind!r} was not traced; traced: {', '.join(self.kinds)}")
        agg = aggregate([self])
        if agg.class_counts["last_subject"] == 0:
            raise ValueError("this trace has no last subject token before the last token; cannot locate")
        return choose_layers([float(x) for x in agg.effect(kind, "last_subject")], None)[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "subject": self.subject,
            "tokens": self.tokens,
            "subject_range": list(self.subject_range),
            "target": self.target,
            "target_id": self.target_id,
            "kinds": self.kinds,
            "scores": {k: _json_table(v) for k, v in self.scores.items()},
            "low_score": self.low_score,
            "high_score": self.high_score,
            "peak": {k: self.peak(k) for k in self.scores},
            "samples": self.samples,
            "noise": self.noise,
            "noise_std": self.noise_std,
            "window": self.window,
            "seed": self.seed,
            "method": self.method,
            "seconds": self.seconds,
            "forward_passes": self.forward_passes,
            "model": self.model_name,
            "fingerprint": self.fingerprint,
        }

    def save(self, path: str | Path) -> Path:
        meta = self.to_dict()
        meta.pop("scores")
        return save_dir(path, "trace", meta, {f"scores.{k}": v for k, v in self.scores.items()})

    @classmethod
    def load(cls, path: str | Path) -> TraceResult:
        meta, arrays = load_dir(path, "trace")
        return cls(
            prompt=meta["prompt"], subject=meta["subject"], tokens=list(meta["tokens"]),
            subject_range=tuple(meta["subject_range"]), target=meta["target"], target_id=int(meta["target_id"]),
            scores={k: arrays[f"scores.{k}"] for k in meta["kinds"]}, low_score=float(meta["low_score"]),
            high_score=float(meta["high_score"]), samples=int(meta["samples"]), noise=meta["noise"],
            noise_std=float(meta["noise_std"]), window=int(meta["window"]), seed=int(meta["seed"]),
            method=meta["method"], seconds=float(meta["seconds"]), forward_passes=int(meta["forward_passes"]),
            model_name=meta.get("model", ""), fingerprint=meta.get("fingerprint", ""),
        )

    def figure(self) -> Any:
        """ROME-style heatmaps (tokens x layers, subject tokens starred), one panel per kind."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        s0, s1 = self.subject_range
        labels = [f"{i}: {t!r}" + (" *" if s0 <= i < s1 else "") for i, t in enumerate(self.tokens)]
        titles = {"hidden": "single restored layer (hidden)", "mlp": f"restored MLP (window {self.window})",
                  "attn": f"restored attention (window {self.window})",
                  "hidden_frozen_mlp": "hidden, later MLPs frozen", "hidden_frozen_attn": "hidden, later attn frozen"}
        colors = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
        fig = make_subplots(rows=1, cols=len(self.scores), subplot_titles=[titles[k] for k in self.scores],
                            shared_yaxes=True, horizontal_spacing=0.06)
        for i, (kind, s) in enumerate(self.scores.items(), 1):
            fig.add_trace(
                go.Heatmap(z=s.tolist(), x=list(range(s.shape[1])), y=labels, zmin=self.low_score,
                           colorscale=colors.get(kind.split("_")[-1], "Purples"), showscale=False,
                           hovertemplate="layer %{x}<br>%{y}<br>p=%{z:.3f}<extra></extra>"),
                row=1, col=i,
            )
            fig.update_xaxes(title_text="layer", row=1, col=i)
        fig.update_yaxes(autorange="reversed")
        fig.update_layout(
            title=f"p({self.target!r}) after {self.prompt!r}: clean {self.high_score:.3f}, "
                  f"corrupted {self.low_score:.3f} ({self.method}, {self.samples} samples)",
            height=max(300, 32 * len(self.tokens) + 120), width=330 * len(self.scores) + 180,
        )
        return fig


def _json_table(t: Tensor) -> list[list[float | None]]:
    """A 2-D tensor as nested lists, NaN (untraced cells) as None so that the JSON stays standard."""
    return [[None if math.isnan(x) else x for x in row] for row in t.tolist()]


def token_classes(subject_range: tuple[int, int], n_tokens: int) -> dict[str, list[int]]:
    """ROME's token classes for a prompt of ``n_tokens`` tokens with the subject at ``subject_range``.

    The last token belongs only to ``last``; subject classes take precedence over the rest.
    """
    s0, s1 = subject_range
    last = n_tokens - 1
    out: dict[str, list[int]] = {c: [] for c in TOKEN_CLASSES}
    out["last"] = [last]
    subj = [t for t in range(s0, s1) if t != last]
    if subj:
        out["first_subject"] = [subj[0]]
        out["last_subject"] = [subj[-1]]
        out["middle_subject"] = subj[1:-1]
    after = list(range(s1, last))
    if after:
        out["first_subsequent"] = [after[0]]
        out["further"] = after[1:]
    return out


# --------------------------------------------------------------------------------------------
# the partial forward pass (fast path)


class _PrefixKV:
    """A minimal KV cache for one block call: prepends fixed keys/values, optionally records them.

    The bridge's attention calls ``cache.update(k, v, layer_idx)`` after RoPE and uses what it
    returns as the full keys and values (its causal mask is offset by the cached length).
    """

    def __init__(self, k: Tensor | None = None, v: Tensor | None = None,
                 record: dict[int, tuple[Tensor, Tensor]] | None = None) -> None:
        self.k, self.v, self.record = k, v, record

    def update(self, k: Tensor, v: Tensor, layer_idx: int, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if self.k is not None:
            k = torch.cat([self.k.to(k.dtype), k], dim=-2)
            v = torch.cat([self.v.to(v.dtype), v], dim=-2)
        if self.record is not None:
            self.record[layer_idx] = (k, v)
        return k, v

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.k is None else int(self.k.shape[-2])


class _OutputPatch:
    """Forward hook on a HookPoint that overwrites ``out[rows, pos]`` (token t of a partial pass)."""

    def __init__(self, rows: Tensor, values: Tensor, pos: int = 0) -> None:
        self.rows, self.values, self.pos = rows, values, pos

    def __call__(self, module: Any, inputs: Any, out: Tensor) -> Tensor:
        out = out.clone()
        out[self.rows, self.pos] = self.values.to(out.dtype)
        return out


class _Capture:
    """Forward hook on a HookPoint that stores its output."""

    def __init__(self) -> None:
        self.value: Tensor | None = None

    def __call__(self, module: Any, inputs: Any, out: Tensor) -> None:
        self.value = out.detach()


def _supports_partial_forward(model: Model) -> bool:
    return model.arch.positional in ("standard", "rotary")


def _block(model: Model, layer: int, h: Tensor, start: int, cache: _PrefixKV | None) -> Tensor:
    """Run block ``layer`` on positions ``start..start+pos`` of ``h`` (earlier positions via ``cache``).

    The cache goes in under the keyword the decoder layer declares (found at load time,
    :func:`knowscope.compat.cache_keyword`); ``cache=None`` runs the block on ``h`` alone, which then
    must start at position 0.
    """
    bridge = model.bridge
    kwargs: dict[str, Any] = {}
    if cache is not None:
        keyword = model.compat.cache_keyword
        if keyword is None:
            raise RuntimeError("this model's decoder layers take no KV cache")
        kwargs[keyword] = cache
    if model.arch.positional == "rotary":
        pos = torch.arange(start, start + h.shape[1], device=h.device).unsqueeze(0)
        kwargs["position_embeddings"] = bridge.rotary_emb(h, pos)
        kwargs["position_ids"] = pos
    out = bridge.blocks[layer](h, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@dataclass
class _Record:
    """A run recorded block by block: residual stream at every layer boundary, K/V, mlp/attn outs."""

    resid: list[Tensor]  # n_layers + 1 tensors [batch, pos, d_model]; resid[L] = input of block L
    kv: dict[int, tuple[Tensor, Tensor]]
    mlp: list[Tensor]
    attn: list[Tensor]


def _record_run(model: Model, h0: Tensor, with_kv: bool = True) -> _Record:
    """Run the model block by block from ``h0``, recording what the fast path reuses.

    ``with_kv`` records every layer's keys/values through a recording cache (the ``"suffix"``
    partial forward needs them); a model whose attention never writes to the cache records
    fewer layers than it has, which :func:`_fast_mode` detects.
    """
    n = model.arch.n_layers
    kv: dict[int, tuple[Tensor, Tensor]] = {}
    resid, mlp, attn = [h0], [], []
    hd = model.bridge.hook_dict
    h = h0
    for layer in range(n):
        cm, ca = _Capture(), _Capture()
        handles = [hd[f"blocks.{layer}.hook_mlp_out"].register_forward_hook(cm),
                   hd[f"blocks.{layer}.hook_attn_out"].register_forward_hook(ca)]
        try:
            h = _block(model, layer, h, 0, _PrefixKV(record=kv) if with_kv else None)
        finally:
            for hd_ in handles:
                hd_.remove()
        resid.append(h)
        mlp.append(cm.value)
        attn.append(ca.value)
    # the cache is keyed by each attention's own layer index; map it to block order
    keys = sorted(kv)
    return _Record(resid=resid, kv={i: kv[k] for i, k in enumerate(keys)} if len(keys) == n else {},
                   mlp=mlp, attn=attn)


def _fast_mode(model: Model, h0: Tensor, reference: dict[str, Tensor]) -> str:
    """How the fast path runs a partial forward pass on this model, measured once per model.

    ``"suffix"``: positions t..end only, the corrupted keys/values of positions < t fed in as a KV
    cache (fastest). ``"full"``: positions 0..end with no cache; positions < t then recompute the
    corrupted run exactly (causal attention), so the result is the same, at more compute. Suffix is
    used when it reproduces the bridge's own forward pass and a suffix pass reproduces the
    recorded positions; otherwise full, when it reproduces the bridge; otherwise this raises.
    ``reference`` holds the bridge's ``blocks.L.hook_resid_post`` activations of the run from ``h0``.
    """
    mode = getattr(model.compat, "trace_mode", None)
    if mode is not None:
        return mode
    n = model.arch.n_layers
    problems = []
    if model.compat.cache_keyword is not None:
        try:
            rec = _record_run(model, h0, with_kv=True)
            if not rec.kv:
                raise RuntimeError("the attention did not write keys/values to the cache it was given")
            _check_record(rec, reference, n)
            t = max(1, h0.shape[1] // 2)
            for layer in (0, n - 1):
                k, v = rec.kv[layer]
                out = _block(model, layer, rec.resid[layer][:, t:], t, _PrefixKV(k[:, :, :t], v[:, :, :t]))
                want = rec.resid[layer + 1][:, t:]
                err = float((out - want).abs().max())
                if err > 1e-3 * (float(want.abs().max()) + 1e-6):
                    raise RuntimeError(f"a suffix pass with cached prefix differs at layer {layer} "
                                       f"(max diff {err:.3g})")
            mode = "suffix"
        except Exception as exc:  # noqa: BLE001 - any failure of the cache route falls back to "full"
            problems.append(f"suffix: {exc}")
    if mode is None:
        try:
            _check_record(_record_run(model, h0, with_kv=False), reference, n)
            mode = "full"
        except Exception as exc:  # noqa: BLE001 - reported below with what to do
            problems.append(f"full: {exc}")
    if mode is None:
        import transformers

        raise RuntimeError(
            f"method='fast' cannot run this model with transformers {transformers.__version__}: "
            + "; ".join(problems) + f". To fix: {FIX_HINT}")
    if problems:
        logger.info("fast trace runs full-sequence partial passes (%s)", "; ".join(problems))
    model.compat.trace_mode = mode
    return mode


@dataclass
class _Job:
    """One cell of the fast path: start the pass at ``start`` (a restored input if ``restore``), and
    overwrite ``patches[layer] = (kind, values)`` at token t in the listed layers."""

    index: tuple[str, int, int]  # (kind, token, layer) of the output table
    start: int
    restore: bool
    patches: dict[int, tuple[str, Tensor]]


# --------------------------------------------------------------------------------------------
# the tracer


class _Tracer:
    """Shared state of one trace: tokens, subject range, the fixed noise draws, target id."""

    def __init__(self, model: Model, tokens: Tensor, s0: int, s1: int, noise: Tensor, window: int,
                 max_rows: int) -> None:
        self.model, self.tokens, self.s0, self.s1 = model, tokens, s0, s1
        self.noise = noise  # [samples, s1 - s0, d_model]
        self.samples = noise.shape[0]
        self.window = window
        self.max_rows = max_rows
        self.n_layers = model.arch.n_layers
        self.n_tokens = tokens.shape[1]
        self.passes = 0
        self.target_id = -1

    # --- shared pieces -------------------------------------------------------------------------
    def noise_hook(self, requires_grad: bool = False) -> Callable:
        s0, s1, noise = self.s0, self.s1, self.noise

        def hook(x: Tensor, hook: Any) -> Tensor:
            if requires_grad:  # a leaf, so that gradients reach every later activation
                x = x.detach().requires_grad_(True)
            full = torch.zeros_like(x, requires_grad=False)
            full[:, s0:s1] = noise.to(x.dtype)
            return x + full

        return hook

    def corrupted_tokens(self) -> Tensor:
        return self.tokens.expand(self.samples, -1)

    def probs(self, logits_last: Float[Tensor, "batch vocab"]) -> Float[Tensor, " batch"]:
        return torch.softmax(logits_last.float(), dim=-1)[:, self.target_id]

    # --- reference: one bridge forward pass per cell ---------------------------------------------
    @torch.no_grad()
    def reference(self, kinds: Sequence[str], clean: dict[str, Tensor], corrupt: dict[str, Tensor],
                  positions: Sequence[int], progress: bool) -> dict[str, Tensor]:
        from tqdm.auto import tqdm

        out = {k: torch.full((self.n_tokens, self.n_layers), math.nan) for k in kinds}
        cells = [(k, t, L) for k in kinds for t in positions for L in range(self.n_layers)]
        toks = self.corrupted_tokens()
        for kind, t, L in tqdm(cells, desc="trace (reference)", disable=not progress):
            hooks = [("hook_embed", self.noise_hook())]
            if kind in ("hidden",) + SEVERED_KINDS:
                name = _hook_for("hidden", L)
                hooks.append((name, _set_position(t, clean[name][0, t])))
            if kind in ("mlp", "attn"):
                for layer in window_layers(L, self.window, self.n_layers):
                    name = _hook_for(kind, layer)
                    hooks.append((name, _set_position(t, clean[name][0, t])))
            if kind in SEVERED_KINDS:  # ROME freezes the module at token t in every layer
                for layer in range(self.n_layers):
                    name = _hook_for(kind, layer)
                    hooks.append((name, _set_position(t, corrupt[name][:, t])))
            logits = self.model.bridge.run_with_hooks(toks, fwd_hooks=hooks)
            self.passes += 1
            out[kind][t, L] = self.probs(logits[:, -1]).mean().item()
        return out

    # --- fast: partial forward passes from the first restored layer and token ------------------
    @torch.no_grad()
    def fast(self, kinds: Sequence[str], clean: _Record, corrupt: _Record, low: float,
             positions: Sequence[int], progress: bool, mode: str = "suffix") -> dict[str, Tensor]:
        from tqdm.auto import tqdm

        n, S = self.n_layers, self.samples
        out = {k: torch.full((self.n_tokens, n), math.nan) for k in kinds}
        for k in kinds:  # before the subject clean == corrupted: restoring there changes nothing
            out[k][[t for t in positions if t < self.s0]] = low
        tokens = [t for t in positions if t >= self.s0]
        for t in tqdm(tokens, desc="trace (fast)", disable=not progress):
            jobs: list[_Job] = []
            for kind in kinds:
                for L in range(n):
                    if kind == "hidden":
                        jobs.append(_Job((kind, t, L), L + 1, True, {}))
                    elif kind in ("mlp", "attn"):
                        layers = window_layers(L, self.window, n)
                        src = clean.mlp if kind == "mlp" else clean.attn
                        jobs.append(_Job((kind, t, L), layers.start, False,
                                         {la: (kind, src[la][0, t].unsqueeze(0)) for la in layers}))
                    else:
                        mod = "mlp" if kind == "hidden_frozen_mlp" else "attn"
                        src = corrupt.mlp if mod == "mlp" else corrupt.attn
                        jobs.append(_Job((kind, t, L), L + 1, True,
                                         {la: (mod, src[la][:, t]) for la in range(L + 1, n)}))
            jobs.sort(key=lambda j: j.start)
            per_chunk = max(1, self.max_rows // S)
            for c in range(0, len(jobs), per_chunk):
                chunk = jobs[c : c + per_chunk]
                scores = self._run_chunk(t, chunk, clean, corrupt, mode)
                for job, score in zip(chunk, scores.tolist(), strict=True):
                    kind, tt, L = job.index
                    out[kind][tt, L] = score
        return out

    def _run_chunk(self, t: int, chunk: list[_Job], clean: _Record, corrupt: _Record, mode: str) -> Tensor:
        """One batched partial pass of the jobs of token t; ``mode`` as :func:`_fast_mode`."""
        n, S, dev = self.n_layers, self.samples, self.tokens.device
        hd = self.model.bridge.hook_dict
        suffix = mode == "suffix"
        first = t if suffix else 0  # first position the rows hold
        at = t - first  # index of token t in a row
        h: Tensor | None = None
        active = 0
        self.passes += 1
        for layer in range(chunk[0].start, n + 1):
            new = [j for j in chunk[active:] if j.start == layer]
            if new:
                init = corrupt.resid[layer][:, first:].unsqueeze(0).repeat(len(new), 1, 1, 1)  # [jobs, S, pos, d]
                for i, job in enumerate(new):
                    if job.restore:
                        init[i, :, at] = clean.resid[layer][0, t]
                init = init.reshape(len(new) * S, *init.shape[2:])
                h = init if h is None else torch.cat([h, init])
                active += len(new)
            if layer == n or h is None:
                continue
            handles = []
            for mod in ("mlp", "attn"):
                rows, vals = [], []
                for i, job in enumerate(chunk[:active]):
                    p = job.patches.get(layer)
                    if p is not None and p[0] == mod:
                        rows.append(torch.arange(i * S, (i + 1) * S, device=dev))
                        vals.append(p[1].expand(S, -1))
                if rows:
                    hook = _OutputPatch(torch.cat(rows), torch.cat(vals), at)
                    handles.append(hd[f"blocks.{layer}.hook_{mod}_out"].register_forward_hook(hook))
            cache = None
            if suffix:
                k, v = corrupt.kv[layer]
                cache = _PrefixKV(k[:, :, :t].repeat(active, 1, 1, 1), v[:, :, :t].repeat(active, 1, 1, 1)) if t \
                    else _PrefixKV()
            try:
                h = _block(self.model, layer, h, first, cache)
            finally:
                for handle in handles:
                    handle.remove()
        assert h is not None and active == len(chunk)
        logits = self.model.bridge.unembed(self.model.bridge.ln_final(h[:, -1:]))[:, 0]
        return self.probs(logits).reshape(len(chunk), S).mean(1).cpu()

    # --- attribution patching --------------------------------------------------------------------
    def attribution(self, kinds: Sequence[str], clean: dict[str, Tensor], low: float,
                    positions: Sequence[int] | None = None) -> dict[str, Tensor]:
        """First-order estimate of every cell: ``low + sum over restored sites of (clean - corrupt) . grad``.

        For one restored site (``hidden``; ``mlp``/``attn`` with ``window == 1``) the gradient is the
        plain one of the corrupted run, so one backward pass serves every cell. A window restores
        several sites of token t at once, and a later window site then no longer depends on an
        earlier one: the first-order term needs, for each site, the gradient with the window's
        *other* sites at token t held fixed (paths through them do not count).
        :meth:`_windowed_gradients` computes those exactly; it costs one batched backward pass per
        token, with one row group per distinct window end.
        """
        n = self.n_layers
        names = {m: [_hook_for(m, L) for L in range(n)] for m in kinds}
        flat = [nm for m in kinds for nm in names[m]]
        acts: dict[str, Tensor] = {}
        canon = {self.model.bridge.hook_dict[nm].name: nm for nm in flat}

        def keep(act: Tensor, hook: Any) -> None:
            act.retain_grad()
            acts[canon[hook.name]] = act

        with torch.enable_grad():
            hooks = [("hook_embed", self.noise_hook(requires_grad=True))] + [(nm, keep) for nm in flat]
            logits = self.model.bridge.run_with_hooks(self.corrupted_tokens(), fwd_hooks=hooks)
            metric = self.probs(logits[:, -1]).mean()
            metric.backward()
        self.passes += 2
        corrupt = {nm: acts[nm].detach() for nm in flat}
        # first-order effect of restoring each (token, layer) site alone: sum over samples of diff . grad
        delta = {nm: ((clean[nm][0].unsqueeze(0) - corrupt[nm]) * acts[nm].grad).sum(dim=(0, 2)).cpu()
                 for nm in flat}
        out = {}
        traced = list(range(self.n_tokens)) if positions is None else list(positions)
        for kind in kinds:
            table = torch.stack([delta[nm] for nm in names[kind]], dim=1)  # [pos, layer]
            if kind in ("mlp", "attn") and self.window > 1:
                table = self._windowed_table(kind, clean, corrupt, traced)
            out[kind] = low + table
        return out

    def _windowed_table(self, kind: str, clean: dict[str, Tensor], corrupt: dict[str, Tensor],
                        positions: Sequence[int]) -> Float[Tensor, "pos layer"]:
        """The windowed first-order term of ``kind`` for every (token, centre layer) cell."""
        n = self.n_layers
        windows = [window_layers(L, self.window, n) for L in range(n)]
        ends = sorted({w.stop for w in windows})
        table = torch.zeros(self.n_tokens, n)
        for t in positions:
            if t < self.s0:  # before the subject the clean and corrupted runs agree: no effect
                continue
            grads = self._windowed_gradients(kind, t, ends)  # end -> [layer, samples, d]
            for L, w in enumerate(windows):
                g = grads[w.stop]
                total = 0.0
                for layer in w:
                    nm = _hook_for(kind, layer)
                    diff = clean[nm][0, t].unsqueeze(0) - corrupt[nm][:, t]  # [samples, d]
                    total += float((diff * g[layer]).sum())
                table[t, L] = total
        return table

    def _windowed_gradients(self, kind: str, t: int, ends: Sequence[int]) -> dict[int, Tensor]:
        """For each window end ``e``: d mean-P / d site(l, t) for every l < e, with every ``kind`` site
        of token t below ``e`` made an independent input (a leaf), so that a site's gradient counts
        no path through another site of the same window. One row group of ``samples`` rows per end,
        batched (chunked to ``max_rows // 4`` rows: a backward pass keeps every activation)."""
        per = max(1, (self.max_rows // 4) // self.samples)
        out: dict[int, Tensor] = {}
        for c in range(0, len(ends), per):
            out.update(self._leaf_gradients(kind, t, list(ends[c : c + per])))
        return out

    def _leaf_gradients(self, kind: str, t: int, group: list[int]) -> dict[int, Tensor]:
        S, n = self.samples, self.n_layers
        rows_end = torch.tensor(group).repeat_interleave(S)  # the window end of each row
        leaves: dict[int, Tensor] = {}

        def make_leaf(layer: int) -> Callable:
            def hook(act: Tensor, hook: Any) -> Tensor:
                rows = (rows_end > layer).nonzero().flatten().to(act.device)
                if rows.numel() == 0:
                    return act
                leaf = act[rows, t].detach().clone().requires_grad_(True)
                leaves[layer] = leaf
                act = act.clone()
                act[rows, t] = leaf
                return act

            return hook

        noise, s0, s1 = self.noise.repeat(len(group), 1, 1), self.s0, self.s1

        def add_noise(x: Tensor, hook: Any) -> Tensor:
            full = torch.zeros_like(x)
            full[:, s0:s1] = noise.to(x.dtype)
            return x + full

        hooks = [("hook_embed", add_noise)] + [(_hook_for(kind, layer), make_leaf(layer)) for layer in range(n)]
        with torch.enable_grad():
            logits = self.model.bridge.run_with_hooks(self.tokens.expand(len(group) * S, -1), fwd_hooks=hooks)
            metric = self.probs(logits[:, -1]).sum() / S  # each row group is one mean over the samples
            layers = sorted(leaves)
            grads = torch.autograd.grad(metric, [leaves[la] for la in layers], allow_unused=True)
        self.passes += 2
        out: dict[int, Tensor] = {}
        for i, end in enumerate(group):
            stack = torch.zeros(n, S, self.model.arch.d_model)
            for la, g in zip(layers, grads, strict=True):
                if la < end and g is not None:
                    rows = (rows_end > la).nonzero().flatten().tolist()
                    first = rows.index(i * S)  # this group's rows among the leaf's rows
                    stack[la] = g[first : first + S].detach().float().cpu()
            out[end] = stack
        return out


def _set_position(t: int, value: Tensor) -> Callable:
    def hook(act: Tensor, hook: Any) -> Tensor:
        act = act.clone()
        act[:, t] = value.to(act.dtype)
        return act

    return hook


def _resolve_target(model: Model, target: str | None, clean_last: Tensor) -> tuple[str, int]:
    if target is None:
        tid = int(clean_last.argmax())
        return model.tokenizer.decode([tid]), tid
    if not isinstance(target, str) or not target.strip():
        raise ValueError(f"target {target!r} is empty: give the answer text (e.g. 'Paris'), or None for the "
                         "model's own top-1 answer")
    text = Fact.continuation(target)
    return text, model.encode_target(text)[0]


def trace(
    model: Model,
    prompt: str,
    subject: str,
    target: str | None = None,
    kinds: str | Sequence[str] = KINDS,
    samples: int = 10,
    noise: float = 3.0,
    window: int = 10,
    seed: int = 0,
    method: str = "fast",
    noise_std: float | None = None,
    max_rows: int = 512,
    tokens: str | Sequence[str | int] | None = None,
    progress: bool = False,
    fast_mode: str | None = None,
) -> TraceResult:
    """Causal trace of ``prompt`` with ``subject`` corrupted (ROME), per kind ``[token, layer]``.

    Args:
        model: a loaded :class:`~knowscope.models.Model` (any architecture the bridge supports; the
            fast path covers absolute-position and rotary models, others fall back to the reference).
        prompt: the text; BOS is prepended (knowscope's convention), so position 0 is BOS.
        subject: a substring of ``prompt`` whose tokens are corrupted.
        target: the answer whose first token's probability is scored (a leading space is added if
            missing, as for CounterFact targets); ``None`` uses the model's own top-1 next token.
        kinds: any of ``hidden``, ``mlp``, ``attn``, ``hidden_frozen_mlp``, ``hidden_frozen_attn``; or "all"
            for the first three.
        samples: noise samples per cell (ROME: 10).
        noise: noise std as a multiple of :func:`embedding_std` (ROME: 3).
        window: layers restored together for the mlp/attn kinds (ROME: 10), centred on the layer.
        seed: seeds the noise draws (the same draws are used for every cell).
        method: ``"fast"`` (exact, batched), ``"reference"`` (one pass per cell) or ``"attribution"``.
        noise_std: an absolute noise standard deviation, overriding ``noise``.
        max_rows: rows (cells x samples) per forward pass of the fast path; bounds memory.
        tokens: trace only these token positions (ints, or ROME token classes such as ``"last_subject"``,
            ``"last"``); other rows of the table are NaN. ``None`` traces every token.
        progress: show a tqdm progress bar.
        fast_mode: how the fast path runs partial passes, ``"suffix"`` (KV cache) or ``"full"`` (no
            cache); ``None`` measures once per model which one this install supports (see
            :func:`_fast_mode`). Both give the same numbers.
    """
    kinds_t = _check_kinds(kinds)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
    if not isinstance(window, int) or isinstance(window, bool) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")
    if noise_std is not None and not (noise_std > 0 and math.isfinite(noise_std)):
        raise ValueError(f"noise_std must be a positive number, got {noise_std!r}")
    if noise_std is None and not (noise > 0 and math.isfinite(noise)):
        raise ValueError(f"noise must be a positive multiple of the embedding std, got {noise!r}")
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    if method == "attribution" and any(k in SEVERED_KINDS for k in kinds_t):
        raise ValueError(f"method 'attribution' supports kinds {', '.join(KINDS)}, not {list(kinds_t)}")
    if method == "fast" and not _supports_partial_forward(model):
        logger.warning("fast path not available for %s positions; using the reference loop", model.arch.positional)
        method = "reference"

    started = time.perf_counter()
    token_ids = model.to_tokens(prompt).to(model.device)
    s0, s1 = subject_token_range(model, prompt, subject)
    positions = _resolve_positions(tokens, (s0, s1), token_ids.shape[1])
    tokens = token_ids
    std = float(noise_std) if noise_std is not None else float(noise) * embedding_std(model)
    gen = torch.Generator().manual_seed(int(seed))
    draws = torch.randn(samples, s1 - s0, model.arch.d_model, generator=gen) * std
    tracer = _Tracer(model, tokens, s0, s1, draws.to(model.device, model.dtype), window, max_rows)
    n = model.arch.n_layers

    needed = sorted({_hook_for(k, L) for k in ("hidden", "mlp", "attn") for L in range(n)})

    with torch.no_grad():
        clean_logits, clean_cache = cache_activations(model, tokens, needed)
        corrupt_logits, corrupt_cache = cache_activations(model, tracer.corrupted_tokens(), needed,
                                                          fwd_hooks=[("hook_embed", tracer.noise_hook())])
    tracer.passes += 2
    target_text, tracer.target_id = _resolve_target(model, target, clean_logits[0, -1])
    high = float(tracer.probs(clean_logits[:, -1]).mean())
    low = float(tracer.probs(corrupt_logits[:, -1]).mean())

    if method == "reference":
        scores = tracer.reference(kinds_t, clean_cache, corrupt_cache, positions, progress)
    elif method == "attribution":
        scores = tracer.attribution(kinds_t, clean_cache, low, positions)
        untraced = [t for t in range(tokens.shape[1]) if t not in set(positions)]
        for k in scores:
            scores[k][untraced] = math.nan
    else:
        with torch.no_grad():
            h0 = _resid_pre0(model, tokens, None)
            mode = fast_mode if fast_mode is not None else _fast_mode(model, h0, clean_cache)
            if mode not in FAST_MODES:
                raise ValueError(f"unknown fast_mode {mode!r}; valid: {', '.join(FAST_MODES)}")
            clean_rec = _record_run(model, h0, with_kv=mode == "suffix")
            corrupt_rec = _record_run(model, _resid_pre0(model, tracer.corrupted_tokens(), tracer.noise_hook()),
                                      with_kv=mode == "suffix")
        tracer.passes += 2
        _check_record(clean_rec, clean_cache, n)
        _check_record(corrupt_rec, corrupt_cache, n)
        if mode == "suffix" and not (clean_rec.kv and corrupt_rec.kv):
            raise RuntimeError(f"fast_mode='suffix': the attention did not write keys/values to the cache. {FIX_HINT}")
        scores = tracer.fast(kinds_t, clean_rec, corrupt_rec, low, positions, progress, mode)

    return TraceResult(
        prompt=prompt, subject=subject, tokens=model.to_str_tokens(tokens[0]), subject_range=(s0, s1),
        target=target_text, target_id=tracer.target_id, scores=scores, low_score=low, high_score=high,
        samples=samples, noise=None if noise_std is not None else float(noise), noise_std=std, window=window,
        seed=int(seed), method=method, seconds=time.perf_counter() - started, forward_passes=tracer.passes,
        model_name=model.name, fingerprint=model.fingerprint,
    )


def _resolve_positions(tokens: str | Sequence[str | int] | None, subject_range: tuple[int, int],
                       n_tokens: int) -> list[int]:
    if tokens is None:
        return list(range(n_tokens))
    items = [tokens] if isinstance(tokens, (str, int)) else list(tokens)
    classes = token_classes(subject_range, n_tokens)
    out: set[int] = set()
    for item in items:
        if isinstance(item, str):
            if item not in classes:
                raise ValueError(f"unknown token class {item!r}; valid: {', '.join(TOKEN_CLASSES)} or positions")
            out.update(classes[item])
        else:
            if not -n_tokens <= int(item) < n_tokens:
                raise ValueError(f"token position {item} is out of range for {n_tokens} tokens (0..{n_tokens - 1})")
            out.add(int(item) % n_tokens)
    if not out:
        raise ValueError(f"tokens={tokens!r} selects no token of this prompt")
    return sorted(out)


def _resid_pre0(model: Model, tokens: Tensor, noise_hook: Callable | None) -> Tensor:
    """The input of block 0 (embeddings, noise, position embeddings) as the bridge computes it."""
    store: dict[str, Tensor] = {}

    def save(act: Tensor, hook: Any) -> None:
        store["h0"] = act.detach().clone()
        raise _Stop

    hooks = ([("hook_embed", noise_hook)] if noise_hook is not None else []) + [("blocks.0.hook_resid_pre", save)]
    try:
        model.bridge.run_with_hooks(tokens, fwd_hooks=hooks)
    except _Stop:
        pass
    return store["h0"]


class _Stop(Exception):
    """Ends a forward pass once the block-0 input has been read."""


def _check_record(rec: _Record, cache: dict[str, Tensor], n: int, tol: float = 1e-3) -> None:
    """The block-by-block pass must reproduce the bridge's own forward pass (guards unsupported models)."""
    for layer in (0, n - 1):
        ref = cache[f"blocks.{layer}.hook_resid_post"]
        err = float((rec.resid[layer + 1] - ref).abs().max())
        scale = float(ref.abs().max()) + 1e-6
        if err > tol * scale:
            raise RuntimeError(
                f"the fast path's block-by-block forward pass differs from the bridge's at layer {layer} "
                f"(max abs diff {err:.3g}); method='fast' cannot run this model on this install. To fix: {FIX_HINT}"
            )


# --------------------------------------------------------------------------------------------
# many facts: token-class averages and the located layer


@dataclass
class FactsTraceResult:
    """Average indirect effects over many facts, by ROME's token classes and layer.

    ``class_effects[kind]`` is ``[len(TOKEN_CLASSES), n_layers]``: the mean over facts of
    ``score - low_score`` at the tokens of each class (a fact's classes with several tokens are
    averaged first; facts without a class do not count for it, see ``class_counts``). The
    per-fact ``traces`` are kept (their scores are small) for inspection and plotting.
    """

    kinds: list[str]
    class_effects: dict[str, Float[Tensor, "classes layer"]]
    class_counts: dict[str, int]
    traces: list[TraceResult] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def n_facts(self) -> int:
        return len(self.traces)

    @property
    def n_layers(self) -> int:
        return int(next(iter(self.class_effects.values())).shape[1])

    def effect(self, kind: str, token_class: str) -> Float[Tensor, " layer"]:
        """Mean indirect effect per layer of ``kind`` at ``token_class`` (e.g. ``"last_subject"``)."""
        if token_class not in TOKEN_CLASSES:
            raise ValueError(f"unknown token class {token_class!r}; valid: {', '.join(TOKEN_CLASSES)}")
        if kind not in self.class_effects:
            raise ValueError(f"kind {kind!r} was not traced; traced: {', '.join(self.class_effects)}")
        return self.class_effects[kind][TOKEN_CLASSES.index(token_class)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kinds": self.kinds,
            "token_classes": list(TOKEN_CLASSES),
            "class_effects": {k: _json_table(v) for k, v in self.class_effects.items()},
            "class_counts": self.class_counts,
            "n_facts": self.n_facts,
            "facts": [{"prompt": t.prompt, "subject": t.subject, "target": t.target, "low_score": t.low_score,
                       "high_score": t.high_score, "peak": {k: t.peak(k) for k in t.scores}} for t in self.traces],
            "settings": self.settings,
            "seconds": self.seconds,
        }

    def save(self, path: str | Path) -> Path:
        meta = self.to_dict()
        meta.pop("class_effects")
        meta["traces"] = [{k: v for k, v in t.to_dict().items() if k != "scores"} for t in self.traces]
        arrays = {f"class_effects.{k}": v for k, v in self.class_effects.items()}
        for i, t in enumerate(self.traces):
            arrays.update({f"trace.{i}.{k}": v for k, v in t.scores.items()})
        return save_dir(path, "trace_facts", meta, arrays)

    @classmethod
    def load(cls, path: str | Path) -> FactsTraceResult:
        meta, arrays = load_dir(path, "trace_facts")
        traces = []
        for i, m in enumerate(meta["traces"]):
            traces.append(TraceResult(
                prompt=m["prompt"], subject=m["subject"], tokens=list(m["tokens"]),
                subject_range=tuple(m["subject_range"]), target=m["target"], target_id=int(m["target_id"]),
                scores={k: arrays[f"trace.{i}.{k}"] for k in m["kinds"]}, low_score=float(m["low_score"]),
                high_score=float(m["high_score"]), samples=int(m["samples"]), noise=m["noise"],
                noise_std=float(m["noise_std"]), window=int(m["window"]), seed=int(m["seed"]), method=m["method"],
                seconds=float(m["seconds"]), forward_passes=int(m["forward_passes"]), model_name=m.get("model", ""),
                fingerprint=m.get("fingerprint", "")))
        return cls(kinds=list(meta["kinds"]), class_effects={k: arrays[f"class_effects.{k}"] for k in meta["kinds"]},
                   class_counts=dict(meta["class_counts"]), traces=traces, settings=dict(meta["settings"]),
                   seconds=float(meta["seconds"]))

    def figure(self) -> Any:
        """ROME's summary figure: average indirect effect, token class x layer, one panel per kind."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        labels = [f"{TOKEN_CLASS_LABELS[c]} (n={self.class_counts.get(c, 0)})" for c in TOKEN_CLASSES]
        colors = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}
        fig = make_subplots(rows=1, cols=len(self.kinds), subplot_titles=[f"Average indirect effect: {k}"
                                                                           for k in self.kinds],
                            shared_yaxes=True, horizontal_spacing=0.06)
        for i, kind in enumerate(self.kinds, 1):
            z = self.class_effects[kind]
            fig.add_trace(go.Heatmap(z=z.tolist(), x=list(range(z.shape[1])), y=labels, showscale=False,
                                     colorscale=colors.get(kind.split("_")[-1], "Purples"),
                                     hovertemplate="layer %{x}<br>%{y}<br>AIE=%{z:.4f}<extra></extra>"),
                          row=1, col=i)
            fig.update_xaxes(title_text="layer", row=1, col=i)
        fig.update_yaxes(autorange="reversed")
        fig.update_layout(title=f"Causal traces averaged over {self.n_facts} facts", height=380,
                          width=360 * len(self.kinds) + 260)
        return fig


def aggregate(traces: Sequence[TraceResult], settings: dict[str, Any] | None = None,
              seconds: float = 0.0) -> FactsTraceResult:
    """Average the indirect effects of many traces by token class (ROME's summary)."""
    if not traces:
        raise ValueError("no traces to aggregate")
    kinds = traces[0].kinds
    n = traces[0].n_layers
    sums = {k: torch.zeros(len(TOKEN_CLASSES), n) for k in kinds}
    counts = dict.fromkeys(TOKEN_CLASSES, 0)
    for tr in traces:
        if tr.kinds != kinds or tr.n_layers != n:
            raise ValueError("traces to aggregate must have the same kinds and layer count")
        classes = tr.token_classes()
        for ci, c in enumerate(TOKEN_CLASSES):
            rows = [t for t in classes[c] if not bool(torch.isnan(tr.scores[kinds[0]][t]).any())]
            if not rows:  # the class does not occur in this prompt, or was not traced
                continue
            counts[c] += 1
            for k in kinds:
                sums[k][ci] += tr.indirect_effect(k)[rows].mean(0)
    effects = {k: sums[k] / torch.tensor([max(1, counts[c]) for c in TOKEN_CLASSES]).unsqueeze(1) for k in kinds}
    return FactsTraceResult(kinds=list(kinds), class_effects=effects, class_counts=counts, traces=list(traces),
                            settings=dict(settings or {}), seconds=seconds)


def trace_facts(
    model: Model,
    facts: Sequence[Fact],
    kinds: str | Sequence[str] = KINDS,
    target: str = "true",
    progress: bool = False,
    **trace_kwargs: Any,
) -> FactsTraceResult:
    """Trace many facts and average their indirect effects by token class (ROME's summary figure).

    ``target="true"`` scores each fact's true object (``" " + target_true``); ``"predicted"`` scores
    the model's own top-1 answer (ROME's "known facts" setting; the same for facts the model knows).
    Other keyword arguments go to :func:`trace` (samples, noise, window, seed, method, ...).
    """
    from tqdm.auto import tqdm

    if not facts:
        raise ValueError("no facts to trace")
    if target not in ("true", "predicted"):
        raise ValueError(f"target must be 'true' or 'predicted', got {target!r}")
    kinds_t = _check_kinds(kinds)
    started = time.perf_counter()
    traces = []
    for fact in tqdm(facts, desc="trace facts", disable=not progress):
        tgt = fact.true_continuation if target == "true" else None
        traces.append(trace(model, fact.text, fact.subject, target=tgt, kinds=kinds_t, **trace_kwargs))
    settings = {"kinds": list(kinds_t), "target": target, "model": model.name, **{
        k: v for k, v in trace_kwargs.items() if isinstance(v, (int, float, str, bool, type(None)))}}
    return aggregate(traces, settings, time.perf_counter() - started)


@dataclass
class LayerChoice:
    """The layer (ROME) or layer window (MEMIT) to edit, with the evidence it was chosen on.

    ``effect_by_layer[L]`` is the mean indirect effect of restoring ``kind`` at the last subject
    token with layer ``L`` (for mlp/attn: the window centred on ``L``), over ``n_facts`` facts.
    """

    layer: int
    layers: list[int]
    kind: str
    effect_by_layer: list[float]
    n_facts: int
    facts: list[str] = field(default_factory=list)
    window: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "layers": self.layers, "kind": self.kind, "window": self.window,
                "effect_by_layer": self.effect_by_layer, "n_facts": self.n_facts, "facts": self.facts,
                "settings": self.settings}

    def save(self, path: str | Path) -> Path:
        meta = self.to_dict()
        meta["trace_kind"] = meta.pop("kind")  # "kind" names the result type in a result directory
        effects = torch.tensor(meta.pop("effect_by_layer"), dtype=torch.float32)
        return save_dir(path, "layer_choice", meta, {"effect_by_layer": effects})

    @classmethod
    def load(cls, path: str | Path) -> LayerChoice:
        meta, arrays = load_dir(path, "layer_choice")
        return cls(layer=int(meta["layer"]), layers=[int(x) for x in meta["layers"]], kind=meta["trace_kind"],
                   effect_by_layer=arrays["effect_by_layer"].tolist(), n_facts=int(meta["n_facts"]),
                   facts=list(meta["facts"]), window=meta["window"], settings=dict(meta["settings"]))

    def figure(self) -> Any:
        """Bar chart of the evidence, the chosen layers highlighted."""
        import plotly.graph_objects as go

        colors = ["#2ca02c" if i in self.layers else "#c7c7c7" for i in range(len(self.effect_by_layer))]
        fig = go.Figure(go.Bar(x=list(range(len(self.effect_by_layer))), y=self.effect_by_layer,
                               marker_color=colors))
        fig.update_layout(title=f"{self.kind} indirect effect at the last subject token ({self.n_facts} facts): "
                                f"layer {self.layer}", xaxis_title="layer", yaxis_title="average indirect effect")
        return fig


def choose_layers(effect_by_layer: Sequence[float], window: int | None) -> tuple[int, list[int]]:
    """The best layer, and ``window`` consecutive layers centred on it (shifted to fit the model)."""
    effects = list(effect_by_layer)
    best = max(range(len(effects)), key=lambda i: effects[i])
    if window is None:
        return best, [best]
    if not isinstance(window, int) or window < 1 or window > len(effects):
        raise ValueError(f"window must be an integer in 1..{len(effects)} (the layer count), got {window!r}")
    start = min(max(0, best - window // 2), len(effects) - window)
    return best, list(range(start, start + window))


def locate(
    model: Model,
    facts: Sequence[Fact] | FactsTraceResult,
    kind: str = "mlp",
    window: int | None = None,
    **trace_kwargs: Any,
) -> LayerChoice:
    """The layer with the largest ``kind`` indirect effect at the last subject token, averaged over facts.

    Args:
        facts: facts to trace, or a :class:`FactsTraceResult` already computed (reused as is).
        kind: ``"mlp"`` (ROME's choice), ``"hidden"`` or ``"attn"``.
        window: ``None`` for one layer (ROME); an int for ``window`` consecutive layers centred on the
            best one (MEMIT), shifted to fit inside the model.
        trace_kwargs: passed to :func:`trace_facts` / :func:`trace` (samples, noise, method, ...).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    if isinstance(facts, FactsTraceResult):
        agg = facts
        if kind not in agg.class_effects:
            raise ValueError(f"the given traces have no kind {kind!r} (they have {', '.join(agg.kinds)})")
    else:  # only the last subject token is needed
        trace_kwargs.setdefault("tokens", "last_subject")
        agg = trace_facts(model, facts, kinds=(kind,), **trace_kwargs)
    if agg.class_counts.get("last_subject", 0) == 0:
        raise ValueError("no fact has a last subject token before the last token; cannot locate")
    effects = [float(x) for x in agg.effect(kind, "last_subject")]
    layer, layers = choose_layers(effects, window)
    trace_window = agg.settings.get("window", 10)
    return LayerChoice(layer=layer, layers=layers, kind=kind, effect_by_layer=effects, n_facts=agg.n_facts,
                       facts=[t.prompt for t in agg.traces], window=window,
                       settings={**agg.settings, "trace_window": trace_window})


# --------------------------------------------------------------------------------------------
# the saved kinds (knowscope.results registry)


def _trace_headline(m: dict[str, Any]) -> str:
    peak = (m.get("peak") or {}).get("mlp") or {}
    return (f"{m.get('prompt')!r} -> {m.get('target')!r}: clean {fmt(m.get('high_score'))}, "
            f"corrupted {fmt(m.get('low_score'))}" + (f", MLP peak layer {peak['layer']}" if peak else ""))


register("trace", TraceResult.load, _trace_headline)
register("trace_facts", FactsTraceResult.load,
         lambda m: f"{len(m.get('facts', m.get('prompts', [])) or [])} facts, kinds {m.get('kinds')}")
register("layer_choice", LayerChoice.load,
         lambda m: f"layer {m.get('layer')} ({m.get('trace_kind')} effect over {m.get('n_facts')} facts)")
