"""Stop requests: ``search stop`` reaches every worker of a study, wherever it runs, through the
study itself."""

from __future__ import annotations

import optuna

STOP_ATTR = "stop_requests"  # the study user attribute `search stop` counts up


def stop_requests(study: optuna.Study) -> int:
    """How many times ``search stop`` was asked for this study. A worker notes the count when it
    starts and stops before its next trial once the count grew: a stop reaches the workers running
    at the time, wherever they run, and a run started later goes on (no flag for it to clear, or to
    clear too early for workers still finishing a trial)."""
    return int(study.user_attrs.get(STOP_ATTR, 0))


def request_stop(study: optuna.Study) -> None:
    study.set_user_attr(STOP_ATTR, stop_requests(study) + 1)
