"""The retrieval query built from the conversation: window joins, the condense prompt, and
what is kept of a model's rewrite."""

from __future__ import annotations

import pytest

from engine.types import ChatMessage
from service.rag.query import (
    HISTORY_MESSAGE_CHARS,
    clean_rewrite,
    condense_history,
    condense_request,
    window_query,
)
from service.routes.schemas import CONDENSE_PROMPT, QuerySpec


def conversation(*turns: tuple[str, str]) -> list[ChatMessage]:
    return [ChatMessage.model_validate({"role": role, "content": text}) for role, text in turns]


TALK = conversation(
    ("system", "Be brief."),
    ("user", "What is Zorvatin?"),
    ("assistant", "A migraine tablet [1]."),
    ("user", "Who makes it?"),
    ("assistant", "Helix Labs [1]."),
    ("user", "And its side effects?"),
)


def test_window_joins_the_last_user_turns_oldest_first() -> None:
    assert window_query(TALK, 2) == "Who makes it?\nAnd its side effects?"
    assert window_query(TALK, 3) == "What is Zorvatin?\nWho makes it?\nAnd its side effects?"
    assert window_query(TALK, 10) == window_query(TALK, 3)
    assert window_query(TALK, 1) == "And its side effects?"


def test_condense_history_keeps_the_turns_before_the_question_without_system() -> None:
    assert condense_history(TALK, 2) == "User: Who makes it?\nAssistant: Helix Labs [1]."
    assert condense_history(TALK, 3) == (
        "User: What is Zorvatin?\nAssistant: A migraine tablet [1].\n"
        "User: Who makes it?\nAssistant: Helix Labs [1]."
    )


def test_a_long_earlier_message_is_clipped_and_kept_on_one_line() -> None:
    long = "Zorvatin\n" + "word " * 1_000
    history = condense_history(conversation(("assistant", long), ("user", "its dose?")), 3)
    assert history.startswith("Assistant: Zorvatin word")
    assert "\n" not in history
    assert len(history) - len("Assistant: ") in range(
        HISTORY_MESSAGE_CHARS - 5, HISTORY_MESSAGE_CHARS + 1
    )
    assert history.endswith("\u2026")


def test_a_first_question_has_nothing_to_condense() -> None:
    spec = QuerySpec(mode="condense")
    first = conversation(("system", "Be brief."), ("user", "What is Zorvatin?"))
    assert condense_request(first, spec) is None
    # An assistant greeting before the question is context the question may point at.
    greeted = conversation(("assistant", "Ask me about Zorvatin."), ("user", "Its dose?"))
    assert condense_request(greeted, spec) is not None


def test_the_condense_prompt_holds_history_and_question_and_decodes_greedily() -> None:
    found = condense_request(TALK, QuerySpec(mode="condense", turns=2, max_tokens=32))
    assert found is not None
    messages, sampling = found
    assert [m.role for m in messages] == ["user"]
    assert messages[0].content == CONDENSE_PROMPT.format(
        history="User: Who makes it?\nAssistant: Helix Labs [1].",
        question="And its side effects?",
    )
    assert sampling.temperature == 0.0
    assert sampling.max_tokens == 32


def test_a_route_prompt_replaces_the_default() -> None:
    spec = QuerySpec(mode="condense", prompt="H={history} Q={question} ->")
    found = condense_request(TALK, spec)
    assert found is not None
    assert found[0][0].content.startswith("H=User: What is Zorvatin?")
    assert found[0][0].content.endswith("Q=And its side effects? ->")


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("What are the side effects of Zorvatin?", "What are the side effects of Zorvatin?"),
        ("  What are Zorvatin's side effects?  \n", "What are Zorvatin's side effects?"),
        ("Standalone question: Zorvatin side effects?", "Zorvatin side effects?"),
        ("**Standalone question:** Zorvatin side effects?", "Zorvatin side effects?"),
        ('"Zorvatin side effects?"', "Zorvatin side effects?"),
        ("\u201cZorvatin side effects?\u201d", "Zorvatin side effects?"),
        ("\n\nQuestion:\nZorvatin side effects?\nIt is a migraine drug.", "Zorvatin side effects?"),
        ("", ""),
        ("   \n\t\n", ""),
        ('Standalone question: ""', ""),
        ("\x08\x02Zorvatin\x00 dose?", "Zorvatin dose?"),
        ("\x00\x17\nZorvatin dose?", "Zorvatin dose?"),
    ],
)
def test_clean_rewrite_keeps_the_question_only(raw: str, kept: str) -> None:
    assert clean_rewrite(raw) == kept
