"""EditSession: bit-exact undo / rollback, failure safety, save / load, fingerprint checks (tiny models)."""

from __future__ import annotations

import pytest
import torch

from knowscope.editing.session import EditMismatchError, EditResult, EditSession


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters().items()}


def _assert_same(model, snap: dict[str, torch.Tensor]) -> None:
    params = model.named_parameters()
    for name, value in snap.items():
        assert torch.equal(params[name], value), f"{name} differs"


def _random_edit(model, layers=(1, 2), scale=0.05, seed=0, method="test") -> EditResult:
    """Random deltas on the MLP output projections of ``layers`` (and one bias/norm weight)."""
    g = torch.Generator().manual_seed(seed)
    params = model.named_parameters()
    deltas = {}
    for layer in layers:
        name = model.arch.mlp_out_name(layer)
        deltas[name] = torch.randn(params[name].shape, generator=g) * scale
    return EditResult(method=method, deltas=deltas, fingerprint=model.fingerprint, layers=list(layers),
                      model_name=model.name)


@pytest.fixture
def session(tiny):
    """A session on a (session-scoped) tiny model, rolled back after the test."""
    snap = _snapshot(tiny)
    s = EditSession(tiny)
    yield s
    s.rollback()
    _assert_same(tiny, snap)


def _logits(model, text="The Eiffel Tower is located in the city of"):
    with torch.no_grad():
        return model(model.to_tokens(text))


def test_apply_changes_forward_and_rollback_is_bit_exact(tiny, session):
    snap = _snapshot(tiny)
    base = _logits(tiny)
    for seed in range(3):  # overlapping edits on the same parameters
        session.apply(_random_edit(tiny, seed=seed))
    assert not torch.allclose(_logits(tiny), base)
    # float addition does not undo exactly: subtracting the deltas would leave rounding behind
    session.rollback()
    _assert_same(tiny, snap)
    assert torch.equal(_logits(tiny), base)
    assert session.history == []


def test_undo_restores_in_reverse_order(tiny, session):
    snap0 = _snapshot(tiny)
    r1 = session.apply(_random_edit(tiny, seed=1, method="first"))
    snap1 = _snapshot(tiny)
    r2 = session.apply(_random_edit(tiny, layers=(2, 3), seed=2, method="second"))
    assert [r.method for r in session.history] == ["first", "second"]
    assert session.undo() is r2
    _assert_same(tiny, snap1)
    assert session.undo() is r1
    _assert_same(tiny, snap0)
    with pytest.raises(ValueError, match="nothing to undo"):
        session.undo()


def test_wrong_shape_for_second_parameter_is_refused_untouched(tiny, session):
    snap = _snapshot(tiny)
    good = _random_edit(tiny, layers=(0,))
    second = tiny.arch.mlp_out_name(1)
    bad_shape = tuple(s + 1 for s in tiny.named_parameters()[second].shape)
    good.deltas[second] = torch.zeros(bad_shape)
    with pytest.raises(EditMismatchError, match="shape"):
        session.apply(good)
    _assert_same(tiny, snap)
    assert session.history == []


def test_failure_half_way_through_writing_restores_weights(tiny, session, monkeypatch):
    """Even when the first parameter was already written, a failure on the second restores it."""
    snap = _snapshot(tiny)
    result = _random_edit(tiny, layers=(0, 1))
    second = tiny.arch.mlp_out_name(1)
    result.deltas[second] = torch.zeros(3, 5)  # would fail check(); skip it to fail inside the write loop
    monkeypatch.setattr(EditSession, "check", lambda self, r: None)
    with pytest.raises(RuntimeError):
        session.apply(result)
    _assert_same(tiny, snap)
    assert session.history == []


def test_non_finite_and_unknown_parameters_are_refused(tiny, session):
    snap = _snapshot(tiny)
    r = _random_edit(tiny, layers=(1,))
    r.deltas[tiny.arch.mlp_out_name(1)][0, 0] = float("nan")
    with pytest.raises(EditMismatchError, match="NaN"):
        session.apply(r)
    r2 = _random_edit(tiny, layers=(1,))
    r2.deltas["no.such.weight"] = torch.zeros(2)
    with pytest.raises(EditMismatchError, match="no.such.weight"):
        session.apply(r2)
    _assert_same(tiny, snap)


def test_temporary_and_unedited(tiny, session):
    snap = _snapshot(tiny)
    base = _logits(tiny)
    kept = session.apply(_random_edit(tiny, seed=5))
    edited = _snapshot(tiny)
    with session.temporary(_random_edit(tiny, layers=(3,), seed=6)):
        assert not torch.equal(tiny.mlp_out_weight(3), snap[tiny.arch.mlp_out_name(3)])
        with session.unedited():
            _assert_same(tiny, snap)
            assert torch.equal(_logits(tiny), base)
    _assert_same(tiny, edited)  # temporary undone, the kept edit still there
    assert session.history == [kept]
    with pytest.raises(KeyError), session.temporary(_random_edit(tiny, layers=(3,), seed=7)):
        raise KeyError("boom")
    _assert_same(tiny, edited)


def test_save_load_reproduces_edited_outputs(tiny, session, tmp_path):
    session.apply(_random_edit(tiny, seed=1))
    session.apply(_random_edit(tiny, layers=(0, 2), seed=2))
    edited = _logits(tiny)
    session.save(tmp_path / "sess")
    single = session.history[0]
    single.save(tmp_path / "single")
    session.rollback()
    assert not torch.equal(_logits(tiny), edited)

    loaded = EditSession.load(tiny, tmp_path / "sess")
    try:
        assert torch.equal(_logits(tiny), edited)
        assert [r.layers for r in loaded.history] == [[1, 2], [0, 2]]
    finally:
        loaded.rollback()

    r = EditResult.load(tmp_path / "single")
    assert r.fingerprint == tiny.fingerprint and r.method == "test"
    for name, delta in single.deltas.items():
        assert torch.equal(r.deltas[name], delta)
    with session.temporary(r):
        expected = _logits(tiny)
    loaded1 = EditSession.load(tiny, tmp_path / "single")  # a single saved EditResult loads too
    try:
        assert torch.equal(_logits(tiny), expected)
    finally:
        loaded1.rollback()


def test_other_models_edits_are_refused(tiny_gpt2, tmp_path):
    from knowscope.models import tiny_model

    other = tiny_model("gpt2", seed=1)  # same architecture and shapes, other weights
    assert other.fingerprint != tiny_gpt2.fingerprint
    snap = _snapshot(other)
    edit = _random_edit(tiny_gpt2)
    with pytest.raises(EditMismatchError, match="different model"):
        EditSession(other).apply(edit)
    s = EditSession(tiny_gpt2)
    s.apply(edit)
    try:
        s.save(tmp_path / "sess")
        edit.save(tmp_path / "one")
    finally:
        s.rollback()
    with pytest.raises(EditMismatchError, match="different model"):
        EditSession.load(other, tmp_path / "sess")
    with pytest.raises(EditMismatchError, match="different model"):
        EditSession.load(other, tmp_path / "one")
    _assert_same(other, snap)
