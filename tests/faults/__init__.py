"""Fault-injection cases. A package, so that its conftest.py is `faults.conftest` and the plain `conftest`
the other test modules import stays tests/conftest.py."""
