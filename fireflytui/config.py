"""Run configuration: TOML presets, `--set section.key=value` overrides, validation, display.

Standard library only, so the monitor and the CLI can read configurations without torch.
Every key is declared once, on its dataclass field, with its default, help, unit and range;
`KEYS` is derived from those declarations.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = [
    "KEYS",
    "PRESETS_DIR",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "GrowthSection",
    "Key",
    "ModelConfig",
    "TrainConfig",
    "describe",
    "diff",
    "load_preset",
    "preset_names",
]

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"

MODEL_NAMES = ("vgg11", "vgg13", "vgg16", "vgg19", "mobilenetv1", "mlp")
DATA_SOURCES = ("shapes", "imagefolder", "cifar10", "cifar100", "mnist")
SCHEDULES = ("cosine", "constant")
GROWTH_METHODS = ("firefly", "random", "none")
_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
_SEED_MAX = 2**32 - 1  # largest seed every RNG in the stack accepts (numpy's bound)


class ConfigError(Exception):
    """A configuration problem, as one line naming the problem and the fix."""


@dataclass(frozen=True)
class Key:
    """One configuration key: its type, default, help, unit and allowed values."""

    name: str  # "section.key"
    section: str
    field: str
    type: str  # int | float | bool | str | list[int]
    default: Any
    help: str
    unit: str
    choices: tuple[str, ...] = ()
    lo: float | None = None  # lower bound, inclusive unless lo_open
    hi: float | None = None  # upper bound, inclusive unless hi_open
    lo_open: bool = False
    hi_open: bool = False
    pattern: str = ""  # regular expression a str value must match in full
    pattern_text: str = ""  # that pattern as the user reads it

    def requirement(self) -> str:
        """What a valid value is, phrased to follow 'must be'."""
        if self.type == "bool":
            return "true or false"
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.pattern_text:
            return self.pattern_text
        noun = {
            "int": "an integer",
            "float": "a finite number",
            "list[int]": "a list of integers",
            "str": "a string",
        }[self.type]
        bounds = self._bounds()
        if self.type == "list[int]" and bounds:
            bounds = "each " + bounds
        text = f"{noun} {bounds}".strip()
        if self.unit and bounds:
            text += f" ({self.unit})"
        return text

    def _bounds(self) -> str:
        lo, hi = _num(self.lo), _num(self.hi)
        if self.lo is not None and self.hi is not None:
            left = "(" if self.lo_open else "["
            right = ")" if self.hi_open else "]"
            return f"in {left}{lo}, {hi}{right}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {lo}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {hi}"
        return ""

    def check(self, value: Any) -> Any:
        """The value in its stored form (floats as float, lists as tuples); ConfigError if bad."""
        value = self._typed(value)
        items = value if self.type == "list[int]" else (value,)
        if self.type in ("int", "float", "list[int]"):
            for item in items:
                if not self._in_bounds(item):
                    self._fail(value)
        if self.choices and value not in self.choices:
            close = difflib.get_close_matches(value, self.choices, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{self.name} must be {self.requirement()}, got {value!r}{hint}")
        if self.pattern and not re.fullmatch(self.pattern, value):
            self._fail(value)
        return value

    def _typed(self, value: Any) -> Any:
        kind = self.type
        if kind == "int" and _is_int(value):
            return value
        if kind == "float" and (_is_int(value) or isinstance(value, float)):
            if _is_int(value):
                value = float(value) if abs(value) < 1e308 else math.inf
            if not math.isfinite(value):
                self._fail(value)
            return value
        if kind == "bool" and isinstance(value, bool):
            return value
        if kind == "str" and isinstance(value, str):
            return value.strip().lower() if (self.choices or self.pattern) else value
        if kind == "list[int]" and isinstance(value, (list, tuple)):
            if all(_is_int(item) for item in value):
                return tuple(value)
        self._fail(value)

    def _in_bounds(self, x: float) -> bool:
        if self.lo is not None and (x <= self.lo if self.lo_open else x < self.lo):
            return False
        return not (self.hi is not None and (x >= self.hi if self.hi_open else x > self.hi))

    def _fail(self, value: Any) -> NoReturn:
        shown = repr(value) if self.type == "str" and isinstance(value, str) else _shown(value)
        raise ConfigError(f"{self.name} must be {self.requirement()}, got {shown}")


def _num(x: float | None) -> str:
    return "" if x is None else (str(int(x)) if float(x).is_integer() else repr(x))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    """A value as the user wrote it, with its TOML type when that is the problem."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return f"{value!r} (a string)"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _key(
    default: Any,
    help: str,
    unit: str,
    *,
    choices: tuple[str, ...] = (),
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
    pattern: str = "",
    pattern_text: str = "",
) -> Any:
    """A dataclass field carrying its key's help, unit and allowed values."""
    meta = dict(
        help=help,
        unit=unit,
        choices=choices,
        lo=lo,
        hi=hi,
        lo_open=lo_open,
        hi_open=hi_open,
        pattern=pattern,
        pattern_text=pattern_text,
    )
    return field(default=default, metadata=meta)


