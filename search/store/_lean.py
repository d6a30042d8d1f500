"""Trials read lean: what a worker's sampler, pruner, retention and progress line need of them, by
plain column reads, not Optuna's whole-trial read.

Optuna's ``_get_trials`` loads every trial as ORM objects with every attribute, and a finished trial's
user attributes hold its confusion matrix and per-class figures: at 10,000 trials that read took a
worker about 15 s of CPU. A lean read takes each trial's state, datetimes, params, values and
reports, its system attributes, and only the user attributes named in ``keys``.
"""

from __future__ import annotations

import datetime
import functools
import json
from collections import defaultdict
from collections.abc import Collection, Iterable
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from search.store import _internals

# The user attributes a worker reads back of a finished trial: the artifact ids retention removes
# (``record.TrialRecord.stored_files``). The rest (metrics, matrices, config) only its commands read.
WORKER_USER_ATTRS = ("checkpoint_artifact", "fold_checkpoints", "out_of_fold_artifact")


def read(
    backend: optuna.storages.RDBStorage,
    study_key: int,
    states: Collection[TrialState],
    only: Collection[int] = (),
    keys: Iterable[str] = WORKER_USER_ATTRS,
) -> list[FrozenTrial]:
    """The study's trials in ``states`` (``only``: of those ids), by number, with only the user
    attributes named in ``keys``."""
    models = _internals.models
    trials = models.TrialModel.__table__.c
    chosen = sqlalchemy.and_(trials.study_id == study_key, trials.state.in_(list(states)))
    if only:
        chosen = sqlalchemy.and_(chosen, trials.trial_id.in_(list(only)))
    ids = sqlalchemy.select(trials.trial_id).where(chosen).scalar_subquery()
    with _internals.scoped_session(backend.scoped_session) as session:
        rows = session.execute(
            sqlalchemy.select(
                trials.trial_id, trials.number, trials.state, trials.datetime_start, trials.datetime_complete
            ).where(chosen)
        ).all()
        children = {name: _rows(session, model, columns, ids) for name, (model, columns) in _CHILDREN.items()}
        children["user"] = _rows(session, "TrialUserAttributeModel", ("key", "value_json"), ids, list(keys))
    return sorted((_frozen(row, children) for row in rows), key=lambda t: t.number)


_CHILDREN = {  # a trial's rows in each table, the columns read
    "params": ("TrialParamModel", ("param_name", "param_value", "distribution_json")),
    "values": ("TrialValueModel", ("objective", "value", "value_type")),
    "reports": ("TrialIntermediateValueModel", ("step", "intermediate_value", "intermediate_value_type")),
    "system": ("TrialSystemAttributeModel", ("key", "value_json")),
}


def _rows(session: Any, model_name: str, columns: tuple[str, ...], ids: Any, keys: list[str] | None = None) -> dict:
    """Each chosen trial's rows of one table (its model's name in Optuna's models), in the order
    they were written; ``keys``: only those attributes."""
    model = getattr(_internals.models, model_name)
    table = model.__table__.c
    query = sqlalchemy.select(table.trial_id, *(table[c] for c in columns)).where(table.trial_id.in_(ids))
    if keys is not None:
        query = query.where(table.key.in_(keys))
    found: dict[int, list[Any]] = defaultdict(list)
    for row in session.execute(query.order_by(table[model.__table__.primary_key.columns.keys()[0]])).all():
        found[row[0]].append(row[1:])
    return found


def _frozen(row: Any, children: dict[str, dict[int, list[Any]]]) -> FrozenTrial:
    """One trial, as Optuna's storage builds it (its datetimes in local time, as Optuna gives them)."""
    models = _internals.models
    trial_key, number, state, started, completed = row
    values = sorted(children["values"].get(trial_key, ()), key=lambda v: v[0])  # by objective
    params = children["params"].get(trial_key, ())
    distributions = {name: _distribution(text) for name, _, text in params}
    return FrozenTrial(
        number=number,
        state=state,
        value=None,
        values=[models.TrialValueModel.stored_repr_to_value(v, kind) for _, v, kind in values] or None,
        datetime_start=_local(started),
        datetime_complete=_local(completed),
        params={name: distributions[name].to_external_repr(value) for name, value, _ in params},
        distributions=distributions,
        user_attrs={key: json.loads(text) for key, text in children["user"].get(trial_key, ())},
        system_attrs={key: json.loads(text) for key, text in children["system"].get(trial_key, ())},
        intermediate_values={  # a finite value is stored as itself; nan and the infinities as None
            step: v if v is not None else models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(v, kind)
            for step, v, kind in children["reports"].get(trial_key, ())
        },
        trial_id=trial_key,
    )


@functools.lru_cache(maxsize=4096)
def _distribution(text: str) -> optuna.distributions.BaseDistribution:
    """A param's distribution from its JSON: one object for each text (a study's params share a few)."""
    return optuna.distributions.json_to_distribution(text)


def _local(moment: datetime.datetime | None) -> datetime.datetime | None:
    """A naive UTC datetime as the storage stores it, in naive local time as Optuna's trials give it."""
    if moment is None:
        return None
    return moment.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)
