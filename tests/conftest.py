"""Shared fixtures: seeding, tiny random models (unit tests) and the real default model (integration)."""

from __future__ import annotations

import os
import random

import jaxtyping
import numpy as np
import pytest
import torch

# Check every jaxtyping annotation in knowscope at run time (shapes, dtypes, consistent dimension
# names), before any test module imports knowscope. KNOWSCOPE_SHAPE_CHECKS=0 turns it off.
if os.environ.get("KNOWSCOPE_SHAPE_CHECKS", "1") != "0":
    jaxtyping.install_import_hook("knowscope", "shape_check.check_arrays")


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_gpt2():
    from knowscope.models import tiny_model

    return tiny_model("gpt2")


@pytest.fixture(scope="session")
def tiny_llama():
    from knowscope.models import tiny_model

    return tiny_model("llama")


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny(request):
    """Each tiny architecture in turn (GPT-2 with Conv1D, Llama with GQA)."""
    from knowscope.models import tiny_model

    return tiny_model(request.param)


@pytest.fixture(scope="session")
def default_model():
    """The real default model (SmolLM2-135M-Instruct), loaded once per test session."""
    from knowscope.models import load_model

    return load_model(device="cpu")


@pytest.fixture(scope="session")
def bundled_facts():
    from knowscope.facts import load_bundled_facts

    return load_bundled_facts()
