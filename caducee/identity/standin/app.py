"""The stand-in's HTTP side: one Flask app serving every realm under `/auth/realms/<realm>/`,
with the paths Keycloak (and so PSC) uses.

authlib's `AuthorizationServer` does the protocol: it validates authorization requests,
issues and redeems codes once, checks PKCE and client secrets, and answers errors as
RFC 6749 says. What is ours: the clients and professionals it knows, the sign-in page, and
the tokens (signed JWTs in PSC's shape, with the realm's current key).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import flask
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import grants as oidc_grants
from authlib.oidc.core.util import create_half_hash
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from caducee.identity.standin import claims as psc
from caducee.identity.standin.config import StandinClient, StandinConfig, StandinUser

# How a professional may sign in on the stand-in's page, and the `acr` each gives. PSC's
# CPS card and e-CPS app give eidas1; the weaker one exists so that a refusal can be tried.
MEANS = {
    "ecps": ("Application e-CPS", "eidas1"),
    "cps": ("Carte CPS et lecteur", "eidas1"),
    "faible": ("Identifiant et mot de passe (niveau insuffisant, pour essayer un refus)", "eidas0"),
}
# Anomalies the page can make the next tokens carry, to see a relying party refuse them.
FAULTS = {
    "": "Aucune",
    "audience": "Jeton destiné à un autre service (aud)",
    "issuer": "Jeton signé au nom d'un autre émetteur (iss)",
    "expired": "Jeton déjà expiré (exp)",
    "code-expired": "Code de connexion déjà expiré",
}
IMPOSTOR_ISSUER = "https://imposteur.invalid/auth/realms/esante-wallet"


class Client(ClientMixin):
    def __init__(self, known: StandinClient) -> None:
        self.known = known

    def get_client_id(self) -> str:
        return self.known.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.known.redirect_uris[0] if self.known.redirect_uris else None

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(item for item in (scope or "").split() if item in {"openid", "scope_all", "profile", "email", "offline_access"})

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return self.known.allows_redirect(redirect_uri, self.known.redirect_uris)

    def check_client_secret(self, client_secret: str) -> bool:
        expected = self.known.client_secret
        return expected is not None and secrets.compare_digest(expected.encode(), (client_secret or "").encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.known.client_secret is None:
            return method == "none"
        return method in {"client_secret_basic", "client_secret_post"}

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in {"authorization_code", "refresh_token"}


@dataclass
class Login(AuthorizationCodeMixin):
    """One sign-in: the code the browser carries back, and what the tokens will say."""

    code: str
    client_id: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    user: StandinUser
    acr: str
    fault: str
    sid: str
    auth_time: int
    expires_at: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> str:
        return self.acr

    def get_amr(self) -> list[str]:
        return ["pwd"] if self.acr != "eidas1" else ["mfa"]

    def is_expired(self) -> bool:
        return time.time() > self.expires_at


@dataclass
class Realm:
    name: str
    keys: list[RSAKey] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.keys:
            self.rotate()

    def rotate(self) -> None:
        """A new current signing key; the previous one stays published for tokens already out."""
        key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, auto_kid=True)
        self.keys = [key, *self.keys[:1]]

    @property
    def current(self) -> RSAKey:
        return self.keys[0]

    def jwks(self) -> dict[str, Any]:
        return dict(KeySet(self.keys).as_dict(private=False))  # type: ignore[arg-type]


class State:
    """Everything the stand-in remembers (in memory: it is restarted empty)."""

    def __init__(self, config: StandinConfig) -> None:
        self.config = config
        self.realms = {name: Realm(name) for name in config.realms}
        self.codes: dict[str, Login] = {}
        self.refresh: dict[str, Login] = {}
        self.sessions: dict[str, StandinUser] = {}  # the provider's own sign-in sessions (cookie)
        self.lock = threading.Lock()

    def rotate_keys(self) -> None:
        with self.lock:
            for realm in self.realms.values():
                realm.rotate()


def _issuer(realm: str) -> str:
    return flask.request.host_url.rstrip("/") + f"/auth/realms/{realm}"


def _sign(realm: Realm, payload: dict[str, Any], typ: str = "JWT") -> str:
    return jwt.encode({"alg": "RS256", "kid": realm.current.kid, "typ": typ}, payload, realm.current)


def _token_claims(realm: Realm, login: Login, client_id: str, audience: list[str], lifetime: int) -> dict[str, Any]:
    now = int(time.time())
    issuer = IMPOSTOR_ISSUER if login.fault == "issuer" else _issuer(realm.name)
    if login.fault == "audience":
        audience = ["autre-service"]
    expires = now - 600 if login.fault == "expired" else now + lifetime
    return {
        "iss": issuer,
        "aud": audience if len(audience) > 1 else audience[0],
        "sub": psc.subject(login.user),
        "azp": client_id,
        "iat": now - 660 if login.fault == "expired" else now,
        "exp": expires,
        "auth_time": login.auth_time,
        "jti": secrets.token_urlsafe(16),
        "acr": login.acr,
        "sid": login.sid,
        "session_state": login.sid,
        "preferred_username": login.user.national_id,
    }


def create_app(config: StandinConfig) -> tuple[flask.Flask, State]:
    app = flask.Flask(__name__)
    app.secret_key = secrets.token_bytes(32)
    state = State(config)

    def realm_of(name: str) -> Realm:
        realm = state.realms.get(name)
        if realm is None:
            flask.abort(404)
        return realm

    def query_client(client_id: str) -> Client | None:
        known = config.client(client_id)
        return Client(known) if known is not None else None

    def save_token(token: dict[str, Any], request: Any) -> None:
        if token.get("refresh_token"):
            with state.lock:
                state.refresh[token["refresh_token"]] = request.user

    def realm_in_request() -> Realm:
        return realm_of(str(flask.request.view_args.get("realm", "")))  # type: ignore[union-attr]

    def access_token(client: Client, grant_type: str, user: Login, scope: str) -> str:
        realm = realm_in_request()
        payload = _token_claims(realm, user, client.get_client_id(), client.known.audiences(), config.access_token_seconds)
        payload.update({"typ": "Bearer", "scope": scope, "SubjectNameID": user.user.national_id})
        return _sign(realm, payload, "at+jwt")

    class CodeGrant(grants.AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

        def save_authorization_code(self, code: str, request: Any) -> None:
            login: Login = request.user
            login.code = code
            login.client_id = request.client.get_client_id()
            login.redirect_uri = request.payload.redirect_uri
            login.scope = request.payload.scope
            login.nonce = request.payload.data.get("nonce")
            login.code_challenge = request.payload.data.get("code_challenge")
            login.code_challenge_method = request.payload.data.get("code_challenge_method")
            if login.fault == "code-expired":
                login.expires_at = time.time() - 1
            with state.lock:
                state.codes[code] = login

        def query_authorization_code(self, code: str, client: Client) -> Login | None:
            with state.lock:
                login = state.codes.get(code)
            if login is None or login.client_id != client.get_client_id() or login.is_expired():
                return None
            return login

        def delete_authorization_code(self, authorization_code: Login) -> None:
            with state.lock:
                state.codes.pop(authorization_code.code, None)

        def authenticate_user(self, authorization_code: Login) -> Login:
            return authorization_code

    class RefreshGrant(grants.RefreshTokenGrant):
        INCLUDE_NEW_REFRESH_TOKEN = True
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

        def authenticate_refresh_token(self, refresh_token: str) -> Any:
            with state.lock:
                login = state.refresh.get(refresh_token)
            return _RefreshToken(refresh_token, login) if login is not None else None

        def authenticate_user(self, refresh_token: Any) -> Login:
            return refresh_token.login

        def revoke_old_credential(self, refresh_token: Any) -> None:
            with state.lock:
                state.refresh.pop(refresh_token.token, None)

    class OpenIDCode(oidc_grants.OpenIDCode):
        def exists_nonce(self, nonce: str, request: Any) -> bool:
            with state.lock:
                return any(login.nonce == nonce for login in state.codes.values())

        def generate_user_info(self, user: Login, scope: str) -> dict[str, Any]:
            return {}

        def encode_id_token(self, token: dict[str, Any], request: Any) -> str:
            realm = realm_in_request()
            login: Login = request.user
            client_id = request.client.get_client_id()
            payload = _token_claims(realm, login, client_id, [client_id], config.access_token_seconds)
            payload.update({"typ": "ID", "nonce": login.nonce, "given_name": login.user.first_name, "family_name": login.user.last_name})
            at_hash = create_half_hash(token["access_token"], "RS256")
            if at_hash is not None:
                payload["at_hash"] = at_hash.decode()
            return _sign(realm, {key: value for key, value in payload.items() if value is not None})

    app.config["OAUTH2_REFRESH_TOKEN_GENERATOR"] = True
    server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
    server.register_token_generator(
        "default",
        BearerTokenGenerator(
            access_token_generator=access_token,
            refresh_token_generator=lambda **_: secrets.token_urlsafe(32),
            expires_generator=lambda *_args, **_kwargs: config.access_token_seconds,
        ),
    )
    server.register_grant(CodeGrant, [OpenIDCode(require_nonce=True), CodeChallenge(required=True)])
    server.register_grant(RefreshGrant)

    base = "/auth/realms/<realm>"

    @app.after_request
    def headers(response: flask.Response) -> flask.Response:
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.get(base + "/.well-known/openid-configuration")
    def discovery(realm: str) -> Any:
        realm_of(realm)
        issuer = _issuer(realm)
        protocol = issuer + "/protocol/openid-connect"
        return flask.jsonify(
            {
                "issuer": issuer,
                "authorization_endpoint": protocol + "/auth",
                "token_endpoint": protocol + "/token",
                "userinfo_endpoint": protocol + "/userinfo",
                "end_session_endpoint": protocol + "/logout",
                "jwks_uri": protocol + "/certs",
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code", "refresh_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "userinfo_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
                "scopes_supported": ["openid", "scope_all"],
                "acr_values_supported": ["eidas1"],
                "claims_supported": ["sub", "preferred_username", "SubjectNameID", "SubjectRefPro", "given_name", "family_name", "acr"],
            }
        )

    @app.get(base + "/protocol/openid-connect/certs")
    def certs(realm: str) -> Any:
        with state.lock:
            return flask.jsonify(realm_of(realm).jwks())

    def page(template: str, status: int = 200, **values: Any) -> flask.Response:
        response = flask.make_response(flask.render_template(template, **values), status)
        response.headers["Content-Security-Policy"] = "default-src 'self'; style-src 'unsafe-inline'; frame-ancestors 'none'"
        return response

    @app.route(base + "/protocol/openid-connect/auth", methods=["GET", "POST"])
    def authorize(realm: str) -> Any:
        realm_of(realm)
        try:
            grant = server.get_consent_grant()
        except OAuth2Error as error:
            return page("error.html", 400, error=error.error, description=error.description)
        args = flask.request.args
        if args.get("code_challenge_method") != "S256" or not args.get("code_challenge"):
            return page("error.html", 400, error="invalid_request", description="PKCE (S256) est obligatoire")
        session_user = state.sessions.get(flask.request.cookies.get("standin_session", ""))
        if flask.request.method == "GET":
            return page(
                "login.html",
                users=config.users,
                means=MEANS,
                faults=FAULTS,
                client=args.get("client_id", ""),
                session_user=session_user,
                query=urlencode(list(args.items(multi=True))),
            )
        form = flask.request.form
        if form.get("action") == "annuler":
            return server.create_authorization_response(grant_user=None)
        user = config.user(form.get("professionnel", "")) or (session_user if form.get("action") == "continuer" else None)
        if user is None:
            return page(
                "login.html",
                400,
                users=config.users,
                means=MEANS,
                faults=FAULTS,
                client=args.get("client_id", ""),
                session_user=session_user,
                query=urlencode(list(args.items(multi=True))),
                missing=True,
            )
        _, acr = MEANS.get(form.get("moyen", "ecps"), MEANS["ecps"])
        fault = form.get("anomalie", "") if form.get("anomalie", "") in FAULTS else ""
        sid = secrets.token_urlsafe(16)
        login = Login("", "", "", "", None, None, None, user, acr, fault, sid, int(time.time()), time.time() + config.code_seconds)
        response = server.create_authorization_response(grant=grant, grant_user=login)
        with state.lock:
            state.sessions[sid] = user
        response.set_cookie("standin_session", sid, httponly=True, samesite="Lax", path="/auth/realms/")
        return response

    @app.post(base + "/protocol/openid-connect/token")
    def token(realm: str) -> Any:
        realm_of(realm)
        return server.create_token_response()

    @app.route(base + "/protocol/openid-connect/userinfo", methods=["GET", "POST"])
    def userinfo(realm: str) -> Any:
        current = realm_of(realm)
        header = flask.request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise ValueError("no bearer token")
            with state.lock:
                token = jwt.decode(value.strip(), KeySet(current.keys), algorithms=["RS256"])  # type: ignore[arg-type]
            if token.claims.get("iss") not in (_issuer(realm), IMPOSTOR_ISSUER) or token.claims.get("exp", 0) < time.time():
                raise ValueError("not a live token of this realm")
        except Exception:  # noqa: BLE001 - whatever is wrong, RFC 6750's answer is the same
            return flask.Response("", 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        user = config.user(str(token.claims.get("preferred_username")))
        if user is None:
            return flask.Response("", 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        info = psc.userinfo(user)
        if config.userinfo_format == "jwt":
            signed = _sign(current, {**info, "iss": _issuer(realm), "aud": token.claims.get("azp")})
            return flask.Response(signed, 200, {"Content-Type": "application/jwt"})
        return flask.jsonify(info)

    @app.route(base + "/protocol/openid-connect/logout", methods=["GET", "POST"])
    def logout(realm: str) -> Any:
        realm_of(realm)
        values = flask.request.values
        sid = flask.request.cookies.get("standin_session", "")
        with state.lock:
            state.sessions.pop(sid, None)
        client = config.client(values.get("client_id", ""))
        target = values.get("post_logout_redirect_uri", "")
        if client is not None and target and client.allows_redirect(target, client.post_logout_redirect_uris):
            if values.get("state"):
                target += ("&" if "?" in target else "?") + urlencode({"state": values["state"]})
            response = flask.redirect(target, 302)
        else:
            response = page("logout.html")
        response.delete_cookie("standin_session", path="/auth/realms/")
        return response

    return app, state


@dataclass
class _RefreshToken:
    token: str
    login: Login

    def check_client(self, client: Client) -> bool:
        return client.get_client_id() == self.login.client_id

    def get_scope(self) -> str:
        return self.login.scope

    def is_expired(self) -> bool:
        return False

    def is_revoked(self) -> bool:
        return False
