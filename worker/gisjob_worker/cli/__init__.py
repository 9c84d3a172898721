"""The ``gisjob`` command line: one module per command."""
