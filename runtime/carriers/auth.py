"""Who may start a call on a carrier endpoint.

Answer webhooks carry the carrier's own signature and are checked with the carrier's
library where one exists: Twilio ``X-Twilio-Signature`` (``twilio.RequestValidator``),
Plivo ``X-Plivo-Signature-V3`` (``plivo.utils.signature_v3``), Vonage signed webhooks
(an HS256 JWT keyed by the signature secret: ``vonage_jwt.verify_signature``, then its
``iat`` age and ``payload_hash`` with PyJWT), Telnyx Ed25519
(``telnyx-signature-ed25519`` over ``timestamp|body``, with ``cryptography``).

Stream WebSockets are then admitted by Twilio's signature on the upgrade request (Twilio
signs it) or by a short-lived single-use *stream ticket* that our signed answer webhook put
in the stream URL (the other carriers do not sign the upgrade); Vonage may also send its
own JWT on the upgrade. A missing credential is 401, a wrong or stale one 403. Only the
explicit ``insecure_dev`` setting turns the checks off.

All functions here are pure: time comes in as an argument.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

CARRIERS = ("twilio", "plivo", "vonage", "telnyx")


class AuthError(Exception):
    """``status``: 401 (no credential), 403 (wrong, stale or replayed), 503 (not set up)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _missing(what: str) -> AuthError:
    return AuthError(401, f"missing {what}")


def _invalid(what: str) -> AuthError:
    return AuthError(403, f"invalid {what}")


@dataclass(frozen=True, slots=True)
class CarrierCredentials:
    """Secrets for checking carrier requests; empty means "not configured"."""

    twilio_auth_token: str = ""
    plivo_auth_token: str = ""
    vonage_signature_secret: str = ""
    vonage_api_key: str = ""
    telnyx_public_key: str = ""  # base64 Ed25519 public key from the Telnyx portal
    stream_secret: str = ""  # keys stream tickets; shared by every worker of a fleet
    insecure_dev: bool = False
    max_age_s: float = 300.0  # how old a signed timestamp / JWT may be
    ticket_ttl_s: float = 120.0  # between the answer webhook and the stream connecting


class ReplayCache:
    """Nonces / token ids seen recently (per process); a repeat within ``ttl`` is a replay."""

    def __init__(self, ttl: float = 600.0, limit: int = 100_000) -> None:
        self.ttl = ttl
        self.limit = limit
        self._seen: OrderedDict[str, float] = OrderedDict()

    def first_use(self, key: str, now: float) -> bool:
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self.ttl and len(self._seen) < self.limit:
                break
            self._seen.pop(oldest)
        if key in self._seen:
            return False
        self._seen[key] = now
        return True


# --------------------------------------------------------------------------- Twilio


def verify_twilio(
    auth_token: str, url: str, params: Mapping[str, str], signature: str | None
) -> None:
    """``url`` is the full public URL Twilio requested (``wss://…`` for the stream)."""
    from twilio.request_validator import RequestValidator

    if not auth_token:
        raise AuthError(503, "Twilio auth token is not configured")
    if not signature:
        raise _missing("X-Twilio-Signature")
    if not RequestValidator(auth_token).validate(url, dict(params), signature):
        raise _invalid("X-Twilio-Signature")


