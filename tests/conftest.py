from tests.support.fixtures import (
    dovecot,
    installed,
    make_service,
    model,
    model_server,
    service,
    smtp_server,
)

__all__ = ["dovecot", "installed", "make_service", "model", "model_server", "service",
           "smtp_server"]
