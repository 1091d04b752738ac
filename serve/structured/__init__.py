"""Structured outputs: constraint specs (JSON schema, regex, choice, grammar), grammar matchers over a
model's vocabulary (llguidance), and token bitmasks applied to logits."""
