"""``search studies``: the studies in a storage, a line each."""

from __future__ import annotations

import argparse

HELP = "list the studies in a storage, with their trials and best value"
SHARED = ("storage",)
EXAMPLES = """examples:
  search studies
  search studies --storage postgresql+psycopg2://search@db/search
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options of its own."""


def take_action(args: argparse.Namespace) -> int:
    import optuna

    from search.record import shown_as
    from search.store import open_storage, resolve_storage_url
    from search.study.inputs import data_summary
    from search.study.recorded import SPEC_ATTR, objective, setup_text

    # Optuna's summaries: one query per storage, not every trial of every study. The best is the best
    # single run's value (Optuna's); search status ranks a confirmed configuration by its runs' mean.
    summaries = optuna.get_all_study_summaries(open_storage(resolve_storage_url(args.storage)), include_best_trial=True)
    print(f"{'study':30} {'trials':>6} {'best':>8}  {'by':20}  {'started':16}  what it trains")
    for s in summaries:
        best = f"{s.best_trial.value:.4f}" if s.best_trial is not None else "-"
        by = shown_as(objective(s.user_attrs))
        started = s.datetime_start.strftime("%Y-%m-%d %H:%M") if s.datetime_start else "-"
        trains = setup_text(s.user_attrs.get(SPEC_ATTR), data_summary(s.user_attrs)) or "-"
        print(f"{s.study_name:30} {s.n_trials:>6} {best:>8}  {by:20}  {started:16}  {trains}")
    return 0