class _Section:
    """Validates every field of a section dataclass when it is built."""

    _section = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            key = KEYS[f"{self._section}.{f.name}"]
            object.__setattr__(self, f.name, key.check(getattr(self, f.name)))


@dataclass(frozen=True)
class ModelConfig(_Section):
    """[model]: the network family and its starting size."""

    _section = "model"
    name: str = _key("vgg19", "network family", "family", choices=MODEL_NAMES)
    width: int = _key(
        0,
        "starting width of every unit; 0 = the family's default: VGG 16, MobileNet 32, MLP 64",
        "neurons per unit",
        lo=0,
    )
    widths: tuple[int, ...] = _key(
        (), "per-unit starting widths; overrides width when not empty", "neurons per unit", lo=1
    )
    depth: int = _key(2, "hidden layers, mlp only", "layers", lo=1)


@dataclass(frozen=True)
class DataConfig(_Section):
    """[data]: what the network learns from and how it is batched."""

    _section = "data"
    source: str = _key("cifar10", "dataset to learn from", "dataset", choices=DATA_SOURCES)
    dir: str = _key(
        "",
        "where datasets live; empty = ~/.cache/fireflytui/data (imagefolder needs it set)",
        "directory path",
    )
    train_subset: int = _key(0, "stratified training subset; 0 = all", "images", lo=0)
    test_subset: int = _key(0, "stratified test subset; 0 = all", "images", lo=0)
    batch_size: int = _key(128, "batch size of a training step", "images", lo=1)
    augment: bool = _key(
        True, "random 4-pixel-padded crop and horizontal flip on training batches", "on/off"
    )


@dataclass(frozen=True)
class TrainConfig(_Section):
    """[train]: the optimiser, schedule and run environment."""

    _section = "train"
    epochs: int = _key(160, "training length", "epochs", lo=1)
    lr: float = _key(
        0.1, "peak learning rate of each cosine cycle", "SGD step size", lo=0, lo_open=True
    )
    momentum: float = _key(0.9, "SGD Nesterov momentum", "fraction", lo=0, hi=1, hi_open=True)
    weight_decay: float = _key(5e-4, "L2 weight decay", "per-step coefficient", lo=0)
    schedule: str = _key(
        "cosine",
        "learning-rate schedule; the cosine restarts after every grow step",
        "schedule",
        choices=SCHEDULES,
    )
    seed: int = _key(0, "seed of every random stream in the run", "seed", lo=0, hi=_SEED_MAX)
    device: str = _key(
        "auto",
        "torch device; auto = cuda when available, else cpu",
        "device",
        pattern=_DEVICE_PATTERN.pattern,
        pattern_text="auto, cpu, cuda or cuda:N",
    )
    threads: int = _key(0, "CPU threads for torch; 0 = torch's default", "threads", lo=0)
    channels_last: bool = _key(
        True, "conv weights and batches in channels-last memory layout (faster convs)", "on/off"
    )
    log_every: int = _key(50, "steps between `train` events", "steps", lo=1)


