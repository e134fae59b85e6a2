"""The benchmark suite: how fast mail is picked up, how a backlog clears, what the model costs.

Run it with `python -m tests.bench` (see README, "Performance"). It starts the same real servers
as the tests (Dovecot, aiosmtpd, the scripted Messages API), runs `mailagent run` as a subprocess,
prints a table of figures beside their targets and writes them as JSON. It is not a test: pytest
does not collect it, and no test times anything; tests/test_bench.py only runs it in its quick
mode to keep it working.
"""
