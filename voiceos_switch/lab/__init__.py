"""The lab: the whole system on one machine, to try a call end to end.

Two ways, one topology (PBX, bridge, Redis, worker, dashboard):
``voiceos-switch lab up`` runs it as processes here (``local``), and
``docker-compose.yml`` runs it as containers built from Debian and PyPI
packages (``images``).
"""
