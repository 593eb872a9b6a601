"""The OAuth 2.0 authorization server, on authlib's framework-independent server classes.

authlib's server is synchronous; our registry is async. So each request runs in two
steps: the async step loads what authlib will ask for (the candidate clients, the
verified token for introspection/revocation) into a per-request context, then authlib
runs synchronously against that context; writes it asks for (assertion jti, revoked
token) are collected and committed asynchronously afterwards. JOSE is joserfc
throughout (authlib ≥ 1.6 uses it for RFC 7523 and RFC 9068).
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import unquote

import orjson
from authlib.oauth2 import AuthorizationServer as _AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, InvalidClientError
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload, OAuth2Request
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from services.gateway.clients import ALL_SCOPES, ClientRecord, SecretHasher, auth_methods
from services.gateway.keys import ALGORITHM, KeyRing
from services.runtime.auth import Identity

CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
ASSERTION_ALGORITHMS = ["ES256", "ES384", "RS256", "PS256"]
ASSERTION_TYPE = JWTBearerClientAssertion.CLIENT_ASSERTION_TYPE


@dataclass
class RequestContext:
    """What the async step prepared for authlib, and what authlib asked to be written."""

    clients: dict[str, ClientRecord] = field(default_factory=dict)
    token: Identity | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    assertion_jtis: list[tuple[str, str, int]] = field(default_factory=list)
    revoked: list[Identity] = field(default_factory=list)


_context: ContextVar[RequestContext] = ContextVar("oauth_request_context")


def current() -> RequestContext:
    return _context.get()


def set_context(ctx: RequestContext) -> None:
    _context.set(ctx)


class Client(ClientMixin):  # type: ignore[misc]
    """A registered client as authlib sees it."""

    def __init__(self, record: ClientRecord, hasher: SecretHasher) -> None:
        self.record = record
        self._hasher = hasher

    def get_client_id(self) -> str:
        return self.record.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str | None:
        """The client's scopes when none are asked; the asked ones if all are allowed; else None (invalid_scope)."""
        allowed = self.record.scopes
        if not scope:
            return " ".join(allowed)
        requested = list(dict.fromkeys(scope.split()))
        if not set(requested) <= set(allowed):
            return None
        return " ".join(requested)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return self._hasher.verify(client_secret, self.record.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in auth_methods(self.record)

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


class ClientCredentials(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS


class PrivateKeyJWT(JWTBearerClientAssertion):  # type: ignore[misc]
    """RFC 7523 client authentication with a key from the client's registered JWKS."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, audiences: list[str]) -> None:
        super().__init__(validate_jti=True, leeway=60)
        self._audiences = audiences

    def get_audiences(self) -> list[str]:
        return self._audiences

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> Any:
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=ASSERTION_ALGORITHMS)
        except (JoseError, ValueError) as exc:
            raise InvalidClientError(description=f"invalid client assertion: {exc}") from exc
        self.verify_claims(token.claims)
        return token.claims

    def validate_jti(self, claims: dict[str, Any], jti: Any) -> bool:
        # The replay check proper is an insert under a unique key, after authlib accepted
        # the assertion (see OAuthServer.commit_assertions); here only the shape.
        if not isinstance(jti, str) or not 1 <= len(jti) <= 200:
            return False
        current().assertion_jtis.append((str(claims["sub"]), jti, int(claims["exp"])))
        return True

    def resolve_client_public_key(self, client: Client) -> KeySet:
        if not client.record.jwks:
            raise InvalidClientError(description="the client has no registered keys (jwks) for private_key_jwt")
        return KeySet.import_key_set(cast(Any, client.record.jwks))


class AccessTokens(JWTBearerTokenGenerator):  # type: ignore[misc]
    """RFC 9068 JWT access tokens signed ES256 with the key ring's current key."""

    def __init__(
        self, *, issuer: str, audience: str, ttl: int, keys: KeyRing, tier_of: Callable[[str], str | None]
    ) -> None:
        super().__init__(issuer=issuer, alg=ALGORITHM, expires_generator=ttl)
        self._audience = audience
        self._keys = keys
        self._tier_of = tier_of

    def get_jwks(self) -> KeySet:
        return self._keys.signing_keyset

    def get_audiences(self, client: Client, user: Any, scope: str) -> str:
        return self._audience

    def get_jti(self, client: Client, grant_type: str, user: Any, scope: str) -> str:
        return os.urandom(16).hex()

    def get_extra_claims(self, client: Client, grant_type: str, user: Any, scope: str) -> dict[str, Any]:
        partner_id = client.record.partner_id
        if partner_id is None:
            return {}
        claims: dict[str, Any] = {"partner_id": partner_id}
        tier = self._tier_of(partner_id)
        if tier is not None:
            claims["tier"] = tier
        return claims


class _Token:
    """A verified access token as authlib's introspection/revocation endpoints see it."""

    def __init__(self, identity: Identity, claims: dict[str, Any]) -> None:
        self.identity = identity
        self.claims = claims

    def is_expired(self) -> bool:
        return False  # verified just before (exp with leeway)

    def is_revoked(self) -> bool:
        return False  # verified just before (deny-list)

    def check_client(self, client: Client) -> bool:
        return _may_touch(client, self.identity)


def _may_touch(client: Client, identity: Identity) -> bool:
    """A client may introspect or revoke its own tokens; ops clients any token."""
    return client.record.client_id == identity.client_id or "admin" in client.record.scopes


class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> _Token | None:
        ctx = current()
        if ctx.token is None or token_type_hint == "refresh_token":
            return None
        return _Token(ctx.token, ctx.claims)

    def check_permission(self, token: _Token, client: Client, request: Any) -> bool:
        return _may_touch(client, token.identity)

    def introspect_token(self, token: _Token) -> dict[str, Any]:
        claims = token.claims
        doc = {
            "active": True,
            "token_type": "Bearer",
            "scope": claims.get("scope", ""),
            "client_id": token.identity.client_id,
            "sub": claims.get("sub"),
            "aud": claims.get("aud"),
            "iss": claims.get("iss"),
            "exp": claims.get("exp"),
            "iat": claims.get("iat"),
            "jti": claims.get("jti"),
        }
        for extra in ("nbf", "partner_id", "tier"):
            if extra in claims:
                doc[extra] = claims[extra]
        return doc


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def query_token(self, token_string: str, token_type_hint: str | None) -> _Token | None:
        ctx = current()
        return None if ctx.token is None else _Token(ctx.token, ctx.claims)

    def revoke_token(self, token: _Token, request: Any) -> None:
        current().revoked.append(token.identity)


class IncomingRequest(OAuth2Request):  # type: ignore[misc]
    """An OAuth request from a parsed form (no Flask/Django request behind it)."""

    def __init__(self, method: str, uri: str, headers: Any, form: dict[str, str]) -> None:
        # authlib's constructor rejects non-https URIs; TLS terminates at the ingress in
        # front of the gateway, so the URI the process sees is plain http by design.
        self.method = method
        self.uri = uri
        self.headers = headers
        self._body = None
        self.payload = BasicOAuth2Payload(form)
        self._form = form
        self.client = None
        self.auth_method = None
        self.user = None
        self.authorization_code = None
        self.refresh_token = None
        self.credential = None
        self._scope = None

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return {}


Response = tuple[int, dict[str, Any], list[tuple[str, str]]]


class AuthorizationServer(_AuthorizationServer):  # type: ignore[misc]
    """authlib's server bound to the per-request context."""

    def __init__(self, hasher: SecretHasher) -> None:
        super().__init__(scopes_supported=list(ALL_SCOPES))
        self._hasher = hasher

    def query_client(self, client_id: str) -> Client | None:
        record = current().clients.get(client_id)
        return Client(record, self._hasher) if record is not None else None

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        return None  # JWT access tokens are self-contained; nothing to store

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        return None

    def create_oauth2_request(self, request: IncomingRequest) -> IncomingRequest:
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Response:
        return normalise_error(status, body, headers)


def normalise_error(status: int, body: Any, headers: list[tuple[str, str]]) -> Response:
    """RFC 6749 §5.2 errors; `invalid_client` is always 401 with a challenge."""
    doc = dict(body) if body else {}
    if doc.get("error") == "invalid_client":
        status = 401
        if not any(name.lower() == "www-authenticate" for name, _ in headers):
            headers = [*headers, ("WWW-Authenticate", 'Basic realm="partnerhub", error="invalid_client"')]
    return status, doc, headers


def invalid_client(description: str) -> Response:
    """The 401 `invalid_client` answer."""
    error = InvalidClientError(status_code=401, description=description)
    return normalise_error(*error())


def build_server(
    *,
    issuer: str,
    audience: str,
    ttl: int,
    keys: KeyRing,
    hasher: SecretHasher,
    tier_of: Callable[[str], str | None],
) -> AuthorizationServer:
    """authlib's server with our grant, client auth methods, token format and endpoints."""
    server = AuthorizationServer(hasher)
    server.register_grant(ClientCredentials)
    server.register_client_auth_method(
        "private_key_jwt", PrivateKeyJWT([issuer.rstrip("/") + "/oauth/token", issuer])
    )
    server.register_token_generator(
        "default", AccessTokens(issuer=issuer, audience=audience, ttl=ttl, keys=keys, tier_of=tier_of)
    )
    server.register_endpoint(Introspection)
    server.register_endpoint(Revocation)
    return server


def basic_client_id(authorization: str | None) -> tuple[str | None, bool]:
    """(client id, malformed) of an `Authorization: Basic` header."""
    if not authorization:
        return None, False
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None, False
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None, True
    if ":" not in decoded:
        return None, True
    return unquote(decoded.split(":", 1)[0]), False


def assertion_subject(assertion: str | None) -> str | None:
    """The unverified `sub` of a client assertion (to know which client's keys to load)."""
    if not assertion:
        return None
    parts = assertion.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    sub = claims.get("sub") if isinstance(claims, dict) else None
    return sub if isinstance(sub, str) else None


def metadata(issuer: str) -> dict[str, Any]:
    """RFC 8414 authorization server metadata."""
    base = issuer.rstrip("/")
    return {
        "issuer": issuer,
        "token_endpoint": f"{base}/oauth/token",
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "introspection_endpoint": f"{base}/oauth/introspect",
        "revocation_endpoint": f"{base}/oauth/revoke",
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": [],
        "scopes_supported": list(ALL_SCOPES),
        "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "introspection_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "introspection_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "revocation_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
        "revocation_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "service_documentation": f"{base}/docs",
    }
