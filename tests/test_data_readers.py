"""Sources, format readers and record loading: real files in ../shared/data and malformed inputs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from alignlab.config import DataSettings
from alignlab.data.errors import DataSourceError, Location, RecordError
from alignlab.data.loading import load_prompt_data, load_prompts, load_records
from alignlab.data.readers import detect_format, parse_hh_transcript
from alignlab.data.records import (
    BinaryFeedback,
    Conversation,
    Message,
    PreferencePair,
    RankedList,
    record_to_dict,
)
from alignlab.data.sources import iter_rows

DATA = Path(__file__).parents[1].parent / "shared" / "data"
shared = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is absent")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def settings(path, **kw) -> DataSettings:
    return DataSettings(path=str(path), **kw)


# ----------------------------------------------------------------------------- real files


@shared
@pytest.mark.shared_data
def test_hh_real_file_counts_and_quirks():
    data = load_records(settings(DATA / "hh-rlhf/harmless-base.dev.jsonl"), "pair")
    assert data.format == "hh" and len(data.records) == 1541 and data.bad.skipped == 0
    assert data.notes == {"hh_empty_chosen": 3, "hh_empty_turn": 3, "hh_inline_speaker_label": 32,
                          "hh_irregular_whitespace": 6, "hh_merged_repeated_turn": 7,
                          "hh_raw_prefix_differs": 3}
    assert all(r.prompt[-1].role == "user" for r in data.records)
    empty = data.records[57]  # line 58: the chosen reply is empty, the rejected one is not
    assert empty.chosen == "" and empty.rejected == "Sure, the address is ..."
    merged = data.records[1301]  # line 1302: two consecutive Assistant turns in 'chosen'
    assert merged.chosen.startswith("Alrighty, I’ll do my best, here’s the key:\n\nO.k. let’s go")
    assert merged.prompt[-1] == Message("user", "Yes, please find me a serial.")
    first = data.records[0]
    assert first.prompt[0] == Message("user", "How much alcohol can I drink per day?")
    assert len(first.prompt) == 5 and first.chosen.startswith("Sounds like alcohol is something")


@shared
@pytest.mark.shared_data
def test_hh_conversions_and_prompts():
    path = DATA / "hh-rlhf/harmless-base.dev.jsonl"
    binary = load_records(settings(path), "binary").records
    assert len(binary) == 3082 and sum(b.desirable for b in binary) == 1541
    convs = load_records(settings(path, limit=10), "conversation").records
    assert len(convs) == 10 and convs[0].messages[-1].role == "assistant"
    prompts = load_prompts(settings(path))
    assert len(prompts) == 1541 and prompts[0] == binary[0].prompt


@shared
@pytest.mark.shared_data
def test_sharegpt_real_file():
    data = load_records(settings(DATA / "formats/sharegpt_dpo_demo.json"), "pair")
    assert data.format == "sharegpt" and len(data.records) == 300
    assert sum(r.prompt[0].role == "system" for r in data.records) == 80
    assert sum(len(r.prompt) == 1 for r in data.records) == 114
    assert data.records[0].prompt[0].content.startswith("Hi! I'd like to create a new language game")
    assert data.records[0].chosen.startswith("That sounds like a fun and engaging idea!")


@shared
@pytest.mark.shared_data
def test_kto_real_file():
    data = load_records(settings(DATA / "formats/kto_demo.json"), "binary")
    assert data.format == "kto" and len(data.records) == 300
    assert sum(r.desirable for r in data.records) == 150
    assert sum(len(r.prompt) == 1 for r in data.records) == 223
    assert all(r.prompt[-1].role == "user" for r in data.records)


@shared
@pytest.mark.shared_data
def test_alpaca_real_file():
    rows = json.loads((DATA / "formats/alpaca_demo.json").read_text())
    data = load_records(settings(DATA / "formats/alpaca_demo.json"), "conversation")
    assert data.format == "alpaca" and len(data.records) == 999
    with_input = next(i for i, r in enumerate(rows) if r["input"])
    user, reply = data.records[with_input].messages
    assert user.content == f"{rows[with_input]['instruction']}\n\n{rows[with_input]['input']}"
    assert reply == Message("assistant", rows[with_input]["output"])
    assert data.records[0].messages[0].content == "Describe a process of making crepes."


@shared
@pytest.mark.shared_data
def test_oasst_real_file():
    path = DATA / "oasst/en_100_message.jsonl"
    ranked = load_records(settings(path), "ranked")
    assert ranked.format == "oasst" and len(ranked.records) == 212 and ranked.rows_read == 100
    assert ranked.notes == {"oasst_unranked_reply_skipped": 46}
    first = ranked.records[0]
    assert first.prompt == (Message("user", "How can I find the best 401k plan for my needs?"),)
    assert first.scores == (0.0, -1.0, -2.0)
    assert first.responses[0].startswith("The first step is to research your options.")
    pairs = load_records(settings(path), "pair").records
    assert len(pairs) == 754
    assert pairs[:3] == [PreferencePair(first.prompt, first.responses[0], first.responses[1]),
                         PreferencePair(first.prompt, first.responses[0], first.responses[2]),
                         PreferencePair(first.prompt, first.responses[1], first.responses[2])]
    deep = [r for r in ranked.records if len(r.prompt) > 1]
    assert deep and all([m.role for m in r.prompt][-2:] == ["assistant", "user"] for r in deep)


# ----------------------------------------------------------------------------- sources


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": []}, "{not json", "[1, 2]"])
    rows = list(iter_rows(str(path)))
    assert [r.where.index for r in rows] == [1, 2, 3]
    assert "bad.jsonl:2:" in str(rows[1].error) and "not valid JSON" in str(rows[1].error)
    assert "bad.jsonl:3:" in str(rows[2].error) and "a list" in str(rows[2].error)
    with open(path, "ab") as fh:
        fh.write(b'{"x": "\xff"}\n')
    assert str(list(iter_rows(str(path)))[3].error) == f"{path}:4: not valid UTF-8 text"


def test_kto_completion_must_be_last_assistant_turn(tmp_path):
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                        {"role": "user", "content": "q2"}], "label": True}
    path = write_jsonl(tmp_path / "k.jsonl", [row])
    with pytest.raises(RecordError, match=r"k.jsonl:1: field 'messages': the last message must be"):
        load_records(settings(path), "binary")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataSourceError, match="nothere.jsonl: data file not found"):
        load_records(settings(tmp_path / "nothere.jsonl"), "pair")


def test_json_object_with_single_list_key(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"data": [{"prompt": "hi", "chosen": "a", "rejected": "b"}]}))
    records = load_records(settings(path), "pair").records
    assert records == [PreferencePair((Message("user", "hi"),), "a", "b", 1.0)]


def test_json_row_errors_use_row_index(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"prompt": "hi", "chosen": "a", "rejected": "b"},
                                {"prompt": "hi", "chosen": "a"}]))
    with pytest.raises(RecordError, match=r"d.json row 1: field 'rejected': required field"):
        load_records(settings(path), "pair")


def test_parquet_source(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"instruction": ["say hi", "add"], "input": ["", "1 2"],
                             "output": ["hi", "3"]}), path)
    records = load_records(settings(path), "conversation").records
    assert records[1] == Conversation((Message("user", "add\n\n1 2"), Message("assistant", "3")))


def test_saved_dataset_and_hub_path_with_local_folder(tmp_path):
    import datasets

    rows = [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(3)]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "saved")
    saved = load_records(settings(tmp_path / "saved"), "pair")
    assert [r.prompt[0].content for r in saved.records] == ["q0", "q1", "q2"]
    folder = tmp_path / "hubish"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows)
    hub = load_records(settings(folder), "pair")  # a folder of data files goes through load_dataset
    assert hub.records == saved.records and hub.source == str(folder)
    with pytest.raises(DataSourceError, match="could not load dataset"):
        load_records(settings(folder, split="nosuchsplit"), "pair")


# ----------------------------------------------------------------------------- malformed records


def test_missing_field_wrong_type_and_empty_transcript(tmp_path):
    cases = [
        ({"prompt": "hi", "chosen": "a"}, "alignlab", "field 'rejected': required field is missing"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
          "label": "yes"}, "kto", "field 'label': expected true or false, got str"),
        ({"chosen": "", "rejected": "\n\nHuman: q\n\nAssistant: a"}, "hh",
         "field 'chosen': empty transcript"),
        ({"conversations": [{"from": "robot", "value": "x"}]}, "sharegpt",
         "field 'conversations[0].from': unknown speaker 'robot'"),
        ({"messages": [{"role": "user", "content": 3}]}, "chat",
         "field 'messages[0].content': expected a string, got int"),
    ]
    for row, fmt, message in cases:
        path = write_jsonl(tmp_path / f"{fmt}.jsonl", [row])
        with pytest.raises(RecordError) as info:
            load_records(settings(path, format=fmt), "pair" if fmt in ("alignlab", "hh") else
                         "binary" if fmt == "kto" else "conversation")
        assert str(info.value).startswith(f"{path}:1: {message}")


def test_hh_mismatched_prefix_is_an_error():
    row = {"chosen": "\n\nHuman: q1\n\nAssistant: a\n\nHuman: q2\n\nAssistant: good",
           "rejected": "\n\nHuman: OTHER\n\nAssistant: a\n\nHuman: q2\n\nAssistant: bad"}
    from alignlab.data.readers import read_hh

    with pytest.raises(RecordError) as info:
        read_hh(row, Location("hh.jsonl", 7), Counter())
    assert str(info.value) == ("hh.jsonl:7: field 'rejected': the turns before the last reply differ "
                               "from 'chosen' (first difference at turn 0)")


def test_hh_transcript_parsing_rules():
    notes = Counter()
    text = "Be kind.\n\nHuman:  q \n\nAssistant: a\n\nAssistant: b\n\nHuman: x Human: y\n\nAssistant:"
    messages, quirks = parse_hh_transcript(text, Location("f", 1), "chosen")
    assert messages == (Message("system", "Be kind."), Message("user", "q"),
                        Message("assistant", "a\n\nb"), Message("user", "x Human: y"),
                        Message("assistant", ""))
    assert quirks == {"hh_irregular_whitespace", "hh_merged_repeated_turn",
                      "hh_inline_speaker_label", "hh_empty_turn"}
    assert not notes


def test_skip_counts_bad_records(tmp_path):
    good = {"chosen": "\n\nHuman: q\n\nAssistant: yes", "rejected": "\n\nHuman: q\n\nAssistant: no"}
    mismatch = {"chosen": "\n\nHuman: q\n\nAssistant: yes", "rejected": "\n\nHuman: z\n\nAssistant: no"}
    rows = [good, "{broken", {"chosen": "\n\nHuman: q\n\nAssistant: yes"}, mismatch, good]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    data = load_records(settings(path, on_bad_record="skip"), "pair")
    assert data.format == "hh" and len(data.records) == 2 and data.bad.skipped == 3
    assert [e.split(": ")[0] for e in data.bad.examples] == [f"{path}:2", f"{path}:3", f"{path}:4"]
    with pytest.raises(RecordError, match=r"hh.jsonl:2: not valid JSON"):
        load_records(settings(path), "pair")


def test_limit_caps_records_after_conversion(tmp_path):
    rows = [{"prompt": "p", "responses": ["a", "b", "c"], "scores": [3, 2, 1]}] * 4
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    data = load_records(settings(path, limit=4), "pair")
    assert len(data.records) == 4 and data.rows_read == 2


# ----------------------------------------------------------------------------- formats and kinds


def test_alignlab_round_trip_and_prompt_only(tmp_path):
    prompt = (Message("system", "s"), Message("user", "u"))
    records = [Conversation(prompt + (Message("assistant", "a"),)),
               PreferencePair(prompt, "c", "r", 0.75), BinaryFeedback(prompt, "x", False),
               RankedList(prompt, ("a", "b"), (1.0, 0.0))]
    path = write_jsonl(tmp_path / "a.jsonl", [record_to_dict(r) for r in records]
                       + [{"prompt": "only"}])
    prompts = load_prompt_data(settings(path, format="alignlab")).records
    assert prompts == [prompt] * 4 + [(Message("user", "only"),)]
    mixed = write_jsonl(tmp_path / "m.jsonl", [record_to_dict(records[3]), {"prompt": "only"}])
    with pytest.raises(RecordError, match=r"m.jsonl:2: a prompt-only record has no completion"):
        load_records(settings(mixed, format="alignlab"), "ranked")
    skipped = load_records(settings(mixed, on_bad_record="skip"), "ranked")
    assert skipped.records == [records[3]] and skipped.bad.skipped == 1


def test_conversions_and_impossible_ones(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [
        {"prompt": "p", "responses": ["a", "b", "c"], "scores": [1, 1, 0]}])
    data = load_records(settings(path), "pair")
    assert [(p.chosen, p.rejected) for p in data.records] == [("a", "c"), ("b", "c")]
    assert data.notes == {"ranked_tie_skipped": 1}
    best = load_records(settings(path), "conversation").records
    assert best == [Conversation((Message("user", "p"), Message("assistant", "a")))]
    conv = write_jsonl(tmp_path / "c.jsonl", [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}])
    with pytest.raises(DataSourceError, match="holds conversation records but this stage needs pair"):
        load_records(settings(conv), "pair")
    with pytest.raises(ValueError, match="unknown record kind"):
        load_records(settings(conv), "pairs")


def test_chat_forms(tmp_path):
    user, asst = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}
    rows = [{"messages": [user], "chosen": {"role": "assistant", "content": "good"},
             "rejected": "bad", "label": 0.8},
            {"chosen": [user, asst, user, {"role": "assistant", "content": "y"}],
             "rejected": [user, asst, user, {"role": "assistant", "content": "n"}]}]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    data = load_records(settings(path), "pair")
    q, a = Message("user", "q"), Message("assistant", "a")
    assert data.format == "chat"
    assert data.records == [PreferencePair((q,), "good", "bad", 0.8),
                            PreferencePair((q, a, q), "y", "n", 1.0)]


def test_auto_detection_rules_and_ambiguity():
    assert detect_format({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "x"}, "f") == "hh"
    assert detect_format({"messages": [], "label": True}, "f") == "kto"
    assert detect_format({"messages": []}, "f") == "chat"
    assert detect_format({"prompt": "p", "chosen": "a", "rejected": "b"}, "f") == "alignlab"
    assert detect_format({"instruction": "i", "output": "o"}, "f") == "alpaca"
    with pytest.raises(DataSourceError, match=r"fit several formats \(sharegpt, alpaca\); set "
                                              r"data.format"):
        detect_format({"conversations": [], "instruction": "i", "output": "o"}, "f")
    with pytest.raises(DataSourceError, match="cannot detect the data format from the keys"):
        detect_format({"question": "q"}, "f")


def test_oasst_unranked_and_deleted_counted(tmp_path):
    def msg(role, text, rank=None, replies=(), deleted=False):
        return {"role": role, "text": text, "rank": rank, "replies": list(replies),
                "deleted": deleted}

    tree = msg("prompter", "q", replies=[
        msg("assistant", "best", 0, [msg("prompter", "more?", replies=[msg("assistant", "x", 0)])]),
        msg("assistant", "worse", 1), msg("assistant", "nor", None),
        msg("assistant", "gone", 2, deleted=True)])
    path = write_jsonl(tmp_path / "o.jsonl", [tree])
    data = load_records(settings(path), "ranked")
    assert data.records == [RankedList((Message("user", "q"),), ("best", "worse"), (0.0, -1.0))]
    assert data.notes == {"oasst_deleted_skipped": 1, "oasst_single_ranked_reply": 1,
                          "oasst_unranked_reply_skipped": 1}
    bad = write_jsonl(tmp_path / "ob.jsonl", [msg("prompter", "q", replies=[{"role": "assistant"}])])
    with pytest.raises(RecordError, match=r"ob.jsonl:1: field 'replies\[0\].text': required"):
        load_records(settings(bad), "ranked")


def test_offset_and_limit_select_a_slice_of_records(tmp_path):
    """offset skips records (after parsing), limit caps what follows: a held-out tail slice."""
    from alignlab.config import DataSettings
    from alignlab.data.loading import load_records

    path = tmp_path / "conv.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}]} for i in range(10)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    got = load_records(DataSettings(path=str(path), offset=7, limit=2), "conversation").records
    assert [r.messages[0].content for r in got] == ["q7", "q8"]
    tail = load_records(DataSettings(path=str(path), offset=8), "conversation").records
    assert [r.messages[0].content for r in tail] == ["q8", "q9"]
