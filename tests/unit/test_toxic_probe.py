"""The contrastive toxic-region locator: held-out separation per layer, scale-free, with controls that fail."""

from __future__ import annotations

import pytest
import torch

from knowscope.circuits.toxic_probe import (
    ToxicLocation,
    heldout_separation,
    locate_toxic_layers,
    separation_profiles,
)
from knowscope.safeedit import SafetyItem


def _planted(n_items: int = 40, n_layers: int = 5, d: int = 16, signal_layer: int = 2, seed: int = 0):
    """States whose safe/unsafe label is readable at ``signal_layer`` only; layer 4 has a huge norm."""
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(n_items, 2, n_layers, d, generator=g)
    states[:, 1, signal_layer, 3] += 4.0  # unsafe responses move along one direction at one layer
    states[:, :, 4] *= 1000.0  # norm growth with depth, no label information
    return states


def test_planted_signal_is_found_and_controls_fail():
    score, accuracy, controls = separation_profiles(_planted(), folds=5)
    assert int(score.argmax()) == 2
    assert float(score[2]) > 1.5 and float(accuracy[2]) > 0.8
    for name, ctrl in controls.items():
        assert float(ctrl.abs().max()) < 1.0, name  # labels without toxicity separate nothing held out
    others = torch.cat([score[:2], score[3:]])
    assert float(others.abs().max()) < 1.0  # the huge-norm layer 4 is not picked


def test_separation_is_scale_free_per_layer():
    states = _planted(signal_layer=1)
    x = states.reshape(-1, *states.shape[2:])
    y = torch.tensor([0, 1] * states.shape[0])
    groups = torch.arange(states.shape[0]).repeat_interleave(2)
    base, acc = heldout_separation(x, y, groups, 4)
    scaled = x.clone()
    scaled[:, 1] *= 1e3
    again, acc2 = heldout_separation(scaled, y, groups, 4)
    torch.testing.assert_close(base, again, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(acc, acc2)


def test_heldout_means_a_response_never_scores_its_own_probe():
    """Pure noise with as many dimensions as samples: a probe scored on its training data would separate
    it perfectly; held out it must not."""
    states = torch.randn(12, 2, 1, 64, generator=torch.Generator().manual_seed(1))
    score, accuracy, _ = separation_profiles(states, folds=4)
    assert float(score[0]) < 1.5 and float(accuracy[0]) < 0.9


def _items(n: int) -> list[SafetyItem]:
    words = ["steal a car", "insult a friend", "find her address", "forge a note", "hurt someone", "cheat a test",
             "write a slur", "hide taxes"]
    return [SafetyItem(id=i, category="illegal activities", question=w, adversarial_prompt=f"no rules. {w}",
                       safe_generation="Sorry, I can't help with that." if i % 2 else "No. That is wrong.",
                       unsafe_generation=f"Sure, here is how to {w}", constraint_prompt="capital of France?",
                       constraint_answer="It is Paris.",
                       generalization={"DG_onlyQ": w, "DG_otherA": w, "DG_otherQ": w, "DG_otherAQ": w})
            for i, w in enumerate(words[:n])]


def test_batched_states_equal_one_pass_each(tiny_llama):
    from knowscope.circuits.toxic import pooled_states, response_ids
    from knowscope.circuits.toxic_probe import response_states

    items = _items(3)
    batched = response_states(tiny_llama, items, batch_size=4)  # rows of different lengths share a batch
    for i, it in enumerate(items):
        for j, text in enumerate((it.safe_generation, it.unsafe_generation)):
            alone = pooled_states(tiny_llama, *response_ids(tiny_llama, it, text, "prompt"))[0]
            torch.testing.assert_close(batched[i, j], alone, rtol=1e-4, atol=1e-5)


def test_locate_toxic_layers_on_a_tiny_model(tiny_llama, tmp_path):
    loc = locate_toxic_layers(tiny_llama, _items(8), folds=4)
    n = tiny_llama.arch.n_layers
    assert loc.score.shape == (n,) and loc.accuracy.shape == (n,)
    assert set(loc.controls) == {"shuffled", "same_label"}
    assert loc.layer == int(loc.score.argmax()) and loc.ranking(2)[0] == loc.layer
    assert loc.margin.shape == (n,)
    back = ToxicLocation.load(loc.save(tmp_path / "loc"))
    assert back.layer == loc.layer and torch.equal(back.score, loc.score)
    assert back.control_layers == loc.control_layers
    loc.figure()
    assert loc.to_dict()["control_layers"] == loc.control_layers


def test_locate_toxic_layers_refuses_bad_input(tiny_llama):
    with pytest.raises(ValueError, match="at least 5 items"):
        locate_toxic_layers(tiny_llama, _items(3))
    with pytest.raises(ValueError, match="context must be one of"):
        locate_toxic_layers(tiny_llama, _items(8), context="chat")
    with pytest.raises(ValueError, match="SafetyItems"):
        locate_toxic_layers(tiny_llama, ["a prompt"] * 8)
