"""The editors' fast v*/z forward passes (plain, packed) give the same deltas as the bridge's full forward pass;
the joint optimisation of several facts follows each fact's own trajectory."""

from __future__ import annotations

import pytest
import torch

from knowscope.editing import memit, rome
from knowscope.editing.hparams import MEMITHyperParams, ROMEHyperParams
from knowscope.editing.keys import context_templates
from knowscope.editing.optimize import optimize_delta, optimize_deltas
from knowscope.editing.stats import key_stats
from knowscope.editing.vpaths import v_path
from knowscope.facts import Fact

FACT = Fact(subject="Lionel Messi", prompt="{} plays the sport of", target_true="soccer", target_new="basketball")
FACTS = [FACT, Fact(subject="Paris", prompt="{} is the capital of", target_true="France", target_new="Italy")]
ROME_HP = ROMEHyperParams(layer=1, v_steps=8, context_lengths=((4, 2),), stats_tokens=400)
MEMIT_HP = MEMITHyperParams(layers=(1, 2), v_steps=8, context_lengths=((4, 2),), mom2_weight=50.0, stats_tokens=400)


def rel(a, b):
    return float((a - b).norm() / (b.norm() + 1e-12))


@pytest.mark.parametrize("hook", ["mlp_out", "resid_post"])
def test_every_path_gives_the_bridges_deltas(tiny, hook):
    """plain (packed on plain tensor code, Llama only) and packed (one masked call per block; both: cached
    prefix, positions from the subject on) = the bridge's full forward pass: same init, same loss trace,
    delta within 1e-4 relative. GPT-2 has no plain path: it falls back to packed."""
    name = tiny.arch.hook_mlp_out(1) if hook == "mlp_out" else tiny.arch.hook_resid_post(2)
    templates = context_templates(tiny, ROME_HP.context_lengths, 0)
    llama = tiny.arch.positional == "rotary"
    runs = {}
    for path in ("bridge", "packed", "plain"):
        with v_path(path):
            torch.manual_seed(0)
            runs[path] = optimize_delta(tiny, name, FACT, templates, ROME_HP)
    assert tiny.compat.edit_modes[name.split(".", 2)[2]] == ("plain" if llama else "packed")
    assert tiny.compat.edit_checks[(name, "packed")]
    assert tiny.compat.edit_checks[(name, "plain")] is llama
    slow = runs["bridge"]
    for path in ("packed", "plain"):
        got = runs[path]
        assert len(got.losses) == len(slow.losses) > 1
        assert rel(got.delta, slow.delta) < 1e-4, path
        torch.testing.assert_close(got.init, slow.init, rtol=1e-5, atol=1e-6)
        for a, b in zip(got.losses, slow.losses, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)


def test_packed_paths_with_several_facts_and_subject_positions(tiny_llama):
    """Rows of several facts with different subject positions are packed and read back in order."""
    facts = FACTS + [Fact(subject="The Eiffel Tower in Paris", prompt="Where is {} located? In",
                          target_true="France", target_new="Japan")]
    name = tiny_llama.arch.hook_resid_post(1)
    templates = context_templates(tiny_llama, ROME_HP.context_lengths, 0)
    runs = {}
    for path in ("bridge", "packed", "plain"):
        with v_path(path):
            torch.manual_seed(0)
            runs[path] = optimize_deltas(tiny_llama, name, facts, templates, ROME_HP)
    assert all(tiny_llama.compat.edit_checks[(name, p)] for p in ("packed", "plain"))
    for path in ("packed", "plain"):
        for a, b in zip(runs[path], runs["bridge"], strict=True):
            assert rel(a.delta, b.delta) < 1e-4
            assert [x["nll"] for x in a.losses] == pytest.approx([x["nll"] for x in b.losses], rel=1e-4, abs=1e-6)


def test_rome_and_memit_edits_agree_across_paths(tiny_llama):
    stats = key_stats(tiny_llama, [1, 2], n_tokens=400, seq_len=32, batch_size=8, progress=False)
    results = {}
    for path in ("bridge", "packed", "plain"):
        with v_path(path):
            results[path] = (rome.edit(tiny_llama, [FACT], hparams=ROME_HP, stats=stats[1]),
                             memit.edit(tiny_llama, FACTS, hparams=MEMIT_HP, stats=stats))
    for path in ("packed", "plain"):
        for slow, got in zip(results["bridge"], results[path], strict=True):
            for name in slow.deltas:
                assert rel(got.deltas[name], slow.deltas[name]) < 1e-4, (path, name)


