"""Causal tracing (ROME's "locate" step), batched and architecture-agnostic.

ROME's causal trace corrupts the subject: Gaussian noise is added to the token embeddings of the
subject's tokens (``hook_embed``; for GPT-2 before the position embedding is added), which makes
the model lose the answer. Then, one *cell* at a time, the clean state of one (token, layer) site
is restored into the corrupted run and the probability of the answer's first token at the last
position is read, averaged over the noise samples. Kinds of site:

* ``hidden``: the residual stream after layer L (``blocks.L.hook_resid_post``) at token t;
* ``mlp`` / ``attn``: the MLP / attention outputs (``hook_mlp_out`` / ``hook_attn_out``) at token t
  of a window of ``window`` layers centred on L (ROME: layers ``L - window//2 .. L + ceil(window/2) - 1``,
  clipped at the ends);
* ``hidden_frozen_mlp`` / ``hidden_frozen_attn``: ROME's severed trace - restore the hidden state at
  (t, L) while the MLP / attention outputs at token t of every later layer are kept at their
  corrupted values.

Three methods compute the same table:

* ``"reference"``: the plain loop, one forward pass of the ``samples`` noised copies per cell,
  through the bridge's hooks (what ROME does);
* ``"fast"`` (default): exact, much faster. Restoring a cell at token t cannot change positions
  before t, nor layers before the first restored layer, so the corrupted run is recorded once
  (residual stream at every layer, keys/values at every layer) and each cell starts its forward
  pass at its first restored layer, computing only positions t..end, with the corrupted keys and
  values of positions < t fed in as a KV cache. Cells of the same token are batched together
  (cells x samples rows per pass, chunked to ``max_rows``), and a block's rows grow as cells
  with later start layers join. Cells before the subject equal the corrupted run and are not run.
  The first/last hidden states of the recorded clean run are checked against the bridge's own
  forward pass, so a model the partial forward does not support fails loudly, not silently;
* ``"attribution"``: attribution patching - a first-order estimate of every cell from one clean
  forward pass, one corrupted forward pass and one backward pass: ``low + sum_s (clean - corrupt_s)
  . d P / d act_s``.

The noise scale follows ROME: ``noise`` x the standard deviation of token-embedding entries over
many subjects (the bundled facts' subjects; see :func:`embedding_std`), or an absolute standard
deviation ``noise_std``. The same noise draws (seeded) are used for every cell of one trace.

Many facts: :func:`trace_facts` averages indirect effects (score - low score) by token class as in
ROME's summary figure; :func:`locate` picks the layer with the largest MLP indirect effect at the
last subject token (the layer ROME edits; a window of layers around it for MEMIT).
"""

from knowscope.circuits.tracing.api import locate, trace, trace_facts
from knowscope.circuits.tracing.inputs import (
    ALL_KINDS,
    FALLBACK_SUBJECTS,
    FAST_MODES,
    KINDS,
    METHODS,
    SEVERED_KINDS,
    TOKEN_CLASS_LABELS,
    TOKEN_CLASSES,
    FastMode,
    TraceKind,
    TraceMethod,
    embedding_std,
    token_classes,
    window_layers,
)
from knowscope.circuits.tracing.tables import FactsTraceResult, LayerChoice, TraceResult, aggregate, choose_layers

__all__ = [
    "ALL_KINDS", "FALLBACK_SUBJECTS", "FAST_MODES", "KINDS", "METHODS", "SEVERED_KINDS", "TOKEN_CLASSES",
    "TOKEN_CLASS_LABELS", "FactsTraceResult", "LayerChoice", "TraceResult", "aggregate", "choose_layers",
    "embedding_std",
    "FastMode", "TraceKind", "TraceMethod", "locate", "token_classes", "trace",
    "trace_facts", "window_layers",
]
