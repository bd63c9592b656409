"""Rendering, masking, truncation, collation and packing with a tiny hand-built WordLevel tokenizer."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from alignlab.data.collate import collate_pairs, pad_encoded
from alignlab.data.packing import pack_encoded
from alignlab.data.records import Conversation, Message, PreferencePair
from alignlab.data.tokenize import (
    Encoded,
    encode_completion,
    encode_conversation,
    encode_pair,
    encode_prompt,
    render_prompt,
)

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
WORDS = ["Human", ":", "Assistant", "hi", "hello", "there", "sys", "how", "are", "you", "fine",
         "a", "b", "c", "d", "e", "f", "g", "h"]
ID = {w: i for i, w in enumerate(SPECIALS + WORDS)}
BOS, EOS, USER, ASSISTANT, SYSTEM = 2, 3, 4, 5, 6
HUMAN, COLON, ASSIST = ID["Human"], ID[":"], ID["Assistant"]
TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|> {{ m.content }} </s> {% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def make_tokenizer(template: str | None = None, bos: str | None = "<s>") -> PreTrainedTokenizerFast:
    core = Tokenizer(models.WordLevel(ID, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(SPECIALS)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token="</s>",
                                  pad_token="<pad>", unk_token="<unk>")
    tok.chat_template = template
    return tok


def ids(words: str) -> list[int]:
    return [ID[w] for w in words.split()]


USER_HI = (Message("user", "hi"),)


# ----------------------------------------------------------------------------- fallback format


def test_fallback_render_and_prompt_mask():
    tok = make_tokenizer()
    prompt = (Message("system", "sys"), Message("user", "hi"), Message("assistant", "hello"),
              Message("user", "how are you"))
    assert render_prompt(tok, prompt) == ("sys\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you"
                                          "\n\nAssistant:")
    enc = encode_completion(tok, USER_HI, "hello there", max_length=64, max_prompt_length=32)
    assert enc.input_ids == [BOS, HUMAN, COLON, ID["hi"], ASSIST, COLON] + ids("hello there") + [EOS]
    assert enc.loss_mask == [0] * 6 + [1, 1, 1]


def test_fallback_empty_completion_is_just_eos():
    enc = encode_completion(make_tokenizer(), USER_HI, "", 64, 32)
    assert enc.input_ids[-1] == EOS and enc.loss_mask == [0] * 6 + [1]


def test_truncation_policy_keeps_bos_and_latest_prompt_tokens():
    tok = make_tokenizer()
    prompt = (Message("user", "a b c d e f"),)  # [BOS Human : a b c d e f Assistant :] = 11 tokens
    enc = encode_completion(tok, prompt, "g h", max_length=7, max_prompt_length=5)
    assert enc.input_ids == [BOS, ID["e"], ID["f"], ASSIST, COLON, ID["g"], ID["h"]]  # eos cut off
    assert enc.loss_mask == [0, 0, 0, 0, 0, 1, 1]
    roomy = encode_completion(tok, prompt, "g h", max_length=9, max_prompt_length=5)
    assert roomy.input_ids[-3:] == [ID["g"], ID["h"], EOS] and len(roomy.input_ids) == 8
    capped = encode_completion(tok, prompt, "g h", max_length=4, max_prompt_length=100)
    assert capped.input_ids == [BOS, ASSIST, COLON, ID["g"]]  # prompt budget max_length - 1
    assert encode_prompt(tok, prompt, 3) == [BOS, ASSIST, COLON]


def test_no_bos_tokenizer_and_plain_left_truncation():
    tok = make_tokenizer(bos=None)
    enc = encode_completion(tok, (Message("user", "a b c"),), "d", 10, 3)
    assert enc.input_ids == [ID["c"], ASSIST, COLON, ID["d"], EOS]


def test_fallback_multi_turn_masks_every_assistant_turn():
    conv = Conversation((Message("system", "sys"), Message("user", "hi"),
                         Message("assistant", "hello"), Message("user", "how are you"),
                         Message("assistant", "fine")))
    enc = encode_conversation(make_tokenizer(), conv, 64, 32)
    assert enc.input_ids == ([BOS, ID["sys"], HUMAN, COLON, ID["hi"], ASSIST, COLON, ID["hello"],
                              HUMAN, COLON] + ids("how are you") + [ASSIST, COLON, ID["fine"], EOS])
    assert enc.loss_mask == [0] * 7 + [1] + [0] * 7 + [1, 1]
    cut = encode_conversation(make_tokenizer(), conv, 9, 4)
    assert cut.input_ids == [BOS, ID["hi"], ASSIST, COLON, ID["hello"], HUMAN, COLON] + ids("how are")
    assert cut.loss_mask == [0, 0, 0, 0, 1, 0, 0, 0, 0]


# ----------------------------------------------------------------------------- chat template


def test_template_prompt_completion_and_eos_not_doubled():
    tok = make_tokenizer(TEMPLATE)
    assert render_prompt(tok, USER_HI) == "<|user|> hi </s> <|assistant|>"
    enc = encode_completion(tok, USER_HI, "hello there", 64, 32)
    # bos prepended (the template does not start with it); the template's own </s> ends the reply
    assert enc.input_ids == [BOS, USER, ID["hi"], EOS, ASSISTANT] + ids("hello there") + [EOS]
    assert enc.loss_mask == [0] * 5 + [1, 1, 1]


def test_template_starting_with_bos_gets_no_second_bos():
    tok = make_tokenizer("<s>" + TEMPLATE)
    assert encode_prompt(tok, USER_HI, 32) == [BOS, USER, ID["hi"], EOS, ASSISTANT]


def test_template_without_eos_gets_eos_appended():
    tok = make_tokenizer("{% for m in messages %}<|{{ m.role }}|> {{ m.content }} {% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    enc = encode_completion(tok, USER_HI, "hello", 64, 32)
    assert enc.input_ids == [BOS, USER, ID["hi"], ASSISTANT, ID["hello"], EOS]
    assert enc.loss_mask == [0, 0, 0, 0, 1, 1]


def test_template_not_prefix_falls_back_to_content():
    tok = make_tokenizer("{% for m in messages %}<|{{ m.role }}|> {{ m.content }} {% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|> a{% endif %}")
    enc = encode_completion(tok, USER_HI, "hello", 64, 32)
    assert enc.input_ids == [BOS, USER, ID["hi"], ASSISTANT, ID["a"], ID["hello"], EOS]
    assert enc.loss_mask == [0, 0, 0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="does not render the conversation up to turn 3"):
        encode_conversation(tok, Conversation(USER_HI + (Message("assistant", "b"),) + USER_HI
                                              + (Message("assistant", "c"),)), 64, 32)


def test_template_multi_turn_masking():
    tok = make_tokenizer(TEMPLATE)
    conv = Conversation((Message("user", "hi"), Message("assistant", "hello"),
                         Message("user", "how are you"), Message("assistant", "fine"),
                         Message("user", "a")))  # the trailing user turn is dropped
    enc = encode_conversation(tok, conv, 64, 32)
    assert enc.input_ids == ([BOS, USER, ID["hi"], EOS, ASSISTANT, ID["hello"], EOS, USER]
                             + ids("how are you") + [EOS, ASSISTANT, ID["fine"], EOS])
    assert enc.loss_mask == [0] * 5 + [1, 1] + [0] * 6 + [1, 1]


def test_encode_pair_shares_prompt_and_keeps_label():
    tok = make_tokenizer()
    pair = encode_pair(tok, PreferencePair(USER_HI, "hello", "fine there", 0.7), 64, 32)
    assert pair.label == 0.7
    assert pair.chosen.input_ids[:6] == pair.rejected.input_ids[:6]
    assert pair.chosen.input_ids[6:] == [ID["hello"], EOS]
    assert pair.rejected.input_ids[6:] == [ID["fine"], ID["there"], EOS]


# ----------------------------------------------------------------------------- collate and pack


def test_pad_encoded_right_pads():
    batch = pad_encoded([Encoded([5, 6, 7], [0, 1, 1]), Encoded([8], [1])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].dtype == torch.long and "position_ids" not in batch


def test_collate_pairs_chosen_rows_first():
    tok = make_tokenizer()
    pairs = [encode_pair(tok, PreferencePair(USER_HI, "hello", "fine there", 1.0), 64, 32),
             encode_pair(tok, PreferencePair(USER_HI, "a b c", "d", 0.25), 64, 32)]
    batch = collate_pairs(pairs, pad_id=0)
    assert batch["input_ids"].shape == (4, 10) and batch["label"].tolist() == [1.0, 0.25]
    assert batch["label"].dtype == torch.float32
    rows = [pairs[0].chosen, pairs[1].chosen, pairs[0].rejected, pairs[1].rejected]
    for r, enc in enumerate(rows):
        n = len(enc.input_ids)
        assert batch["input_ids"][r, :n].tolist() == enc.input_ids
        assert batch["input_ids"][r, n:].eq(0).all() and batch["attention_mask"][r].sum() == n
        assert batch["loss_mask"][r, :n].tolist() == enc.loss_mask


def test_pack_first_fit_with_restarting_positions():
    docs = [Encoded([1, 2, 3, 4], [0, 0, 1, 1]), Encoded([5, 6, 7], [0, 1, 1]),
            Encoded([8, 9], [1, 1]), Encoded([10], [0])]
    packed = pack_encoded(docs, max_length=6)
    assert [p.input_ids for p in packed] == [[1, 2, 3, 4, 8, 9], [5, 6, 7, 10]]
    assert [p.position_ids for p in packed] == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0]]
    assert [p.loss_mask for p in packed] == [[0, 0, 1, 1, 0, 1], [0, 1, 1, 0]]
    batch = pad_encoded(packed, pad_id=0)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1], [0, 1, 2, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]
    with pytest.raises(ValueError, match="sequence 0 has 4 tokens, more than max_length=3"):
        pack_encoded(docs, max_length=3)
    with pytest.raises(ValueError, match="mixes packed and unpacked"):
        pad_encoded([packed[0], docs[0]], pad_id=0)
