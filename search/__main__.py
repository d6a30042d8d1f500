"""``python -m search``: the same as the ``search`` command."""

from search.cli import entry

if __name__ == "__main__":
    entry()
