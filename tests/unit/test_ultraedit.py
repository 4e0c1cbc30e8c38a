"""UltraEdit on tiny random models: keys and gradients, the lifelong statistics and the closed-form update
against plain slow references, and the editor's life with EditSession and sequential runs."""

from __future__ import annotations

import pytest
import torch

from knowscope.editing import ultraedit as ue
from knowscope.editing.editors import get_editor
from knowscope.editing.keys import prompt_ids
from knowscope.editing.sequential import load_run_edits, run_sequential
from knowscope.editing.session import EditSession
from knowscope.facts import Fact

EDITS = [
    Fact(subject="Paris", prompt="{} is the capital of", target_true="France", target_new="Italy", case_id=1),
    Fact(subject="Lionel Messi", prompt="{} plays the sport of", target_true="soccer", target_new="basketball",
         case_id=2),
    Fact(subject="Tokyo", prompt="{} is located in", target_true="Japan", target_new="Spain", case_id=3),
]


def _hp(model, **kw):
    return ue.UltraEditHyperParams.for_model(model, layers=(1, 2), **{"lr": 1e-2, **kw})


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters().items()}


def _plain_keys_and_grads(model, fact, layer):
    """The paper's tracer, written plainly: torch hooks on the HF projection module, one forward and
    backward pass of the answer tokens' mean NLL, rows at the positions that predict an answer token."""
    name = model.arch.mlp_out_name(layer).rsplit(".", 1)[0]
    module = model.hf.get_submodule(name)
    prompt, _ = prompt_ids(model, fact.prompt, fact.subject)
    target = model.encode_target(fact.new_continuation)
    tokens = torch.tensor([(prompt + target)[:-1]])
    got = {}
    h1 = module.register_forward_hook(lambda m, i, o: got.__setitem__("k", i[0].detach().clone()))
    h2 = module.register_full_backward_hook(lambda m, gi, go: got.__setitem__("g", go[0].detach().clone()))
    params = list(model.hf.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        logits = model.hf(tokens).logits[0]
        pos = list(range(len(prompt) - 1, len(prompt) - 1 + len(target)))
        loss = torch.nn.functional.cross_entropy(logits[pos].float(), torch.tensor(target))
        loss.backward()
    finally:
        h1.remove()
        h2.remove()
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)
            p.grad = None
    return got["k"][0, pos].double(), got["g"][0, pos].double()


def test_keys_and_gradients_equal_the_plain_tracer(tiny):
    fact = EDITS[1]
    traced = ue.keys_and_gradients(tiny, [fact], [0, 2])
    for layer in (0, 2):
        k, g = traced[layer]
        k_ref, g_ref = _plain_keys_and_grads(tiny, fact, layer)
        assert k.shape[0] == len(tiny.encode_target(fact.new_continuation))
        torch.testing.assert_close(k, k_ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-7)


def test_running_statistics_equal_a_plain_computation():
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(m, 7, generator=gen, dtype=torch.float64) * 3 + 1 for m in (1, 4, 1, 9)]
    stats = ue.RunningStats()
    for i, b in enumerate(batches):
        stats.update(b)
        seen = torch.cat(batches[: i + 1])
        assert stats.n == seen.shape[0]
        torch.testing.assert_close(stats.mean, seen.mean(0))
        torch.testing.assert_close(stats.m2, ((seen - seen.mean(0)) ** 2).sum(0))
        std = (((seen - seen.mean(0)) ** 2).sum(0) / (seen.shape[0] - 1 + ue.EPS)).sqrt()
        torch.testing.assert_close(stats.standardise(b), (b - seen.mean(0)) / (std + ue.EPS))
    again = ue.LifelongState.from_json(ue.LifelongState({"7x0": stats}).to_json()).groups["7x0"]
    assert again.n == stats.n and torch.equal(again.mean, stats.mean) and torch.equal(again.m2, stats.m2)


def test_ridge_update_solves_the_normal_equations():
    gen = torch.Generator().manual_seed(1)
    K = torch.randn(5, 12, generator=gen, dtype=torch.float64)
    U = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    for ridge in (1.0, 0.1):
        ref = torch.linalg.solve(K.T @ K + ridge * torch.eye(12, dtype=torch.float64), K.T @ U)
        torch.testing.assert_close(ue.ridge_update(K, U, ridge), ref)
        # and the ridge least-squares problem itself, stacked: [K; √λ I] ΔW ≈ [U; 0]
        A = torch.cat([K, ridge**0.5 * torch.eye(12, dtype=torch.float64)])
        B = torch.cat([U, torch.zeros(12, 3, dtype=torch.float64)])
        torch.testing.assert_close(ue.ridge_update(K, U, ridge), torch.linalg.lstsq(A, B).solution)


