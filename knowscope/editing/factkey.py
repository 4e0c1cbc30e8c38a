"""FactKey: a lifelong memory editor whose entries are keyed by the fact, i.e. by subject AND relation.

GRACE keys an entry at one position. Keyed at the prompt's last token it keeps everything else but
misses most paraphrases (their last-token activations lie far apart); keyed at the subject's last token
it generalises, but its value replaces the subject itself, so every other fact about that subject
answers with the new target too ("France's official language is" -> " Italian" after an edit of France's
capital). A FactKey entry has two keys and answers only where both hold:

* the **subject key**: the subject's token ids, as written in the edit prompt and with and without a
  leading space (the tokenizer spells "Mexico" at the start of a text and " Mexico" inside it
  differently). A position has seen the subject when the ids up to it contain one of them. Hidden
  states were measured first and do not work on this model: at the early layers where a token's
  activation is mostly the token, a subject that opens the prompt ("Germany is ...", "Paris is ...")
  lies 0.02-0.07 (cosine) from every other prompt-initial subject, raw or standardised per dimension,
  and 0.9 from the same subject inside a sentence (docs/findings.md). Aliases ("the US" for "United
  States") are not the subject here; write the edit with the name the prompts use.
* the **relation key**: the value projection's input ``a`` at the memory's layer (late, ``layer``) at
  the prompt's last token, where the model has gathered what the prompt asks; paraphrases of a
  relation land close to it (cosine distance), the same subject's other relations far away.

At inference a position routes to an entry when the entry's subject occurs at or before it and the
position lies within the entry's relation radius; the entry whose relation key is nearest (relative to
its radius) wins, and its **value** replaces the projection's output there, as in GRACE. The value is
trained like GRACE's (the target's NLL with the value in place at the prompt's last position). Other
subjects (neighbourhood prompts) fail the subject key; the subject's other relations fail the relation key.

The subject flags are computed from the input ids where the embedding runs, so the memory keeps, per
batch row, the last ids and flags of the previous pass: a pass over several positions starts afresh; a
pass over one position (incremental decoding with a KV cache) continues the previous one. Packed
scoring, which puts several prompts in one row, is switched off while the memory is attached
(:attr:`position_local`). A pass that starts above the embedding (a partial forward) finds no flags
of its own and routes nothing.

The codebook rule per edit, on the edit's own prompt routed through the entries so far: nothing routes ->
a new entry; an entry with the same target routes -> that entry's value is trained on this prompt too
("reuse"); an entry of the same subject ids with another target routes at the same relation key
(distance ~0) -> the same fact edited again, the entry takes the new target ("replace", reported); else
both relation radii shrink to half the distance between the two relation keys ("split", reported).
Every effect on an earlier entry is kept in the result's ``per_request[i]["affects"]`` and logged; an
edit of the same subject under another relation is a new entry and leaves the earlier one as it was.
Unlike GRACE and WISE there is no "routes everything" check: an entry answers only where its subject is
written, which generic text is not.

Defaults for SmolLM2-135M (30 layers): relation key and value at layer 22, relation radius 0.45 in cosine
distance, chosen on a tuning split of the extended facts (every 4th fact, spread over the relations) and
reported on the rest (docs/findings.md, benchmarks/bench_lifelong.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from knowscope.editing.grace import GraceMemory, edit_codebook, label_of
from knowscope.editing.hparams import is_smollm2_135m
from knowscope.editing.keys import check_request
from knowscope.editing.memory import MemoryMismatchError, Route, forward_until, register_kind, value_inputs
from knowscope.editing.memory_fit import TargetRows, one_layer, train_value
from knowscope.editing.session import EditResult
from knowscope.facts import Fact
from knowscope.models import Model

logger = logging.getLogger(__name__)

KIND = "factkey"
#: the longest subject (in tokens) an entry keeps, and how many spellings of it
MAX_SUBJECT_TOKENS = 16
N_SPELLINGS = 3
_FIELDS = ("subject_ids", "relation_keys", "values", "relation_radii", "labels")


@dataclass(frozen=True)
class FactKeyHyperParams:
    """FactKey's settings (see the module docstring); :meth:`for_model` gives per-model defaults."""

    layer: int = 0  # the memory's layer: relation key read and value written here
    relation_radius: float = 0.45  # cosine distance
    n_iter: int = 50
    edit_lr: float = 1.0
    val_init: str = "cold"
    early_stop_nll: float | None = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.layer, int) and self.layer >= 0):
            raise ValueError(f"layer must be a layer index >= 0, got {self.layer!r}")
        if not 0 < self.relation_radius < 2:
            raise ValueError(f"relation_radius must be a cosine distance in (0, 2), got {self.relation_radius!r}")
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
        """Defaults for ``model``: relation key and value at 11/15 of the depth.

        On SmolLM2-135M (90 tuning facts of the extended set, spread over its relations; 270 paraphrases,
        63 probes of the subject's other relations): at layer 22 a cosine radius of 0.45 takes in 0.93 of
        the paraphrases' last tokens and none of the subject's other relations (nearest 0.56); at layers
        14-20 those lie as close as the paraphrases."""
        n = model.arch.n_layers
        if not is_smollm2_135m(model):
            logger.info("FactKey's relation radius was measured on SmolLM2-135M; on %s check it on facts of "
                        "your own", model.name)
        return replace(cls(layer=min(n - 1, round(11 * n / 15))), **overrides)


