"""Chat formatting and greedy responses: kept importable here; they live in :mod:`knowscope.chat`
(below every package that uses them)."""

from knowscope.chat import input_ids, left_pad, pair_ids, respond, uses_chat_template  # noqa: F401
