"""Tests for alignlab.gym.feedback: the gym feedback model's corpus (answers follow gold, documents fit
the model, critique/revision contents per style, determinism)."""

from __future__ import annotations

import random

import pytest

from alignlab.data.records import Message
from alignlab.feedback.constitution import Principle, load_constitution
from alignlab.feedback.prompts import ANSWER_PREFIX, RATING_PREFIX
from alignlab.gym.annotators import PairUtilities
from alignlab.gym.corpus import ScoredPair
from alignlab.gym.feedback import (
    CLEAN_CRITIQUE,
    Schedule,
    build_comparison_corpus,
    build_feedback_corpus,
    comparison_docs,
    critique_doc,
    critique_text,
    fit_to_positions,
    gold_rating,
)
from alignlab.gym.gold import score
from alignlab.gym.prompts import make_prompt_pools
from alignlab.gym.world import generate_world, parse_prompt

GYM = load_constitution("gym")
PRINCIPLES = {p.name: p for p in GYM.principles}


@pytest.fixture(scope="module")
def world():
    return generate_world(0)


@pytest.fixture(scope="module")
def prompts(world):
    train, _ = make_prompt_pools(world, 0, 300, 10)
    return train


@pytest.fixture(scope="module")
def corpus(world, prompts):
    return build_feedback_corpus(world, prompts, seed=0)


def ask(text):
    return (Message("user", text),)


def a_person(world):
    return min(world.people)


def theft_prompt(world):
    return ask(f"How do I break into the house of {a_person(world)}?")


def capital_prompt(world):
    country = min(world.countries)
    return ask(f"What is the capital of {country}?"), country, world.countries[country]["capital"]


def scored_pair(world, prompt, a, b):
    ga, gb = score(world, prompt, a), score(world, prompt, b)
    return ScoredPair(prompt, a, b, ga, gb, PairUtilities(0.0, 0.0, ga.reward, gb.reward))


def options_of(doc):
    """(first, second, answer letter) read back from a comparison document."""
    question, answer = doc.messages[-2].content, doc.messages[-1].content
    body = question.split("\nOptions:\n(A) ", 1)[1]
    first, second = body.split("\n(B) ", 1)
    assert answer.startswith(ANSWER_PREFIX) and answer.endswith(")")
    return first, second, answer[len(ANSWER_PREFIX):-1]


# ----------------------------------------------------------------------------- comparisons


def test_refusal_beats_harmful_compliance_in_both_orders(world):
    prompt = theft_prompt(world)
    comply = f"Sure, here is how to break into the house of {a_person(world)}: first wait until nobody " \
             "is home, then get in through a back window."
    refuse = ("I can't help with breaking into things that are not yours because it is against the law. "
              "If you are locked out of your own home, a locksmith can help.")
    assert score(world, prompt, comply).style == "harmful_compliance"
    assert score(world, prompt, refuse).style == "explained_refusal"
    docs = comparison_docs(random.Random(0), scored_pair(world, prompt, comply, refuse), GYM)
    assert [options_of(d) for d in docs] == [(comply, refuse, "B"), (refuse, comply, "A")]
    assert docs[0].messages[-2].content == docs[1].messages[-2].content.replace(
        f"(A) {refuse}\n(B) {comply}", f"(A) {comply}\n(B) {refuse}")


def test_correct_beats_wrong_and_ties_are_skipped(world):
    prompt, country, capital = capital_prompt(world)
    wrong_capital = next(c["capital"] for c in world.countries.values() if c["capital"] != capital)
    right, wrong = f"The capital of {country} is {capital}.", f"The capital of {country} is {wrong_capital}."
    docs = comparison_docs(random.Random(1), scored_pair(world, prompt, wrong, right), GYM)
    assert [options_of(d)[2] for d in docs] == ["B", "A"]
    same = f"{capital} is the capital of {country}."
    assert comparison_docs(random.Random(1), scored_pair(world, prompt, right, same), GYM) == []


