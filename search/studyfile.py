"""Study files: YAML in ``studies/``, parsed once into frozen, validated objects.

Every mistake becomes one ``ConfigError`` line naming the file, the key and the value.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from training.config import (
    LOSS_PARAMS,
    SCHEDULER_PARAMS,
    WITHOUT_TIMM,
    DataConfig,
    Frozen,
    ModelConfig,
    TrainConfig,
    TrainSettings,
    check_input_size,
    registered,
)
from training.errors import ConfigError

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"


class Distribution(Frozen):
    """A sampled value: ``{low, high[, log, step]}`` (int when both bounds are ints) or ``{choices}``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    integer: bool = False

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("must be {low, high[, log, step]} or {choices: [...]}")
        if "choices" not in value and isinstance(value.get("low"), int) and isinstance(value.get("high"), int):
            value = {**value, "integer": True}
        return value

    @model_validator(mode="after")
    def _valid(self) -> Distribution:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices must not be empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs low and high (or choices)")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got {self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        return self


def _check_conditionals(kind: str, table: dict[str, dict[str, Distribution]], allowed: dict[str, set[str]]) -> None:
    if not table:
        raise ValueError(f"{kind} needs at least one choice")
    for name, params in table.items():
        if name not in allowed:
            raise ValueError(f"unknown {kind} '{name}', choose from {sorted(allowed)}")
        for param in params:
            if param not in allowed[name]:
                raise ValueError(
                    f"'{param}' is not a parameter of {kind} '{name}', choose from {sorted(allowed[name])}"
                )


class SearchSpace(Frozen):
    """The four sampled things; conditional parameters are named by their config field."""

    lr: Distribution
    accumulation_steps: Distribution
    scheduler: dict[str, dict[str, Distribution]]
    loss: dict[str, dict[str, Distribution]]
    weight_decay: Distribution | None = None

    def distribution(self, name: str, params: dict[str, Any]) -> Distribution | None:
        """The distribution a parameter name stands for (conditionals under the chosen branch)."""
        if name in ("lr", "accumulation_steps", "weight_decay"):
            return getattr(self, name)
        for kind in ("scheduler", "loss"):
            table = getattr(self, kind)
            if name == kind:
                return Distribution(choices=list(table))
            branch = table.get(params.get(kind), {})
            if name in branch:
                return branch[name]
        return None

    @field_validator("scheduler")
    @classmethod
    def _schedulers(cls, table: dict[str, dict[str, Distribution]]) -> dict[str, dict[str, Distribution]]:
        _check_conditionals("scheduler", table, SCHEDULER_PARAMS)
        return table

    @field_validator("loss")
    @classmethod
    def _losses(cls, table: dict[str, dict[str, Distribution]]) -> dict[str, dict[str, Distribution]]:
        _check_conditionals("loss", table, LOSS_PARAMS)
        return table


class Component(Frozen):
    """A sampler or pruner by name with its keyword options (checked by building it)."""

    model_config = Frozen.model_config | {"extra": "allow"}
    name: str

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Budget(Frozen):
    n_trials: int = Field(20, ge=1)  # finished trials (complete + pruned) for the whole study
    timeout: float | None = Field(None, gt=0)  # seconds from the start of `search run`


class Retention(Frozen):
    keep_top_k: int = Field(3, ge=1)  # checkpoints kept: the best k complete trials


class Study(Frozen):
    """One study file, resolved: what to train, what to sample, how to search, for how long."""

    name: str
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainSettings = Field(default_factory=TrainSettings)
    space: SearchSpace
    sampler: Component = Field(default_factory=lambda: Component(name="tpe"))
    pruner: Component = Field(default_factory=lambda: Component(name="median"))
    budget: Budget = Field(default_factory=Budget)
    checkpoints: Retention = Field(default_factory=Retention)
    enqueue: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, component: Component) -> Component:
        from search.samplers import SAMPLERS

        registered("sampler", component.name, SAMPLERS)
        return component

    @field_validator("pruner")
    @classmethod
    def _pruner(cls, component: Component) -> Component:
        from search.pruners import build_pruner

        build_pruner(component)  # raises ValueError naming the bad option
        return component

    @model_validator(mode="after")
    def _input_size_fits_the_model(self, info: ValidationInfo) -> Study:
        check_input_size(self.model, self.data, info)
        return self

    @model_validator(mode="after")
    def _enqueued_fit_the_space(self) -> Study:
        for i, params in enumerate(self.enqueue):
            for name, value in params.items():
                dist = self.space.distribution(name, params)
                if dist is None:
                    raise ValueError(f"enqueue[{i}]: '{name}' is not a parameter of the search space")
                if dist.choices is not None and value not in dist.choices:
                    raise ValueError(f"enqueue[{i}]: {name}={value!r} is not one of {dist.choices}")
                if dist.choices is None and not (dist.low <= value <= dist.high):
                    raise ValueError(f"enqueue[{i}]: {name}={value!r} is outside [{dist.low:g}, {dist.high:g}]")
        return self

    def trial_config(self, params: dict[str, Any], output_dir: Path | None) -> TrainConfig:
        """The training config of one trial: the study's settings with the sampled params applied."""
        from search.space import apply_params

        base = TrainConfig(data=self.data, model=self.model, seed=self.seed, output_dir=output_dir, **dict(self.train))
        return apply_params(base, params)


