"""What a benchmark sends: conversations of one or more turns.

A single-turn dataset is a list of one-turn conversations. A conversation's turns run one after the
other (each turn's prompt is appended to the history of earlier turns and their real answers), so
closed-loop concurrency counts conversations in flight, which equals requests in flight.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Turn:
    prompt: str  # the new user text of this turn
    prompt_len: int | None  # its token count with the workload's tokenizer (None: unknown, e.g. jsonl)
    output_len: int  # max_tokens to ask for
    conversation: int = 0
    turn: int = 0


@dataclass(frozen=True)
class Conversation:
    turns: tuple[Turn, ...]

    def __post_init__(self) -> None:
        if not self.turns:
            raise ValueError("a conversation needs at least one turn")