def _unit(x: Tensor) -> Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def _cos_dist(a: Float[Tensor, "*lead d"], keys: Float[Tensor, "n d"]) -> Float[Tensor, "*lead n"]:
    """Cosine distance of every row of ``a`` to every (unit) key."""
    return 1.0 - _unit(a) @ keys.T


def subject_spellings(model: Model, fact: Fact) -> Int[Tensor, "spellings tokens"]:
    """The subject's token ids as the edit prompt spells it, and with / without a leading space; ``-1``
    pads (``[N_SPELLINGS, MAX_SUBJECT_TOKENS]``). Refuses a subject longer than ``MAX_SUBJECT_TOKENS``."""
    start, end = model.subject_span(fact.prompt, fact.subject)
    found = [int(t) for t in model.to_tokens(fact.text)[0, start:end]]
    variants = [found] + [list(model.tokenizer.encode(x, add_special_tokens=False))
                          for x in (" " + fact.subject.strip(), fact.subject.strip())]
    unique = list(dict.fromkeys(tuple(v) for v in variants if v))[:N_SPELLINGS]
    if max(len(v) for v in unique) > MAX_SUBJECT_TOKENS:
        raise ValueError(f"subject {fact.subject!r} is {max(len(v) for v in unique)} tokens long; FactKey keys "
                         f"subjects of at most {MAX_SUBJECT_TOKENS} tokens")
    out = torch.full((N_SPELLINGS, MAX_SUBJECT_TOKENS), -1, dtype=torch.long)
    for i, v in enumerate(unique):
        out[i, : len(v)] = torch.tensor(v)
    return out


def subject_seen(ids: Int[Tensor, "batch pos"], spellings: Int[Tensor, "n spellings tokens"],
                 context: Int[Tensor, "batch ctx"] | None = None) -> Bool[Tensor, "batch pos n"]:
    """Per position and entry: does a spelling of the entry's subject end at this position? ``context``:
    ids just before ``ids`` (the previous pass's last ones), so a subject may span passes."""
    full = ids if context is None else torch.cat([context, ids], dim=1)
    offset = full.shape[1] - ids.shape[1]
    batch, width = full.shape
    n = spellings.shape[0]
    hit = torch.zeros(batch, ids.shape[1], n, dtype=torch.bool, device=ids.device)
    if n == 0:
        return hit
    lengths = (spellings >= 0).sum(-1)  # [n, spellings]
    for length in sorted({int(x) for x in lengths.unique() if int(x) > 0}):
        if length > width:
            continue
        windows = full.unfold(1, length, 1)  # [batch, width - length + 1, length]: window ending at i + length - 1
        mask = lengths == length  # [n, spellings]
        cand = spellings[..., :length]  # [n, spellings, length]
        eq = (windows[:, :, None, None, :] == cand[None, None]).all(-1) & mask[None, None]  # [b, w, n, s]
        ends = torch.arange(length - 1, width, device=ids.device)
        keep = ends >= offset
        hit[:, ends[keep] - offset] |= eq[:, keep].any(-1)
    return hit


