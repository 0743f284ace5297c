"""``python -m embedsweep.cli``: how ``embedsweep run`` re-runs itself in its own session."""

from embedsweep.cli import main

main()
