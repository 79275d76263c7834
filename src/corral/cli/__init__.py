"""The command line: a client of the running API (plus ``up`` and ``demo``, which start it).
Parses flags, renders tables or ``--json``, maps the error tree to exit codes."""
