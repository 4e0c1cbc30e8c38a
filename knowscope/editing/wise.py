"""WISE (Wang et al. 2024): a side copy of one MLP value matrix, edits trained into random-mask shards,
activation-based routing between the main weights and the side memory.

The side memory is a copy ``W'`` of one layer's MLP output projection ``W`` (down_proj / c_proj); here it
is held as ``D = W' - W``, so the side memory's output is the projection's output plus ``D a``. Its
**activation score** on an input ``a`` is ``||D a||`` (the paper's ``||A(x)(W' - W)||``): zero for an
untouched memory, large where an edit was trained in. An input whose score exceeds the memory's
threshold gets the side memory's output, any other the main weights'.

Each edit trains ``D`` (plain SGD, ``edit_lr``, up to ``n_iter`` steps, stopping early as EasyEdit does
once the loss is below 0.02 and changes by less than 1e-4) on the edit prompt behind the model's own
sampled prefixes (``"{}"`` plus ``n_templates`` context templates) with the target as labels, plus
WISE's margin losses on the activation scores: with ``act_margin = (α, β, γ)`` the irrelevant input's
scores are pushed below α, the edit's above β, and the edit's above the irrelevant one's by γ. Only a
random ``mask_ratio`` share of ``D``'s entries is trained (one mask per shard, from ``seed`` and the
shard's index), and ``D`` stays within ``± norm_constraint`` of the main weights. The threshold of a shard
is ``act_ratio`` times the lowest edit score it recorded. Every ``save_freq`` edits the shard is stored
and a fresh one begins (WISE-Retrieve: at inference the stored shard with the highest score above its
own threshold answers); every ``merge_freq`` edits the stored shards of that span are merged into one
by TIES (trim to the ``density`` largest-magnitude entries, elect the sign by total mass, average the
agreeing entries), whose threshold is the lowest of theirs.

Where this differs from EasyEdit's ``WISEAdapter``, on purpose:

* **Routing** (``routing``): ``"position"`` (the default here) decides every position on its own score;
  training pushes the score of every position that predicts a target token above β and records their
  minimum. ``"sequence"`` is the paper's and EasyEdit's router, one decision per sequence from its mean
  score (max past 100 positions) with the chosen memory's output at every position
  (:mod:`knowscope.editing.wise_routing`, which also says how a KV-cached generation keeps its
  prompt's decision); training then pushes each row's mean score above β (the irrelevant rows' means
  below α and γ under the edit rows') and records the mean over the edit's rows, as EasyEdit does, over
  real positions only (EasyEdit's padded batch averages its pads in).
* **The score** is ``||D a||`` as in the paper; EasyEdit compares ``act_fn(W' a)`` with ``act_fn(W a)``.
* **Irrelevant inputs** are the model's own sampled text (EasyEdit: a natural-questions prompt per edit
  from zsRE's training split, which cannot be downloaded here), one per edit, in turn.
* **No weight decay** on ``D`` (EasyEdit's 1e-5 decays every entry of ``W'``, masked or not, so after
  hundreds of edits the untouched entries drift from ``W`` and every input scores above zero).
* **Template negatives** (``negative_subjects``, an addition): the edit prompt with another subject
  in place of the edited one ("it", "something else") is an irrelevant input too. Without them the
  prompts of other subjects with the same relation (CounterFact's neighbourhood) score as high as
  the edit and are routed to the memory: on the default model, 6 edits left neighbourhood 0.00 and
  locality 0.075.
* Defaults for SmolLM2-135M: layer 25 of 30 (EasyEdit: 27 of LLaMA-7B's 32), 2 context templates
  instead of 10 and ``n_iter`` 40 to keep an edit within seconds on a CPU.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from knowscope.editing.hparams import is_smollm2_135m
from knowscope.editing.keys import check_request, context_templates, facts_meta
from knowscope.editing.memory import MemoryMismatchError, Route, SideMemory, memory_for, register_kind
from knowscope.editing.memory_fit import TargetRows, blocks_above, one_layer, output_hook, routes_everything
from knowscope.editing.session import EditResult
from knowscope.editing.wise_routing import SequenceRouter, margin_scores, reduce_positions, sequence_routes
from knowscope.facts import Fact
from knowscope.models import Model
from knowscope.models.blocks import block_input, run_block

logger = logging.getLogger(__name__)

KIND = "wise"
ROUTINGS = ("position", "sequence")


@dataclass(frozen=True)
class WISEHyperParams:
    """WISE's settings (see the module docstring); :meth:`for_model` gives per-model defaults."""

    layer: int = 0
    mask_ratio: float = 0.2
    edit_lr: float = 1.0
    n_iter: int = 70
    norm_constraint: float = 1.0
    act_margin: tuple[float, float, float] = (5.0, 20.0, 10.0)
    act_ratio: float = 0.88
    save_freq: int = 500
    merge_freq: int = 1000
    density: float = 0.53
    n_templates: int = 10
    early_stop: bool = True
    seed: int = 0
    # knowscope's addition: the edit prompt with these in place of the subject, as irrelevant inputs too
    # (the same relation about something else must not route); () = WISE's generic irrelevant input only
    negative_subjects: tuple[str, ...] = ()
    routing: str = "position"  # or "sequence": one decision per sequence (the paper's, EasyEdit's)

    def __post_init__(self) -> None:
        _check(self.routing in ROUTINGS, "routing", self.routing, f"one of {ROUTINGS}")
        _check(isinstance(self.layer, int) and self.layer >= 0, "layer", self.layer, "a layer index >= 0")
        _check(0 < self.mask_ratio <= 1, "mask_ratio", self.mask_ratio, "in (0, 1]")
        _check(self.edit_lr > 0, "edit_lr", self.edit_lr, "> 0")
        _check(isinstance(self.n_iter, int) and self.n_iter >= 1, "n_iter", self.n_iter, "an integer >= 1")
        _check(self.norm_constraint > 0, "norm_constraint", self.norm_constraint, "> 0")
        _check(len(self.act_margin) == 3 and all(m >= 0 for m in self.act_margin), "act_margin", self.act_margin,
               "three margins (alpha, beta, gamma) >= 0")
        _check(0 < self.act_ratio <= 1, "act_ratio", self.act_ratio, "in (0, 1] (1 routes only what scores "
               "as high as the weakest edit)")
        _check(isinstance(self.save_freq, int) and self.save_freq >= 1, "save_freq", self.save_freq, ">= 1")
        _check(isinstance(self.merge_freq, int) and self.merge_freq % self.save_freq == 0, "merge_freq",
               self.merge_freq, f"a multiple of save_freq ({self.save_freq})")
        _check(0 < self.density <= 1, "density", self.density, "in (0, 1]")
        _check(isinstance(self.n_templates, int) and self.n_templates >= 0, "n_templates", self.n_templates, ">= 0")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["act_margin"] = list(self.act_margin)
        d["negative_subjects"] = list(self.negative_subjects)
        return d

    def with_(self, **changes: Any) -> WISEHyperParams:
        return replace(self, **changes)

    @classmethod
    def for_model(cls, model: Model, **overrides: Any) -> WISEHyperParams:
        """Defaults for ``model``: layer at 5/6 of the depth; EasyEdit's LLaMA-7B settings otherwise, with
        fewer templates and steps on SmolLM2-135M (module docstring)."""
        n = model.arch.n_layers
        base = cls(layer=max(0, min(n - 1, round(5 * n / 6))))
        if is_smollm2_135m(model):
            base = replace(base, n_templates=2, n_iter=40, negative_subjects=("it", "something else"))
        overrides = {k: tuple(v) if k in ("act_margin", "negative_subjects") else v for k, v in overrides.items()}
        return replace(base, **overrides)


