"""Who may call what (issue 20, finding 4): writes need a key unless the operator opens
them explicitly, and reads need it too under `protect_reads`.

    with a key           writes (events, products, reload, forgetting a user) need
                         `Authorization: Bearer KEY`, compared in constant time; reads too
                         with protect_reads
    no key               writes are refused (403) and reads are open
    insecure_open_writes no key, and writes open to anyone who can reach the server: a
                         warning is logged at start

A key shorter than MIN_KEY_CHARS is refused when the app is built, like the contradictory
settings (a key and open writes; protected reads without a key).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Mapping

from starsrec.serving.catalogue import RequestError

logger = logging.getLogger(__name__)

MIN_KEY_CHARS = 16  # about 95 bits as random base64: out of reach of guessing over HTTP
OPEN_WRITES_FLAG = "--insecure-open-writes"
KEY_HINT = "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class Access:
    """The app's access policy, checked per request from its headers."""

    def __init__(
        self, api_key: str | None, protect_reads: bool = False, open_writes: bool = False
    ) -> None:
        """Check the settings; raises ValueError (one line, saying what to do) for a short
        key or contradictory settings."""
        if api_key is not None and len(api_key) < MIN_KEY_CHARS:
            raise ValueError(
                f"the API key has {len(api_key)} characters: use at least {MIN_KEY_CHARS} "
                f"characters ({KEY_HINT})"
            )
        if api_key is not None and open_writes:
            raise ValueError(
                f"an API key and insecure open writes ({OPEN_WRITES_FLAG}) contradict each "
                "other: writes need the key when one is set"
            )
        if api_key is None and protect_reads:
            raise ValueError("protect_reads (--protect-reads) needs an API key")
        self.api_key = api_key
        self.protect_reads = protect_reads
        self.open_writes = open_writes

    def check(self, headers: Mapping[str, str], write: bool) -> None:
        """Raise RequestError (401: no or a wrong key; 403: writes are closed) unless a
        request with these headers may read (or, with `write`, write)."""
        if self.api_key is None:
            if write and not self.open_writes:
                raise RequestError(
                    "authorization",
                    "writes are closed: this server has no API key (its operator sets one, "
                    f"e.g. in STARSREC_API_KEY, or opens writes with {OPEN_WRITES_FLAG})",
                    status=403,
                )
            return
        if not (write or self.protect_reads):
            return
        scheme, _, token = headers.get("authorization", "").partition(" ")
        # Constant-time comparison: response timing must not reveal how much of a guess
        # matched.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.encode(), self.api_key.encode()
        ):
            raise RequestError(
                "authorization",
                "authorization: send the API key as 'Authorization: Bearer KEY'",
                status=401,
            )

    def announce(self) -> None:
        """Log, at start, what a client without the key may do: a warning when writes are
        open to anyone."""
        if self.open_writes:
            logger.warning(
                "writes are open to anyone who can reach this server (no API key, %s): "
                "events, products, reload and forgetting users need no key",
                OPEN_WRITES_FLAG,
            )
        elif self.api_key is None:
            logger.info(
                "no API key: writes are refused (set one, or pass %s on a trusted machine)",
                OPEN_WRITES_FLAG,
            )


def is_loopback(host: str) -> bool:
    """Whether binding `host` serves this machine only (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False
