"""Faithfulness of a circuit at any size, not only the size it was saved at.

A saved :class:`~knowscope.circuits.circuit.Circuit` keeps every edge's score and the prompts it was
found on (``meta["batch"]``: templates, subjects, swapped-in subjects, contrasts, the noise seed and
scale), so a circuit of another size is one exact edge-patching pass away. :class:`Resizer` rebuilds
that batch once, records the corrupted run once, and then measures the normalised faithfulness of
any edge selection (:meth:`Resizer.faithfulness`), remembering each answer: moving a size control
back and forth costs one forward pass per new size.
"""

from __future__ import annotations

import hashlib
import logging

import torch
from jaxtyping import Bool
from torch import Tensor

from knowscope.circuits import eap
from knowscope.circuits.batches import make_batch, metric_values
from knowscope.circuits.circuit import Circuit
from knowscope.circuits.graph import Graph
from knowscope.circuits.nodes import circuit_facts
from knowscope.circuits.pruning import normalized_faithfulness
from knowscope.models import Model

logger = logging.getLogger(__name__)


class Resizer:
    """A circuit's prompts, corrupted run and metrics, ready to measure the faithfulness of any mask.

    Build it on the model the circuit was computed on (``ValueError`` otherwise, as the scores would
    not belong to that model).
    """

    def __init__(self, model: Model, circuit: Circuit) -> None:
        saved_fp = circuit.meta.get("fingerprint")
        if saved_fp and getattr(model, "fingerprint", None) and saved_fp != model.fingerprint:
            raise ValueError(f"the circuit was computed on model {circuit.meta.get('model')!r}, not on the loaded "
                             f"{getattr(model, 'name', '?')!r}; open the viewer with that model (--model)")
        if circuit.graph != Graph.from_model(model):
            raise ValueError(f"the circuit was computed on another architecture ({circuit.graph.to_dict()})")
        b = circuit.meta.get("batch") or {}
        corruption = b.get("corruption", "swap")
        facts = circuit_facts(circuit)  # answers as target_true: the batch scores what the circuit scored
        self.model, self.circuit, self.graph = model, circuit, circuit.graph
        self.metric = circuit.meta.get("metric", "logit_diff")
        self.batch = make_batch(model, facts, corruption,
                                contrast_subjects=b.get("contrast_subjects") if corruption == "swap" else None,
                                contrasts=b.get("contrasts"), scale=b.get("noise_scale"), seed=int(b.get("seed", 0)))
        self.corrupted, corr_logits = eap.record_outputs(model, self.graph, self.batch.corrupted, self.batch.noise)
        _, clean_logits = eap.record_outputs(model, self.graph, self.batch.clean)
        with torch.no_grad():
            self.m_clean = metric_values(clean_logits, self.batch, self.metric).cpu()
            self.m_corrupted = metric_values(corr_logits, self.batch, self.metric).cpu()
        self.cache: dict[str, float] = {}
        #: |faithfulness measured here at the saved circuit - the saved faithfulness|: ~0 when the batch was
        #: rebuilt as it was (a circuit saved before the noise seed and scale were recorded may differ)
        self.mismatch: float | None = None
        if circuit.faithfulness == circuit.faithfulness:
            self.mismatch = abs(self.faithfulness(circuit.mask) - circuit.faithfulness)
            if self.mismatch > 1e-3:
                logger.warning("the rebuilt batch gives faithfulness %.4f at the saved circuit, saved %.4f",
                               self.cache[_key(circuit.mask)], circuit.faithfulness)

    def faithfulness(self, mask: Bool[Tensor, "n_forward n_slots"]) -> float:
        """Normalised faithfulness of the circuit made of ``mask``'s edges (remembered per mask)."""
        key = _key(mask)
        if key not in self.cache:
            m = eap.patched_metric(self.model, self.graph, self.batch, mask, self.metric, self.corrupted)
            self.cache[key] = normalized_faithfulness(m, self.m_clean, self.m_corrupted)
            logger.info("faithfulness of %d edges: %.3f", int(mask.sum()), self.cache[key])
        return self.cache[key]

    def known(self, mask: Tensor) -> float | None:
        """The remembered faithfulness of ``mask``, or ``None`` when it has not been measured."""
        return self.cache.get(_key(mask))

    def resized(self, mask: Tensor) -> Circuit:
        """The circuit with ``mask``'s edges and its measured faithfulness."""
        out = self.circuit.with_mask(mask)
        out.faithfulness = self.faithfulness(mask)
        return out



def _key(mask: Tensor) -> str:
    return hashlib.blake2b(mask.bool().cpu().numpy().tobytes(), digest_size=16).hexdigest()