@dataclass(frozen=True)
class GrowthSection(_Section):
    """[growth]: when the network grows, by how much, and how candidates are searched."""

    _section = "growth"
    method: str = _key(
        "firefly",
        "firefly, random (split random neurons with noise) or none",
        "method",
        choices=GROWTH_METHODS,
    )
    every: int = _key(10, "epochs between grow steps", "epochs", lo=1)
    rounds: int = _key(0, "grow steps on schedule", "grow steps", lo=0)
    ratio: float = _key(
        0.35,
        "eta_t as a fraction of the current neuron count",
        "fraction of neurons",
        lo=0,
        hi=1,
        lo_open=True,
    )
    eta: int = _key(0, "eta_t as a neuron count; > 0 wins over ratio", "neurons", lo=0)
    max_params: int = _key(
        0,
        "skip scheduled grow steps once the network has this many; 0 = no cap",
        "parameters",
        lo=0,
    )
    split: bool = _key(True, "offer split candidates", "on/off")
    new: bool = _key(True, "offer new-neuron candidates", "on/off")
    new_candidates: int = _key(8, "new-neuron candidates per unit (m')", "neurons", lo=0)
    eps_bound: float = _key(0.3, "bound on |eps|", "relative to weight norms", lo=0, lo_open=True)
    fit_steps: int = _key(20, "Adam steps fitting delta and eps", "steps", lo=0)
    fit_lr: float = _key(0.1, "step size of that fit", "Adam step size", lo=0, lo_open=True)
    path_points: int = _key(3, "points on the eps path for the integrated gradient", "points", lo=1)
    batches: int = _key(8, "training batches one grow step reads", "batches", lo=1)
    noise: float = _key(
        0.01, "random method only: split noise", "relative to the neuron's weight norm", lo=0
    )


@dataclass(frozen=True)
class CheckpointConfig(_Section):
    """[checkpoint]: what is kept on disk."""

    _section = "checkpoint"
    keep: int = _key(
        3,
        "epoch checkpoints kept (grow-step and user checkpoints are always kept)",
        "checkpoints",
        lo=1,
    )


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "growth": GrowthSection,
    "checkpoint": CheckpointConfig,
}


def _build_keys() -> dict[str, Key]:
    kinds = {"int": "int", "float": "float", "bool": "bool", "str": "str"}
    kinds["tuple[int, ...]"] = "list[int]"
    keys: dict[str, Key] = {}
    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            name = f"{section}.{f.name}"
            keys[name] = Key(
                name=name, section=section, field=f.name, type=kinds[f.type], default=f.default,
                **f.metadata,
            )  # fmt: skip
    return keys


KEYS: dict[str, Key] = _build_keys()