def test_edit_is_the_plain_algorithm_and_carries_its_statistics(tiny):
    """Two edits in a row: each delta equals the algorithm written out plainly (statistics over every row so
    far, shared by same-shape layers; shifts −lr‖k̂‖²ĝ; normal equations) on the model as edited."""
    hp = _hp(tiny)
    session = EditSession(tiny)
    rows: list[torch.Tensor] = []
    try:
        for fact in EDITS[:2]:
            traced = {layer: _plain_keys_and_grads(tiny, fact, layer) for layer in hp.layers}
            rows += [torch.cat(traced[layer], 1) for layer in hp.layers]
            seen = torch.cat(rows)
            mean, std = seen.mean(0), (((seen - seen.mean(0)) ** 2).sum(0) / (seen.shape[0] - 1 + ue.EPS)).sqrt()
            result = get_editor("ultraedit")(tiny, [fact], hparams=hp)
            for layer in hp.layers:
                k, g = traced[layer]
                z = (torch.cat([k, g], 1) - mean) / (std + ue.EPS)
                kh, gh = z[:, : k.shape[1]], z[:, k.shape[1]:]
                u = -hp.lr * (kh**2).sum(1, keepdim=True) * gh
                dw = torch.linalg.solve(k.T @ k + hp.ridge * torch.eye(k.shape[1], dtype=torch.float64), k.T @ u)
                want = tiny.to_param_layout(layer, dw.T).float()
                torch.testing.assert_close(result.deltas[tiny.arch.mlp_out_name(layer)], want, rtol=1e-3, atol=1e-6)
            (group,) = result.extra["lifelong"].values()
            assert group["n"] == seen.shape[0]
            session.apply(result)
    finally:
        session.rollback()


def test_apply_undo_save_load_and_the_state_follows_the_ledger(tiny_llama, tmp_path):
    before = _snapshot(tiny_llama)
    hp = _hp(tiny_llama)
    editor = get_editor("ultraedit")
    session = EditSession(tiny_llama)
    try:
        first = session.apply(editor(tiny_llama, [EDITS[0]], hparams=hp))
        second = editor(tiny_llama, [EDITS[1]], hparams=hp)
        session.apply(second)
        assert ue.LifelongState.of_model(tiny_llama).to_json() == second.extra["lifelong"]
        session.save(tmp_path / "s")
        session.undo()
        assert ue.LifelongState.of_model(tiny_llama).to_json() == first.extra["lifelong"]
        again = editor(tiny_llama, [EDITS[1]], hparams=hp)  # after the undo: as if never made
        assert all(torch.equal(again.deltas[n], second.deltas[n]) for n in second.deltas)
        session.rollback()
        assert all(torch.equal(before[n], p) for n, p in tiny_llama.named_parameters().items())
        assert ue.LifelongState.of_model(tiny_llama).groups == {}
        loaded = EditSession.load(tiny_llama, tmp_path / "s")
        third = editor(tiny_llama, [EDITS[2]], hparams=hp)
        loaded.rollback()
        session.apply(first)
        session.apply(second)
        assert all(torch.equal(third.deltas[n], d) for n, d in
                   editor(tiny_llama, [EDITS[2]], hparams=hp).deltas.items())
    finally:
        session.rollback()
    assert all(torch.equal(before[n], p) for n, p in tiny_llama.named_parameters().items())


def test_sequential_run_resumes_to_the_same_weights_and_state(tiny_llama, tmp_path):
    hp = _hp(tiny_llama)
    whole = run_sequential(tiny_llama, EDITS, 1, tmp_path / "whole", method="ultraedit", hparams=hp)
    part = run_sequential(tiny_llama, EDITS, 1, tmp_path / "part", method="ultraedit", hparams=hp, max_batches=2)
    assert [r["edits"] for r in part.records] == [0, 1, 2]
    rest = run_sequential(tiny_llama, EDITS, 1, tmp_path / "part", method="ultraedit", hparams=hp)
    assert [r["edits"] for r in whole.records] == [r["edits"] for r in rest.records] == [0, 1, 2, 3]
    (a,), (b,) = load_run_edits(tmp_path / "whole"), load_run_edits(tmp_path / "part")
    assert a.extra["checkpoint_of_edits"] == b.extra["checkpoint_of_edits"] == 3
    assert a.extra["lifelong"] == b.extra["lifelong"]
    session = EditSession(tiny_llama)
    try:
        session.apply(a)
        w_whole = _snapshot(tiny_llama)
        session.rollback()
        session.apply(b)
        assert all(torch.equal(w_whole[n], p) for n, p in tiny_llama.named_parameters().items())
        session.rollback()
        # and the checkpoint is the weights of the edits made one by one in a session (up to the ulps where
        # an edit cancels a weight: the run re-bases onto its checkpoint at every record)
        for fact in EDITS:
            session.apply(get_editor("ultraedit")(tiny_llama, [fact], hparams=hp))
        for n, p in tiny_llama.named_parameters().items():
            torch.testing.assert_close(w_whole[n], p, rtol=1e-5, atol=1e-6)
    finally:
        session.rollback()


def test_bad_hyperparameters_are_refused(tiny_llama):
    with pytest.raises(ValueError, match="lr"):
        ue.UltraEditHyperParams(lr=0)
    with pytest.raises(ValueError, match="ridge"):
        ue.UltraEditHyperParams(ridge=-1)
    with pytest.raises(ValueError, match="layers"):
        ue.UltraEditHyperParams(layers=(1, 1))
    with pytest.raises(ValueError, match="out of range"):
        get_editor("ultraedit")(tiny_llama, [EDITS[0]], layers=[99])
    with pytest.raises(ValueError, match="no requests"):
        get_editor("ultraedit")(tiny_llama, [])
