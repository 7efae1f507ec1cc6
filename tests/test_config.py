"""Config loading, `--set` overrides, validation messages, presets and display."""

from __future__ import annotations

import json
import math

import pytest

from fireflytui.config import (
    KEYS,
    PRESETS_DIR,
    Config,
    ConfigError,
    GrowthSection,
    TrainConfig,
    describe,
    diff,
    load_preset,
    preset_names,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def error_of(fn, *args, **kwargs) -> str:
    """The one-line message of the ConfigError that fn raises."""
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_shipped_presets_load_and_validate():
    names = preset_names()
    assert {"demo", "mlp-mnist", "mobilenetv1-cifar100", "vgg19-cifar10"} <= set(names)
    for name in names:
        config = load_preset(name)
        assert config.with_overrides([]) == config
    paper = load_preset("vgg19-cifar10")
    assert (paper.model.name, paper.data.source, paper.growth.method) == (
        "vgg19",
        "cifar10",
        "firefly",
    )
    assert (paper.growth.ratio, paper.growth.every, paper.growth.rounds) == (0.35, 10, 10)
    demo = load_preset("demo")
    assert demo.data.source == "shapes"  # the demo must run offline
    assert demo.growth.rounds >= 1 and demo.growth.every * demo.growth.rounds < demo.train.epochs


def test_missing_keys_take_defaults():
    config = Config.from_dict({"train": {"epochs": 3}})
    assert config.train.epochs == 3
    assert config.train.lr == 0.1 and config.model.name == "vgg19" and config.checkpoint.keep == 3
    assert Config.from_dict({}) == Config()


def test_to_toml_round_trips_every_key():
    config = load_preset("demo").with_overrides(
        ["model.widths=8,16,24", 'data.dir=/tmp/a "quoted" dir\\x', "train.weight_decay=1e-5"]
    )
    text = config.to_toml()
    parsed = tomllib.loads(text)
    assert Config.from_dict(parsed) == config
    assert sum(len(section) for section in parsed.values()) == len(KEYS)
    for line in text.splitlines():
        if "=" in line:
            assert "#" in line.split("=", 1)[1]  # every key carries its help


def test_to_dict_is_json_and_round_trips():
    config = Config().with_overrides(["model.widths=[4, 5]"])
    d = json.loads(json.dumps(config.to_dict()))
    assert d["model"]["widths"] == [4, 5]
    assert Config.from_dict(d) == config


@pytest.mark.parametrize(
    ("item", "key", "expected"),
    [
        ("train.epochs=12", "train.epochs", 12),
        ("train.lr=0.05", "train.lr", 0.05),
        ("train.weight_decay=5e-4", "train.weight_decay", 5e-4),
        ("train.lr=1", "train.lr", 1.0),
        ("data.augment=false", "data.augment", False),
        ("data.augment=No", "data.augment", False),
        ("growth.split=0", "growth.split", False),
        ("growth.new=yes", "growth.new", True),
        ("model.widths=16,32,64", "model.widths", (16, 32, 64)),
        ("model.widths=[16, 32, 64]", "model.widths", (16, 32, 64)),
        ("model.widths=[]", "model.widths", ()),
        ("data.dir='/data/my sets'", "data.dir", "/data/my sets"),
        ('data.dir="x=y"', "data.dir", "x=y"),
        ("model.name=MLP", "model.name", "mlp"),
        ("train.device=cuda:1", "train.device", "cuda:1"),
    ],
)
def test_set_parses_by_key_type(item, key, expected):
    value = Config().with_overrides([item]).get(key)
    assert value == expected
    assert type(value) is type(expected)


def test_later_overrides_win_and_original_is_unchanged():
    base = Config()
    changed = base.with_overrides(["train.epochs=5", "train.epochs=7"])
    assert changed.train.epochs == 7 and base.train.epochs == 160


def test_unknown_keys_suggest_the_nearest():
    message = error_of(Config().with_overrides, ["train.lrr=0.1"])
    assert "unknown key 'train.lrr'" in message and "did you mean 'train.lr'?" in message
    message = error_of(Config.from_dict, {"growth": {"ration": 0.3}}, source="my.toml")
    assert "my.toml" in message and "'growth.ratio'" in message
    assert "[train]" in error_of(Config.from_dict, {"trian": {"epochs": 3}})
    assert "'train.epochs'" in error_of(Config.from_dict, {"epochs": 3})


@pytest.mark.parametrize("item", ["train.epochs", "epochs=3", "=3", "train.epochs.x=3", "train.=3"])
def test_bad_override_syntax(item):
    message = error_of(Config().with_overrides, [item])
    assert "expected section.key=value" in message and repr(item) in message


def test_epochs_hint_for_missing_section():
    assert "'train.epochs=3'" in error_of(Config().with_overrides, ["epochs=3"])


@pytest.mark.parametrize(
    ("item", "key", "shown"),
    [
        ("train.epochs=0", "train.epochs", "0"),
        ("growth.eta=-3", "growth.eta", "-3"),
        ("growth.ratio=1.5", "growth.ratio", "1.5"),
        ("growth.ratio=0", "growth.ratio", "0"),
        ("train.lr=nan", "train.lr", "nan"),
        ("train.lr=inf", "train.lr", "inf"),
        ("train.lr=-0.1", "train.lr", "-0.1"),
        ("train.momentum=1", "train.momentum", "1"),
        ("train.epochs=1.5", "train.epochs", "1.5"),
        ("train.epochs=ten", "train.epochs", "ten"),
        ("data.augment=maybe", "data.augment", "maybe"),
        ("model.widths=16,0", "model.widths", "0"),
        ("model.widths=16,x", "model.widths", "x"),
        ("model.name=vgg20", "model.name", "vgg20"),
        ("train.device=gpu", "train.device", "gpu"),
        ("train.device=cuda:x", "train.device", "cuda:x"),
        ("checkpoint.keep=0", "checkpoint.keep", "0"),
    ],
)
def test_bad_values_are_rejected_naming_the_key(item, key, shown):
    message = error_of(Config().with_overrides, [item])
    assert message.startswith(key + " must be") and shown in message.split(" (in --set")[0]


def test_range_messages_say_what_is_allowed():
    assert "must be an integer >= 1" in error_of(Config().with_overrides, ["train.epochs=0"])
    assert "in (0, 1]" in error_of(Config().with_overrides, ["growth.ratio=1.5"])
    assert ">= 0 (neurons)" in error_of(Config().with_overrides, ["growth.eta=-3"])
    assert "did you mean 'vgg19'" in error_of(Config().with_overrides, ["model.name=vgg20"])


@pytest.mark.parametrize(
    ("section", "values"),
    [
        ("train", {"epochs": True}),
        ("train", {"epochs": 3.0}),
        ("train", {"epochs": "3"}),
        ("train", {"lr": "0.1"}),
        ("train", {"lr": float("nan")}),
        ("data", {"augment": 1}),
        ("model", {"widths": [16, 2.5]}),
        ("model", {"widths": 16}),
        ("model", {"name": 19}),
    ],
)
def test_wrong_toml_types_are_rejected(section, values):
    message = error_of(Config.from_dict, {section: values}, source="run.toml")
    key = f"{section}.{next(iter(values))}"
    assert message.startswith(key + " must be") and "run.toml" in message


def test_float_keys_take_toml_integers():
    config = Config.from_dict({"train": {"lr": 1, "weight_decay": 0}})
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)


