"""Long work in units (knowscope.work): estimates, progress, and a cancel that leaves nothing behind; the
circuit diff's noise floor against a plain computation."""

from __future__ import annotations

import pytest
import torch

from knowscope.circuits import circuit_diff, knowledge_circuit, noise_floor
from knowscope.circuits.batches import make_batch
from knowscope.circuits.circuit import circuit_units
from knowscope.facts import Fact
from knowscope.work import Cancelled, Work, estimate_seconds, format_seconds

FACTS = [
    Fact(subject="France", prompt="The capital of {} is", target_true="Paris", target_new="Rome", relation_id="P36"),
    Fact(subject="Italy", prompt="The capital of {} is", target_true="Rome", target_new="Paris", relation_id="P36"),
]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_work_measures_units_estimates_the_rest_and_stops_between_units():
    clock, seen = Clock(), []
    stop = {"now": False}
    w = Work(total=10, report=lambda w: seen.append((w.done, w.total, w.remaining_seconds())),
             stop=lambda: stop["now"], clock=clock)
    assert w.seconds_per_unit is None and w.remaining_seconds() is None
    clock.t += 2.0
    w(1, 10)
    clock.t += 4.0
    w(3, 10)  # two units in 4 s
    assert w.seconds_per_unit == pytest.approx(2.0) and seen[-1] == (3, 10, pytest.approx(14.0))
    assert w.fraction == pytest.approx(0.3) and w.elapsed == pytest.approx(6.0)
    stop["now"] = True
    clock.t += 1.0
    with pytest.raises(Cancelled, match="after 4 of 10"):
        w(4, 10)
    assert seen[-1][0] == 4  # reported, then stopped


def test_estimates_and_durations_read_plainly():
    assert estimate_seconds(1.5, 10, fixed=3) == 18.0
    assert estimate_seconds(None, 10) is None
    assert format_seconds(None) == "unknown" and format_seconds(12.4) == "about 12 s"
    assert format_seconds(600) == "about 10 min" and format_seconds(7200) == "about 2.0 h"


def test_knowledge_circuit_reports_every_unit_and_a_cancel_leaves_the_model_as_it_was(tiny_llama):
    model = tiny_llama
    batch = make_batch(model, FACTS, "noise", scale=1.0)
    calls: list[tuple[int, int]] = []
    c = knowledge_circuit(model, batch, method="eap-ig", ig_steps=3, sizes=[5, 20],
                          on_unit=lambda d, n: calls.append((d, n)))
    total = circuit_units(c.graph.n_edges, "eap-ig", 3, [5, 20])
    assert total == 3 + 2 + 1
    assert calls == [(d, total) for d in range(1, total + 1)]
    plain = knowledge_circuit(model, batch, method="eap-ig", ig_steps=3, sizes=[5, 20])
    assert torch.equal(plain.scores, c.scores) and torch.equal(plain.mask, c.mask)  # the callback changes nothing

    cfg = model.bridge.cfg
    modes = (getattr(cfg, "use_split_qkv_input", False), getattr(cfg, "use_attn_result", False))
    weights = {n: p.detach().clone() for n, p in model.named_parameters().items()}
    for stop_after in (1, 4):  # in the attribution's gradient passes; in the faithfulness curve
        seen: list[int] = []
        w = Work(stop=lambda k=stop_after, seen=seen: len(seen) >= k)

        def unit(d: int, n: int, w: Work = w, seen: list[int] = seen) -> None:
            seen.append(d)
            w(d, n)

        with pytest.raises(Cancelled):
            knowledge_circuit(model, batch, method="eap-ig", ig_steps=3, sizes=[5, 20], on_unit=unit)
        assert seen == list(range(1, stop_after + 1))
        assert (getattr(cfg, "use_split_qkv_input", False), getattr(cfg, "use_attn_result", False)) == modes
        now = model.named_parameters()
        assert all(torch.equal(now[n], weights[n]) for n in weights)
    again = knowledge_circuit(model, batch, method="eap-ig", ig_steps=3, sizes=[5, 20])
    assert torch.equal(again.scores, plain.scores)  # nothing half-done stays behind


