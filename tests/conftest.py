from tests.support.fixtures import dovecot, model_server, smtp_server

__all__ = ["dovecot", "model_server", "smtp_server"]