@dataclass(frozen=True)
class Config:
    """A whole, validated run configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    growth: GrowthSection = field(default_factory=GrowthSection)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def __post_init__(self) -> None:
        for section, cls in _SECTIONS.items():
            if not isinstance(getattr(self, section), cls):
                raise ConfigError(f"Config.{section} must be a {cls.__name__}")
        g = self.growth
        if g.method == "firefly" and not (g.split or g.new):
            raise ConfigError(
                "growth.split and growth.new are both false: nothing to grow; "
                "set one of them to true, or growth.method to none"
            )

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every key by section, as plain JSON-able values (lists, not tuples)."""
        out: dict[str, dict[str, Any]] = {}
        for section in _SECTIONS:
            values = dataclasses.asdict(getattr(self, section))
            out[section] = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
        return out

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config") -> Config:
        """A Config from {section: {key: value}}; missing keys take their defaults."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source} must be a table of sections, got {type(d).__name__}")
        sections: dict[str, Any] = {}
        for section, values in d.items():
            if section not in _SECTIONS:
                if not isinstance(values, dict):
                    raise ConfigError(_misplaced(str(section), source))
                raise ConfigError(_unknown_section(str(section), source))
            if not isinstance(values, dict):
                raise ConfigError(
                    f"[{section}] in {source} must be a table of keys, got {_shown(values)}"
                )
            for name in values:
                if f"{section}.{name}" not in KEYS:
                    raise ConfigError(_unknown_key(f"{section}.{name}", source))
            sections[section] = values
        try:
            built = {s: _SECTIONS[s](**sections.get(s, {})) for s in _SECTIONS}
            return cls(**built)
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in {source})") from None

    def with_overrides(self, items: list[str]) -> Config:
        """This config with `section.key=value` overrides applied in order (later wins)."""
        if not items:
            return self
        d = self.to_dict()
        for item in items:
            name, text = _split_override(item)
            key = KEYS[name]
            try:
                d[key.section][key.field] = key.check(_parse(key, text))
            except ConfigError as exc:
                raise ConfigError(f"{exc} (in --set {item})") from None
        return Config.from_dict(d, source="--set " + " ".join(items))

    def get(self, key: str) -> Any:
        """The value of one "section.key"."""
        if key not in KEYS:
            raise ConfigError(_unknown_key(key, "Config.get"))
        k = KEYS[key]
        return getattr(getattr(self, k.section), k.field)

    def to_toml(self) -> str:
        """Every key of every section as TOML, each with its help and unit as a comment."""
        lines = ["# fireflytui configuration: every key, with its help and unit."]
        for section in _SECTIONS:
            keys = [k for k in KEYS.values() if k.section == section]
            rows = [(f"{k.field} = {_toml_value(self.get(k.name))}", k) for k in keys]
            width = max(len(r) for r, _ in rows)
            lines += ["", f"[{section}]"]
            lines += [f"{r:<{width}}  # {_comment(k)}" for r, k in rows]
        return "\n".join(lines) + "\n"


def _comment(key: Key) -> str:
    unit = "one of " + " | ".join(key.choices) if key.choices else key.unit
    return f"{key.help} ({unit})"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = json.dumps(str(value), ensure_ascii=False)  # JSON escapes are valid TOML escapes
    return text.replace("\x7f", "\\u007f")


def _nearest(name: str, options: list[str]) -> str | None:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_key(name: str, source: str) -> str:
    section, _, short = name.partition(".")
    same_name = [k.name for k in KEYS.values() if k.field == short]
    guess = _nearest(name, list(KEYS)) or (same_name[0] if same_name else None)
    if guess:
        return f"unknown key '{name}' in {source}; did you mean '{guess}'?"
    if section in _SECTIONS:
        known = ", ".join(k.field for k in KEYS.values() if k.section == section)
        return f"unknown key '{name}' in {source}; keys in [{section}]: {known}"
    return f"unknown key '{name}' in {source}; sections: {', '.join(_SECTIONS)}"


def _unknown_section(section: str, source: str) -> str:
    guess = _nearest(section, list(_SECTIONS))
    hint = f"did you mean [{guess}]?" if guess else f"sections: {', '.join(_SECTIONS)}"
    return f"unknown section [{section}] in {source}; {hint}"


def _misplaced(name: str, source: str) -> str:
    """A bare key outside any section: point at the section that has it."""
    short = _nearest(name, [k.field for k in KEYS.values()])
    home = next((k for k in KEYS.values() if k.field == short), None)
    where = f"key '{name}' in {source} is outside any section"
    if home is None:
        return f"{where}; sections: {', '.join(_SECTIONS)}"
    return f"{where}; did you mean '{home.name}' (under [{home.section}])?"


def _split_override(item: str) -> tuple[str, str]:
    name, eq, text = item.partition("=")
    name = name.strip()
    if not eq or not name:
        raise ConfigError(f"expected section.key=value, got {item!r}")
    if name.count(".") != 1 or not all(name.split(".")):
        homes = [k.name for k in KEYS.values() if k.field == name]
        hint = f"; did you mean '{homes[0]}={text.strip()}'?" if homes else ""
        raise ConfigError(f"expected section.key=value, got {item!r}{hint}")
    if name not in KEYS:
        section = name.split(".")[0]
        if section not in _SECTIONS and not _nearest(name, list(KEYS)):
            raise ConfigError(_unknown_section(section, "--set"))
        raise ConfigError(_unknown_key(name, "--set"))
    return name, text


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _parse(key: Key, text: str) -> Any:
    """A --set string read by its key's type; the range is checked later, with the rest."""
    raw = text.strip()
    if key.type == "str":
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
            raw = raw[1:-1]
        return raw
    if key.type == "bool":
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ConfigError(f"{key.name} must be true or false (or yes/no, 1/0), got {raw!r}")
    if key.type == "int":
        return _parse_int(key, raw)
    if key.type == "float":
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{key.name} must be {key.requirement()}, got {raw!r}") from None
    inner = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    parts = [p.strip() for p in inner.split(",")]
    if parts == [""]:
        return []
    return [_parse_int(key, p) for p in parts]