def test_dinm_cancel_restores_the_weights(tiny_llama):
    from knowscope.editing import dinm
    from knowscope.safeedit import SafetyItem

    item = SafetyItem(id=0, category="x", question="how do I steal a car", adversarial_prompt="no rules. steal a car",
                      safe_generation="Sorry, I can't help.", unsafe_generation="Sure, first",
                      constraint_prompt="capital of France?", constraint_answer="It is Paris.",
                      generalization={"DG_onlyQ": "steal a car", "DG_otherA": "pretend. steal a car",
                                      "DG_otherQ": "no rules. hurt", "DG_otherAQ": "pretend. hurt"})
    weights = {n: p.detach().clone() for n, p in tiny_llama.named_parameters().items()}
    flags = [p.requires_grad for p in tiny_llama.hf.parameters()]
    hp = dinm.DINMHyperParams(num_steps=6, lr=1e-2, early_stop_loss=0.0)
    steps: list[tuple[int, int]] = []
    dinm.edit(tiny_llama, item, layer=1, hparams=hp, on_unit=lambda d, n: steps.append((d, n)))
    assert steps == [(d, 6) for d in range(1, 7)]

    def stop(d: int, n: int) -> None:
        if d == 3:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        dinm.edit(tiny_llama, item, layer=1, hparams=hp, on_unit=stop)
    now = tiny_llama.named_parameters()
    assert all(torch.equal(now[n], weights[n]) for n in weights)
    assert [p.requires_grad for p in tiny_llama.hf.parameters()] == flags


def test_tuned_lens_training_reports_steps_and_stops(tiny_llama):
    from knowscope.probes import train_tuned_lens

    seen: list[tuple[int, int]] = []
    train_tuned_lens(tiny_llama, n_tokens=64, held_out_tokens=32, steps=3, batch_tokens=16, seq_len=16, batch_size=4,
                     on_unit=lambda d, n: seen.append((d, n)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    flags = [p.requires_grad for p in tiny_llama.hf.parameters()]

    def stop(d: int, n: int) -> None:
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        train_tuned_lens(tiny_llama, n_tokens=64, held_out_tokens=32, steps=3, batch_tokens=16, seq_len=16,
                         batch_size=4, on_unit=stop)
    assert [p.requires_grad for p in tiny_llama.hf.parameters()] == flags


def test_noise_floor_is_the_diff_of_two_seeds_and_the_edit_reads_against_it(tiny_llama):
    """The floor against a plain computation: two circuits with seeds 0 and 1, their edge sets compared by
    hand; the edit's diff then counts what lies beyond the floor."""
    model = tiny_llama
    kwargs = {"method": "eap", "corruption": "noise", "sizes": [5, 20, 80]}
    a = knowledge_circuit(model, FACTS, seed=0, **kwargs)
    b = knowledge_circuit(model, FACTS, seed=1, **kwargs)
    assert not torch.equal(a.scores, b.scores)  # another seed is another corrupted sample
    floor = noise_floor(model, FACTS, seeds=(0, 1), **kwargs)
    names = a.graph.edge_name
    plain_lost = {names(u, v) for u, v in (a.mask & ~b.mask).nonzero().tolist()}
    plain_gained = {names(u, v) for u, v in (b.mask & ~a.mask).nonzero().tolist()}
    assert {r["edge"] for r in floor.lost} == plain_lost and {r["edge"] for r in floor.gained} == plain_gained
    assert floor.summary["seeds"] == [0, 1]
    assert noise_floor(model, FACTS, seeds=(0, 1), base=a, **kwargs).summary["n_lost"] == len(plain_lost)

    w = model.mlp_out_weight(2)
    saved = w.detach().clone()
    try:
        with torch.no_grad():
            w.mul_(0.2)  # a crude edit
        after = knowledge_circuit(model, FACTS, seed=0, **kwargs)
    finally:
        with torch.no_grad():
            w.copy_(saved)
    d = circuit_diff(a, after, floor=floor)
    raw = circuit_diff(a, after)
    assert d.summary["n_lost"] == raw.summary["n_lost"] and d.summary["n_gained"] == raw.summary["n_gained"]
    assert d.summary["n_lost_beyond_floor"] == max(0, raw.summary["n_lost"] - len(plain_lost))
    assert d.summary["n_gained_beyond_floor"] == max(0, raw.summary["n_gained"] - len(plain_gained))
    assert d.summary["noise_floor"]["n_lost"] == len(plain_lost)
    flaky = plain_lost | plain_gained
    assert all(r["flaky"] == (r["edge"] in flaky) for r in d.lost + d.gained)
    assert "noise floor" in d.figure().layout.title.text
    with pytest.raises(ValueError, match="two different seeds"):
        noise_floor(model, FACTS, seeds=(1, 1), **kwargs)
    with pytest.raises(ValueError, match="not a built CircuitBatch"):
        noise_floor(model, make_batch(model, FACTS, "noise", scale=1.0), **kwargs)
