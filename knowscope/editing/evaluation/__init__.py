"""Edit evaluation: what an edited model now says, under three labelled protocols.

**CounterFact** (ROME / MEMIT papers), probability comparisons; a continuation's probability is
``P(c | prompt) = exp(-mean token NLL of c)`` with ``c = " " + target``, as ROME computes it:

* ``efficacy_score`` / ``paraphrase_score``: share of rewrite / paraphrase prompts with
  ``P(new) > P(true)``; ``*_magnitude``: mean ``P(new) - P(true)``;
* ``neighborhood_score``: share of neighbourhood prompts (other subjects, same relation, same true
  object) with ``P(true) > P(new)``; ``neighborhood_magnitude``: mean ``P(true) - P(new)``;
* ``relation_specificity_score``: share of the edited subject's other-relation prompts whose true answer
  still beats the new target;
* ``fluency``: ROME's generation entropy, the weighted mean ``(2/3 H2 + 4/3 H3) / 2`` of the bigram and
  trigram entropies (bits) of sampled text (top-5, seeded, up to ``max_out_len`` tokens).

**EasyEdit / KnowEdit**, teacher-forced token accuracies: ``rewrite_acc``, ``rephrase_acc``,
``portability_acc`` (answer tokens that are the argmax after the prompt and the previous answer
tokens); ``locality_acc`` and ``relation_specificity``: answer positions whose argmax is the
**unedited** model's (never the ground truth).

**Generation**, greedy decoding as a user reads it (:mod:`.generation`): ``gen_efficacy``,
``gen_paraphrase``, ``gen_portability`` (the text begins with the answer) and ``gen_neighborhood``,
``gen_locality``, ``gen_relation_specificity`` (the text is the unedited model's).

Scores are averaged over each fact's prompts first, then over facts. Specificity prompts an edit is
meant to change (by subject *and* relation, :mod:`.plan`) are left out of the main scores and kept in
the ``*_all`` figures. Locality is always against the unedited model: pass the :class:`EditSession`
(its ``unedited()`` lends the original weights) or :func:`pre_edit_predictions` taken before any edit.
With a side memory attached (GRACE, WISE), each fact's row records how its prompts were routed.

Modules: :mod:`.plan` (prompt kinds, the supposed-to-change rule), :mod:`.reference` (the unedited
predictions), :mod:`.generation` (greedy decoding, normalisation), :mod:`.metrics` (``EditMetrics``),
:mod:`.run` (``evaluate``, ``evaluate_edit``).
"""

from knowscope.editing.evaluation.generation import begins_with, greedy_continuations, normalize
from knowscope.editing.evaluation.metrics import (
    ALL_KEYS,
    CF_KEYS,
    EE_KEYS,
    GEN_KEYS,
    PROTOCOLS,
    SCORE_KEYS,
    UNFILTERED_KEYS,
    EditMetrics,
)
from knowscope.editing.evaluation.plan import KINDS, EditedFact, EditedFacts, Prompt, fact_prompts, locality_pairs
from knowscope.editing.evaluation.predictions import PredictionTable, prediction_table
from knowscope.editing.evaluation.reference import PreEditPredictions, pre_edit_predictions
from knowscope.editing.evaluation.run import evaluate, evaluate_edit
from knowscope.editing.scoring import (
    TokenScores,
    generate_texts,
    generation_prompts,
    ngram_entropy,
    score_continuations,
    word_tokenize,
)

__all__ = [
    "ALL_KEYS", "CF_KEYS", "EE_KEYS", "GEN_KEYS", "KINDS", "PROTOCOLS", "SCORE_KEYS", "UNFILTERED_KEYS",
    "EditMetrics", "EditedFact", "EditedFacts", "PreEditPredictions", "PredictionTable", "Prompt", "TokenScores",
    "begins_with", "evaluate", "evaluate_edit", "fact_prompts", "generate_texts", "generation_prompts",
    "greedy_continuations", "locality_pairs", "ngram_entropy", "normalize", "pre_edit_predictions",
    "prediction_table", "score_continuations", "word_tokenize",
]
