"""FactKey: a lifelong memory editor whose entries are keyed by the fact, i.e. by subject AND relation.

GRACE keys an entry at one position. Keyed at the prompt's last token it keeps everything else but
misses most paraphrases (their last-token activations lie far apart); keyed at the subject's last token
it generalises, but its value replaces the subject itself, so every other fact about that subject
answers with the new target too ("France's official language is" -> " Italian" after an edit of France's
capital). A FactKey entry has two keys, each with its own radius, and answers only where both hold:

* the **subject key**: the value projection's input ``a`` at an early layer (``subject_layer``) at the
  subject's last token, standardised per dimension (centre and scale measured once, on the model's own
  sampled text, and kept with the memory). There ``a`` is mostly the subject's own tokens, so the subject
  written anywhere in a prompt ("In Mexico, ...", "Mexico's ...") lands close to it and other subjects far
  away. Standardising matters: raw, a few dimensions that every token right after BOS shares make all
  prompt-initial subjects ("Germany is ...", "Marseille is ...") look alike;
* the **relation key**: ``a`` at the memory's layer (late, ``layer``) at the prompt's last token, where the
  model has gathered what the prompt asks; paraphrases of a relation land close to it and the same
  subject's other relations far away.

At inference a position routes to an entry when some position up to it (itself included) lies within
the entry's subject radius of its subject key and the position itself within its relation radius of the
relation key (cosine distances); the entry whose relation key is nearest (relative to its radius) wins,
and its **value** replaces the projection's output there, as in GRACE. The value is trained like
GRACE's (the target's NLL with the value in place at the prompt's last position). Other subjects
(neighbourhood prompts) fail the subject key; the subject's other relations fail the relation key.

Because a position's subject flag depends on the positions before it, the memory keeps, per batch row,
whether its subject has been seen: a forward pass over several positions starts afresh; a pass over one
position (incremental decoding with a KV cache) continues the previous pass. Packed scoring, which puts
several prompts in one row, is switched off while the memory is attached (:attr:`position_local`).

The codebook rule per edit, on the edit's own prompt routed through the entries so far: nothing routes ->
a new entry; an entry with the same target routes -> that entry's value is trained on this prompt too
("reuse"); an entry with another target routes at the same keys (both distances ~0) -> the same fact edited
again, the entry takes the new target ("replace", reported); else both relation radii shrink to half the
distance between the two relation keys ("split", reported). Every effect on an earlier entry is kept in
the result's ``per_request[i]["affects"]`` and logged; an edit of the same subject under another relation
is a new entry and leaves the earlier one as it was.

Defaults for SmolLM2-135M (30 layers): subject key at layer 1, relation key and value at layer 22, radii
0.25 (subject) and 0.45 (relation) in cosine distance, chosen on a tuning split of the extended facts
(every 4th fact) and reported on the rest (docs/findings.md, benchmarks/bench_lifelong.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from knowscope.editing.grace import GraceMemory, changed_rows, label_of
from knowscope.editing.hparams import is_smollm2_135m
from knowscope.editing.keys import check_request, context_templates, facts_meta
from knowscope.editing.memory import MemoryMismatchError, Route, memory_for, register_kind, value_inputs, value_module
from knowscope.editing.memory_fit import TargetRows, generic_inputs, one_layer, train_value
from knowscope.editing.session import EditResult
from knowscope.facts import Fact
from knowscope.models import Model

logger = logging.getLogger(__name__)

KIND = "factkey"
_FIELDS = ("subject_keys", "relation_keys", "values", "subject_radii", "relation_radii", "labels")


@dataclass(frozen=True)
class FactKeyHyperParams:
    """FactKey's settings (see the module docstring); :meth:`for_model` gives per-model defaults."""

    layer: int = 0  # the memory's layer: relation key read and value written here
    subject_layer: int = 0  # where the subject key is read
    subject_radius: float = 0.25  # cosine distance (standardised subject activations)
    relation_radius: float = 0.45  # cosine distance
    n_iter: int = 50
    edit_lr: float = 1.0
    val_init: str = "cold"
    early_stop_nll: float | None = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("layer", "subject_layer"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"{name} must be a layer index >= 0, got {value!r}")
        for name in ("subject_radius", "relation_radius"):
            value = getattr(self, name)
            if not 0 < value < 2:
                raise ValueError(f"{name} must be a cosine distance in (0, 2), got {value!r}")
        if self.subject_layer > self.layer:
            raise ValueError(f"subject_layer ({self.subject_layer}) must not lie above layer ({self.layer}): the "
                             "subject key must be read before the value is written")
        if not (isinstance(self.n_iter, int) and self.n_iter >= 1):
            raise ValueError(f"n_iter must be an integer >= 1, got {self.n_iter!r}")
        if not self.edit_lr > 0:
            raise ValueError(f"edit_lr must be > 0, got {self.edit_lr!r}")
        if self.val_init not in ("cold", "warm"):
            raise ValueError(f"val_init must be 'cold' or 'warm', got {self.val_init!r}")
        if self.early_stop_nll is not None and not self.early_stop_nll > 0:
            raise ValueError(f"early_stop_nll must be None or > 0, got {self.early_stop_nll!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_(self, **changes: Any) -> FactKeyHyperParams:
        return replace(self, **changes)

    @classmethod
    def for_model(cls, model: Model, **overrides: Any) -> FactKeyHyperParams:
        """Defaults for ``model``: subject key at layer 1 (the first layer whose MLP has seen the subject's
        earlier tokens), relation key and value at 11/15 of the depth.

        On SmolLM2-135M (90 tuning facts of the extended set, spread over its relations; 270 paraphrases,
        63 probes of the subject's other relations): at layer 1, standardised, a cosine radius of 0.25 takes
        in 0.99 of the paraphrases' subjects and 0.01% of 8,000 prompt pairs of other subjects (unstandardised
        prompt-initial subjects lie 0.02 apart at any radius); at layer 22 a radius of 0.45 takes in 0.93 of
        the paraphrases' last tokens and none of the subject's other relations (nearest 0.56)."""
        n = model.arch.n_layers
        base = cls(layer=min(n - 1, round(11 * n / 15)), subject_layer=min(1, n - 1))
        if not is_smollm2_135m(model):
            logger.info("FactKey radii were measured on SmolLM2-135M; on %s check them on facts of your own",
                        model.name)
        return replace(base, **overrides)


def _unit(x: Tensor) -> Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def _cos_dist(a: Float[Tensor, "*lead d"], keys: Float[Tensor, "n d"]) -> Float[Tensor, "*lead n"]:
    """Cosine distance of every row of ``a`` to every (unit) key."""
    return 1.0 - _unit(a) @ keys.T


#: memory-wide arrays (not rows): the subject activations' centre and scale, fixed by the first edit
_STATS = ("subject_center", "subject_scale")


@torch.no_grad()
def subject_stats(model: Model, layer: int) -> tuple[Float[Tensor, " d_mlp"], Float[Tensor, " d_mlp"]]:
    """Per-dimension mean and standard deviation of ``a`` at ``layer`` over the model's own sampled text
    (32 texts of 20 tokens, seeded; every position but BOS), the scale floored at a tenth of its median."""
    texts = [t.replace("{}", "").strip() for t in context_templates(model, ((20, 32),), seed=7)[1:]]
    a = torch.cat([x[1:] for x in value_inputs(model, layer, [t for t in texts if t] or ["The"])])
    center, scale = a.mean(dim=0), a.std(dim=0)
    return center.float(), torch.maximum(scale, 0.1 * scale.median()).float()


@register_kind
class FactKeyMemory(GraceMemory):
    """The codebook: ``subject_keys`` / ``relation_keys [n, d_mlp]`` (unit vectors), ``values [n, d_model]``,
    ``subject_radii`` / ``relation_radii [n]``, ``labels [n]``. The subject key is read at
    ``spec["subject_layer"]``, the relation key and the value at the memory's layer."""

    kind = KIND
    higher_routes = False
    fields = _FIELDS
    #: a position's routing depends on earlier positions: scoring must not pack prompts into one row
    position_local = False

    def __init__(self, model: Model, layer: int, spec: dict[str, Any]) -> None:
        super(GraceMemory, self).__init__(model, layer, spec)
        self.subject_layer = int(spec.get("subject_layer", -1))
        if not 0 <= self.subject_layer <= layer:
            raise MemoryMismatchError(f"a FactKey memory needs a subject_layer in 0..{layer}, got {spec!r}")
        self.subject_module = value_module(model, self.subject_layer)
        dev = model.device
        self.subject_keys = torch.zeros(0, self.d_in, device=dev)
        self.relation_keys = torch.zeros(0, self.d_in, device=dev)
        self.values = torch.zeros(0, self.d_out, device=dev)
        self.subject_radii = torch.zeros(0, device=dev)
        self.relation_radii = torch.zeros(0, device=dev)
        self.labels = torch.zeros(0, dtype=torch.long, device=dev)
        self.subject_center = torch.zeros(self.d_in, device=dev)
        self.subject_scale = torch.ones(self.d_in, device=dev)
        self._flags: Tensor | None = None  # this pass: [batch, pos, n] subject seen up to each position
        self._prefix: Tensor | None = None  # the last pass's flags at its last position, [batch, n]

    # --- hooks: the subject layer's flags, then the rewrite at the memory's layer ------------------
    def attach(self) -> None:
        if self.attached:
            return
        super().attach()
        self._handles.append(self.subject_module.hook_in.register_forward_hook(self._read_subject))

    def detach(self) -> None:
        super().detach()
        self._flags = self._prefix = None

    def standardise(self, a: Float[Tensor, "*lead d_mlp"]) -> Float[Tensor, "*lead d_mlp"]:
        """Subject-layer activations as the subject keys are stored: centred, scaled, unit length."""
        return _unit((a.float() - self.subject_center) / self.subject_scale)

    def subject_dist(self, a: Float[Tensor, "*lead d_mlp"]) -> Float[Tensor, "*lead n"]:
        """Cosine distance of standardised subject-layer activations to every subject key."""
        return 1.0 - self.standardise(a) @ self.subject_keys.T

    def subject_match(self, a: Float[Tensor, "batch pos d_mlp"]) -> Bool[Tensor, "batch pos n"]:
        """Per position and entry: is the position within the entry's subject radius?"""
        return self.subject_dist(a) <= self.subject_radii

    def _read_subject(self, module: nn.Module, args: Any, output: Tensor) -> None:
        if not self.active:
            self._flags = self._prefix = None
            return
        match = self.subject_match(output)
        batch, pos, n = match.shape
        if pos == 1 and self._prefix is not None and tuple(self._prefix.shape) == (batch, n):
            flags = match | self._prefix[:, None]  # one more position of the same rows (KV-cache decoding)
        else:
            flags = match.to(torch.uint8).cummax(dim=1).values.bool()
        self._flags, self._prefix = flags, flags[:, -1]

    def rewrite(self, a: Float[Tensor, "batch pos d_mlp"],
                out: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        flags, self._flags = self._flags, None
        if flags is None or tuple(flags.shape[:2]) != tuple(a.shape[:2]) or flags.shape[2] != self.size:
            return out  # the subject layer did not run in this pass (a partial forward from above it)
        ratio = _cos_dist(a, self.relation_keys) / self.relation_radii
        ratio = torch.where(flags, ratio, torch.full_like(ratio, float("inf")))
        best, idx = ratio.min(dim=-1)
        hit = best <= 1.0
        if not bool(hit.any()):
            return out
        new = out.clone()
        new[hit] = self.values[idx[hit]].to(new.dtype)
        return new

    # --- edits --------------------------------------------------------------------------------------
    def check(self, arrays: dict[str, Tensor], meta: dict[str, Any]) -> None:
        missing = [k for k in ("rows", *_FIELDS, *_STATS) if k not in arrays]
        if missing:
            raise MemoryMismatchError(f"a FactKey edit needs arrays {missing}")
        for name in _STATS:
            if tuple(arrays[name].shape) != (self.d_in,) or not bool(torch.isfinite(arrays[name]).all()):
                raise MemoryMismatchError(f"FactKey edit array {name!r} must be {self.d_in} finite numbers")
            if self.size and not torch.equal(arrays[name].to(getattr(self, name)), getattr(self, name)):
                raise MemoryMismatchError(f"this FactKey edit was made with another {name.replace('_', ' ')} than "
                                          "the memory the model carries (a memory made elsewhere)")
        if not bool((arrays["subject_scale"] > 0).all()):
            raise MemoryMismatchError("FactKey edit's subject scale must be > 0")
        k = int(arrays["rows"].shape[0])
        want = {"subject_keys": (k, self.d_in), "relation_keys": (k, self.d_in), "values": (k, self.d_out),
                "subject_radii": (k,), "relation_radii": (k,), "labels": (k,)}
        for name, shape in want.items():
            if tuple(arrays[name].shape) != shape:
                raise MemoryMismatchError(f"FactKey edit array {name!r} has shape {tuple(arrays[name].shape)}; "
                                          f"this model's memory at layer {self.layer} takes {shape}")
        rows = arrays["rows"]
        new = sorted(int(r) for r in rows if int(r) >= self.size)
        if new != list(range(self.size, self.size + len(new))) or len(set(rows.tolist())) != k:
            raise MemoryMismatchError(f"FactKey edit rows {rows.tolist()} do not fit a codebook of {self.size} "
                                      "entries")
        finite = all(bool(torch.isfinite(arrays[f]).all()) for f in _FIELDS[:5])
        radii_ok = all(bool(((arrays[f] > 0) & (arrays[f] < 2)).all()) for f in ("subject_radii", "relation_radii"))
        if not finite or not radii_ok:
            raise MemoryMismatchError("FactKey edit has non-finite arrays or a radius outside (0, 2)")

    def _write(self, arrays: dict[str, Tensor]) -> Any:
        stats = tuple(getattr(self, f).clone() for f in _STATS)
        for f in _STATS:
            setattr(self, f, arrays[f].to(device=self.values.device, dtype=torch.float32).clone())
        return super()._write(arrays), stats

    def _unwrite(self, token: Any) -> None:
        rows_token, stats = token
        super()._unwrite(rows_token)
        for f, v in zip(_STATS, stats, strict=True):
            setattr(self, f, v)

    def state(self) -> dict[str, Tensor]:
        return {**super().state(), **{f: getattr(self, f).clone() for f in _STATS}}

    def load_state(self, arrays: dict[str, Tensor]) -> None:
        super().load_state(arrays)
        for f in _STATS:
            setattr(self, f, arrays[f].to(self.model.device).float().clone())

    def nearest(self, a: Float[Tensor, "n d_mlp"]) -> tuple[Tensor, Tensor]:
        """Relation-key cosine distance to the nearest entry and its index (the subject key not applied)."""
        if self.size == 0:
            return (torch.full((a.shape[0],), float("inf"), device=a.device),
                    torch.full((a.shape[0],), -1, dtype=torch.long, device=a.device))
        return _cos_dist(a, self.relation_keys).min(dim=1)

    def scores(self, a: Float[Tensor, "n d_mlp"]) -> tuple[Tensor, Tensor, list[str]]:
        """The relation key alone (the subject key needs the positions before: see :meth:`route`)."""
        dist, idx = self.nearest(a)
        radius = self.relation_radii[idx] if self.size else torch.zeros_like(dist)
        return dist, radius, [f"factkey[{int(i)}]" for i in idx]

    # --- routing, as a user sees it -------------------------------------------------------------------
    def ratios(self, a_subject: Float[Tensor, "pos d_mlp"],
               a_relation: Float[Tensor, "pos d_mlp"]) -> Float[Tensor, "pos n"]:
        """Per position and entry, the larger of (nearest subject distance so far / subject radius) and
        (relation distance / relation radius): the position routes to an entry when it is <= 1."""
        s = (self.subject_dist(a_subject) / self.subject_radii).cummin(dim=0).values
        r = _cos_dist(a_relation, self.relation_keys) / self.relation_radii
        return torch.maximum(s, r)

    @torch.no_grad()
    def route(self, prompts: Sequence[str]) -> list[Route]:
        """Per prompt, the position nearest to routing (score: the ratio of :meth:`ratios`, threshold 1)."""
        if not prompts:
            return []
        with self.paused():
            subj = value_inputs(self.model, self.subject_layer, prompts)
            rel = value_inputs(self.model, self.layer, prompts)
        out = []
        for p, a_s, a_r in zip(prompts, subj, rel, strict=True):
            tokens = self.model.to_str_tokens(p)
            if not self.size:
                out.append(Route(p, "main", float("inf"), 1.0, False, a_r.shape[0] - 1, tokens[-1]))
                continue
            best, idx = self.ratios(a_s, a_r).min(dim=1)
            t = int(best.argmin())
            routed = self.n_edits > 0 and float(best[t]) <= 1.0
            out.append(Route(p, f"factkey[{int(idx[t])}]" if routed else "main", float(best[t]), 1.0, routed, t,
                             tokens[t] if t < len(tokens) else ""))
        return out


# --------------------------------------------------------------------------------------------------
# the editor


def _spec(model: Model, hp: FactKeyHyperParams) -> dict[str, Any]:
    return {"d_in": model.arch.d_mlp, "d_out": model.arch.d_model, "distance": "cosine",
            "subject_layer": hp.subject_layer}


def edit(model: Model, requests: Sequence[Fact], layers: Any = None, hparams: FactKeyHyperParams | None = None,
         stats: Any = None) -> EditResult:
    """FactKey-edit each request in order (each sees the codebook with the earlier ones written).

    ``layers``: the memory's layer (one index; default ``hparams.layer``). Returns one :class:`EditResult`
    whose ``memory`` arrays are the rows written; apply it with an EditSession. ``stats`` is accepted for
    the editors' common signature and not used."""
    t0 = time.perf_counter()
    requests = list(requests)
    if not requests:
        raise ValueError("requests is empty; give at least one Fact to edit")
    hp = hparams or FactKeyHyperParams.for_model(model)
    layer = one_layer(layers, hp.layer, "FactKey", model)
    if hp.subject_layer > layer:
        raise ValueError(f"FactKey's subject layer {hp.subject_layer} lies above its memory layer {layer}")
    for fact in requests:
        check_request(model, fact)
    meta = {"kind": KIND, "layer": layer, "spec": _spec(model, hp)}
    live = memory_for(model, meta)
    book = FactKeyMemory(model, layer, meta["spec"])
    book.load_state(live.state())
    if book.size == 0:
        with live.detached():
            book.subject_center, book.subject_scale = subject_stats(model, hp.subject_layer)
    base_size = book.size
    infos = []
    with torch.random.fork_rng(devices=[]), live.detached():
        torch.manual_seed(hp.seed)
        for fact in requests:
            infos.append(_edit_one(model, book, layer, fact, hp))
    changed = changed_rows(live, book, base_size)
    arrays = {"rows": changed, **{f: getattr(book, f)[changed].cpu().clone() for f in _FIELDS},
              **{f: getattr(book, f).cpu().clone() for f in _STATS}}
    return EditResult(
        method=KIND, deltas={}, fingerprint=model.fingerprint, layers=[layer], hparams=hp.to_dict(),
        requests=facts_meta(requests), model_name=model.name, seconds=time.perf_counter() - t0,
        extra={"memory": meta, "per_request": infos}, memory={k: v.cpu() for k, v in arrays.items()})


@torch.no_grad()
def _read_keys(model: Model, book: FactKeyMemory, rows: TargetRows) -> dict[str, Tensor]:
    """``a`` at the subject layer (every prompt position) and ``a`` / the projection's output at the
    memory's layer at the prompt's last position, from one forward pass of the weights alone."""
    last = rows.last_prompt[0]
    seen: dict[str, Tensor] = {}
    hooks = [book.subject_module.hook_in.register_forward_hook(
                 lambda m, args, out: seen.__setitem__("subject", out[0, : last + 1].float().clone())),
             book.module.hook_in.register_forward_hook(
                 lambda m, args, out: seen.__setitem__("relation", out[0, last].float().clone())),
             book.module.hook_out.register_forward_hook(
                 lambda m, args, out: seen.__setitem__("warm", out[0, last].float().clone()))]
    try:
        model(rows.tokens[:, : last + 1])
    finally:
        for h in hooks:
            h.remove()
    return seen


def _edit_one(model: Model, book: FactKeyMemory, layer: int, fact: Fact, hp: FactKeyHyperParams) -> dict[str, Any]:
    """One request into ``book``: the codebook rule, then the chosen entry's value trained."""
    rows = TargetRows.build(model, [(fact.text, fact.new_continuation)])
    last = rows.last_prompt[0]
    subject_pos = model.subject_span(fact.prompt, fact.subject)[1] - 1
    label = label_of(rows.targets[0])
    seen = _read_keys(model, book, rows)
    subject_key, relation_key = book.standardise(seen["subject"][subject_pos]), _unit(seen["relation"])
    action, row, affects = "add", book.size, None
    rel_radius = hp.relation_radius
    if book.size:
        ratio = book.ratios(seen["subject"], seen["relation"][None].expand(last + 1, -1))[-1]
        i = int(ratio.argmin())
        if float(ratio[i]) <= 1.0:  # the edit's own prompt routes to entry i today
            s_dist = float(1 - book.subject_keys[i] @ subject_key)
            r_dist = float(1 - book.relation_keys[i] @ relation_key)
            if int(book.labels[i]) == label:
                action, row = "reuse", i
            elif max(s_dist, r_dist) <= 1e-4:
                action, row = "replace", i
                book.labels[i] = label
            else:
                action = "split"
                rel_radius = min(hp.relation_radius, max(r_dist / 2, 1e-6))
                book.relation_radii[i] = max(r_dist / 2 - 1e-6, 1e-6)
            affects = _affects(action, i, r_dist, float(book.relation_radii[i]), fact.text)
    if action in ("add", "split"):
        _refuse_routing_everything(model, book, hp, subject_key, relation_key, rel_radius)
        init = torch.rand(book.d_out, device=seen["warm"].device) if hp.val_init == "cold" else seen["warm"]
        _append(book, subject_key, relation_key, init, hp.subject_radius, rel_radius, label)
    value, steps, nll = train_value(model, layer, rows, last, book.values[row].clone(), seen["warm"],
                                    n_iter=hp.n_iter, lr=hp.edit_lr, early_stop_nll=hp.early_stop_nll)
    book.values[row] = value
    return {"action": action, "row": row, "subject_position": subject_pos,
            "subject_radius": float(book.subject_radii[row]), "relation_radius": float(book.relation_radii[row]),
            "steps": steps, "final_nll": nll, "affects": affects}


def _affects(action: str, row: int, distance: float, radius_now: float, request: str) -> dict[str, Any] | None:
    """What an edit does to an earlier entry (``None``: nothing), logged and kept in ``per_request``."""
    if action == "replace":
        effect = "overwritten: the same fact edited again; the entry now answers with this edit's target"
    elif action == "split":
        effect = (f"relation radius shrunk to {radius_now:.3g} (half the relation-key distance {distance:.3g}): "
                  "prompts of the earlier edit farther than that from its key now miss it")
    elif action == "reuse":
        effect = "value retrained on this prompt too (same subject and relation, same target)"
    else:
        return None
    logger.warning("FactKey edit %r %s entry %d: %s", request, action, row, effect)
    return {"row": row, "action": action, "effect": effect}


def _refuse_routing_everything(model: Model, book: FactKeyMemory, hp: FactKeyHyperParams, subject_key: Tensor,
                               relation_key: Tensor, rel_radius: float) -> None:
    """Refuse an entry that would route some position of every generic text (the model's own sampled text)."""
    texts_s, texts_r = generic_inputs(model, hp.subject_layer), generic_inputs(model, book.layer)
    for a_s, a_r in zip(texts_s, texts_r, strict=True):
        s = ((1.0 - book.standardise(a_s) @ subject_key) / hp.subject_radius).cummin(dim=0).values
        r = _cos_dist(a_r, relation_key[None])[:, 0] / rel_radius
        if not bool((torch.maximum(s, r) <= 1).any()):
            return
    raise ValueError(f"FactKey radii (subject {hp.subject_radius:.3g}, relation {rel_radius:.3g}) route some "
                     "position of every generic text to this edit; give smaller radii")


def _append(book: FactKeyMemory, subject_key: Tensor, relation_key: Tensor, value: Tensor, subject_radius: float,
            relation_radius: float, label: int) -> None:
    dev = book.values.device
    book.subject_keys = torch.cat([book.subject_keys, subject_key[None]])
    book.relation_keys = torch.cat([book.relation_keys, relation_key[None]])
    book.values = torch.cat([book.values, value[None].float()])
    book.subject_radii = torch.cat([book.subject_radii, torch.tensor([subject_radius], device=dev)])
    book.relation_radii = torch.cat([book.relation_radii, torch.tensor([relation_radius], device=dev)])
    book.labels = torch.cat([book.labels, torch.tensor([label], device=dev)])
