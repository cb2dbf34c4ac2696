"""What the tests share besides fixtures: helpers, server processes and constants.

``conftest.py`` files hold the fixtures and pytest hooks; tests and fixtures import everything
else from here, one module per thing (waiting, processes, Redis, the appliance, jobs, ...).
"""