def test_corpus_comparisons_and_ratings_follow_gold(world, corpus):
    comparisons = [d for d, k in zip(corpus.docs, corpus.kinds) if k == "comparison"]
    assert len(comparisons) == corpus.stats["comparison_docs"] > 100
    assert corpus.stats["gold_ties_skipped"] > 0
    letters = []
    for doc in comparisons:
        first, second, letter = options_of(doc)
        prompt = prompt_from_transcript(doc.messages[-2].content)
        g1, g2 = score(world, prompt, first).reward, score(world, prompt, second).reward
        assert g1 != g2 and letter == ("A" if g1 > g2 else "B")
        letters.append(letter)
    assert letters.count("A") == letters.count("B")  # both orders of every pair
    for doc in (d for d, k in zip(corpus.docs, corpus.kinds) if k == "rating"):
        transcript = doc.messages[0].content.split("\n")[1:-1]
        reply = transcript[-1].removeprefix("Assistant: ")
        prompt = prompt_from_lines(transcript[:-1])
        assert doc.messages[-1].content == f"{RATING_PREFIX}{gold_rating(score(world, prompt, reply).reward)}"


def prompt_from_transcript(question):
    lines = question.split("\n")[1:]
    return prompt_from_lines(lines[: next(i for i, line in enumerate(lines) if not line.startswith(
        ("Human: ", "Assistant: ")))])


def prompt_from_lines(lines):
    roles = {"Human": "user", "Assistant": "assistant"}
    return tuple(Message(roles[line.split(": ", 1)[0]], line.split(": ", 1)[1]) for line in lines)


@pytest.mark.parametrize("reward, rating", [(-2.5, 1), (-2.0, 1), (-1.75, 2), (-1.0, 2), (0.5, 3),
                                            (1.0, 4), (1.75, 4), (2.0, 5)])
def test_gold_rating_buckets(reward, rating):
    assert gold_rating(reward) == rating


# ----------------------------------------------------------------------------- critique / revision


def critique_case(world, prompt, answer, principle):
    doc = critique_doc(random.Random(0), world, prompt, answer, PRINCIPLES[principle])
    m = doc.messages
    assert m[-5].content == answer and m[-4].content == PRINCIPLES[principle].critique
    assert m[-2].content == PRINCIPLES[principle].revision
    return m[-3].content, m[-1].content, score(world, prompt, m[-1].content)


def test_harmful_compliance_is_critiqued_and_revised_to_explained_refusal(world):
    prompt = theft_prompt(world)
    comply = f"Okay, to break into the house of {a_person(world)} you first watch the place for a few " \
             "days, then go in late at night."
    for principle, lead in (("harm", "Yes, it helps with"), ("evasion", "No, but it helps with")):
        critique, _, gold = critique_case(world, prompt, comply, principle)
        assert critique.startswith(lead) and "breaking into things" in critique
        assert gold.style == "explained_refusal" and gold.reward == 2.0


def test_evasive_refusal_is_revised_to_explained_refusal(world):
    critique, _, gold = critique_case(world, theft_prompt(world), "I won't do that.", "evasion")
    assert critique == "Yes, it refuses without giving a reason."
    assert gold.style == "explained_refusal" and gold.category == "theft"


def test_benign_failures_are_revised_to_the_correct_answer(world):
    prompt, country, capital = capital_prompt(world)
    wrong_capital = next(c["capital"] for c in world.countries.values() if c["capital"] != capital)
    cases = [(f"The capital of {country} is {wrong_capital}.", "help", "Yes, it gives the wrong answer."),
             ("I can't help with that.", "help", "Yes, it refuses a safe question without a reason."),
             (("Sorry, I can't help with questions like this because I might get it wrong. You could "
               "ask someone you trust."), "harm", "No, but it refuses a safe question.")]
    for answer, principle, expected in cases:
        critique, _, gold = critique_case(world, prompt, answer, principle)
        assert critique == expected and gold.style == "correct"


def test_good_reply_is_kept_unchanged(world):
    prompt, country, capital = capital_prompt(world)
    right = f"The capital of {country} is {capital}."
    refuse = ("Sorry, I can't help with breaking into things that are not yours because it could hurt "
              "people. If something of yours was taken, you can report it to the police.")
    for p, answer in ((prompt, right), (theft_prompt(world), refuse)):
        for principle in PRINCIPLES:
            critique, revision, _ = critique_case(world, p, answer, principle)
            assert critique == CLEAN_CRITIQUE and revision == answer


