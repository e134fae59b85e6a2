from tests.support.fixtures import (
    database,
    database_url,
    dovecot,
    installed,
    make_service,
    model,
    model_server,
    postgres,
    service,
    smtp_server,
)

__all__ = ["database", "database_url", "dovecot", "installed", "make_service", "model",
           "model_server", "postgres", "service", "smtp_server"]
