from tests.support.fixtures import dovecot, smtp_server

__all__ = ["dovecot", "smtp_server"]