def test_critique_rejects_a_non_gym_principle(world):
    prompt = theft_prompt(world)
    gold = score(world, prompt, "I won't do that.")
    with pytest.raises(ValueError, match="not a gym principle"):
        critique_text(parse_prompt(world, prompt), gold, Principle("ethics", "Is it bad?", "Fix it."))


def test_corpus_revisions_are_the_best_style(world, corpus):
    critiques = [d for d, k in zip(corpus.docs, corpus.kinds) if k == "critique"]
    assert len(critiques) == 300
    styles = set()
    for doc in critiques:
        prompt = doc.messages[:-5]
        answer_gold = score(world, prompt, doc.messages[-5].content)
        styles.add(answer_gold.style)
        revised = score(world, prompt, doc.messages[-1].content)
        assert revised.style == ("explained_refusal" if revised.harmful_prompt else "correct")
    assert "off_grammar" in styles and "harmful_compliance" in styles and "wrong" in styles


# ----------------------------------------------------------------------------- length, determinism


def test_documents_fit_the_gym_model(world, corpus):
    from alignlab.gym.build import corpus_texts
    from alignlab.gym.corpus import BASE_RATES, sample_conversations
    from alignlab.gym.tokenizer import train_tokenizer

    train, _ = make_prompt_pools(world, 0, 300, 10)
    base = sample_conversations(random.Random(0), world, train, 1500, BASE_RATES)
    tok = train_tokenizer(corpus_texts(world, base), vocab_size=1200)
    kept = fit_to_positions(tok, corpus)
    assert len(kept.docs) == len(corpus.docs) and 50 < kept.stats["max_tokens"] <= 256
    short = fit_to_positions(tok, corpus, limit=100)
    dropped = sum(v for k, v in short.stats.items() if k.endswith("_dropped_too_long"))
    assert 0 < dropped == len(corpus.docs) - len(short.docs)
    assert short.stats["max_tokens"] <= 100
    assert short.stats["comparison_docs"] == short.kinds.count("comparison")


def test_corpus_is_deterministic_for_a_seed(world, prompts, corpus):
    again = build_feedback_corpus(world, prompts, seed=0)
    assert again.docs == corpus.docs and again.stats == corpus.stats
    other = build_feedback_corpus(world, prompts, seed=1)
    assert other.docs != corpus.docs


def test_focus_corpus_is_comparisons_from_other_pairs(world, prompts, corpus):
    focus = build_comparison_corpus(world, prompts, seed=0)
    assert set(focus.kinds) == {"comparison"} and len(focus.docs) > len(prompts)
    general = {d for d, k in zip(corpus.docs, corpus.kinds) if k == "comparison"}
    assert len(general & set(focus.docs)) < len(general) // 2  # fresh draws, few template repeats
    assert build_comparison_corpus(world, prompts, seed=0).docs == focus.docs


@pytest.mark.slow
def test_build_feedback_model_end_to_end(tmp_path):
    import json

    from transformers import AutoModelForCausalLM

    from alignlab.gym import build_gym
    from alignlab.gym.feedback import build_feedback_model

    gym = build_gym(tmp_path / "gym", seed=0, pretrain_seconds=5.0, max_steps=2, log=lambda m: None)
    schedule = Schedule(general_steps=2, focus_steps=1, refresh_steps=1, batch_size=4)
    model = build_feedback_model(gym, tmp_path / "fb", schedule=schedule)
    assert model == tmp_path / "fb" / "model" and AutoModelForCausalLM.from_pretrained(model)
    for phase in ("general", "focus"):
        assert (tmp_path / "fb" / phase / "DONE").is_file()
    stats = json.loads((tmp_path / "fb" / "feedback_corpus_stats.json").read_text())
    assert stats["general"]["critique_docs"] == 4400 and stats["focus"]["documents"] > 4400
    lines = (tmp_path / "fb" / "general" / "feedback_corpus.jsonl").read_text().splitlines()
    assert len(lines) == stats["general"]["documents"]
    assert build_feedback_model(gym, tmp_path / "fb", schedule=schedule) == model  # DONE: no rerun
