"""knowscope.probes: instruments that read a layer, and compare a model before and after an edit.

* :func:`logit_lens` — every layer read through the final norm and unembedding; :func:`lens` with
  ``tuned=`` a :class:`TunedLens` (:func:`tuned_lens` trains or loads the cached one) reads each
  layer through a learned affine translator first; :func:`fact_readout` over a fact file;
* :func:`fit_probe` / :func:`probe_layers` — mean-difference, PCA and logistic probes by layer;
* :func:`fit_steering` / :func:`fit_safety_steering` — SafetyLock-style per-head steering vectors,
  applied by hook or baked into the attention output bias; :func:`steering_sweep` measures them;
* :func:`activation_shift` / :func:`compare_models` — how far an edit moves each layer.
"""

from knowscope.probes.lens import LogitLensResult, fact_readout, lens, lens_logits, logit_lens
from knowscope.probes.linear import LinearProbe, ProbeReport, collect_activations, fit_probe, probe_layers
from knowscope.probes.shift import ActivationShift, activation_shift, compare_models
from knowscope.probes.steering import SteeringVector, fit_safety_steering, fit_steering, steering_sweep
from knowscope.probes.tuned_lens import LensQuality, TunedLens, lens_quality, train_tuned_lens, tuned_lens

__all__ = [
    "ActivationShift",
    "LensQuality",
    "LinearProbe",
    "LogitLensResult",
    "ProbeReport",
    "SteeringVector",
    "TunedLens",
    "activation_shift",
    "collect_activations",
    "compare_models",
    "fit_probe",
    "fit_safety_steering",
    "fit_steering",
    "fact_readout",
    "lens",
    "lens_logits",
    "lens_quality",
    "logit_lens",
    "probe_layers",
    "steering_sweep",
    "train_tuned_lens",
    "tuned_lens",
]
