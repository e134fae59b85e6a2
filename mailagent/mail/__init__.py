"""The mail stages: the mailbox, intake, threads, the outbox and its templates."""
