"""One editing workflow: every editor behind one signature, and caches of the base model never computed on
applied edits."""

from __future__ import annotations

import inspect

import pytest
import torch

from knowscope.editing import EditResult, EditSession
from knowscope.editing.editors import EDITORS, get_editor
from knowscope.editing.hparams import MEMITHyperParams, ROMEHyperParams
from knowscope.editing.stats import key_stats
from knowscope.facts import Fact

FACT = Fact(subject="Lionel Messi", prompt="{} plays the sport of", target_true="soccer", target_new="tennis")


def test_every_editor_has_one_signature():
    for editor in EDITORS.values():
        params = list(inspect.signature(editor.edit).parameters)
        assert params[:5] == ["model", "requests", "layers", "hparams", "stats"], (editor.name, params)
    assert get_editor("ROME") is EDITORS["rome"] and get_editor("Memit").layer_window
    with pytest.raises(ValueError, match="valid: rome, memit, ft, grace, wise"):
        get_editor("sgd")


@pytest.mark.parametrize("name", ["rome", "memit", "ft", "ultraedit"])
def test_each_editor_returns_an_edit_and_leaves_the_weights(tiny_llama, name):
    editor = get_editor(name)
    hp = {"rome": ROMEHyperParams(layer=1, v_steps=2, context_lengths=((3, 1),), stats_tokens=128),
          "memit": MEMITHyperParams(layers=(1, 2), v_steps=2, context_lengths=((3, 1),), stats_tokens=128),
          "ft": None, "ultraedit": None}[name]
    layers = [1, 2] if editor.layer_window else 1
    before = {n: p.detach().clone() for n, p in tiny_llama.named_parameters().items()}
    result = editor(tiny_llama, [FACT], layers=layers, hparams=hp)
    assert isinstance(result, EditResult) and result.deltas
    assert all(torch.equal(p, before[n]) for n, p in tiny_llama.named_parameters().items())
    assert editor.default_layers(tiny_llama)


def test_key_statistics_are_taken_on_the_base_weights_whatever_is_applied(tiny_llama):
    base = key_stats(tiny_llama, [1], n_tokens=64, seq_len=16, batch_size=4, cache=False, progress=False)[1]
    name = tiny_llama.arch.mlp_out_name(0)
    w = tiny_llama.named_parameters()[name]
    session = EditSession(tiny_llama)
    session.apply(EditResult("test", {name: torch.full(w.shape, 0.05)}, tiny_llama.fingerprint, layers=[0]))
    try:
        edited = key_stats(tiny_llama, [1], n_tokens=64, seq_len=16, batch_size=4, cache=False, progress=False)[1]
        torch.testing.assert_close(edited.mom2, base.mom2)
        assert not torch.equal(w, session._original[name])  # the edit is still applied afterwards
    finally:
        session.rollback()


def test_one_layer_resolver_for_every_editor(tiny_gpt2):
    from knowscope.editing.layers import resolve_layers

    kw = dict(default=[2], method="X")
    assert resolve_layers(tiny_gpt2, [FACT], None, **kw) == [2]
    assert resolve_layers(tiny_gpt2, [FACT], 1, **kw) == [1]
    assert resolve_layers(tiny_gpt2, [FACT], (3, 1), **kw) == [1, 3]
    for bad, match in [("all", "not valid for X"), (True, "not a layer index"), ([1, "2"], "not a layer index"),
                       ([], "empty"), ([1, 1], "duplicates"), ([9], "layer 9")]:
        with pytest.raises(ValueError, match=match):
            resolve_layers(tiny_gpt2, [FACT], bad, **kw)
    with pytest.raises(ValueError, match="exactly one layer"):
        resolve_layers(tiny_gpt2, [FACT], [1, 2], default=[1], method="ROME", exactly_one=True)
    located = resolve_layers(tiny_gpt2, [FACT], "locate", default=[0], method="MEMIT", window=2)
    assert len(located) == 2 and located[1] - located[0] == 1
    # no sweep recorded for a tiny model's weights: "auto" is "locate"
    assert resolve_layers(tiny_gpt2, [FACT], "auto", default=[0], method="MEMIT", window=2) == located
    with pytest.raises(ValueError, match="needs the requests"):
        resolve_layers(tiny_gpt2, [], "locate", default=[0], method="ROME")


def test_auto_uses_a_recorded_sweep_for_these_weights(tiny_gpt2, monkeypatch):
    """A measured best layer for the model's fingerprint wins over locate(); other models keep locate()."""
    from knowscope.circuits import locate
    from knowscope.editing import layers as L

    entry = dict(layer=2, metric="score", value=0.9, located_layer=0, located_value=0.5, window=3, n_facts=4,
                 n_cells=12, source="sweep.sqlite")
    monkeypatch.setattr(L, "_measured_table", lambda: {tiny_gpt2.fingerprint: {"rome": entry, "memit": entry}})
    assert L.measured_layer(tiny_gpt2, "ROME").layer == 2
    assert L.measured_layer(tiny_gpt2, "ft") is None
    assert L.resolve_layers(tiny_gpt2, [], "auto", default=[0], method="ROME", exactly_one=True) == [2]
    # MEMIT: the requested window centred on the measured layer, clipped to the model (4 layers)
    assert L.resolve_layers(tiny_gpt2, [], "auto", default=[0], method="MEMIT", window=3) == [1, 2, 3]
    assert L.resolve_layers(tiny_gpt2, [], "auto", default=[0], method="MEMIT", window=5) == [0, 1, 2, 3]
    # "locate" still traces
    traced = [int(x) for x in locate(tiny_gpt2, [FACT], kind="mlp").layers]
    assert L.resolve_layers(tiny_gpt2, [FACT], "locate", default=[0], method="ROME", exactly_one=True) == traced


def test_packaged_measured_layers_table_is_well_formed():
    """Every entry of the shipped table names a layer, its evidence and the store it was read from."""
    from knowscope.editing import layers as L

    L._measured_table.cache_clear()
    for fingerprint, entry in L._measured_table().items():
        assert isinstance(fingerprint, str) and entry["model"]
        for method in set(entry) - {"model"}:
            m = entry[method]
            assert method in ("rome", "memit", "ft")
            assert 0 <= m["layer"] and 0.0 <= m["value"] <= 1.0 and m["n_cells"] > 0 and m["window"] >= 1


def test_hyperparameters_are_frozen_validated_and_take_overrides(tiny_llama):
    from dataclasses import FrozenInstanceError

    from knowscope.editing.dinm import DINMHyperParams
    from knowscope.editing.ft import FTHyperParams

    for cls in (ROMEHyperParams, MEMITHyperParams, FTHyperParams, DINMHyperParams):
        hp = cls.for_model(tiny_llama, num_steps=3) if cls in (FTHyperParams, DINMHyperParams) else \
            cls.for_model(tiny_llama, v_steps=3)
        with pytest.raises(FrozenInstanceError):
            hp.seed = 1  # noqa: B010 - frozen
    assert ROMEHyperParams.for_model(tiny_llama, layer=2).layer == 2
    for bad in (dict(v_lr=0), dict(v_steps=0), dict(norm_reference="x"), dict(kl_prompt="no subject"),
                dict(key_constraint="x"), dict(layer=-1), dict(context_lengths=((0, 1),))):
        with pytest.raises(ValueError):
            ROMEHyperParams(**bad)
    for bad in (dict(layers=()), dict(layers=(1, 1)), dict(null_space_threshold=2.0), dict(key_averaging="x"),
                dict(mom2_weight=0)):
        with pytest.raises(ValueError):
            MEMITHyperParams(**bad)
