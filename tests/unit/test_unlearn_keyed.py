"""Keyed forgetting and MemFlex's neuron granularity on tiny models: keyed forgetting makes the model stop
giving a fact it gives and leaves the same relation's other subject and the same subject's other relation as
they were, undoes bit for bit and round-trips through save / load; its targets; one-line refusals. MemFlex's
neuron locate step on a constructed case, its per-neuron gradients against a plain slice, and a training run
that changes only the located neurons' entries."""

from __future__ import annotations

import json

import pytest
import torch
from cli_run import run_cli

from knowscope.editing.evaluation.generation import begins_with, decode, greedy_continuations
from knowscope.editing.memory import memory_of, value_inputs
from knowscope.editing.session import EditResult, EditSession
from knowscope.editing.unlearning import (
    KeyedHyperParams,
    MemFlexHyperParams,
    UnlearnFormatError,
    UnlearnItem,
    UnlearnSet,
    get_unlearner,
    parameter_groups,
)
from knowscope.editing.unlearning.keyed import choose_target
from knowscope.editing.unlearning.memflex import locate_neurons, neuron_gradients
from knowscope.editing.unlearning.train import encode, forgotten_fraction

#: prompts after which the tiny random model generates a word (not end-of-text)
PROMPTS = {"tower_city": ("The Eiffel Tower stands in the city of", "Eiffel Tower", "city"),
           "tower_builder": ("The Eiffel Tower was designed by the engineer", "Eiffel Tower", "builder"),
           "louvre_city": ("The Louvre stands in the city of", "Louvre", "city")}


def _greedy_word(model, prompt: str) -> str:
    """What the tiny random model generates after ``prompt``, as an answer it 'knows'."""
    pair = encode(model, [UnlearnItem(prompt, "x")])[0]
    req = (pair[0], 4)
    return decode(model, greedy_continuations(model, [req])[req]).strip().split()[0]


@pytest.fixture
def known(tiny_llama):
    """The three prompts as items whose answers are what the tiny model says (so there is something to
    forget and something to keep)."""
    return {k: UnlearnItem(p, _greedy_word(tiny_llama, p), s, r) for k, (p, s, r) in PROMPTS.items()}


def _gives(model, item: UnlearnItem) -> bool:
    return forgotten_fraction(model, encode(model, [item]), [item]) == 0.0


def _radius(model, items) -> float:
    """A relation radius below the distance between the two relations' keys (tiny random activations lie
    close together)."""
    layer = KeyedHyperParams().factkey(model).layer
    a, b = (value_inputs(model, layer, [i.prompt])[0][-1] for i in items)
    return float(1 - torch.nn.functional.cosine_similarity(a, b, dim=-1)) / 3


def test_keyed_forgets_the_fact_and_keeps_its_neighbours(tiny_llama, known, tmp_path):
    model = tiny_llama
    forget, keep = [known["tower_city"]], [known["louvre_city"], known["tower_builder"]]
    assert all(_gives(model, i) for i in forget + keep)
    hp = KeyedHyperParams(target="Oslo", relation_radius=_radius(model, [known["tower_city"], known["tower_builder"]]))
    result = get_unlearner("keyed").edit(model, forget, keep, hparams=hp)
    assert memory_of(model) is None and result.is_memory_edit and not result.deltas  # the model as it was
    assert result.method == "keyed" and result.extra["targets"] == ["Oslo"]
    assert result.extra["forgotten_train"] == 1.0 and result.extra["retain_kept_train"] == 1.0
    with torch.no_grad():
        before = model(model.to_tokens(PROMPTS["louvre_city"][0]))
    session = EditSession(model)
    session.apply(result)
    assert not _gives(model, forget[0]) and all(_gives(model, i) for i in keep)
    session.undo()
    assert memory_of(model) is None and _gives(model, forget[0])
    with torch.no_grad():
        assert torch.equal(model(model.to_tokens(PROMPTS["louvre_city"][0])), before)
    result.save(tmp_path / "edit")
    loaded = EditResult.load(tmp_path / "edit")
    assert loaded.method == "keyed" and loaded.hparams["target"] == "Oslo"
    with session.temporary(loaded):
        assert not _gives(model, forget[0]) and _gives(model, keep[0])
        # a second request while this session carries the first: computed on top, the check left to the caller
        second = get_unlearner("keyed").edit(model, [known["louvre_city"]], hparams=hp)
        assert second.extra["forgotten_train"] is None
        session.apply(second)
        assert not _gives(model, forget[0]) and not _gives(model, known["louvre_city"])
        assert _gives(model, known["tower_builder"])
    assert memory_of(model) is None


def test_keyed_targets(tiny_llama):
    france = UnlearnItem("The capital of France is", "Paris", "France", "capital")
    pool = [france, UnlearnItem("The capital of Italy is", "Rome", "Italy", "capital"),
            UnlearnItem("The capital of Spain is", "Madrid", "Spain", "capital"),
            UnlearnItem("The currency of Italy is the", "euro", "Italy", "currency"),
            UnlearnItem("The capital of Texas is", "Paris-ish", "Texas", "capital")]  # gives the answer: never
    assert choose_target(tiny_llama, france, pool, "relation") in {"Rome", "Madrid"}
    assert choose_target(tiny_llama, france, pool, " unknown ") == "unknown"
    alt = choose_target(tiny_llama, france, [france], "relation")  # no other answer: the model's next word
    assert alt and not begins_with(" " + alt, "Paris")
    assert alt == choose_target(tiny_llama, france, pool, "alternative")


