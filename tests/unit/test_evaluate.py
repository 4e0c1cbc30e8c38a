"""Evaluation metrics against plain, hand-written references on tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from knowscope.editing.evaluation import (
    EditMetrics,
    evaluate,
    evaluate_edit,
    generate_texts,
    ngram_entropy,
    pre_edit_predictions,
    prediction_table,
    score_continuations,
    word_tokenize,
)
from knowscope.editing.session import EditResult, EditSession
from knowscope.facts import Fact


def _facts() -> list[Fact]:
    return [
        Fact(
            subject="Eiffel Tower", prompt="The {} is located in the city of", target_true="Paris",
            target_new="Rome", case_id=0,
            paraphrase_prompts=["Where is the Eiffel Tower? It is in", "Eiffel Tower, in"],
            neighborhood_prompts=["The Louvre is located in the city of", "Notre Dame is in",
                                  "The capital of France is"],
            generation_prompts=["The Eiffel Tower is"],
            locality=[],
            portability=[("The tower stands in a country whose capital is", "Rome Italy")],
        ),
        Fact(
            subject="Lionel Messi", prompt="{} plays the sport of", target_true="soccer", target_new="basketball",
            case_id=1,
            paraphrase_prompts=["Messi is a professional"],
            neighborhood_prompts=["Cristiano Ronaldo plays"],
            locality=[("Michael Jordan played", "basketball for Chicago")],
        ),
    ]


# ---- plain references ---------------------------------------------------------------------------


def _ref_scores(model, prompt: str, continuation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs and argmax of each continuation token, one unpadded forward pass, written plainly."""
    prompt_ids = model.to_tokens(prompt)[0].tolist()
    target = model.tokenizer.encode(continuation, add_special_tokens=False)
    ids = torch.tensor([prompt_ids + target])
    with torch.no_grad():
        logits = model(ids)[0].float()
    logprobs, argmax = [], []
    for j, tok in enumerate(target):
        row = logits[len(prompt_ids) - 1 + j]
        logprobs.append(torch.log_softmax(row, -1)[tok])
        argmax.append(int(row.argmax()))
    return torch.stack(logprobs), torch.tensor(argmax)


def _ref_prob(model, prompt: str, continuation: str) -> float:
    lp, _ = _ref_scores(model, prompt, continuation)
    return math.exp(float(lp.mean()))


def _ref_acc(model, prompt: str, continuation: str) -> float:
    _, am = _ref_scores(model, prompt, continuation)
    target = model.tokenizer.encode(continuation, add_special_tokens=False)
    return sum(int(a) == t for a, t in zip(am.tolist(), target, strict=True)) / len(target)


def _edit(model, scale=0.3, seed=0, layers=(0, 1)) -> EditResult:
    g = torch.Generator().manual_seed(seed)
    params = model.named_parameters()
    deltas = {model.arch.mlp_out_name(i): torch.randn(params[model.arch.mlp_out_name(i)].shape, generator=g) * scale
              for i in layers}
    return EditResult("test", deltas, model.fingerprint, layers=list(layers))


# ---- tests ----------------------------------------------------------------------------------------


def test_score_continuations_matches_unpadded_reference(tiny):
    pairs = [("The Eiffel Tower is in", " Paris"), ("A", " Rome Italy and more"),
             ("The capital of France is", " Paris"), ("The Eiffel Tower is in", " Paris")]
    got = score_continuations(tiny, pairs, batch_size=3)  # mixed lengths, padded, split over batches
    for (prompt, cont), s in zip(pairs, got, strict=True):
        lp, am = _ref_scores(tiny, prompt, cont)
        torch.testing.assert_close(s.logprobs, lp, atol=1e-5, rtol=1e-5)
        assert torch.equal(s.argmax, am)
        assert s.prob == pytest.approx(math.exp(float(lp.mean())), rel=1e-5)


