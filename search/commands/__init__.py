"""The ``search`` commands, one module each: ``HELP`` (what it does, in one line), ``SHARED`` (the
options it shares with others), ``EXAMPLES``, ``add_arguments(parser)`` and ``take_action(args)``,
which returns the exit code. Each module imports what it runs only when it runs."""

from search.commands import (
    best,
    confirm,
    dashboard,
    delete,
    ensemble,
    export,
    lr_find,
    notebook,
    predict,
    report,
    run,
    status,
    stop,
    studies,
)

# In the order ``search`` lists them: a study's life, from running it to deleting it.
COMMANDS = {
    "lr-find": lr_find,
    "run": run,
    "stop": stop,
    "status": status,
    "best": best,
    "confirm": confirm,
    "studies": studies,
    "export": export,
    "ensemble": ensemble,
    "report": report,
    "notebook": notebook,
    "dashboard": dashboard,
    "predict": predict,
    "delete": delete,
}

__all__ = ["COMMANDS"]
