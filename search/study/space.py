"""The search space: what a study samples. Each parameter is a field of the training settings,
named by its dotted path (``train.optimizer.weight_decay``, ``model.drop_rate``); a setting
chosen by name (``loss``, ``scheduler``) has conditional branches, each with its own fields.

The fields existing studies search keep their stable names, which are database columns and
dashboard axes: ``lr``, ``weight_decay``, ``accumulation_steps``, ``scheduler``, ``loss`` and the
scheduler's and loss's own fields (``focal_gamma``, ``step_size``, ...). Any other field's column
is its path. ``SearchSpace.params`` walks the description; sampling, grid spaces, the recorded
distributions of a study, ``fit_space`` and the setup-change check all use that one walk.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import ConfigDict, Discriminator, RootModel, Tag, ValidationError, model_validator

from search.study.fields import (
    BRANCH_FIELDS,
    FIRST,
    PATHS,
    ROOTS,
    SpaceError,
    column,
    nested_fields,
    put,
    resolve,
    section_model,
)
from training import WITHOUT_TIMM, Frozen

SCALARS = (bool, int, float, str, type(None))  # what Optuna stores as a choice
# ``lr: {lr_find: true}`` with no bounds: lr-find looks 100 times beyond these on each side
LR_FIND_WIDE = {"low": 1e-5, "high": 1e-1, "log": True}
LR_PATH = "train.optimizer.lr"


class Distribution(Frozen):
    """A sampled value: ``{low, high[, log, step]}`` (int when both bounds are ints) or ``{choices}``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    integer: bool = False
    lr_find: bool = False  # the learning rate only: searched inside the range lr-find finds (LR_FIND_WIDE)

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("must be {low, high[, log, step]} or {choices: [...]}")
        if value.get("lr_find"):  # on a log scale, and wide where no bounds are given
            value = {**(LR_FIND_WIDE if "low" not in value and "high" not in value else {"log": True}), **value}
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
            if not all(isinstance(choice, SCALARS) for choice in self.choices):
                raise ValueError("choices must be numbers, strings or booleans (as Optuna stores them)")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs low and high (or choices)")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log scale needs low > 0, got {self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.lr_find and (self.integer or self.step is not None or not self.log):
            raise ValueError("lr_find searches a float range on a log scale: give {lr_find: true[, low, high]}")
        return self

    def values(self) -> list[Any]:
        """The values that show whether the field takes this distribution: its bounds, or its choices."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


Branches = dict[str, dict[str, Distribution]]  # branch name -> its own fields' distributions


def _entry_kind(value: Any) -> str:
    """A mapping whose values are all mappings is a table of branches: a distribution's values are
    numbers, flags and lists (a branch may be named like one of its keys: the ``step`` scheduler)."""
    if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
        return "branches"
    return "distribution"


Entry = Annotated[
    Annotated[Distribution, Tag("distribution")] | Annotated[Branches, Tag("branches")],
    Discriminator(_entry_kind),
]


@dataclass(frozen=True)
class Param:
    """One searched parameter: its column, the field it sets, and what it is sampled from. A
    choice of a setting by name has ``branches``: the parameters sampled when that name is chosen.
    ``key``: the space's entry it comes from, as the study file names it."""

    name: str
    path: str
    distribution: Distribution
    branches: Mapping[str, tuple[Param, ...]] = field(default_factory=dict)
    key: str = ""


