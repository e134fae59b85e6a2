"""The public corpus and the generated hostile inputs through the real service, with a report.

Every input is appended to Dovecot and taken by `mailagent run`; the table of outcomes is written
to `hostile-report.txt` in the test's folder and printed (see it with `pytest -s`). Afterwards the
same service process answers a normal task.
"""

from __future__ import annotations

import email
from pathlib import Path

from tests.hostile import MiB, folder_bytes, peak_rss_bytes
from tests.hostile_report import distinct, format_table, inputs, rows_for
from tests.support.config import write_config
from tests.support.dovecot import Dovecot
from tests.support.mail import message_id_of, owner_mail
from tests.support.model_server import ModelServer, text
from tests.support.service import ServiceProcess, wait_until
from tests.support.smtp import SmtpServer


def test_every_hostile_input_gets_a_reported_outcome_and_the_service_still_works(
        tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
        model_server: ModelServer) -> None:
    sent = inputs()
    for item in sent:
        dovecot.append(item.raw)
    config = write_config(tmp_path, dovecot.imap_port, smtp_server.port,
                          model_url=model_server.base_url,
                          extra="[limits]\nmax_mails_per_hour = 10000\n")
    service = ServiceProcess(config).start()
    try:
        store = service.store()
        expected = distinct(sent)
        wait_until(lambda: len(store.raw_outcomes()) >= expected
                   and all(state == "processed" for _, state, *_ in store.raw_outcomes()),
                   300, f"{expected} distinct inputs to be processed")
        rows = rows_for(store, sent)
        report = format_table(rows)
        (tmp_path / "hostile-report.txt").write_text(report + "\n")
        print("\n" + report)
        assert not [r for r in rows if r.outcome not in ("task", "rejected", "duplicate")]
        assert not [r for r in rows if "internal error" in r.reason or not r.reason]
        assert sum(r.outcome == "task" for r in rows) > 100
        limits = [r for r in rows if r.name.startswith("gen/") and r.outcome == "rejected"]
        assert len(limits) >= 8 and all(r.reason for r in limits)

        normal = owner_mail("[alive] Say hello", "Say hello.")
        model_server.script(text("Still here."))  # the next request is likely this task's
        model_server.default = text("Still here.")
        dovecot.append(normal)

        def answered() -> bool:
            return any(email.message_from_bytes(m.raw).get("In-Reply-To")
                       == message_id_of(normal) for m in smtp_server.messages)
        wait_until(answered, 240, "the reply to the normal task")
        assert service.process is not None and service.process.poll() is None
        peak, size = peak_rss_bytes(service.process.pid), folder_bytes(tmp_path / "data")
        print(f"peak RSS {peak / MiB:.0f} MiB, data folder {size / MiB:.1f} MiB")
        assert peak < 400 * MiB
        assert service.stop() == 0
    finally:
        service.kill()
