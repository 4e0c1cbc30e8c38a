"""GRACE (Hartvigsen et al. 2023): a codebook of keys at one layer, each with a deferral radius.

Every edit is an entry: the **key** is the input ``a`` of one layer's MLP output projection at the
edit prompt's last token (the position that predicts the answer), the **value** a vector trained to
replace that projection's output there, the **radius** how far from the key an input may lie and still
get the value. At inference an input whose nearest key lies within that key's radius gets the key's
value instead of the projection's output; any other input runs the model unchanged, which is why
GRACE keeps unrelated prompts untouched however many edits pile up (and why paraphrases, whose
activations lie farther away, mostly miss the memory).

The codebook update follows the paper and EasyEdit's ``GRACEAdapter``: Euclidean distance; a new
key with radius ``eps`` when the nearest key lies beyond ``eps + its radius``; when they overlap and
the labels agree the nearest key's radius grows to cover the new input (``eps_expand="coverage"``, or
``"moving_average"``: the key moves halfway too) and its value is trained on the new edit; when the
labels disagree both radii shrink to half their distance and the new key is added (unless the new input
is the key itself, edited again to another target: then the entry takes the new label and value). A
radius that would take in some position of every generic text (the model's own sampled text) routes
everything: an ``eps`` that does so is refused with the measured distances, and an expansion that
would is replaced by a key of its own (``"add-not-expand"``; on the default model this happened within
the first 50 subject-keyed edits at layer 12). Values start
uniform in [0, 1) (``val_init="cold"``) or at the projection's output (``"warm"``) and are trained with
Adam (``edit_lr``, ``n_iter`` steps) on the cross-entropy of the target tokens with the value in place
at the key position only. Where this differs from EasyEdit, on purpose:

* **Which positions are checked.** EasyEdit's adapter checks one position per forward pass (the last
  prompt token, kept fixed while it generates without a cache). Here every position is checked
  against the codebook. Under incremental decoding that is the same thing (each position is checked
  once, when it is the last), and it makes teacher-forced scoring agree with generation: the prompt's
  last position is routed whether or not target tokens follow it.
* **The label** is the edit's target token ids. EasyEdit compares the mean of the whole label tensor
  (prompt positions included), so two edits with the same target but prompts of another length count
  as different labels; the paper's label is the target.
* ``early_stop_nll``: training stops once every target token is the argmax and the mean NLL is below
  it (``None``: the reference's fixed ``n_iter``). On the default model this keeps an edit under 2 s.

Defaults for SmolLM2-135M: layer 25 of 30 (EasyEdit puts GRACE at layer 27 of LLaMA-7B's 32) and
``eps`` from the measured distances between keys (``benchmarks/bench_sequential.py`` and the
docstring of :meth:`GRACEHyperParams.for_model`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from knowscope.editing.hparams import is_smollm2_135m
from knowscope.editing.keys import check_request, facts_meta
from knowscope.editing.memory import MemoryMismatchError, SideMemory, memory_for, register_kind
from knowscope.editing.memory_fit import (
    TargetRows,
    generic_inputs,
    one_layer,
    output_hook,
    routes_everything,
    train_value,
)
from knowscope.editing.session import EditResult
from knowscope.facts import Fact
from knowscope.models import Model
from knowscope.models.blocks import block_input, run_block

logger = logging.getLogger(__name__)

KIND = "grace"
_FIELDS = ("keys", "values", "radii", "labels")


@dataclass(frozen=True)
class GRACEHyperParams:
    """GRACE's settings (see the module docstring); :meth:`for_model` gives per-model defaults."""

    layer: int = 0
    eps: float | None = None  # None: a tenth of the median distance between generic prompts' keys
    n_iter: int = 50
    edit_lr: float = 1.0
    val_init: str = "cold"
    eps_expand: str = "coverage"
    early_stop_nll: float | None = None
    seed: int = 0
    # where the key is read: "last" = the prompt's last token (GRACE); "subject" = the subject's last token
    key: str = "last"

    def __post_init__(self) -> None:
        _check(isinstance(self.layer, int) and self.layer >= 0, "layer", self.layer, "a layer index >= 0")
        _check(self.eps is None or self.eps > 0, "eps", self.eps, "None or > 0 (a radius of 0 routes nothing)")
        _check(isinstance(self.n_iter, int) and self.n_iter >= 1, "n_iter", self.n_iter, "an integer >= 1")
        _check(self.edit_lr > 0, "edit_lr", self.edit_lr, "> 0")
        _check(self.val_init in ("cold", "warm"), "val_init", self.val_init, "'cold' or 'warm'")
        _check(self.eps_expand in ("coverage", "moving_average"), "eps_expand", self.eps_expand,
               "'coverage' or 'moving_average'")
        _check(self.key in ("last", "subject"), "key", self.key, "'last' or 'subject'")
        _check(self.early_stop_nll is None or self.early_stop_nll > 0, "early_stop_nll", self.early_stop_nll,
               "None or > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> GRACEHyperParams:
        return replace(self, **changes)

    @classmethod
    def for_model(cls, model: Model, **overrides: Any) -> GRACEHyperParams:
        """Defaults for ``model`` (``overrides`` applied; ``key`` among them picks the layer and radius).

        ``key="last"`` (GRACE): layer at 5/6 of the depth (EasyEdit: 27 of LLaMA-7B's 32).
        ``key="subject"``: layer at 2/5 of the depth, where the subject's last token holds the subject
        and little of the words around it, so a paraphrase's key lands near the edit's.
        On SmolLM2-135M the radius is measured (16 edits of the extended set, edit prompt vs paraphrase
        and neighbourhood keys): at layer 25 the last-token keys of other subjects' prompts of the same
        relation lie as close as 2.4 to an edit's key, paraphrases 2-22 (median 7.7), so ``eps=2.5``;
        at layer 12 subject keys ``eps=3``. Other models get ``eps=None``: a tenth of the median distance
        between the keys of generic prompts (the model's own sampled text), measured at the first edit.
        """
        n = model.arch.n_layers
        key = overrides.get("key", cls.key)
        layer = round(5 * n / 6) if key == "last" else round(2 * n / 5)
        eps = (2.5 if key == "last" else 3.0) if is_smollm2_135m(model) else None
        base = cls(layer=max(0, min(n - 1, layer)), eps=eps, early_stop_nll=0.01, key=key)
        return replace(base, **overrides)


def _check(ok: bool, name: str, value: Any, want: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {want}, got {value!r}")


def label_of(target_ids: Sequence[int]) -> int:
    """An edit's label: a 63-bit hash of its target token ids (two edits agree iff their targets do)."""
    digest = hashlib.blake2b(",".join(map(str, target_ids)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@register_kind
class GraceMemory(SideMemory):
    """The codebook: ``keys [n, d_mlp]``, ``values [n, d_model]``, ``radii [n]``, ``labels [n]`` (float32 / int64).

    An edit's arrays are the rows it writes: ``rows`` (indices; ``>= n`` appends) and each field's new rows.
    """

    kind = KIND
    higher_routes = False
    #: the codebook's row fields (every one has the same number of rows), and its name in messages
    fields: tuple[str, ...] = _FIELDS
    label: str = "GRACE"

    def __init__(self, model: Model, layer: int, spec: dict[str, Any]) -> None:
        super().__init__(model, layer, spec)
        dev = model.device
        self.keys = torch.zeros(0, self.d_in, device=dev)
        self.values = torch.zeros(0, self.d_out, device=dev)
        self.radii = torch.zeros(0, device=dev)
        self.labels = torch.zeros(0, dtype=torch.long, device=dev)

    @property
    def size(self) -> int:
        return int(getattr(self, self.fields[0]).shape[0])

    def check(self, arrays: dict[str, Tensor], meta: dict[str, Any]) -> None:
        missing = [k for k in ("rows", *_FIELDS) if k not in arrays]
        if missing:
            raise MemoryMismatchError(f"a GRACE edit needs arrays {missing}")
        rows = arrays["rows"]
        k = int(rows.shape[0])
        want = {"keys": (k, self.d_in), "values": (k, self.d_out), "radii": (k,), "labels": (k,)}
        for name, shape in want.items():
            if tuple(arrays[name].shape) != shape:
                raise MemoryMismatchError(f"GRACE edit array {name!r} has shape {tuple(arrays[name].shape)}; this "
                                          f"model's memory at layer {self.layer} takes {shape}")
        self.check_rows(rows)
        if not torch.isfinite(arrays["values"]).all() or not (arrays["radii"] > 0).all():
            raise MemoryMismatchError("GRACE edit has non-finite values or a radius <= 0")

    def check_rows(self, rows: Tensor) -> None:
        """Refuse an edit's ``rows`` unless they are distinct and its new rows append right after the codebook."""
        new = sorted(int(r) for r in rows if int(r) >= self.size)
        if new != list(range(self.size, self.size + len(new))) or len(set(rows.tolist())) != int(rows.shape[0]):
            raise MemoryMismatchError(f"{self.label} edit rows {rows.tolist()} do not fit a codebook of {self.size} "
                                      "entries")

    def _write(self, arrays: dict[str, Tensor]) -> Any:
        rows = [int(r) for r in arrays["rows"]]
        old_size = self.size
        saved = {r: tuple(getattr(self, f)[r].clone() for f in self.fields) for r in rows if r < old_size}
        grow = max(rows) + 1 - old_size if rows else 0
        if grow > 0:
            for f in self.fields:
                t = getattr(self, f)
                setattr(self, f, torch.cat([t, torch.zeros((grow, *t.shape[1:]), dtype=t.dtype, device=t.device)]))
        dev = getattr(self, self.fields[0]).device
        idx = torch.tensor(rows, device=dev)
        for f in self.fields:
            getattr(self, f)[idx] = arrays[f].to(device=dev, dtype=getattr(self, f).dtype)
        return old_size, saved

    def _unwrite(self, token: Any) -> None:
        old_size, saved = token
        for f in self.fields:
            setattr(self, f, getattr(self, f)[:old_size].clone())
        for r, vals in saved.items():
            for f, v in zip(self.fields, vals, strict=True):
                getattr(self, f)[r] = v

    def nearest(self, a: Float[Tensor, "n d_mlp"]) -> tuple[Tensor, Tensor]:
        """Distance to the nearest key and its index, per row (``inf`` / ``-1`` with an empty codebook)."""
        if self.size == 0:
            return (torch.full((a.shape[0],), float("inf"), device=a.device),
                    torch.full((a.shape[0],), -1, dtype=torch.long, device=a.device))
        d = torch.cdist(a.float(), self.keys)
        return d.min(dim=1)

    def rewrite(self, a: Float[Tensor, "batch pos d_mlp"],
                out: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        dist, idx = self.nearest(a.reshape(-1, a.shape[-1]))
        hit = dist <= self.radii[idx]
        if not bool(hit.any()):
            return out
        flat = out.reshape(-1, out.shape[-1]).clone()
        flat[hit] = self.values[idx[hit]].to(flat.dtype)
        return flat.reshape(out.shape)

    def scores(self, a: Float[Tensor, "n d_mlp"]) -> tuple[Tensor, Tensor, list[str]]:
        dist, idx = self.nearest(a)
        radius = self.radii[idx] if self.size else torch.zeros_like(dist)
        return dist, radius, [f"grace[{int(i)}]" for i in idx]

    def state(self) -> dict[str, Tensor]:
        return {f: getattr(self, f).clone() for f in self.fields}

    def load_state(self, arrays: dict[str, Tensor]) -> None:
        for f in self.fields:
            setattr(self, f, arrays[f].to(self.model.device).clone())


# --------------------------------------------------------------------------------------------------
# the editor


def _spec(model: Model) -> dict[str, Any]:
    return {"d_in": model.arch.d_mlp, "d_out": model.arch.d_model, "distance": "euclidean"}


def edit(model: Model, requests: Sequence[Fact], layers: Any = None, hparams: GRACEHyperParams | None = None,
         stats: Any = None) -> EditResult:
    """GRACE-edit each request in order (each sees the codebook with the earlier ones written).

    Returns one :class:`EditResult` whose ``memory`` arrays are the codebook rows written; the model and
    its memory are unchanged until an :class:`~knowscope.editing.session.EditSession` applies it. The
    codebook the edit builds on is the one the model carries now (a session's earlier GRACE edits).
    ``stats`` is accepted for the editors' common signature and not used.
    """
    t0 = time.perf_counter()
    requests = list(requests)
    if not requests:
        raise ValueError("requests is empty; give at least one Fact to edit")
    hp = hparams or GRACEHyperParams.for_model(model)
    for fact in requests:
        check_request(model, fact)
    layer = one_layer(layers, hp.layer, "GRACE", model)
    meta = {"kind": KIND, "layer": layer, "spec": _spec(model)}
    return edit_codebook(model, requests, hp, meta, GraceMemory, _edit_one, t0)


def edit_codebook(model: Model, requests: list[Fact], hp: Any, meta: dict[str, Any], book_cls: type[GraceMemory],
                  edit_one: Any, t0: float) -> EditResult:
    """The codebook editors' common driver (GRACE, FactKey): each request in order through
    ``edit_one(model, book, layer, fact, hp) -> info`` on a scratch copy of the model's memory (the live one
    detached, the RNG forked and seeded with ``hp.seed``); the result carries the rows that changed."""
    layer = meta["layer"]
    live = memory_for(model, meta)  # the attached codebook, or a new empty one; refuses another kind/layer
    book = book_cls(model, layer, meta["spec"])  # a scratch copy: the edit is computed on it
    book.load_state(live.state())
    base_size = book.size
    infos = []
    with torch.random.fork_rng(devices=[]), live.detached():
        torch.manual_seed(hp.seed)
        for fact in requests:
            infos.append(edit_one(model, book, layer, fact, hp))
    changed = changed_rows(live, book, base_size)
    arrays = {"rows": changed, **{f: getattr(book, f)[changed].cpu().clone() for f in book.fields}}
    return EditResult(
        method=meta["kind"], deltas={}, fingerprint=model.fingerprint, layers=[layer], hparams=hp.to_dict(),
        requests=facts_meta(requests), model_name=model.name, seconds=time.perf_counter() - t0,
        extra={"memory": meta, "per_request": infos}, memory={k: v.cpu() for k, v in arrays.items()})


def changed_rows(live: GraceMemory, book: GraceMemory, base_size: int) -> Tensor:
    """The rows of ``book`` (a scratch copy of ``live`` that edits were computed on) that differ from ``live``
    or are new: what an edit writes."""
    rows = [r for r in range(base_size)
            if any(not torch.equal(getattr(live, f)[r], getattr(book, f)[r]) for f in book.fields)]
    rows += list(range(base_size, book.size))
    return torch.tensor(rows, dtype=torch.long)


def _edit_one(model: Model, book: GraceMemory, layer: int, fact: Fact, hp: GRACEHyperParams) -> dict[str, Any]:
    """One request into ``book``: the codebook rule, then the chosen entry's value trained."""
    rows = TargetRows.build(model, [(fact.text, fact.new_continuation)])
    key_pos = rows.last_prompt[0] if hp.key == "last" else model.subject_span(fact.prompt, fact.subject)[1] - 1
    label = label_of(rows.targets[0])
    module = book.module
    h = block_input(model, layer, rows.tokens)
    seen: dict[str, Tensor] = {}

    def keep(a: Tensor, out: Tensor) -> Tensor:
        seen["a"], seen["out"] = a[0, key_pos].detach().float(), out[0, key_pos].detach().float()
        return out

    with torch.no_grad(), output_hook(module, keep):
        run_block(model, layer, h)
    query, warm = seen["a"], seen["out"]
    dist, idx = book.nearest(query[None])
    d, i = float(dist[0]), int(idx[0])
    eps = _eps(model, layer, hp)
    action, radius = "add", eps
    if i >= 0 and d <= eps + float(book.radii[i]):
        if int(book.labels[i]) == label:
            key = 0.5 * book.keys[i] + 0.5 * query if hp.eps_expand == "moving_average" else book.keys[i]
            grown = max(float(book.radii[i]), d)
            if not _routes_everything(book, key, grown)[0]:
                action = "expand"
                book.keys[i] = key
                book.radii[i] = grown
            else:  # growing this entry would take in every generic text: a key of its own instead
                action, radius = "add-not-expand", min(eps, d / 2)
        elif d <= 1e-6 * max(1.0, float(query.norm())):
            action = "replace"  # the same input edited again to another target: the entry takes the new label
            book.labels[i] = label
        else:
            action, radius = "split", d / 2
            book.radii[i] = d / 2 - 1e-5
    affects = _affects(action, i, d, float(book.radii[i]) if i >= 0 else 0.0, request=fact.text)
    if action in ("expand", "replace"):
        row = i
    else:
        everything, score = _routes_everything(book, query, radius)
        if everything:
            raise ValueError(
                f"GRACE radius {radius:.3g} at layer {layer} routes everything: every generic text has a position "
                f"within it of the new key (the farthest text's nearest position lies at {score:.3g}); give a "
                "smaller eps")
        row = book.size
        init = torch.rand(book.d_out, device=query.device) if hp.val_init == "cold" else warm
        _append(book, query, init, radius, label)
    value, steps, nll = train_value(model, layer, rows, key_pos, book.values[row].clone(), warm,
                                    n_iter=hp.n_iter, lr=hp.edit_lr, early_stop_nll=hp.early_stop_nll)
    book.values[row] = value
    return {"action": action, "row": row, "distance_to_nearest": None if i < 0 else d,
            "radius": float(book.radii[row]), "steps": steps, "final_nll": nll, "affects": affects}


def _affects(action: str, row: int, distance: float, radius_now: float, request: str) -> dict[str, Any] | None:
    """What an edit does to an earlier codebook entry (``None``: nothing): never silently. ``radius_now`` is
    the entry's radius after the rule ran. Logged as a warning and kept in the result's ``per_request``."""
    if action == "replace":
        effect = "overwritten: the same input now answers with this edit's target (the earlier edit is gone)"
    elif action == "split":
        effect = (f"radius shrunk to {radius_now:.3g} (half the distance {distance:.3g}): inputs the earlier edit "
                  "routed farther than that now miss it")
    elif action == "expand":
        effect = f"radius grown to {radius_now:.3g} and its value retrained on this edit too (same target)"
    else:
        return None
    logger.warning("GRACE edit %r %s codebook entry %d: %s", request, action, row, effect)
    return {"row": row, "action": action, "effect": effect}


def _routes_everything(book: GraceMemory, key: Tensor, radius: float) -> tuple[bool, float]:
    """Would an entry (``key``, ``radius``) take in some position of every generic text?"""
    def scores(a: Tensor) -> tuple[Tensor, Tensor]:
        return torch.cdist(a, key[None].float())[:, 0], torch.full((a.shape[0],), float(radius))

    everything, score, _ = routes_everything(book, scores)
    return everything, score


def _append(book: GraceMemory, key: Tensor, value: Tensor, radius: float, label: int) -> None:
    book.keys = torch.cat([book.keys, key[None]])
    book.values = torch.cat([book.values, value[None].float()])
    book.radii = torch.cat([book.radii, torch.tensor([radius], device=book.radii.device)])
    book.labels = torch.cat([book.labels, torch.tensor([label], device=book.labels.device)])


def _eps(model: Model, layer: int, hp: GRACEHyperParams) -> float:
    if hp.eps is not None:
        return float(hp.eps)
    g = torch.stack([a[-1] for a in generic_inputs(model, layer)])
    d = torch.pdist(g) if len(g) > 1 else g.norm(dim=-1)
    return 0.1 * float(d.median())
