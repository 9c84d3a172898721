"""``python -m gisjob_worker``: the ``gisjob`` command (how the local executor starts workers)."""

from .cli.main import main

main()
