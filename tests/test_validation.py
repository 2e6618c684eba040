"""The one validator: every numeric field of every config and every numeric flag of every command
refuses negative, zero (where meaningless), NaN, inf and absurd values with one line, before
anything is allocated; the same checks apply to configs read back from run directories."""

from __future__ import annotations

import dataclasses
import math
import time
import typing

import pytest

from rnnlab.cli import build_parser, main
from rnnlab.cli.common import RunOptions
from rnnlab.sample import SampleConfig
from rnnlab.tasks.char_lm import TrainConfig
from rnnlab.training.config import resume_table, resumed_config
from rnnlab.validation import ConfigError, from_mapping

CONFIGS = (TrainConfig, SampleConfig, RunOptions)


def numeric_fields(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        args = typing.get_args(kind)
        if kind in (int, float) or (args and args[0] in (int, float)):
            yield f, (args[0] if args else kind)


def bad_values(f, kind):
    low, high = f.metadata["low"], f.metadata["high"]
    assert low is not None and high is not None, f"{f.name} has no range"
    values = [low - 1, high * 10 + 1, 10**12 if high < 10**12 else 10**30]
    if kind is float:
        values += [math.nan, math.inf, -math.inf]
    else:
        values += [1.5, True]
    return values


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_numeric_field_has_a_range_and_refuses_bad_values(cls):
    fields = list(numeric_fields(cls))
    assert fields
    for f, kind in fields:
        for value in bad_values(f, kind):
            with pytest.raises(ConfigError) as info:
                cls(**{f.name: value})
            message = str(info.value)
            assert message.startswith(f"{f.name}: expected"), message
            assert "\n" not in message


def test_the_issue_cases_name_the_field():
    cases = {
        "grad_clip": -5.0,
        "min_lr_frac": -2.0,
        "patience": -1,
        "hidden_size": 0,
        "eval_batches": -1,
        "max_minutes": math.nan,
        "num_layers": 10**12,
    }
    for name, value in cases.items():
        with pytest.raises(ConfigError, match=f"^{name}: expected"):
            TrainConfig(**{name: value})
    with pytest.raises(ConfigError, match="^grad_clip: expected a finite number"):
        TrainConfig(grad_clip=math.inf)
    with pytest.raises(ConfigError, match="^beam: expected an integer in"):
        SampleConfig(beam=10**12)


def cli_numeric_flags():
    """(command, flag, kind, field) for every numeric option of every command."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            kind = getattr(action.type, "__name__", None)
            if action.option_strings and kind in ("int", "float"):
                yield name, action.option_strings[0], kind


FLAGS = sorted(set(cli_numeric_flags()))
COMMANDS_WITH_CONFIGS = {"train", "sample", "eval"}


def test_the_flag_table_covers_every_config_field():
    flags = {(c, f) for c, f, _ in FLAGS}
    for cls, commands in ((TrainConfig, ["train"]), (SampleConfig, ["sample"]),
                          (RunOptions, ["sample", "eval"])):  # fmt: skip
        for f, _ in numeric_fields(cls):
            for command in commands:
                assert (command, "--" + f.name.replace("_", "-")) in flags


@pytest.mark.parametrize("command,flag,kind", [x for x in FLAGS if x[0] in COMMANDS_WITH_CONFIGS])
def test_every_numeric_flag_of_every_command_refuses_bad_values(
    command, flag, kind, capsys, tmp_path, cache_env
):
    text = tmp_path / "in.txt"
    text.write_text("abc" * 400, encoding="utf-8")
    head = {"train": ["train", str(text), "--out-dir", str(tmp_path / "run")],
            "sample": ["sample", str(tmp_path / "run")],
            "eval": ["eval", str(tmp_path / "run")]}[command]  # fmt: skip
    values = ["-5", "1e30", "nan", "inf", "-inf"] if kind == "float" else ["-5", str(10**30)]
    for value in values:
        start = time.perf_counter()
        code = main([*head, f"{flag}={value}"])
        _, err = capsys.readouterr()
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (flag, value, err)
        assert len(lines) == 1 and "Traceback" not in err, err
        assert flag[2:].replace("-", "_") in lines[0], lines[0]
        assert time.perf_counter() - start < 5  # refused before anything is built
    assert not (tmp_path / "run").exists()


def test_a_typed_value_equal_to_the_default_still_counts():
    from rnnlab.cli.common import given

    parser = build_parser()
    args = parser.parse_args(["train", "x.txt", "--max-steps", "2000", "--eval-every", "200"])
    assert given(args, TrainConfig) == {"max_steps": 2000, "eval_every": 200}
    args = parser.parse_args(["sample", "run", "--threads", "1", "--length", "500"])
    assert given(args, SampleConfig) == {"length": 500}
    assert given(args, RunOptions) == {"threads": 1}


def test_the_resume_table_classifies_every_field_once():
    groups = list(resume_table(TrainConfig).values())
    names = [n for g in groups for n in g]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(TrainConfig))
    assert len(names) == len(set(names))


def test_resumed_config_applies_free_fields_and_refuses_fixed_ones():
    saved = TrainConfig(input="/data/in.txt", hidden_size=16, max_steps=10, lr=1e-3)
    config, notes = resumed_config(saved, {"max_steps": 2000, "lr": 2e-3, "hidden_size": 16})
    assert (config.max_steps, config.lr, config.hidden_size) == (2000, 2e-3, 16)
    assert any("no longer bit-exact" in n for n in notes if n.startswith("lr"))
    for name, value in [("hidden_size", 32), ("cell", "lstm"), ("batch_size", 8),
                        ("seed", 1), ("byte_level", True), ("optimizer", "sgd")]:  # fmt: skip
        with pytest.raises(ConfigError, match=f"^{name}: expected .* cannot change on resume"):
            resumed_config(saved, {name: value})


def test_configs_read_from_files_get_the_same_checks():
    source = "run/step-4/config.json (train)"
    good = from_mapping(TrainConfig, {"hidden_size": 16, "lr": 1}, source)
    assert good.lr == 1.0 and isinstance(good.lr, float)
    for data, field in [({"hidden_size": "16"}, "hidden_size"), ({"lr": None}, "lr"),
                        ({"cell": ["lstm"]}, "cell"), ({"batch_size": 10**9}, "batch_size"),
                        ({"bogus": 1}, "bogus")]:  # fmt: skip
        with pytest.raises(ConfigError) as info:
            from_mapping(TrainConfig, data, source)
        assert str(info.value).startswith(f"{source}: {field}: expected"), str(info.value)
    with pytest.raises(ConfigError, match="a JSON object, found 'list'"):
        from_mapping(TrainConfig, [1, 2], source)


def test_sampling_memory_is_bounded_over_all_streams():
    SampleConfig(length=10**7)
    with pytest.raises(ConfigError, match="^length: expected at most 100,000,000 characters"):
        SampleConfig(length=10**6, num_samples=101)
    with pytest.raises(ConfigError, match="^length: expected at most"):
        SampleConfig(length=10**6, beam=200)
    with pytest.raises(ConfigError, match="^device: expected"):
        RunOptions(device="gpu0")
