"""Unsubscribe tokens: the user id signed with HMAC-SHA256, so links cannot be guessed or forged.

A token is `<user id>.<base64url signature>`; it does not expire (RFC 8058 links must keep
working while the email sits in an inbox) and unsubscribing twice is harmless.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

PURPOSE = b"grails-workers/unsubscribe/v1:"


class InvalidToken(ValueError):
    pass


def _signature(secret: str, user_id: int) -> str:
    mac = hmac.new(secret.encode(), PURPOSE + str(user_id).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def make_token(secret: str, user_id: int) -> str:
    return f"{user_id}.{_signature(secret, user_id)}"


def read_token(secret: str, token: str) -> int:
    """The user id a token was made for; InvalidToken when it was not made with `secret`."""
    user_part, _, signature = token.partition(".")
    if not user_part.isdigit() or not signature:
        raise InvalidToken("malformed unsubscribe token")
    user_id = int(user_part)
    if not hmac.compare_digest(signature, _signature(secret, user_id)):
        raise InvalidToken("unsubscribe token signature does not match")
    return user_id
