"""Classroom mode: one server, a teacher and a class; only the teacher changes anything.

With ``LCA_CLASSROOM=1`` the app is read-only for everyone who has not unlocked it with the
teacher token: students view, compare and play, but do not train, stop, delete, upload or
recover. The token comes from ``LCA_TEACHER_TOKEN`` or is made once per server process and
printed to the server console (``python -m lca serve --classroom`` prints the teacher's link).
Without the mode nothing is locked, so a single user sees no difference.

This module holds the rule; the pages ask it through ``pages.shared.may`` and the app shell
unlocks a session from ``?teacher=TOKEN``.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import threading

__all__ = ["ACTIONS", "enabled", "is_token", "locked_sentence", "token"]

ACTIONS = ("train", "stop", "delete", "upload", "recover")
ENV_MODE = "LCA_CLASSROOM"
ENV_TOKEN = "LCA_TEACHER_TOKEN"
MIN_TOKEN_CHARS = 8

log = logging.getLogger("lca.classroom")
_lock = threading.Lock()
_made: str | None = None


def enabled() -> bool:
    """Whether the server runs in classroom mode (``LCA_CLASSROOM`` set to 1/true/yes/on)."""
    return os.environ.get(ENV_MODE, "").strip().lower() in ("1", "true", "yes", "on")


def token() -> str:
    """The teacher token: ``LCA_TEACHER_TOKEN``, or one made for this process and printed once.

    A token from the environment shorter than MIN_TOKEN_CHARS is refused (a class could guess
    it); the sentence says how to set a longer one.
    """
    global _made
    given = os.environ.get(ENV_TOKEN, "").strip()
    if given:
        if len(given) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"{ENV_TOKEN} is {len(given)} characters long; use at least {MIN_TOKEN_CHARS} so "
                "students cannot guess it (or unset it and one is made for you)."
            )
        return given
    with _lock:
        if _made is None:
            _made = secrets.token_urlsafe(9)
            log.warning(
                "Classroom mode: the teacher unlocks the app by opening it with "
                "?teacher=%s (or set %s).",
                _made,
                ENV_TOKEN,
            )
            print(
                f"LCA Lab classroom mode: teacher token {_made}  (open the app with "
                f"?teacher={_made})",
                flush=True,
            )
        return _made


def is_token(candidate: str | None) -> bool:
    """Whether ``candidate`` is the teacher token (compared in constant time)."""
    if not candidate:
        return False
    return hmac.compare_digest(str(candidate).encode(), token().encode())


def locked_sentence(action: str) -> str:
    """The one sentence a student sees instead of ``action``."""
    if action not in ACTIONS:
        raise ValueError(f"Unknown classroom action {action!r}; one of {', '.join(ACTIONS)}.")
    return (
        f"Classroom mode: only the teacher can {action} here; you can view, compare and play "
        "with everything."
    )
