"""``python -m polyroute``: the command line."""

from polyroute.cli import run

run()
