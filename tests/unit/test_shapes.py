"""The jaxtyping annotations are checked in this test run (tests/shape_check.py, installed by conftest)."""

from __future__ import annotations

import os

import pytest
import torch
from jaxtyping import TypeCheckError

pytestmark = pytest.mark.skipif(os.environ.get("KNOWSCOPE_SHAPE_CHECKS", "1") == "0", reason="shape checks off")


def test_a_wrong_rank_or_dtype_is_caught(tiny_llama):
    tokens = tiny_llama.to_tokens("The Eiffel Tower is in")
    assert tiny_llama(tokens).shape[:2] == tokens.shape  # the right shape passes
    with pytest.raises(TypeCheckError, match="tokens"):
        tiny_llama(tokens[0])  # "batch pos" needs two dimensions
    with pytest.raises(TypeCheckError, match="tokens"):
        tiny_llama(tokens.float())  # Int, not Float


def test_dimension_names_must_agree_across_arguments():
    from knowscope.editing.memit import memit_solve

    K, R, C = torch.randn(8, 3), torch.randn(4, 3), torch.eye(8)
    assert memit_solve(K, R, C, 1.0).shape == (4, 8)
    with pytest.raises(TypeCheckError, match="R"):
        memit_solve(K, torch.randn(4, 5), C, 1.0)  # "n" is 3 in K and 5 in R
    with pytest.raises(TypeCheckError, match="C"):
        memit_solve(K, R, torch.eye(7), 1.0)  # "d_mlp" is 8 in K and 7 in C