def test_v_path_rejects_unknown_names():
    with pytest.raises(ValueError, match="packed"), v_path("quick"):
        pass


def test_joint_optimisation_follows_each_facts_own_trajectory(tiny):
    """optimize_deltas on several facts = optimize_delta on each alone (early stops included)."""
    facts = FACTS + [Fact(subject="Tokyo", prompt="{} is located in", target_true="Japan", target_new="Spain")]
    name = tiny.arch.hook_resid_post(2)
    templates = context_templates(tiny, ROME_HP.context_lengths, 0)
    hp = ROMEHyperParams(layer=1, v_steps=12, context_lengths=((4, 2),), v_weight_decay=0.0,
                         early_stop_nll=6.1)  # on these random models some facts stop early, some run on
    alone = [optimize_delta(tiny, name, f, templates, hp) for f in facts]
    joint = optimize_deltas(tiny, name, facts, templates, hp)
    assert len({len(a.losses) for a in alone}) > 1, [len(a.losses) for a in alone]
    for a, j in zip(alone, joint, strict=True):
        assert len(a.losses) == len(j.losses)
        assert rel(j.delta, a.delta) < 1e-4
        torch.testing.assert_close(j.init, a.init, rtol=1e-5, atol=1e-6)
        assert j.losses[-1]["loss"] == pytest.approx(a.losses[-1]["loss"], rel=1e-4, abs=1e-6)


def test_memit_z_batch_gives_the_same_edit(tiny_llama):
    import dataclasses

    stats = key_stats(tiny_llama, [1, 2], n_tokens=400, seq_len=32, batch_size=8, progress=False)
    one = memit.edit(tiny_llama, FACTS, hparams=dataclasses.replace(MEMIT_HP, z_batch=1), stats=stats)
    both = memit.edit(tiny_llama, FACTS, hparams=dataclasses.replace(MEMIT_HP, z_batch=2), stats=stats)
    for name in one.deltas:
        assert rel(both.deltas[name], one.deltas[name]) < 1e-4, name
    with pytest.raises(ValueError, match="z_batch"):
        dataclasses.replace(MEMIT_HP, z_batch=0)


@pytest.fixture
def fresh_checks(tiny_llama, monkeypatch):
    """The tiny model with no v*/z path checked yet (restored afterwards)."""
    monkeypatch.setattr(tiny_llama.compat, "edit_checks", {})
    monkeypatch.setattr(tiny_llama.compat, "edit_modes", {})
    return tiny_llama


def _bridge_run(model, name, templates):
    with v_path("bridge"):
        torch.manual_seed(0)
        return optimize_delta(model, name, FACT, templates, ROME_HP)


def test_a_path_that_fails_its_check_is_not_used_not_even_for_init(fresh_checks, monkeypatch):
    """Plain and packed paths that give other logits (and another init) than the bridge are rejected;
    the run then equals the bridge's, its starting activation included."""
    from knowscope.editing import vpaths

    model, name = fresh_checks, fresh_checks.arch.hook_resid_post(1)
    templates = context_templates(model, ROME_HP.context_lengths, 0)

    def wrong(real):
        def build(*args, **kwargs):
            fn = real(*args, **kwargs)

            def off(row_delta):
                return fn(row_delta) + 1.0

            off.init_at_look = fn.init_at_look + 1.0
            return off
        return build

    monkeypatch.setattr(vpaths, "_packed_forward", wrong(vpaths._packed_forward))
    torch.manual_seed(0)
    got = optimize_delta(model, name, FACT, templates, ROME_HP)
    assert model.compat.edit_checks[(name, "plain")] is False
    assert model.compat.edit_checks[(name, "packed")] is False
    assert model.compat.edit_modes["hook_resid_post"] == "bridge"
    want = _bridge_run(model, name, templates)
    torch.testing.assert_close(got.init, want.init, rtol=1e-5, atol=1e-6)
    assert rel(got.delta, want.delta) < 1e-4


