"""WISE's sequence-level router (routing="sequence") against a plain per-sequence reference on tiny models,
and the one-decision-per-sequence rule under generation with and without a KV cache."""

import pytest
import torch

from knowscope.editing.editors import get_editor
from knowscope.editing.memory import memory_of
from knowscope.editing.session import EditSession
from knowscope.editing.wise import WISEHyperParams, WiseMemory
from knowscope.editing.wise_routing import LONG_SEQUENCE, SequenceRouter
from knowscope.facts import Fact

SPEC = {"mask_ratio": 0.5, "seed": 0, "act_ratio": 0.9, "density": 0.5, "routing": "sequence"}


def _memory(model, g):
    mem = WiseMemory(model, 1, SPEC)
    mem.shards = torch.randn(2, mem.d_out, mem.d_in, generator=g) * 0.1
    mem.shard_min = torch.tensor([1.0, 2.0])
    mem.delta = torch.randn(mem.d_out, mem.d_in, generator=g) * 0.1
    mem.acts = torch.tensor([1.5, 3.0])
    mem.n_edits = 3
    return mem


def _reference(mem, a, real_len, out):
    """Plain per-sequence routing: per row and memory the mean score over the row's real positions (the max
    past LONG_SEQUENCE of them); the current shard first, then each stored shard that beats its threshold
    and the best score so far; the chosen memory's change at every position of the row."""
    deltas = [mem.shards[0], mem.shards[1], mem.delta]
    thresholds = [0.9 * 1.0, 0.9 * 2.0, 0.9 * 1.5]
    want, choices = out.clone(), []
    for b in range(a.shape[0]):
        seq = []
        for d in deltas:
            s = [float((d @ a[b, p]).norm()) for p in range(real_len[b])]
            seq.append(max(s) if len(s) > LONG_SEQUENCE else sum(s) / len(s))
        choice, best = (2 if seq[2] > thresholds[2] else -1), seq[2]
        for i in range(2):
            if seq[i] > best and seq[i] > thresholds[i]:
                choice, best = i, seq[i]
        choices.append(choice)
        if choice >= 0:
            for p in range(a.shape[1]):
                want[b, p] = out[b, p] + deltas[choice] @ a[b, p]
    return want, choices


@pytest.mark.parametrize("width", [6, LONG_SEQUENCE + 5])
def test_sequence_rewrite_equals_a_plain_per_sequence_reference(tiny, width):
    g = torch.Generator().manual_seed(3)
    mem = _memory(tiny, g)
    n = 6
    a = torch.randn(n, width, mem.d_in, generator=g) * 3
    a[0] *= 1e-3  # scores below every threshold: the main weights
    a[1, :, :] *= 0.3
    a[2, 2] *= 40  # one loud position: under a mean it lifts the row, past 100 positions it alone decides
    real_len = [width, width - 2, width, width - 1, width, width]  # rows 1 and 3 right-padded
    pad = tiny.pad_token_id
    ids = torch.randint(3, 50, (n, width), generator=g)
    ids[ids == pad] = 3
    for b, k in enumerate(real_len):
        ids[b, k:] = pad
    out = torch.randn(n, width, mem.d_out, generator=g)
    mem.router.read_ids(ids)
    got = mem.rewrite(a, out)
    want, choices = _reference(mem, a, real_len, out)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert -1 in choices and len(set(choices)) >= 2  # the reference exercised routed and unrouted rows


def test_router_keeps_the_prompts_decision_while_decoding():
    router = SequenceRouter(pad_id=0, bos_id=0)
    thr = torch.tensor([1.0])
    prompt = torch.tensor([[0, 5, 6], [0, 7, 8]])
    router.read_ids(prompt)
    first = router.decide(torch.tensor([[[2.0, 2.0, 2.0], [0.1, 0.1, 0.1]]]), thr)
    assert first.tolist() == [0, -1]
    router.read_ids(torch.tensor([[9], [9]]))  # one cached step: the new token alone would decide otherwise
    assert router.decide(torch.tensor([[[0.0], [5.0]]]), thr).tolist() == [0, -1]
    router.read_ids(torch.tensor([[0, 5, 6, 9, 4], [0, 7, 8, 9, 4]]))  # uncached: the whole sequence again
    assert router.decide(torch.tensor([[[0.0] * 5, [5.0] * 5]]), thr).tolist() == [0, -1]
    router.read_ids(torch.tensor([[0, 1, 2], [0, 7, 8]]))  # other sequences: decided afresh
    assert router.decide(torch.tensor([[[0.0] * 3, [5.0] * 3]]), thr).tolist() == [-1, 0]
    # the pad that is also BOS counts as the sequence's BOS; the left padding before it does not
    router.read_ids(torch.tensor([[0, 0, 0, 5], [0, 6, 7, 8]]))
    assert router.decide(torch.tensor([[[9.0, 9.0, 0.5, 0.5], [0.5] * 4]]), thr).tolist() == [-1, -1]


FACT = Fact(subject="Tokyo", prompt="{} is the capital of", target_true="Japan", target_new="Mexico", case_id=2,
            neighborhood_prompts=["Kyoto is in"])


def test_sequence_edit_routes_its_prompt_and_generates_alike_with_and_without_cache(tiny_llama):
    model = tiny_llama
    hp = WISEHyperParams.for_model(model, n_iter=6, n_templates=1, act_margin=(0.0, 0.5, 0.2), routing="sequence")
    session = EditSession(model)
    try:
        result = get_editor("wise")(model, [FACT], hparams=hp)
        assert result.extra["memory"]["spec"]["routing"] == "sequence"
        session.apply(result)
        mem = memory_of(model)
        assert mem.sequence and not mem.position_local
        assert mem.route([FACT.text])[0].routed
        ids = model.to_tokens(FACT.text)
        cached = model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                                   use_cache=True, pad_token_id=model.pad_token_id)
        assert mem.router._prev[1].tolist() == [0]  # the prompt's decision, kept to the last step
        plain = model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
                                  use_cache=False, pad_token_id=model.pad_token_id)
        assert torch.equal(cached, plain)
        # the first generated token is the one the routed prompt's full forward predicts
        assert int(cached[0, ids.shape[1]]) == int(model(ids)[0, -1].argmax())
    finally:
        session.rollback()
    assert memory_of(model) is None


def test_routing_must_be_known(tiny_llama):
    with pytest.raises(ValueError, match="routing must be one of"):
        WISEHyperParams.for_model(tiny_llama, routing="token")