def sign_twilio(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """What Twilio sends (for tests and carrier simulators)."""
    from twilio.request_validator import RequestValidator

    return str(RequestValidator(auth_token).compute_signature(url, dict(params)))


# --------------------------------------------------------------------------- Plivo


def verify_plivo(
    auth_token: str,
    method: str,
    url: str,
    params: Mapping[str, str],
    signature: str | None,
    nonce: str | None,
    *,
    replay: ReplayCache,
    now: float,
) -> None:
    """V3 signature; a nonce seen before is a replay (V3 carries no timestamp)."""
    from plivo.utils.signature_v3 import validate_v3_signature

    if not auth_token:
        raise AuthError(503, "Plivo auth token is not configured")
    if not signature or not nonce:
        raise _missing("X-Plivo-Signature-V3 / X-Plivo-Signature-V3-Nonce")
    try:
        valid = validate_v3_signature(method.upper(), url, nonce, auth_token, signature,
                                      dict(params))
    except Exception as exc:  # the helper raises on malformed arguments
        raise _invalid("X-Plivo-Signature-V3") from exc
    if not valid:
        raise _invalid("X-Plivo-Signature-V3")
    if not replay.first_use(f"plivo:{nonce}", now):
        raise AuthError(403, "replayed X-Plivo-Signature-V3-Nonce")


def sign_plivo(auth_token: str, method: str, url: str, params: Mapping[str, str],
               nonce: str) -> str:
    from plivo.utils.signature_v3 import construct_get_url, construct_post_url, get_signature_v3

    base = (construct_get_url(url, dict(params)) if method.upper() == "GET"
            else construct_post_url(url, dict(params)))
    signature = get_signature_v3(auth_token.encode(), base.decode(), nonce.encode())
    return signature.decode() if isinstance(signature, bytes) else str(signature)


# --------------------------------------------------------------------------- Vonage


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def verify_vonage(
    signature_secret: str,
    token: str | None,
    body: bytes,
    *,
    now: float,
    max_age_s: float,
    api_key: str = "",
) -> dict[str, Any]:
    """A Vonage signed request: HS256 JWT, fresh ``iat``, ``payload_hash`` of the body."""
    if not signature_secret:
        raise AuthError(503, "Vonage signature secret is not configured")
    if not token:
        raise _missing("Authorization: Bearer <Vonage JWT>")
    from vonage_jwt import verify_signature
    from vonage_jwt.errors import VonageVerifyJwtError

    try:
        signed = verify_signature(token, signature_secret)
    except VonageVerifyJwtError as exc:  # malformed or expired
        raise _invalid("Vonage JWT") from exc
    if not signed:
        raise _invalid("Vonage JWT")
    try:  # the signature is good; now the claims Vonage's helper does not check
        claims: dict[str, Any] = jwt.decode(
            token, signature_secret, algorithms=["HS256"],
            options={"require": ["iat"], "verify_aud": False, "verify_iat": False},
            leeway=30,
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthError(403, "stale Vonage JWT") from exc
    except jwt.PyJWTError as exc:
        raise _invalid("Vonage JWT") from exc
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool):
        raise _invalid("Vonage JWT")
    if now - iat > max_age_s or iat - now > 30:
        raise AuthError(403, "stale Vonage JWT")
    if api_key and claims.get("api_key") != api_key:
        raise _invalid("Vonage JWT (api_key)")
    if body:
        expected = hashlib.sha256(body).hexdigest()
        if not hmac.compare_digest(str(claims.get("payload_hash", "")), expected):
            raise _invalid("Vonage JWT (payload_hash)")
    return claims


def sign_vonage(signature_secret: str, body: bytes, *, now: float, api_key: str = "") -> str:
    claims: dict[str, Any] = {"iat": int(now), "jti": secrets.token_hex(8)}
    if api_key:
        claims["api_key"] = api_key
    if body:
        claims["payload_hash"] = hashlib.sha256(body).hexdigest()
    return jwt.encode(claims, signature_secret, algorithm="HS256")


# --------------------------------------------------------------------------- Telnyx


def verify_telnyx(
    public_key_b64: str,
    signature_b64: str | None,
    timestamp: str | None,
    body: bytes,
    *,
    now: float,
    max_age_s: float,
) -> None:
    """Ed25519 over ``f"{timestamp}|{body}"``; the timestamp must be recent."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not public_key_b64:
        raise AuthError(503, "Telnyx public key is not configured")
    if not signature_b64 or not timestamp:
        raise _missing("telnyx-signature-ed25519 / telnyx-timestamp")
    if not timestamp.isdigit() or abs(now - int(timestamp)) > max_age_s:
        raise AuthError(403, "stale telnyx-timestamp")
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64, validate=True))
        key.verify(base64.b64decode(signature_b64, validate=True),
                   timestamp.encode() + b"|" + body)
    except (InvalidSignature, ValueError, binascii.Error) as exc:
        raise _invalid("telnyx-signature-ed25519") from exc


# --------------------------------------------------------------------------- tickets


class StreamTickets:
    """Short-lived, single-use, HS256-signed claims that bind a stream URL to one call."""

    def __init__(self, secret: str, *, ttl_s: float, replay: ReplayCache) -> None:
        if not secret:
            raise ValueError("a stream ticket secret is required")
        self._secret = secret
        self.ttl_s = ttl_s
        self._replay = replay

    def issue(self, carrier: str, claims: Mapping[str, Any], *, now: float) -> str:
        body = {k: v for k, v in claims.items() if v is not None}
        body.update({
            "aud": f"rymi-carrier:{carrier}",
            "iat": int(now),
            "exp": int(now + self.ttl_s),
            "jti": secrets.token_urlsafe(12),
        })
        return jwt.encode(body, self._secret, algorithm="HS256")

    def redeem(self, carrier: str, ticket: str | None, *, now: float) -> dict[str, Any]:
        if not ticket:
            raise _missing("stream ticket")
        try:
            claims: dict[str, Any] = jwt.decode(
                ticket, self._secret, algorithms=["HS256"], audience=f"rymi-carrier:{carrier}",
                options={"require": ["exp", "jti"], "verify_exp": False},
            )
        except jwt.PyJWTError as exc:
            raise _invalid("stream ticket") from exc
        if now > float(claims["exp"]):
            raise AuthError(403, "stale stream ticket")
        if not self._replay.first_use(f"ticket:{claims['jti']}", now):
            raise AuthError(403, "stream ticket already used")
        return claims


def derive_stream_secret(api_key: str) -> str:
    """A ticket key every worker holding the same API key derives identically."""
    return hmac.new(api_key.encode(), b"rymi carrier stream tickets v1", hashlib.sha256).hexdigest()