def test_keyed_bad_input_is_one_clear_line(tiny_llama, tmp_path, capsys):
    with pytest.raises(UnlearnFormatError, match="subject written in its prompt"):
        get_unlearner("keyed").edit(tiny_llama, [UnlearnItem("Q: who wrote it?", "Homer")])
    with pytest.raises(UnlearnFormatError, match="forget set is empty"):
        get_unlearner("keyed").edit(tiny_llama, [])
    with pytest.raises(ValueError, match="target must be"):
        KeyedHyperParams(target=" ")
    path = tmp_path / "set.json"
    UnlearnSet([UnlearnItem(*PROMPTS["tower_city"][:1], "Paris", "Eiffel Tower", "city")]).save(path)
    code, out, err = run_cli(["unlearn", "--model", "tiny-llama", "--method", "keyed", "--data", str(path),
                              "--lr", "1e-3"], capsys)
    assert code == 2 and "--lr: keyed forgetting trains no weights" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(["unlearn", "--model", "tiny-llama", "--method", "ga", "--data", str(path),
                              "--target", "x"], capsys)
    assert code == 2 and "--target is for --method keyed" in err
    code, out, err = run_cli(["unlearn", "--model", "tiny-llama", "--method", "keyed", "--data", str(path),
                              "--target", "Oslo", "--no-fluency", "--json", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["method"] == "keyed" and res["hparams"]["target"] == "Oslo" and res["metrics"]["gen_forget"] == 1.0


def test_locate_neurons_picks_the_forget_dominant_neuron():
    torch.manual_seed(0)
    d_mlp, d = 6, 4
    f = {"model.layers.0.mlp.up_proj.weight": torch.zeros(d_mlp, d),
         "model.layers.0.mlp.down_proj.weight": torch.zeros(d, d_mlp),
         "model.layers.1.mlp.up_proj.weight": torch.zeros(d_mlp, d),
         "model.layers.1.mlp.down_proj.weight": torch.zeros(d, d_mlp)}
    r = {k: torch.zeros_like(v) for k, v in f.items()}
    base, other = torch.randn(d), torch.randn(d)
    f["model.layers.1.mlp.up_proj.weight"][2] = base * 5       # layer 1 neuron 2: the forget set's alone
    r["model.layers.1.mlp.up_proj.weight"][2] = other * 0.01
    f["model.layers.0.mlp.down_proj.weight"][:, 4] = base * 5  # layer 0 neuron 4: shared (same direction)
    r["model.layers.0.mlp.down_proj.weight"][:, 4] = base * 5
    for g in (f, r):                                           # a little everywhere else
        for k in g:
            g[k] += 1e-3 * torch.randn_like(g[k])
    grads = neuron_gradients(f, d_mlp)
    assert grads[1].shape == (d_mlp, 2 * d)
    torch.testing.assert_close(grads[1][2, :d], f["model.layers.1.mlp.down_proj.weight"][:, 2])  # sorted names
    torch.testing.assert_close(grads[1][2, d:], f["model.layers.1.mlp.up_proj.weight"][2])
    loc = locate_neurons(f, r, d_mlp, sim_threshold=0.5, grad_quantile=0.9, max_neurons=1)
    assert loc.neurons == {1: [2]}
    assert loc.chosen == ["model.layers.1.mlp.up_proj.weight", "model.layers.1.mlp.down_proj.weight"]


def test_memflex_neuron_granularity_trains_only_the_located_neurons(tiny_llama, known):
    model = tiny_llama
    hp = MemFlexHyperParams(granularity="neuron", max_neurons=5, sim_threshold=1.0, grad_quantile=0.0,
                            max_steps=2, stop_forget=None, lr=1e-2, retain_batch=2)
    result = get_unlearner("memflex").edit(model, [known["tower_city"]], [known["louvre_city"]], hparams=hp)
    neurons = {int(k): v for k, v in result.extra["neurons"].items()}
    assert sum(map(len, neurons.values())) == 5
    assert set(result.deltas) == set(result.extra["located"])
    params = model.named_parameters()
    d_mlp = model.arch.d_mlp
    for name, delta in result.deltas.items():
        layer = int(name.split(".layers.")[1].split(".")[0])
        axis = [i for i, n in enumerate(delta.shape) if n == d_mlp][0]
        on = torch.zeros(d_mlp, dtype=torch.bool)
        on[neurons[layer]] = True
        moved = delta.abs().amax(dim=1 - axis) > 0
        assert moved.any() and not (moved & ~on).any(), name  # only the located neurons' entries changed
        assert delta.shape == params[name].shape
    with pytest.raises(ValueError, match="granularity"):
        MemFlexHyperParams(granularity="head")
    with pytest.raises(ValueError, match="modules must be"):
        MemFlexHyperParams(granularity="neuron", modules=("mlp", "attn"))
    assert len(parameter_groups(model, ("mlp",))) == 3 * model.arch.n_layers


def test_memflex_defaults_are_the_chosen_protocol(tiny_llama):
    hp = MemFlexHyperParams.for_model(tiny_llama)
    assert (hp.objective, hp.retain_batch, hp.stop_retain, hp.max_steps) == ("npo", 32, 1.0, 30)
    assert MemFlexHyperParams.for_model(tiny_llama, stop_forget=None).stop_retain is None
    assert MemFlexHyperParams.for_model(tiny_llama, layers=[1, 2]).layers == (1, 2)