def _check(ok: bool, name: str, value: Any, want: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {want}, got {value!r}")


def shard_mask(d_out: int, d_in: int, ratio: float, seed: int, shard: int) -> Tensor:
    """The random entries shard ``shard`` trains (Bernoulli(``ratio``) each, from ``seed`` and the shard)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(shard))
    return torch.rand(d_out, d_in, generator=g) < ratio


def ties_merge(deltas: Sequence[Tensor], density: float) -> Tensor:
    """TIES-merging of task deltas: keep each one's ``density`` largest-magnitude entries, elect each entry's
    sign by the summed kept values, average the kept entries that agree with it."""
    kept = []
    for d in deltas:
        k = max(1, int(round(density * d.numel())))
        cut = d.abs().flatten().kthvalue(d.numel() - k + 1).values if k < d.numel() else d.abs().min() - 1
        kept.append(torch.where(d.abs() >= cut, d, torch.zeros_like(d)))
    stack = torch.stack(kept)
    sign = torch.sign(stack.sum(dim=0))
    agree = (torch.sign(stack) == sign) & (stack != 0)
    total = (stack * agree).sum(dim=0)
    count = agree.sum(dim=0).clamp(min=1)
    return total / count


@register_kind
class WiseMemory(SideMemory):
    """The side memory: the current shard's ``delta [d_model, d_mlp]`` with its recorded edit scores
    ``acts``, and the stored shards ``shards [s, d_model, d_mlp]`` with their thresholds' base ``shard_min``.

    An edit's arrays: ``values`` (the current shard's delta on its mask, after the edit), ``act`` (the
    edit's recorded score), ``close`` (1: the edit completes the shard, which is then stored and a fresh
    one begun) and ``merge`` (k > 0: then merge the last k stored shards into one).
    """

    kind = KIND
    higher_routes = True

    def __init__(self, model: Model, layer: int, spec: dict[str, Any]) -> None:
        super().__init__(model, layer, spec)
        dev = model.device
        self.delta = torch.zeros(self.d_out, self.d_in, device=dev)
        self.acts = torch.zeros(0, device=dev)
        self.shards = torch.zeros(0, self.d_out, self.d_in, device=dev)
        self.shard_min = torch.zeros(0, device=dev)
        self.shard_index = 0  # how many shards were begun before the current one
        self._mask: Tensor | None = None
        self.sequence = spec.get("routing", "position") == "sequence"
        self.router = SequenceRouter(model.pad_token_id, getattr(model.tokenizer, "bos_token_id", None))
        self.embedding = model.hf.get_input_embeddings()

    @property
    def position_local(self) -> bool:
        """False under sequence routing: a position's output depends on the rest of its sequence, so
        scoring must not pack several prompts into one row."""
        return not self.sequence

    def attach(self) -> None:
        if self.attached:
            return
        super().attach()
        if self.sequence:
            self._handles.append(self.embedding.register_forward_hook(self._read_ids, with_kwargs=True))

    def detach(self) -> None:
        super().detach()
        self.router.reset()

    def _read_ids(self, module: nn.Module, args: Any, kwargs: dict[str, Any], output: Tensor) -> None:
        ids = args[0] if args else next(iter(kwargs.values()), None)
        if not self.active or not isinstance(ids, Tensor) or ids.dtype not in (torch.long, torch.int):
            self.router.reset()
            return
        self.router.read_ids(ids.long())

    @property
    def mask(self) -> Tensor:
        if self._mask is None:
            self._mask = shard_mask(self.d_out, self.d_in, self.spec["mask_ratio"], self.spec["seed"],
                                    self.shard_index).to(self.delta.device)
        return self._mask

    @property
    def act_ratio(self) -> float:
        return float(self.spec["act_ratio"])

    def thresholds(self) -> Tensor:
        """Per memory (stored shards, then the current one): the score an input must exceed."""
        cur = self.acts.min()[None] if len(self.acts) else torch.full((1,), float("inf"), device=self.delta.device)
        return torch.cat([self.shard_min, cur]) * self.act_ratio

    # --- edits ---------------------------------------------------------------------------------
    def check(self, arrays: dict[str, Tensor], meta: dict[str, Any]) -> None:
        missing = [k for k in ("values", "act", "close", "merge") if k not in arrays]
        if missing:
            raise MemoryMismatchError(f"a WISE edit needs arrays {missing}")
        n = int(self.mask.sum())
        if tuple(arrays["values"].shape) != (n,):
            raise MemoryMismatchError(f"WISE edit values have shape {tuple(arrays['values'].shape)}; the memory at "
                                      f"layer {self.layer} trains {n} entries in this shard")
        if not torch.isfinite(arrays["values"]).all():
            raise MemoryMismatchError("WISE edit values are NaN or inf")
        if int(arrays["merge"]) > len(self.shards) + int(arrays["close"]):
            raise MemoryMismatchError(f"WISE edit merges {int(arrays['merge'])} shards; the memory stores "
                                      f"{len(self.shards)}")

    def _write(self, arrays: dict[str, Tensor]) -> Any:
        self.router.reset()
        # what undo needs: the shard's trained entries and scores, and everything only when shards move
        moves = bool(int(arrays["close"]) or int(arrays["merge"]))
        whole = (self.delta.clone(), self.shards.clone(), self.shard_min.clone(), self.shard_index) if moves else None
        before = (self.delta[self.mask].clone(), self.acts.clone(), whole)
        self.delta[self.mask] = arrays["values"].to(self.delta)
        self.acts = torch.cat([self.acts, arrays["act"].reshape(1).to(self.acts)])
        if int(arrays["close"]):
            self._store_shard()
        k = int(arrays["merge"])
        if k:
            merged = ties_merge(list(self.shards[-k:]), float(self.spec["density"]))
            low = self.shard_min[-k:].min()
            self.shards = torch.cat([self.shards[:-k], merged[None]])
            self.shard_min = torch.cat([self.shard_min[:-k], low[None]])
        return before

    def _store_shard(self) -> None:
        self.shards = torch.cat([self.shards, self.delta[None].clone()])
        self.shard_min = torch.cat([self.shard_min, self.acts.min()[None]])
        self.delta = torch.zeros_like(self.delta)
        self.acts = torch.zeros(0, device=self.delta.device)
        self.shard_index += 1
        self._mask = None

    def _unwrite(self, token: Any) -> None:
        self.router.reset()
        values, acts, moved = token
        if moved is not None:
            self.delta, self.shards, self.shard_min, index = moved
            if index != self.shard_index:
                self._mask = None
            self.shard_index = index
        self.delta[self.mask] = values
        self.acts = acts

    # --- forward and routing ----------------------------------------------------------------------
    def _all_scores(self, a: Float[Tensor, "n d_mlp"]) -> tuple[Tensor, Tensor]:
        """``(scores [memories, n], side outputs' change [memories, n, d_model])``, stored shards first."""
        deltas = torch.cat([self.shards, self.delta[None]]) if len(self.shards) else self.delta[None]
        change = torch.einsum("mod,nd->mno", deltas, a.float())
        return change.norm(dim=-1), change

    def rewrite(self, a: Float[Tensor, "batch pos d_mlp"],
                out: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        flat = a.reshape(-1, a.shape[-1])
        score, change = self._all_scores(flat)
        if self.sequence:
            m, (b, p) = score.shape[0], a.shape[:2]
            choice = self.router.decide(score.reshape(m, b, p), self.thresholds())
            if not bool((choice >= 0).any()):
                return out
            picked = change.reshape(m, b, p, -1)[choice.clamp(min=0), torch.arange(b, device=a.device)]
            return out + (picked * (choice >= 0)[:, None, None]).to(out.dtype)
        over = score > self.thresholds()[:, None]
        if not bool(over.any()):
            return out
        best = torch.where(over, score, torch.full_like(score, -1.0)).argmax(dim=0)
        routed = over.any(dim=0)
        add = change[best, torch.arange(flat.shape[0], device=flat.device)] * routed[:, None]
        return out + add.reshape(out.shape).to(out.dtype)

    def scores(self, a: Float[Tensor, "n d_mlp"]) -> tuple[Tensor, Tensor, list[str]]:
        score, _ = self._all_scores(a)
        thr = self.thresholds()
        ratio = score / thr[:, None]
        best = ratio.argmax(dim=0)
        cols = torch.arange(a.shape[0], device=a.device)
        n_stored = len(self.shards)
        names = [f"wise[shard {int(b)}]" if int(b) < n_stored else "wise[current]" for b in best]
        return score[best, cols], thr[best], names

    def route(self, prompts: Sequence[str]) -> list[Route]:
        return sequence_routes(self, prompts) if self.sequence and prompts else super().route(prompts)

    def state(self) -> dict[str, Tensor]:
        return {"delta": self.delta.clone(), "acts": self.acts.clone(), "shards": self.shards.clone(),
                "shard_min": self.shard_min.clone(), "shard_index": torch.tensor([self.shard_index])}

    def load_state(self, arrays: dict[str, Tensor]) -> None:
        dev = self.model.device
        self.delta, self.acts = arrays["delta"].to(dev).clone(), arrays["acts"].to(dev).clone()
        self.shards, self.shard_min = arrays["shards"].to(dev).clone(), arrays["shard_min"].to(dev).clone()
        self.shard_index = int(arrays["shard_index"][0])
        self._mask = None
        self.router.reset()


# --------------------------------------------------------------------------------------------------
# the editor


def _spec(model: Model, hp: WISEHyperParams) -> dict[str, Any]:
    spec = {"d_in": model.arch.d_mlp, "d_out": model.arch.d_model, "mask_ratio": hp.mask_ratio, "seed": hp.seed,
            "act_ratio": hp.act_ratio, "density": hp.density}
    if hp.routing != "position":  # absent for per-position routing: memories saved before the option match
        spec["routing"] = hp.routing
    return spec


def irrelevant_texts(model: Model, n: int = 16) -> list[str]:
    """Unrelated inputs for WISE's margin loss: texts the model samples itself (seeded, cached)."""
    return [t.replace("{}", "").strip() or "The" for t in context_templates(model, ((12, n),), seed=2)[1:]]


def edit(model: Model, requests: Sequence[Fact], layers: Any = None, hparams: WISEHyperParams | None = None,
         stats: Any = None) -> EditResult:
    """WISE-edit the requests in order into the side memory the model carries now (or a new one).

    Returns one :class:`EditResult` per call whose ``memory`` arrays hold the current shard's trained
    entries after the last request (several requests in one call are trained one after the other into
    the same shard); the model and its memory are unchanged until an
    :class:`~knowscope.editing.session.EditSession` applies it. Raises, changing nothing, when an edit's
    own prompt would not be routed to the memory or the unrelated text would be (threshold vs the
    measured scores). ``stats`` is accepted for the editors' common signature and not used.
    """
    t0 = time.perf_counter()
    requests = list(requests)
    if not requests:
        raise ValueError("requests is empty; give at least one Fact to edit")
    hp = hparams or WISEHyperParams.for_model(model)
    for fact in requests:
        check_request(model, fact)
    layer = one_layer(layers, hp.layer, "WISE", model)
    meta = {"kind": KIND, "layer": layer, "spec": _spec(model, hp)}
    live = memory_for(model, meta)
    mem = WiseMemory(model, layer, meta["spec"])  # scratch copy
    mem.load_state(live.state())
    templates = ["{}"] + context_templates(model, ((10, hp.n_templates),), seed=hp.seed)[1:] \
        if hp.n_templates else ["{}"]
    pool = irrelevant_texts(model)
    infos = []
    with torch.random.fork_rng(devices=[]), live.detached():
        torch.manual_seed(hp.seed)
        for i, fact in enumerate(requests):
            irrelevant = pool[(live.n_edits + i) % len(pool)]
            infos.append(_train(model, mem, layer, fact, templates, irrelevant, hp))
    key = "edit_score_mean" if hp.routing == "sequence" else "edit_score_min"
    act = torch.tensor([min(info[key] for info in infos)])
    _check_routing(mem, hp, infos, act)
    n_after = live.n_edits + 1
    merge = hp.merge_freq // hp.save_freq if n_after % hp.merge_freq == 0 else 0
    arrays = {"values": mem.delta[mem.mask].cpu().clone(), "act": act,
              "close": torch.tensor([int(n_after % hp.save_freq == 0)]), "merge": torch.tensor([merge])}
    return EditResult(
        method="wise", deltas={}, fingerprint=model.fingerprint, layers=[layer], hparams=hp.to_dict(),
        requests=facts_meta(requests), model_name=model.name, seconds=time.perf_counter() - t0,
        extra={"memory": meta, "per_request": infos}, memory=arrays)


def _check_routing(mem: WiseMemory, hp: WISEHyperParams, infos: list[dict[str, Any]], act: Tensor) -> None:
    """Refuse an edit whose threshold routes nothing (its own prompt stays with the main weights) or
    everything (some position of every generic text goes to the memory), with the measured scores."""
    current = mem.acts.min() if len(mem.acts) else act[0]
    threshold = hp.act_ratio * float(min(float(current), float(act[0])))
    # sequence routing: the edit prompt's own row (no context template) must route; per position: every position
    worst = min(info["edit_score_bare" if hp.routing == "sequence" else "edit_score_min"] for info in infos)
    if worst <= threshold:
        raise ValueError(f"WISE threshold {threshold:.3g} routes nothing of this edit: its prompt's scores reach only "
                         f"{worst:.3g} (act_ratio {hp.act_ratio}); raise n_iter or the margin beta, or lower act_ratio")

    def scores(a: Tensor) -> tuple[Tensor, Tensor]:
        score = (a @ mem.delta.T).norm(dim=-1)
        if hp.routing == "sequence":  # one score for the whole text, as the router sees it
            score = reduce_positions(score[None, None], torch.ones(1, len(score), dtype=torch.bool))[0, 0].expand(
                len(score))
        return score, torch.full((a.shape[0],), threshold)

    everything, score, _ = routes_everything(mem, scores)
    if everything:
        raise ValueError(f"WISE threshold {threshold:.3g} routes everything: every generic text scores above it "
                         f"({hp.routing} routing; lowest best score {score:.3g}; this edit's scores >= {worst:.3g}); "
                         "raise the margins or act_ratio")
    loud = max(info["irrelevant_score_max"] for info in infos)
    if loud > threshold:
        logger.warning("WISE edit of %r: its irrelevant inputs still score %.3g, above the threshold %.3g",
                       infos and infos[-1].get("subject"), loud, threshold)


def _train(model: Model, mem: WiseMemory, layer: int, fact: Fact, templates: list[str], irrelevant: str,
           hp: WISEHyperParams) -> dict[str, Any]:
    """Train the current shard's masked delta on one edit (LM loss + WISE's margin losses)."""
    pairs = [(t.format(fact.text), fact.new_continuation) for t in templates]
    rows = TargetRows.build(model, pairs)
    negatives = [model.to_tokens(t)[0] for t in
                 [irrelevant, *(fact.prompt.format(s) for s in hp.negative_subjects if s != fact.subject)]]
    width = max(rows.tokens.shape[1], *(len(t) for t in negatives))
    tokens = torch.full((len(pairs) + len(negatives), width), model.pad_token_id, dtype=torch.long,
                        device=model.device)
    tokens[: len(pairs), : rows.tokens.shape[1]] = rows.tokens
    for i, t in enumerate(negatives):
        tokens[len(pairs) + i, : len(t)] = t.to(model.device)
    r, p, tgt = rows.read_positions()
    n_rows = len(pairs) + len(negatives)
    real = torch.zeros(n_rows, width, dtype=torch.bool, device=model.device)
    for i, (start, t) in enumerate(zip(rows.last_prompt, rows.targets, strict=True)):
        real[i, : start + len(t)] = True  # BOS, template, prompt, target but its last token (the model's input)
    for i, t in enumerate(negatives):
        real[len(pairs) + i, : len(t)] = True
    # every real position of every irrelevant row
    irr_r = torch.tensor([len(pairs) + i for i, t in enumerate(negatives) for _ in range(len(t))], device=model.device)
    irr_p = torch.tensor([j for t in negatives for j in range(len(t))], device=model.device)
    h = block_input(model, layer, tokens)
    seen: dict[str, Tensor] = {}

    def keep(a: Tensor, out: Tensor) -> Tensor:
        seen["a"] = a.detach().float()
        return out

    # block ``layer`` once: the projection's input and the block's output without the side memory; the
    # side memory adds ``a Dᵀ`` to the MLP output and so to the residual after the block, position by position
    with torch.no_grad(), output_hook(mem.module, keep):
        h_out = run_block(model, layer, h)
    act = seen["a"]
    forward = blocks_above(model, layer, h_out, r, p)
    mask = mem.mask
    delta = torch.nn.Parameter(mem.delta.clone())
    opt = torch.optim.SGD([delta], lr=hp.edit_lr)
    alpha, beta, gamma = hp.act_margin
    prev = float("inf")
    loss_value = float("nan")
    steps = 0
    for steps in range(1, hp.n_iter + 1):  # noqa: B007 - the count is returned
        change = act @ delta.T
        score = change.norm(dim=-1)
        logits = forward(change.to(h_out.dtype))
        lm = torch.nn.functional.cross_entropy(logits, tgt)
        s_in, s_out = margin_scores(score, real, len(pairs), r, p, irr_r, irr_p, hp.routing)
        gap = (s_out[:, None] - s_in[None, :]) if hp.routing == "sequence" else (s_out.max() - s_in)
        margin = _pos_mean(gap + gamma) + _pos_mean(s_out - alpha) + _pos_mean(beta - s_in)
        loss = lm + margin
        loss_value = float(loss.detach())
        if hp.early_stop and loss_value <= 0.02 and abs(prev - loss_value) <= 1e-4:
            break
        prev = loss_value
        opt.zero_grad()
        loss.backward()
        delta.grad *= mask
        opt.step()
        with torch.no_grad():
            delta.clamp_(-hp.norm_constraint, hp.norm_constraint)
    with torch.no_grad():
        change = act @ delta.T
        score = change.norm(dim=-1)
        lm_final = float(torch.nn.functional.cross_entropy(forward(change.to(h_out.dtype)), tgt))
    mem.delta = delta.detach().clone()
    s_in, s_out = margin_scores(score, real, len(pairs), r, p, irr_r, irr_p, hp.routing)
    seq = reduce_positions(score[None], real)[0]
    return {"subject": fact.subject, "steps": steps, "loss": loss_value, "final_nll": lm_final,
            "edit_score_min": float(s_in.min()), "edit_score_mean": float(seq[: len(pairs)].mean()),
            "edit_score_bare": float(seq[0]), "irrelevant_score_max": float(s_out.max())}


def _pos_mean(x: Tensor) -> Tensor:
    """Mean over the positive entries (0 when there are none), as WISE's margin terms."""
    pos = x > 0
    return (x * pos).sum() / pos.sum().clamp(min=1)
