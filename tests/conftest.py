from tests.support.fixtures import dovecot, installed, model, model_server, smtp_server

__all__ = ["dovecot", "installed", "model", "model_server", "smtp_server"]
