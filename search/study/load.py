"""Loading a study file: YAML in ``studies/``, ``--set`` overrides, ``${VAR}`` from the environment,
then one validation into a frozen ``StudySpec`` and one check of the names it gives against their
registries. Every mistake is one ``ConfigError`` line naming the file, the key and the value."""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from search.study.fields import SpaceError
from search.study.pruners import build_pruner
from search.study.samplers import SAMPLERS
from search.study.schema import StudySpec
from training import WITHOUT_TIMM, ConfigError, registered

STUDIES_DIR = Path(__file__).resolve().parents[2] / "studies"


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


def load_study(name_or_path: str, overrides: Sequence[str] = ()) -> StudySpec:
    """Read, override and validate a study file; any problem is one ``ConfigError`` line."""
    path = find_study_file(name_or_path)
    raw = _read(path)
    raw.setdefault("name", path.stem)
    pairs = parse_overrides(list(overrides))
    for key, value in pairs:
        _set(raw, key, value)
    spec = validate_study(expand_env(raw, str(path)), str(path), [key for key, _ in pairs])
    spec._variables.update(variables(raw))
    return spec


def variables(value: Any, key: str = "") -> dict[str, str]:
    """The keys whose values name an environment variable (``root: ${MASK_DATA}``), and its name."""
    if isinstance(value, str) and (found := re.search(r"\$\{?(\w+)", value)):
        return {key: found.group(1)}
    if isinstance(value, dict):
        return {
            k: v
            for name, item in value.items()
            for k, v in variables(item, f"{key}.{name}" if key else str(name)).items()
        }
    return {}


def _read(path: Path) -> dict[str, Any]:
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
    return raw


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if child is None:  # a section left empty in the file (``warm_start:``) takes its keys from --set
            child = node[key] = {}
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


def validate_study(raw: dict[str, Any], where: str, overridden: Sequence[str] = ()) -> StudySpec:
    """Parsed without the names that need timm (seconds to import), its names checked, so any other
    problem is answered at once; then parsed in full."""
    try:
        check_names(StudySpec.model_validate(raw, context=WITHOUT_TIMM), where, overridden)
        spec = StudySpec.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe(error, where, overridden)) from None
    _check_space(spec, where, overridden, timm=True)  # its model and optimizer names, now that timm is in
    return spec


def check_names(spec: StudySpec, where: str, overridden: Sequence[str] = ()) -> None:
    """The names a study gives, against what they name: the space's fields (``SearchSpace.check``),
    the queued trials' parameters, the sampler and the pruner (their registries)."""
    _check_space(spec, where, overridden)
    if spec.sampler.name == "grid" and spec.space.lr_to_find() is not None:
        where_lr = _attributed(where, "space.lr", overridden)
        raise ConfigError(f"{where_lr}: space.lr: lr_find gives a range, and the grid sampler needs choices")
    for i, params in enumerate(spec.enqueue):
        if problem := _unfit(params, spec):
            raise ConfigError(f"{_attributed(where, 'enqueue', overridden)}: enqueue[{i}]: {problem}")
    for key, check in (("sampler", lambda c: registered("sampler", c.name, SAMPLERS)), ("pruner", build_pruner)):
        component = getattr(spec, key)
        try:
            check(component)
        except ValueError as error:
            shown = {"name": component.name, **component.options}
            renamed = f"{key}.name" in overridden and component.options  # the file's options stayed with the old name
            hint = (f"; --set {key}.name keeps the file's other {key} options: replace the whole section, e.g. "
                    f"--set '{key}={{name: {component.name}}}'") if renamed else ""  # fmt: skip
            raise ConfigError(f"{_attributed(where, key, overridden)}: {key} = {shown!r}: {error}{hint}") from None


def _check_space(spec: StudySpec, where: str, overridden: Sequence[str], *, timm: bool = False) -> None:
    try:
        spec.space.check(timm=timm)
    except SpaceError as error:
        key = f"space.{error.key}" if error.key else "space"
        raise ConfigError(f"{_attributed(where, key, overridden)}: {key}: {error}") from None


def _unfit(params: dict[str, Any], spec: StudySpec) -> str | None:
    """What keeps a queued trial's ``params`` out of the space, or None."""
    for name, value in params.items():
        dist = spec.space.distribution(name, params)
        if dist is None:
            return f"'{name}' is not a parameter of the search space"
        if dist.choices is not None and value not in dist.choices:
            return f"{name}={value!r} is not one of {dist.choices}"
        number = "whole number" if dist.integer else "number"
        if dist.choices is None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"{name}={value!r} is not a {number}; the space samples it from [{dist.low:g}, {dist.high:g}]"
        if dist.choices is None and not math.isfinite(value):
            return f"{name}={value!r} is not a finite number; the space samples it from [{dist.low:g}, {dist.high:g}]"
        if dist.choices is None and dist.integer and value != int(value):
            return f"{name}={value!r} is not a whole number; the space samples it from [{dist.low:g}, {dist.high:g}]"
        if dist.choices is None and not (dist.low <= value <= dist.high):
            return f"{name}={value!r} is outside [{dist.low:g}, {dist.high:g}]"
    return None


def _attributed(where: str, key: str, overridden: Sequence[str]) -> str:
    """``where``, with the ``--set KEY`` that gave ``key`` or a part of it (the last that did)."""
    related = [k for k in overridden if f"{k}.".startswith(f"{key}.") or key.startswith(f"{k}.")]
    return f"{where} with --set {related[-1]}" if related else where


def describe(error: ValidationError, where: str, overridden: Sequence[str] = ()) -> str:
    """The first problem of a validation error as ``file: key = value: what is wrong``."""
    first = error.errors(include_url=False)[0]
    tags = ("function-", "tagged-union", "distribution", "branches")
    loc = [str(part) for part in first["loc"] if not str(part).startswith(tags)]
    key = ".".join(loc) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if loc:
        where = _attributed(where, key, overridden)
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(loc[-1], _known_keys(loc[:-1]), n=1)
        hint = f"did you mean '{'.'.join([*loc[:-1], close[0]])}'?" if close else "remove it or check its spelling"
        return f"{where}: unknown key '{key}'; {hint}"
    if first["type"] == "missing":
        return f"{where}: missing key '{key}'; add it (the shipped studies/lr-sweep.yaml has every section)"
    if not loc:
        return f"{where}: {message}"
    return f"{where}: {key} = {first.get('input')!r}: {message}"


def _known_keys(section: Sequence[str]) -> list[str]:
    """The keys a study file may give in ``section`` (a path of keys from the top), as its models
    define them; none where the path leads to no model."""
    model: Any = StudySpec
    for key in section:
        field = getattr(model, "model_fields", {}).get(key)
        model = field.annotation if field is not None else None
    return list(getattr(model, "model_fields", {}))
