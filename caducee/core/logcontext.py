"""Which request or session a log line belongs to, and the JSON form of log lines.

A contextvar holds the id of the HTTP request, SMTP connection or IMAP connection being
served; asyncio copies it into every task started from there, so the pipeline's, the
store's and the relay's lines carry the id of what caused them without any function
passing it along. `configure` sets up stdlib logging: JSON (python-json-logger) for
collectors, or the one-line text form for a terminal.
"""

from __future__ import annotations

import contextvars
import logging
import secrets
import sys

current: contextvars.ContextVar[str] = contextvars.ContextVar("caducee_log_context", default="")


def begin(kind: str) -> str:
    """Give what is being served from here on a fresh id (`http-1f3a...`, `smtp-...`, `imap-...`)."""
    value = f"{kind}-{secrets.token_hex(6)}"
    current.set(value)
    return value


class ContextFilter(logging.Filter):
    """Adds `context` (the request or session id, or "") to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.context = current.get()
        return True


TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s [%(context)s]: %(message)s"


def configure(level: str, form: str = "auto") -> None:
    """Logging for a `caducee` process: `form` is "json", "text", or "auto" (JSON unless
    standard error is a terminal). aiosmtpd's "mail.log" logger writes every SMTP command at
    INFO (patients' addresses in each RCPT TO) and warns of its deprecated `login_data` at
    every login: it is kept to errors, and Caducée's own lines say what happened, patients'
    identifiers pseudonymised (core.pseudonyms)."""
    use_json = form == "json" or (form == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    if use_json:
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(process)d %(context)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                timestamp=False,
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):  # uvicorn's own lines in the same form
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