@register_kind
class FactKeyMemory(GraceMemory):
    """The codebook: ``subject_ids [n, N_SPELLINGS, MAX_SUBJECT_TOKENS]`` (int64, ``-1`` pads),
    ``relation_keys [n, d_mlp]`` (unit vectors), ``values [n, d_model]``, ``relation_radii [n]``,
    ``labels [n]``. Subjects are read from the input ids; the relation key and the value at the
    memory's layer."""

    kind = KIND
    label = "FactKey"
    higher_routes = False
    fields = _FIELDS
    #: a position's routing depends on earlier positions: scoring must not pack prompts into one row
    position_local = False

    def __init__(self, model: Model, layer: int, spec: dict[str, Any]) -> None:
        super(GraceMemory, self).__init__(model, layer, spec)
        self.embedding = model.hf.get_input_embeddings()
        dev = model.device
        self.subject_ids = torch.zeros(0, N_SPELLINGS, MAX_SUBJECT_TOKENS, dtype=torch.long, device=dev)
        self.relation_keys = torch.zeros(0, self.d_in, device=dev)
        self.values = torch.zeros(0, self.d_out, device=dev)
        self.relation_radii = torch.zeros(0, device=dev)
        self.labels = torch.zeros(0, dtype=torch.long, device=dev)
        self._flags: Tensor | None = None  # this pass: [batch, pos, n] subject seen up to each position
        self._prefix: tuple[Tensor, Tensor] | None = None  # the last pass's (flags [batch, n], ids [batch, ctx])

    # --- hooks: subject flags from the input ids, then the rewrite at the memory's layer ------------
    def attach(self) -> None:
        if self.attached:
            return
        super().attach()
        self._handles.append(self.embedding.register_forward_hook(self._read_ids, with_kwargs=True))

    def detach(self) -> None:
        super().detach()
        self._flags = self._prefix = None

    def _read_ids(self, module: nn.Module, args: Any, kwargs: dict[str, Any], output: Tensor) -> None:
        ids = args[0] if args else next(iter(kwargs.values()), None)
        if not self.active or not isinstance(ids, Tensor) or ids.dtype not in (torch.long, torch.int):
            self._flags = self._prefix = None
            return
        ids = ids.long()
        batch = ids.shape[0]
        prefix = self._prefix
        if ids.shape[1] == 1 and prefix is not None and prefix[0].shape == (batch, self.size):
            match = subject_seen(ids, self.subject_ids, context=prefix[1])  # one more position (KV cache)
            flags = match | prefix[0][:, None]
            context = torch.cat([prefix[1], ids], dim=1)
        else:
            flags = subject_seen(ids, self.subject_ids).to(torch.uint8).cummax(dim=1).values.bool()
            context = ids
        self._flags = flags
        self._prefix = (flags[:, -1], context[:, -(MAX_SUBJECT_TOKENS - 1):])

    def rewrite(self, a: Float[Tensor, "batch pos d_mlp"],
                out: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        flags, self._flags = self._flags, None
        if flags is None or tuple(flags.shape[:2]) != tuple(a.shape[:2]) or flags.shape[2] != self.size:
            return out  # no ids came through the embedding in this pass (a partial forward)
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
        missing = [k for k in ("rows", *_FIELDS) if k not in arrays]
        if missing:
            raise MemoryMismatchError(f"a FactKey edit needs arrays {missing}")
        k = int(arrays["rows"].shape[0])
        want = {"subject_ids": (k, N_SPELLINGS, MAX_SUBJECT_TOKENS), "relation_keys": (k, self.d_in),
                "values": (k, self.d_out), "relation_radii": (k,), "labels": (k,)}
        for name, shape in want.items():
            if tuple(arrays[name].shape) != shape:
                raise MemoryMismatchError(f"FactKey edit array {name!r} has shape {tuple(arrays[name].shape)}; "
                                          f"this model's memory at layer {self.layer} takes {shape}")
        self.check_rows(arrays["rows"])
        finite = all(bool(torch.isfinite(arrays[f]).all()) for f in ("relation_keys", "values", "relation_radii"))
        radii_ok = bool(((arrays["relation_radii"] > 0) & (arrays["relation_radii"] < 2)).all())
        ids = arrays["subject_ids"]
        ids_ok = bool((ids[:, 0, 0] >= 0).all()) and (ids.numel() == 0 or int(ids.max()) < self.model.arch.d_vocab)
        if not finite or not radii_ok or not ids_ok:
            raise MemoryMismatchError("FactKey edit has non-finite arrays, a radius outside (0, 2) or no subject ids")

    def nearest(self, a: Float[Tensor, "n d_mlp"]) -> tuple[Tensor, Tensor]:
        """Relation-key cosine distance to the nearest entry and its index (the subject not applied)."""
        if self.size == 0:
            return (torch.full((a.shape[0],), float("inf"), device=a.device),
                    torch.full((a.shape[0],), -1, dtype=torch.long, device=a.device))
        return _cos_dist(a, self.relation_keys).min(dim=1)

    def scores(self, a: Float[Tensor, "n d_mlp"]) -> tuple[Tensor, Tensor, list[str]]:
        """The relation key alone (the subject needs the ids: see :meth:`route`)."""
        dist, idx = self.nearest(a)
        radius = self.relation_radii[idx] if self.size else torch.zeros_like(dist)
        return dist, radius, [f"factkey[{int(i)}]" for i in idx]

    # --- routing, as a user sees it -------------------------------------------------------------------
    def ratios(self, ids: Int[Tensor, " pos"], a: Float[Tensor, "pos d_mlp"]) -> Float[Tensor, "pos n"]:
        """Per position and entry: relation distance / relation radius where the entry's subject occurs at or
        before the position, else ``inf``; the position routes to an entry when it is <= 1."""
        seen = subject_seen(ids[None].to(self.subject_ids.device), self.subject_ids)[0]
        seen = seen.to(torch.uint8).cummax(dim=0).values.bool()
        ratio = _cos_dist(a, self.relation_keys) / self.relation_radii
        return torch.where(seen, ratio, torch.full_like(ratio, float("inf")))

    @torch.no_grad()
    def route(self, prompts: Sequence[str]) -> list[Route]:
        """Per prompt, the position nearest to routing (score: the ratio of :meth:`ratios`, threshold 1;
        ``inf`` where the prompt names no edited subject)."""
        if not prompts:
            return []
        with self.paused():
            rel = value_inputs(self.model, self.layer, prompts)
        out = []
        for p, a in zip(prompts, rel, strict=True):
            tokens = self.model.to_str_tokens(p)
            if not self.size:
                out.append(Route(p, "main", float("inf"), 1.0, False, a.shape[0] - 1, tokens[-1]))
                continue
            best, idx = self.ratios(self.model.to_tokens(p)[0], a).min(dim=1)
            t = int(best.argmin())
            routed = self.n_edits > 0 and float(best[t]) <= 1.0
            out.append(Route(p, f"factkey[{int(idx[t])}]" if routed else "main", float(best[t]), 1.0, routed, t,
                             tokens[t] if t < len(tokens) else ""))
        return out


# --------------------------------------------------------------------------------------------------
# the editor


def _spec(model: Model) -> dict[str, Any]:
    return {"d_in": model.arch.d_mlp, "d_out": model.arch.d_model, "distance": "cosine", "subject": "token ids"}


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
    for fact in requests:
        check_request(model, fact)
        subject_spellings(model, fact)  # refuses an over-long subject before anything is computed
    meta = {"kind": KIND, "layer": layer, "spec": _spec(model)}
    return edit_codebook(model, requests, hp, meta, FactKeyMemory, _edit_one, t0)


@torch.no_grad()
def _read_keys(model: Model, book: FactKeyMemory, rows: TargetRows) -> dict[str, Tensor]:
    """``a`` and the projection's output at the memory's layer at the prompt's last position, from a forward
    pass of the weights alone that stops there."""
    last = rows.last_prompt[0]
    seen: dict[str, Tensor] = {}

    hooks = [book.module.hook_in.register_forward_hook(
                 lambda m, args, out: seen.__setitem__("relation", out[0, last].float().clone())),
             book.module.hook_out.register_forward_hook(
                 lambda m, args, out: seen.__setitem__("warm", out[0, last].float().clone()))]
    try:
        with forward_until(book.module):  # nothing above the memory's layer is needed
            model(rows.tokens[:, : last + 1])
    finally:
        for h in hooks:
            h.remove()
    if set(seen) != {"relation", "warm"}:
        raise RuntimeError(f"the value projection at layer {book.layer} did not run in the forward pass")
    return seen


def _edit_one(model: Model, book: FactKeyMemory, layer: int, fact: Fact, hp: FactKeyHyperParams) -> dict[str, Any]:
    """One request into ``book``: the codebook rule, then the chosen entry's value trained."""
    rows = TargetRows.build(model, [(fact.text, fact.new_continuation)])
    last = rows.last_prompt[0]
    label = label_of(rows.targets[0])
    spellings = subject_spellings(model, fact).to(book.subject_ids.device)
    seen = _read_keys(model, book, rows)
    relation_key = _unit(seen["relation"])
    action, row, affects = "add", book.size, None
    rel_radius = hp.relation_radius
    if book.size:
        ids = rows.tokens[0, : last + 1]
        a = seen["relation"][None].expand(last + 1, -1)
        ratio = book.ratios(ids, a)[-1]
        i = int(ratio.argmin())
        if float(ratio[i]) <= 1.0:  # the edit's own prompt routes to entry i today
            r_dist = float(1 - book.relation_keys[i] @ relation_key)
            if int(book.labels[i]) == label:
                action, row = "reuse", i
            elif r_dist <= 1e-4 and torch.equal(book.subject_ids[i], spellings):
                action, row = "replace", i
                book.labels[i] = label
            else:
                action = "split"
                rel_radius = min(hp.relation_radius, max(r_dist / 2, 1e-6))
                book.relation_radii[i] = max(r_dist / 2 - 1e-6, 1e-6)
            affects = _affects(action, i, r_dist, float(book.relation_radii[i]), fact.text)
    if action in ("add", "split"):
        init = torch.rand(book.d_out, device=seen["warm"].device) if hp.val_init == "cold" else seen["warm"]
        _append(book, spellings, relation_key, init, rel_radius, label)
    value, steps, nll = train_value(model, layer, rows, last, book.values[row].clone(), seen["warm"],
                                    n_iter=hp.n_iter, lr=hp.edit_lr, early_stop_nll=hp.early_stop_nll)
    book.values[row] = value
    return {"action": action, "row": row, "relation_radius": float(book.relation_radii[row]),
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


def _append(book: FactKeyMemory, spellings: Tensor, relation_key: Tensor, value: Tensor, relation_radius: float,
            label: int) -> None:
    dev = book.values.device
    book.subject_ids = torch.cat([book.subject_ids, spellings[None].to(dev)])
    book.relation_keys = torch.cat([book.relation_keys, relation_key[None]])
    book.values = torch.cat([book.values, value[None].float()])
    book.relation_radii = torch.cat([book.relation_radii, torch.tensor([relation_radius], device=dev)])
    book.labels = torch.cat([book.labels, torch.tensor([label], device=dev)])