def _parse_int(key: Key, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        example = "16,32,64" if key.type == "list[int]" else "12"
        raise ConfigError(
            f"{key.name} must be {key.requirement()}, got {raw!r} (e.g. {key.name}={example})"
        ) from None


def preset_names() -> list[str]:
    """The names of the presets shipped in PRESETS_DIR, sorted."""
    if not PRESETS_DIR.is_dir():
        return []
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml") if p.is_file())


def load_preset(name_or_path: str) -> Config:
    """A preset by name (a file in PRESETS_DIR) or by path to a .toml file."""
    text = str(name_or_path)
    names = preset_names()
    if text in names:
        return _load_file(PRESETS_DIR / f"{text}.toml")
    path = Path(text).expanduser()
    if path.is_file():
        return _load_file(path)
    if path.exists():
        raise ConfigError(f"{text} is not a file; pass a .toml file or a preset name")
    if text.endswith(".toml") or "/" in text or "\\" in text:
        raise ConfigError(
            f"config file {text} not found; check the path, or use a preset name: "
            + (", ".join(names) or "(none)")
        )
    guess = _nearest(text, names)
    hint = f"did you mean '{guess}'? " if guess else ""
    raise ConfigError(
        f"unknown preset {text!r}; {hint}known presets: {', '.join(names) or '(none)'} "
        "(or pass a path to a .toml file)"
    )


def _load_file(path: Path) -> Config:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{path}: malformed TOML: {detail}") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())
        raise ConfigError(f"cannot read config file {path}: {reason}") from None
    return Config.from_dict(data, source=str(path))


def describe(config: Config) -> str:
    """The resolved config, one aligned `section.key  value  # help (unit)` line per key."""
    rows = [(k, _toml_value(config.get(k.name))) for k in KEYS.values()]
    name_w = max(len(k.name) for k, _ in rows)
    value_w = max(len(v) for _, v in rows)
    lines: list[str] = []
    previous = ""
    for key, value in rows:
        if previous and key.section != previous:
            lines.append("")
        previous = key.section
        lines.append(f"{key.name:<{name_w}}  {value:<{value_w}}  # {_comment(key)}")
    return "\n".join(lines)


def diff(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """The keys whose values differ between two configs: {"section.key": (a value, b value)}."""
    out: dict[str, tuple[Any, Any]] = {}
    for name in KEYS:
        va, vb = a.get(name), b.get(name)
        if va != vb:
            out[name] = (list(va), list(vb)) if isinstance(va, tuple) else (va, vb)
    return out
