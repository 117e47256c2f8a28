"""Credentials never leave the process: user:password in URLs and secret environment values are masked in
every error text and log record the service emits."""

from __future__ import annotations

import logging
import os
import re

_USERINFO = re.compile(r"(?<=://)[^/@\s'\"]+@")  # user[:password]@ in any URL
SECRET_ENV = ("SERVING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY")
MASK = "***"


def _secrets() -> list[str]:
    from urllib.parse import unquote, urlsplit

    found = [os.environ.get(k, "") for k in SECRET_ENV]
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if "@" in uri:
        parts = urlsplit(uri)
        if parts.password:  # not the user name: it may be a word that appears everywhere
            found += [parts.password, unquote(parts.password)]
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)  # shorter ones would mask words


def redact(text: str) -> str:
    """`text` with URL credentials and known secret values masked."""
    text = _USERINFO.sub(MASK + "@", text)
    for s in _secrets():
        text = text.replace(s, MASK)
    return text


class RedactFilter(logging.Filter):
    """Masks credentials in a record's message and traceback before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