def test_cross_key_checks():
    assert "nothing to grow" in error_of(
        Config().with_overrides, ["growth.split=false", "growth.new=false"]
    )
    random = Config().with_overrides(["growth.method=random", "growth.split=0", "growth.new=0"])
    assert random.growth.method == "random"
    file_config = Config.from_dict({"growth": {"split": False, "new": False, "method": "none"}})
    assert file_config.with_overrides(["growth.method=random"]).growth.method == "random"


def test_sections_validate_when_built_directly():
    assert "train.epochs" in error_of(TrainConfig, epochs=0)
    assert "growth.ratio" in error_of(GrowthSection, ratio=0.0)
    assert math.isclose(GrowthSection(ratio=1).ratio, 1.0)


def test_malformed_toml_reports_file_line_and_column(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[train]\nepochs = 3\nlr = = 0.1\n")
    message = error_of(load_preset, str(path))
    assert "broken.toml" in message and "line 3" in message and "column" in message


def test_bad_value_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[growth]\neta = -3\n")
    message = error_of(load_preset, str(path))
    assert message.startswith("growth.eta must be") and "run.toml" in message


def test_unknown_preset_lists_the_known_ones():
    message = error_of(load_preset, "vgg")
    assert "unknown preset 'vgg'" in message
    for name in preset_names():
        assert name in message
    assert ".toml" in message


def test_missing_preset_file(tmp_path):
    message = error_of(load_preset, str(tmp_path / "nope.toml"))
    assert "nope.toml" in message and "not found" in message
    assert "not a file" in error_of(load_preset, str(tmp_path))


def test_path_presets_load(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[model]\nname = "mlp"\ndepth = 3\n\n[train]\nepochs = 2\n')
    config = load_preset(str(path))
    assert (config.model.name, config.model.depth, config.train.epochs) == ("mlp", 3, 2)
    shipped = load_preset(str(PRESETS_DIR / "demo.toml"))
    assert shipped == load_preset("demo")


def test_diff_lists_exactly_the_changed_keys():
    a = Config()
    b = a.with_overrides(["train.epochs=3", "model.widths=4,4", "growth.new=false"])
    assert diff(a, b) == {
        "train.epochs": (160, 3),
        "model.widths": ([], [4, 4]),
        "growth.new": (True, False),
    }
    assert diff(b, b) == {}


def test_describe_mentions_every_key_once_with_its_value():
    config = load_preset("demo")
    lines = [line for line in describe(config).splitlines() if line.strip()]
    names = [line.split()[0] for line in lines]
    assert sorted(names) == sorted(KEYS)
    for line in lines:
        name, value = line.split()[:2]
        assert (
            tomllib.loads(f"v = {value}")["v"]
            == config.to_dict()[name.split(".")[0]][name.split(".")[1]]
        )
        assert "#" in line and "(" in line  # help and unit


def test_get_and_keys():
    config = Config()
    assert config.get("train.lr") == 0.1
    assert "did you mean 'train.lr'" in error_of(config.get, "train.lrr")
    for name, key in KEYS.items():
        assert config.get(name) == key.default
        assert key.help and (key.unit or key.choices)
