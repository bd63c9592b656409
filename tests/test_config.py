"""Config validation: unknown keys, wrong types and out-of-range values fail with clear messages."""

import pytest

from alignlab.config import ConfigError, parse_overrides
from alignlab.stages import load_stage_config
from alignlab.train.preference import PreferenceConfig


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


BASE = """
model: {path: ./m}
data: {path: d.jsonl}
out: runs/x
"""


def test_valid_config_with_overrides(tmp_path):
    cfg = load_stage_config("dpo", str(write(tmp_path, BASE + "loss: {name: dpo, beta: 0.1}\n")),
                            ["loss.beta=0.25", "train.batch_size=4"])
    assert isinstance(cfg, PreferenceConfig)
    assert cfg.loss[0].params == {"beta": 0.25} and cfg.train.batch_size == 4
    assert cfg.train.learning_rate == 1e-4  # untouched default


def test_unknown_nested_key_names_path_and_closest(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_stage_config("dpo", str(write(tmp_path, BASE)), ["train.learnig_rate=0.1"])
    message = str(err.value)
    assert "train.learnig_rate: unknown key; did you mean 'learning_rate'?" in message


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match=r"los: unknown key; did you mean 'loss'\?"):
        load_stage_config("dpo", str(write(tmp_path, BASE + "los: dpo\n")), [])


def test_out_of_range_value_names_key_and_bound(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_stage_config("dpo", str(write(tmp_path, BASE)), ["train.batch_size=0"])
    assert "train.batch_size" in str(err.value) and "ge 1" in str(err.value)


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_stage_config("dpo", str(write(tmp_path, BASE)), ["train.learning_rate=high"])
    assert "train.learning_rate:" in str(err.value) and "'high'" in str(err.value)


def test_literal_lists_accepted_values(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_stage_config("sft", str(write(tmp_path, BASE)), ["data.format=csv"])
    assert "data.format: must be one of" in str(err.value) and "'sharegpt'" in str(err.value)


def test_missing_required_key(tmp_path):
    with pytest.raises(ConfigError, match="model: required key is missing"):
        load_stage_config("dpo", str(write(tmp_path, "data: {path: d}\nout: o\n")), [])


def test_stage_mismatch_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="stage is 'dpo' but the command is 'sft'"):
        load_stage_config("sft", str(write(tmp_path, BASE + "stage: dpo\n")), [])
    with pytest.raises(ConfigError, match="config file not found"):
        load_stage_config("sft", str(tmp_path / "nope.yaml"), [])


def test_parse_overrides_nests_and_parses_yaml_values():
    assert parse_overrides(["a.b.c=3", "a.d=[1, 2]", "e=true"]) == {
        "a": {"b": {"c": 3}, "d": [1, 2]}, "e": True}
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        parse_overrides(["nonsense"])


def test_loss_names_and_params_checked_when_read(tmp_path):
    path = str(write(tmp_path, BASE))
    with pytest.raises(ConfigError, match=r"unknown loss 'simppo'; did you mean 'simpo'\?"):
        load_stage_config("dpo", path, ["loss=simppo"])
    with pytest.raises(ConfigError, match=r"loss 'dpo': beta: Input should be greater than 0"):
        load_stage_config("dpo", path, ["loss={name: dpo, beta: -1}"])
    with pytest.raises(ConfigError, match=r"loss 'dpo': bta: Extra inputs are not permitted"):
        load_stage_config("dpo", path, ["loss={name: dpo, bta: 1}"])
    with pytest.raises(ConfigError, match="listed twice"):
        load_stage_config("dpo", path, ["loss=[dpo, dpo]"])


def test_loss_combination_with_weights(tmp_path):
    cfg = load_stage_config("preference", str(write(tmp_path, BASE)),
                            ["loss=[{name: dpo, beta: 0.2}, {name: nll, weight: 0.5}]"])
    assert [(t.name, t.weight, t.params) for t in cfg.loss] == [("dpo", 1.0, {"beta": 0.2}),
                                                                ("nll", 0.5, {})]
    assert load_stage_config("dpo", str(write(tmp_path, BASE)), []).loss[0].params == {"beta": 0.1}