# What may differ between runs of one study without making their trials incomparable: the study's
# bookkeeping (the space has its own check, `fit_space`), where this machine keeps its files, and how
# fast it trains. Everything else in a study file decides what a trial's macro-F1 means.
_RUN_ONLY = (
    "name", "budget", "checkpoints", "enqueue", "space", "sampler", "pruner",
    "data.root", "data.cache_dir", "data.decode_threads", "model.weights",
    "train.eval_batch_size", "train.device", "train.compile", "train.cuda_graphs", "train.gpu_images_share",
    "train.optimizer.lr", "train.accumulation_steps", "train.loss.name", "train.scheduler.name",
)  # fmt: skip


def changed_setup(recorded: dict[str, Any], spec: Study) -> list[tuple[str, Any, Any]]:
    """What this run trains differently from the spec the study recorded when it was made, as
    ``(key, then, now)``: the model, the data, the epochs, the fixed training settings, the seed.
    The parameters the space samples are left out (a trial's own value wins), and so are keys the
    recorded spec does not have (written by an earlier version)."""
    now = spec.model_dump(mode="json")
    sampled = {f"train.loss.{n}" for branch in now["space"]["loss"].values() for n in branch}
    sampled |= {f"train.scheduler.{n}" for branch in now["space"]["scheduler"].values() for n in branch}
    if now["space"].get("weight_decay") is not None:
        sampled.add("train.optimizer.weight_decay")
    skipped = (*_RUN_ONLY, *sampled)
    changes, then = [], _flat(recorded)
    for key, value in _flat(now).items():
        before = then.get(key, value)
        if before != value and not any(key == k or key.startswith(f"{k}.") for k in skipped):
            changes.append((key, before, value))
    return changes


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def find_study_file(name_or_path: str) -> Path:
    """A path as given, else ``./studies/NAME.yaml``, else the project's own ``studies/NAME.yaml``."""
    given = Path(name_or_path)
    candidates = [given] if given.suffix in (".yaml", ".yml") else []
    candidates += [Path("studies") / f"{name_or_path}.yaml", STUDIES_DIR / f"{name_or_path}.yaml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    known = sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))
    raise ConfigError(f"no study file for '{name_or_path}' in ./studies or {STUDIES_DIR}; known studies: {known}")


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_overrides(pairs: list[str]) -> list[tuple[str, Any]]:
    """``key=value`` strings, values read as YAML (so numbers, booleans and lists work)."""
    out = []
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected key=value, e.g. --set train.epochs=4")
        try:
            out.append((key.strip(), yaml.safe_load(text)))
        except yaml.YAMLError:
            out.append((key.strip(), text))
    return out


def expand_env(value: Any, where: str, key: str = "") -> Any:
    """``${VAR}`` in strings, so a data root can come from the environment; ``where``: the study
    file, ``key``: the value's place in it, for the message when a variable is not set."""
    if isinstance(value, str):
        expanded = os.path.expandvars(value)
        if "$" in expanded and "$" in value:
            missing = value[value.index("$") :].split("/")[0]
            raise ConfigError(
                f"{where}: {key} = '{value}': environment variable {missing} is not set; set it, "
                f"or give --set {key}=VALUE"
            )
        return expanded
    if isinstance(value, dict):
        return {k: expand_env(v, where, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def load_study(name_or_path: str, overrides: list[str] = ()) -> Study:
    """Read, override and validate a study file; any problem is one ``ConfigError`` line."""
    path = find_study_file(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read it ({reason}); a study file is UTF-8 YAML") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise ConfigError(f"{path}:{where}: {problem}; fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    pairs = parse_overrides(list(overrides))
    for key, value in pairs:
        _set(raw, key, value)
    return validate_study(expand_env(raw, str(path)), str(path), [key for key, _ in pairs])


def validate_study(raw: dict[str, Any], where: str, overridden: Sequence[str] = ()) -> Study:
    """Checked twice: without the names that need timm (seconds to import), so any other problem is
    answered at once, then in full."""
    try:
        Study.model_validate(raw, context=WITHOUT_TIMM)
        return Study.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe(error, where, overridden)) from None


def describe(error: ValidationError, where: str, overridden: Sequence[str] = ()) -> str:
    """The first problem of a validation error as ``file: key = value: what is wrong``; the file
    ``with --set KEY`` where that key (the last one that did) set the value or a part of it."""
    first = error.errors(include_url=False)[0]
    loc = [str(part) for part in first["loc"] if not str(part).startswith(("function-", "tagged-union"))]
    key = ".".join(loc) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    related = [k for k in overridden if loc and (f"{k}.".startswith(f"{key}.") or key.startswith(f"{k}."))]
    if related:
        where = f"{where} with --set {related[-1]}"
    if first["type"] == "extra_forbidden":
        return f"{where}: unknown key '{key}'; remove it or check its spelling"
    if first["type"] == "missing":
        return f"{where}: missing key '{key}'; add it (the shipped studies/lr-sweep.yaml has every section)"
    if not loc:
        return f"{where}: {message}"
    return f"{where}: {key} = {first.get('input')!r}: {message}"