def test_a_path_that_raises_falls_back(fresh_checks, monkeypatch):
    """Any error while building a path (e.g. a hybrid model's layers asking the cache for more than
    keys/values) means the next slower path, not a failed edit."""
    from knowscope.editing import vpaths

    model, name = fresh_checks, fresh_checks.arch.hook_mlp_out(1)
    templates = context_templates(model, ROME_HP.context_lengths, 0)

    def broken(*args, **kwargs):
        raise AttributeError("'PrefixKV' object has no attribute 'get_conv_state'")

    monkeypatch.setattr(vpaths, "_packed_forward", broken)
    torch.manual_seed(0)
    got = optimize_delta(model, name, FACT, templates, ROME_HP)
    assert model.compat.edit_checks[(name, "plain")] is False
    assert model.compat.edit_checks[(name, "packed")] is False
    assert model.compat.edit_modes["hook_mlp_out"] == "bridge"
    want = _bridge_run(model, name, templates)
    assert rel(got.delta, want.delta) < 1e-4


@pytest.mark.parametrize("path", ["packed", "plain"])
def test_packed_check_is_recorded_only_when_rows_start_at_different_positions(fresh_checks, path):
    """With every row's subject at one position the per-row prefix mask cuts nothing, so a pass there
    proves nothing about it: the packed (and plain) path is used for the call but checked again on the next."""
    model, name = fresh_checks, fresh_checks.arch.hook_resid_post(1)
    hp = ROMEHyperParams(layer=1, v_steps=3, context_lengths=((4, 2),), kl_prompt="{} plays")
    with v_path(path):
        one_start = optimize_deltas(model, name, [FACT], ["{}"], hp)
    assert (name, path) not in model.compat.edit_checks
    with v_path("bridge"):
        want = optimize_deltas(model, name, [FACT], ["{}"], hp)
    assert rel(one_start[0].delta, want[0].delta) < 1e-4
    with v_path(path):
        optimize_deltas(model, name, [FACT], context_templates(model, ROME_HP.context_lengths, 0), hp)
    assert model.compat.edit_checks[(name, path)] is True


def test_plain_path_alone_failing_its_check_leaves_packed(fresh_checks, monkeypatch):
    """Plain blocks that give other numbers than the bridge are rejected by the check on their own; the
    packed path (bridge blocks) is then chosen and the run equals the bridge's."""
    from knowscope.models import plain

    model, name = fresh_checks, fresh_checks.arch.hook_mlp_out(1)
    templates = context_templates(model, ROME_HP.context_lengths, 0)
    real = plain.PlainBlocks.run

    def off(self, *args, **kwargs):
        return real(self, *args, **kwargs) * 1.01

    monkeypatch.setattr(plain.PlainBlocks, "run", off)
    torch.manual_seed(0)
    got = optimize_delta(model, name, FACT, templates, ROME_HP)
    assert model.compat.edit_checks[(name, "plain")] is False
    assert model.compat.edit_checks[(name, "packed")] is True
    assert model.compat.edit_modes["hook_mlp_out"] == "packed"
    assert rel(got.delta, _bridge_run(model, name, templates).delta) < 1e-4


def test_a_user_hook_above_the_edited_layer_steps_plain_aside_for_that_call(fresh_checks):
    """Plain code would skip a hook registered on a block above the edited layer: with one there the
    call runs on the packed path (the hook fires), and plain is not marked broken for later calls."""
    model, name = fresh_checks, fresh_checks.arch.hook_mlp_out(1)
    templates = context_templates(model, ROME_HP.context_lengths, 0)
    fired = []
    handle = model.bridge.hook_dict["blocks.2.hook_resid_post"].register_forward_hook(
        lambda *args: fired.append(True))
    try:
        torch.manual_seed(0)
        optimize_delta(model, name, FACT, templates, ROME_HP)
    finally:
        handle.remove()
    assert fired
    assert (name, "plain") not in model.compat.edit_checks
    assert model.compat.edit_modes["hook_mlp_out"] == "packed"
    torch.manual_seed(0)
    optimize_delta(model, name, FACT, templates, ROME_HP)
    assert model.compat.edit_modes["hook_mlp_out"] == "plain"