def test_packed_scoring_equals_rows_and_is_chosen_only_where_it_checks(tiny):
    """Each prompt once with its continuations packed behind it (tree mask, own positions): the same
    scores as one padded row per input, for continuations of different lengths sharing prompts."""
    from knowscope.editing import scoring

    pairs = [("The Eiffel Tower is in", " Paris"), ("The Eiffel Tower is in", " Rome Italy and more"),
             ("The Eiffel Tower is in", " the city of lights"), ("A", " Rome Italy"), ("A", " b"),
             ("The capital of France is", " Paris France"), ("Michael Jordan played", " basketball for Chicago")]
    seqs = [scoring._pair_ids(tiny, p, c) for p, c in pairs]
    rows = scoring._score_ids(tiny, seqs, 2, mode="rows")
    if tiny.arch.positional != "rotary":
        assert scoring._check_packed(tiny, seqs, 2) == "rows"  # absolute positions: no packed rows
        return
    packed = scoring._score_ids(tiny, seqs, 2, mode="packed")
    assert len(scoring._pack(seqs)) == 4  # one row per distinct prompt
    for (prompt, cont), key in zip(pairs, seqs, strict=True):
        lp, am = _ref_scores(tiny, prompt, cont)
        torch.testing.assert_close(packed[key].logprobs, lp, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(packed[key].logprobs, rows[key].logprobs, atol=1e-5, rtol=1e-5)
        assert torch.equal(packed[key].argmax, am)
    assert scoring._check_packed(tiny, seqs, 2) == "packed"


def test_packed_check_covers_the_tree_mask_even_for_one_token_continuations(tiny_llama, monkeypatch):
    from knowscope.editing import scoring

    seen = []
    real = scoring._score_packed

    def spy(model, seqs, batch_size):
        seen.extend(seqs)
        return real(model, seqs, batch_size)

    monkeypatch.setattr(scoring, "_score_packed", spy)
    seqs = [scoring._pair_ids(tiny_llama, "The Eiffel Tower is in", " Paris")]
    assert len(seqs[0][1]) == 1
    assert scoring._check_packed(tiny_llama, seqs, 4) == "packed"
    shared = [t for p, t in seen if p == seqs[0][0] and len(t) > 1]
    assert len(set(shared)) >= 2  # two multi-token continuations behind one prompt


def test_packed_scoring_that_differs_is_not_used(tiny_llama, monkeypatch):
    from knowscope.editing import scoring

    real = scoring._score_packed

    def off(model, seqs, batch_size):  # a packed pass whose attention leaks would shift the scores
        out = real(model, seqs, batch_size)
        return {k: scoring.TokenScores(v.target, v.logprobs + 1e-2, v.argmax) for k, v in out.items()}

    monkeypatch.setattr(scoring, "_score_packed", off)
    monkeypatch.setattr(tiny_llama.compat, "score_mode", None)
    got = score_continuations(tiny_llama, [("The Eiffel Tower is in", " Rome Italy")])
    assert tiny_llama.compat.score_mode == "rows"
    lp, _ = _ref_scores(tiny_llama, "The Eiffel Tower is in", " Rome Italy")
    torch.testing.assert_close(got[0].logprobs, lp, atol=1e-5, rtol=1e-5)


def test_counterfact_and_easyedit_metrics_match_hand_computation(tiny):
    facts = _facts()
    session = EditSession(tiny)
    result = _edit(tiny)
    # reference: unedited argmax on the locality pairs, then the edited model's everything
    loc_pairs = [[(p, " " + facts[0].target_true) for p in facts[0].neighborhood_prompts],
                 [("Michael Jordan played", " basketball for Chicago")]]
    before = [[_ref_scores(tiny, p, c)[1] for p, c in pairs] for pairs in loc_pairs]
    try:
        session.apply(result)
        m = evaluate(tiny, facts, session=session, fluency=False, batch_size=4)
        for i, fact in enumerate(facts):
            new, true = fact.new_continuation, fact.true_continuation
            row = m.per_fact[i]

            def pn(p, new=new, true=true):
                return _ref_prob(tiny, p, new), _ref_prob(tiny, p, true)

            e = [pn(fact.text)]
            pa = [pn(p) for p in fact.paraphrase_prompts]
            ne = [pn(p) for p in fact.neighborhood_prompts]
            assert row["efficacy_score"] == pytest.approx(sum(a > b for a, b in e) / len(e))
            assert row["efficacy_magnitude"] == pytest.approx(sum(a - b for a, b in e) / len(e), abs=1e-6)
            assert row["paraphrase_score"] == pytest.approx(sum(a > b for a, b in pa) / len(pa))
            assert row["paraphrase_magnitude"] == pytest.approx(sum(a - b for a, b in pa) / len(pa), abs=1e-6)
            assert row["neighborhood_score"] == pytest.approx(sum(b > a for a, b in ne) / len(ne))
            assert row["neighborhood_magnitude"] == pytest.approx(sum(b - a for a, b in ne) / len(ne), abs=1e-6)
            assert row["rewrite_acc"] == pytest.approx(_ref_acc(tiny, fact.text, new))
            assert row["rephrase_acc"] == pytest.approx(
                sum(_ref_acc(tiny, p, new) for p in fact.paraphrase_prompts) / len(fact.paraphrase_prompts))
            after = [_ref_scores(tiny, p, c)[1] for p, c in loc_pairs[i]]
            share = [float((a == b).float().mean()) for a, b in zip(after, before[i], strict=True)]
            assert row["locality_acc"] == pytest.approx(sum(share) / len(share))
        assert m.per_fact[0]["portability_acc"] == pytest.approx(
            _ref_acc(tiny, facts[0].portability[0][0], " Rome Italy"))
        assert m.per_fact[1]["portability_acc"] is None
        assert m.portability_acc == pytest.approx(m.per_fact[0]["portability_acc"])
        # aggregates are means over facts of the per-fact values
        for key in ("efficacy_score", "paraphrase_magnitude", "neighborhood_score", "rewrite_acc", "locality_acc"):
            assert getattr(m, key) == pytest.approx(sum(r[key] for r in m.per_fact) / 2)
        assert m.fluency is None
    finally:
        session.rollback()


def test_locality_is_against_the_unedited_model_in_sequential_editing(tiny):
    facts = _facts()
    reference = pre_edit_predictions(tiny, facts)  # before any edit
    session = EditSession(tiny)
    try:
        session.apply(_edit(tiny, seed=1))
        session.apply(_edit(tiny, seed=2, layers=(2, 3)))
        via_reference = evaluate(tiny, facts, reference=reference, fluency=False)
        via_session = evaluate(tiny, facts, session=session, fluency=False)
        assert via_reference.locality_acc == pytest.approx(via_session.locality_acc)
        assert via_reference.locality_acc < 1.0  # large random edits move some predictions
        # taken with edits applied, the session lends the original weights: same reference
        late = pre_edit_predictions(tiny, facts, session=session)
        assert late.argmax == reference.argmax
        no_ref = evaluate(tiny, facts, fluency=False)
        assert no_ref.locality_acc is None
    finally:
        session.rollback()
    # an unchanged model is perfectly local
    same = evaluate(tiny, facts, reference=reference, fluency=False)
    assert same.locality_acc == 1.0


def test_evaluate_edit_leaves_weights_and_session_as_they_were(tiny):
    facts = _facts()
    snap = {k: v.clone() for k, v in tiny.named_parameters().items()}
    result = _edit(tiny)
    m = evaluate_edit(tiny, result, facts, fluency=False)
    for k, v in tiny.named_parameters().items():
        assert torch.equal(v, snap[k])
    session = EditSession(tiny)
    with session.temporary(result):
        direct = evaluate(tiny, facts, session=session, fluency=False)
    assert m.flat() == pytest.approx(direct.flat())


def test_zero_edit_changes_nothing(tiny):
    facts = _facts()
    zero = EditResult("zero", {tiny.arch.mlp_out_name(0): torch.zeros_like(tiny.mlp_out_weight(0))}, tiny.fingerprint)
    base = evaluate(tiny, facts, fluency=False)
    m = evaluate_edit(tiny, zero, facts, fluency=False)
    assert m.locality_acc == 1.0
    for key in ("efficacy_score", "efficacy_magnitude", "paraphrase_score", "rewrite_acc", "rephrase_acc"):
        assert getattr(m, key) == pytest.approx(getattr(base, key))


def test_ngram_entropy_by_hand():
    # bigrams (a,b) x2, (b,a) x1 -> H2 = H(2/3, 1/3); trigrams (a,b,a), (b,a,b) -> H3 = 1 bit
    h2 = -(2 / 3 * math.log2(2 / 3) + 1 / 3 * math.log2(1 / 3))
    assert ngram_entropy("a b a b") == pytest.approx((2 / 3 * h2 + 4 / 3 * 1.0) / 2)
    assert ngram_entropy("word") == 0.0
    # a repetitive text is less fluent than a varied one
    assert ngram_entropy("the the the the the the") < ngram_entropy("the cat sat on a warm mat today")


def test_word_tokenize_follows_treebank_rules():
    assert word_tokenize("Don't stop, John's dog.") == ["Do", "n't", "stop", ",", "John", "'s", "dog", "."]


def test_generation_is_seeded_and_greedy_matches_hf_generate(tiny):
    a = generate_texts(tiny, ["The Eiffel Tower is", "Paris"], n_gen_per_prompt=2, max_out_len=12, seed=3)
    b = generate_texts(tiny, ["The Eiffel Tower is", "Paris"], n_gen_per_prompt=2, max_out_len=12, seed=3)
    assert a == b and len(a) == 4
    assert all(t.startswith("The Eiffel Tower is") for t in a[:2])
    prompt = "The Eiffel Tower is"
    n_prompt = tiny.to_tokens(prompt).shape[1] - 1
    greedy = generate_texts(tiny, [prompt], max_out_len=n_prompt + 6, top_k=None)[0]
    assert greedy == prompt + tiny.greedy(prompt, max_new_tokens=6)
    top1 = generate_texts(tiny, [prompt], max_out_len=n_prompt + 6, top_k=1, seed=9)[0]
    assert top1 == greedy


def test_batched_generation_equals_one_prompt_at_a_time(tiny, monkeypatch):
    """Left-padded batches with the KV cache give each prompt the texts it gets alone: greedy equal to
    HF's greedy per prompt, sampled equal row by row (each row has its own seeded generator), and the
    same without the cache."""
    prompts = ["The Eiffel Tower is", "Paris", "Michael Jordan played basketball for the", "A"]
    limit = 14
    greedy = generate_texts(tiny, prompts, max_out_len=limit, top_k=None, batch_size=4)
    for prompt, text in zip(prompts, greedy, strict=True):
        n_new = limit - (tiny.to_tokens(prompt).shape[1] - 1)
        assert text == prompt + tiny.greedy(prompt, max_new_tokens=n_new)
    batched = generate_texts(tiny, prompts, n_gen_per_prompt=2, max_out_len=limit, seed=7, batch_size=8)
    alone = [t for p in prompts for t in generate_texts(tiny, [p], n_gen_per_prompt=2, max_out_len=limit, seed=7,
                                                         batch_size=1)]
    assert batched == alone
    assert batched[0] != batched[1]  # two copies of one prompt are two different draws
    monkeypatch.setattr(tiny.compat, "kv_cache", False)
    assert generate_texts(tiny, prompts, max_out_len=limit, top_k=None, batch_size=4) == greedy
    with pytest.raises(ValueError, match="batch_size"):
        generate_texts(tiny, prompts, batch_size=0)


def test_generation_chunks_stay_within_the_context(tiny):
    """A short and a long prompt each generated to the context's end: left-padded together, the long
    row would run past the position table, so they go in separate chunks; each text has its length."""
    short, long_ = "A", " ".join(["The Eiffel Tower is in Paris."] * 3)
    limit = tiny.n_ctx - 1  # prompt + continuation, BOS not counted
    texts = generate_texts(tiny, [short, long_], max_out_len=limit, top_k=None, batch_size=8)
    for prompt, text in zip([short, long_], texts, strict=True):
        assert text.startswith(prompt)
        assert text == generate_texts(tiny, [prompt], max_out_len=limit, top_k=None, batch_size=1)[0]


def test_fluency_is_mean_entropy_of_generations(tiny):
    facts = _facts()
    m = evaluate(tiny, facts[:1], fluency=True, max_out_len=15, seed=4)
    texts = generate_texts(tiny, facts[0].generation_prompts, max_out_len=15, seed=4)
    assert m.fluency == pytest.approx(sum(ngram_entropy(t) for t in texts) / len(texts))
    assert m.notes["fluency"]["top_k"] == 5


def test_metrics_save_load_figure(tiny, tmp_path):
    m = evaluate(tiny, _facts(), fluency=False)
    m.save(tmp_path / "m")
    back = EditMetrics.load(tmp_path / "m")
    assert back.flat() == m.flat() and back.per_fact == m.per_fact and back.n_facts == 2
    assert set(m.counterfact()) >= {"efficacy_score", "neighborhood_magnitude", "fluency"}
    assert set(m.easyedit()) == {"rewrite_acc", "rephrase_acc", "locality_acc", "relation_specificity",
                                 "portability_acc"}
    fig = m.figure()
    assert [bar.name for bar in fig.data] == ["CounterFact", "EasyEdit", "Generation"]
    combined = EditMetrics.from_rows(m.per_fact[:1] + m.per_fact[1:])
    assert combined.flat() == pytest.approx(m.flat())


def test_prediction_table_shows_before_and_after(tiny):
    fact = _facts()[0]
    session = EditSession(tiny)
    try:
        session.apply(_edit(tiny, scale=1.0))
        rows = prediction_table(tiny, fact, session=session)
        def top(text):
            return tiny.tokenizer.decode([tiny.top_k(text, 1)[0][2]], skip_special_tokens=True)

        after_plain = top(fact.text)
        with session.unedited():
            before_plain = top(fact.text)
    finally:
        session.rollback()
    assert [r["kind"] for r in rows] == ["rewrite"] + ["paraphrase"] * 2 + ["neighborhood"] * 3 + ["portability"]
    # the greedy continuation starts with the top-1 token, before and after
    assert rows[0]["after"].startswith(after_plain) and rows[0]["before"].startswith(before_plain)
    assert {"p_answer_before", "p_answer_after", "p_true_after", "p_new_before"} <= set(rows[0])
    assert rows[0]["p_new_after"] == pytest.approx(rows[0]["p_answer_after"])


def test_bad_input(tiny):
    facts = _facts()
    with pytest.raises(ValueError, match="no facts"):
        evaluate(tiny, [], fluency=False)
    with pytest.raises(ValueError, match="batch_size"):
        score_continuations(tiny, [("a", " b")], batch_size=0)
    ref = pre_edit_predictions(tiny, facts)
    ref.fingerprint = "0" * 16
    with pytest.raises(ValueError, match="another model"):
        evaluate(tiny, facts, reference=ref, fluency=False)
    partial = pre_edit_predictions(tiny, facts[:1])
    with pytest.raises(ValueError, match="do not cover"):
        evaluate(tiny, facts, reference=partial, fluency=False)
    with pytest.raises(ValueError, match="top_k"):
        generate_texts(tiny, ["a"], top_k=0)


def test_specificity_leaves_out_prompts_about_edited_subjects(tiny):
    """Neighbourhood / locality prompts naming an edited subject are left out of the main scores
    (counted in notes), and kept in the *_all figures; a subject inside another word does not count."""
    facts = [
        Fact(subject="Paris", prompt="{} is the capital of", target_true="France", target_new="Italy", case_id=0,
             neighborhood_prompts=["Berlin is the capital of", "Lyon is a city in", "Parisian food is from"]),
        Fact(subject="Berlin", prompt="{} is the capital of", target_true="Germany", target_new="Spain", case_id=1,
             neighborhood_prompts=["Paris is the capital of", "Munich is a city in"]),
    ]
    session = EditSession(tiny)
    try:
        session.apply(_edit(tiny))
        m = evaluate(tiny, facts, session=session, fluency=False)
        for fact, kept_prompts in ((facts[0], ["Lyon is a city in", "Parisian food is from"]),
                                   (facts[1], ["Munich is a city in"])):
            row = next(r for r in m.per_fact if r["case_id"] == fact.case_id)
            new, true = fact.new_continuation, fact.true_continuation
            pn = {p: (_ref_prob(tiny, p, new), _ref_prob(tiny, p, true)) for p in fact.neighborhood_prompts}
            kept = [pn[p] for p in kept_prompts]
            assert row["neighborhood_score"] == pytest.approx(sum(t > n for n, t in kept) / len(kept))
            assert row["neighborhood_magnitude"] == pytest.approx(sum(t - n for n, t in kept) / len(kept), abs=1e-6)
            every = list(pn.values())
            assert row["neighborhood_score_all"] == pytest.approx(sum(t > n for n, t in every) / len(every))
            assert row["n_neighborhood"] == len(kept_prompts)
            assert row["n_neighborhood_dropped"] == len(fact.neighborhood_prompts) - len(kept_prompts)
        notes = m.notes["prompts"]
        assert notes["neighborhood"] == {"kept": 3, "dropped_edited": 2}
        assert notes["locality"] == {"kept": 3, "dropped_edited": 2}
        assert m.neighborhood_score_all is not None and "neighborhood_score_all" in m.flat()
        # one fact evaluated alone: only its own subject counts as edited, so Berlin's prompt stays
        alone = evaluate(tiny, facts[:1], reference=pre_edit_predictions(tiny, facts[:1], session=session),
                         fluency=False)
        assert alone.per_fact[0]["n_neighborhood"] == 3
        # the unfiltered figures survive a save/load round trip
        assert EditMetrics.from_dict(m.to_dict()).neighborhood_score_all == pytest.approx(m.neighborhood_score_all)
    finally:
        session.rollback()
