"""The task stage: the queue and the worker, mail commands, schedules, workspaces."""