class SearchSpace(RootModel[dict[str, Entry]]):
    """A study file's ``space``: a name or dotted path to a distribution, or to a table of branches
    (a setting chosen by name). ``check`` says whether the names fit the training settings."""

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _one_entry_per_field(cls, value: Any) -> Any:
        """Nested fields flattened to their paths (``model: {drop_rate: ...}`` is ``model.drop_rate``),
        and nulls left out (a spec recorded by 0.1 holds ``weight_decay: null`` where it was not
        searched; read until 1.0, docs/design.md)."""
        if not isinstance(value, dict):
            return value

        def entries(key: str, entry: Any) -> dict[str, Any]:
            if nested_fields(key, entry):
                return {
                    k: v
                    for sub, child in entry.items()
                    for k, v in entries(f"{PATHS.get(key, key)}.{sub}", child).items()
                }
            return {} if entry is None else {key: entry}

        return {k: v for key, entry in value.items() for k, v in entries(key, entry).items()}

    def __getitem__(self, key: str) -> Distribution | Branches:
        return self.root[key]

    def params(self) -> list[Param]:
        """Every top-level parameter, in the order they are sampled (``FIRST``, then the file's),
        each with its path and column (``_param``, the one place an entry's key becomes them)."""
        params = [_param(key, entry) for key, entry in self.root.items()]
        first = {path: place for place, path in enumerate(FIRST)}
        return sorted(params, key=lambda p: first.get(_section(p.path), len(FIRST)))

    def every_param(self) -> list[Param]:
        """The top-level parameters and every branch's own (a field may be in several branches)."""
        return [q for p in self.params() for q in (p, *(b for branch in p.branches.values() for b in branch))]

    def distribution(self, name: str, chosen: Mapping[str, Any]) -> Distribution | None:
        """What column ``name`` is sampled from, given the choices in ``chosen`` (None: not searched)."""
        for param in self.params():
            if param.name == name:
                return param.distribution
            for branch in param.branches.get(chosen.get(param.name), ()):
                if branch.name == name:
                    return branch.distribution
        return None

    def lr_to_find(self) -> Distribution | None:
        """The learning rate's entry where it asks for lr-find (``lr_find``), else None."""
        lr = next((p.distribution for p in self.params() if p.path == LR_PATH), None)
        return lr if lr is not None and lr.lr_find else None

    def with_found_lr(self, low: float, high: float) -> SearchSpace:
        """This space with the learning rate searched from ``low`` to ``high`` on a log scale."""
        lr = next(p.key for p in self.params() if p.path == LR_PATH)
        return SearchSpace.model_validate({**self.root, lr: Distribution(low=low, high=high, log=True)})

    def sampled_paths(self) -> set[str]:
        """Every field a trial's sampled value may set."""
        return {param.path for param in self.every_param()}

    def reordered(self, orders: Mapping[str, list[Any]]) -> SearchSpace:
        """This space with the choices (and branches) of the columns in ``orders`` in that order."""

        def fit(name: str, dist: Distribution) -> Distribution:
            return dist.model_copy(update={"choices": orders[name]}) if name in orders else dist

        root: dict[str, Any] = {}
        for p in self.params():
            if not p.branches:
                root[p.key] = fit(p.name, p.distribution)
                continue
            names = orders.get(p.name, list(p.branches))
            root[p.key] = {
                b: {q.path.rsplit(".", 1)[1]: fit(q.name, q.distribution) for q in p.branches[b]} for b in names
            }
        return SearchSpace.model_validate(root)

    def check(self, *, timm: bool = False) -> None:
        """Every entry names a field of the training settings and fits it (``SpaceError`` if not):
        a searchable path, a distribution for a value and branches for a setting chosen by name,
        known branch names and fields, and values the field takes (``timm``: model and optimizer
        names too, which need timm imported)."""
        context = None if timm else WITHOUT_TIMM
        if not self.root:
            raise SpaceError("", "needs at least one parameter to search")
        seen: dict[str, str] = {}
        for key, entry in self.root.items():
            path = resolve(key)
            fields = [path]
            if isinstance(entry, Distribution):
                if entry.lr_find and path != LR_PATH:
                    raise SpaceError(key, f"lr_find is for the learning rate ({LR_PATH}), not {path}")
                _check_values(key, path, entry, {}, context)
            else:
                fields += _check_branches(key, path, entry, context)
            for one in dict.fromkeys(fields):  # a field may be in several branches of one entry
                if one in seen:
                    raise SpaceError(key, f"searches {one}, which space.{seen[one]} searches too: give it once")
                seen[one] = key


def _section(path: str) -> str:
    return path.removesuffix(".name")


def _param(key: str, entry: Distribution | Branches) -> Param:
    """The one place a space entry's key becomes its field's path and column (``fields``)."""
    path = resolve(key)
    if isinstance(entry, Distribution):
        return Param(column(path), path, entry, key=key)
    branches = {
        name: tuple(Param(column(f"{path}.{f}"), f"{path}.{f}", dist, key=key) for f, dist in fields.items())
        for name, fields in entry.items()
    }
    return Param(column(path), f"{path}.name", Distribution(choices=list(entry)), branches, key=key)


def _check_branches(key: str, path: str, branches: Branches, context: dict | None) -> list[str]:
    """The fields a table of branches searches; ``SpaceError`` where it does not fit ``path``."""
    section = section_model(key, path)
    if section is None or "name" not in section.model_fields:
        raise SpaceError(key, f"{path} is one value, not a setting chosen by name: give {{low, high}} or {{choices}}")
    allowed = BRANCH_FIELDS.get(path)
    searched = [f"{path}.name"]
    for name, fields in branches.items():
        if name in section.model_fields:
            raise SpaceError(key, f"'{name}' is a field of {path}, not a name of its choices: give it as {path}.{name}")
        _check_values(key, f"{path}.name", Distribution(choices=[name]), {}, context)
        for one, dist in fields.items():
            if dist.lr_find:
                raise SpaceError(key, f"lr_find is for the top-level lr entry, not {path}.{one} of '{name}'")
            known = allowed[name] if allowed is not None else set(section.model_fields) - {"name"}
            if one not in known:
                kind = path.rsplit(".", 1)[-1]
                raise SpaceError(key, f"'{one}' is not a parameter of {kind} '{name}', choose from {sorted(known)}")
            _check_values(key, f"{path}.{one}", dist, {f"{path}.name": name}, context)
            searched.append(f"{path}.{one}")
    return searched


def _check_values(key: str, path: str, dist: Distribution, fixed: Mapping[str, Any], context: dict | None) -> None:
    """Each value ``dist`` gives (with ``fixed`` beside it) is one the field takes: each choice, or
    the bounds of a range (whose kind, integers or floats, is the study's trials' to check:
    ``fit_space``)."""
    if section_model(key, path) is not None:
        raise SpaceError(key, f"{path} is a section, not a value: give a table of branches by its name")
    for value in dist.values():
        tree: dict[str, Any] = {}
        for one, given in {**fixed, path: value}.items():
            put(tree, one.split(".")[1:], given)
        try:
            ROOTS[path.split(".")[0]].model_validate(tree, context=context)
        except ValidationError as error:
            first = error.errors(include_url=False)[0]
            if dist.choices is None and first["type"] == "int_from_float":
                continue
            message = first["msg"].removeprefix("Value error, ")
            raise SpaceError(key, f"{value!r} is not a value of {path}: {message}") from None
