"""Test support shared by every test folder (``tests`` is on ``sys.path``: see pyproject's pytest
``pythonpath``). Only helpers that talk to real processes and sockets belong here; nothing mocks the
project's own components."""
