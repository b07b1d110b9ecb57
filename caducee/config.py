"""Settings: one typed dataclass, filled from an optional TOML file, then `CADUCEE_*` variables.

Why a dataclass and not a settings framework: the set of settings is small, every one of
them is documented in the README from the `help` text here, and the precedence is simple
(defaults < TOML file < environment < command-line flags applied by the CLI).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "CADUCEE_"
ROLES = ("smtp", "imap", "http", "relay", "jobs")  # what one node may run; `serve --role` picks some


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


def _setting(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    """Every setting of a Caducée process. Field names are the TOML keys; the environment
    variable is `CADUCEE_` + the upper-case name."""

    data_dir: Path = _setting(Path("var"), "Data directory: SQLite database, keys, outbox, PKI.")
    database_url: str = _setting(
        "",
        "Database URL. Empty means SQLite in the data directory. `postgresql://user@host/db` uses asyncpg.",
    )
    database_pool_size: int = _setting(
        30,
        "Database connections each server process keeps open (opened as needed, 10 more allowed at peaks). "
        "Size it to the requests a busy process has in a database call at once: connections beyond it are "
        "closed when returned, and reopened on the next request.",
    )
    http_host: str = _setting("127.0.0.1", "Address the HTTP app listens on.")
    http_port: int = _setting(8080, "HTTP port (webmail, JSON API, /docs, /metrics, /healthz).")
    local_domains: list[str] = _setting(
        ["demo.mssante.fr", "patient.mssante.fr"],
        "Mail domains this operator serves (comma-separated in the environment).",
    )
    patient_domain: str = _setting("patient.mssante.fr", "Domain of patient addresses (<INS>@domain).")
    smtp_host: str = _setting("127.0.0.1", "Address the SMTP listeners listen on.")
    mx_port: int = _setting(2525, "MX listener for other operators (STARTTLS, client certificate required). 0 disables it.")
    submission_port: int = _setting(5587, "Submission listener (STARTTLS required before AUTH). 0 disables it.")
    submissions_port: int = _setting(5465, "Submission listener with implicit TLS. 0 disables it.")
    imap_port: int = _setting(1143, "IMAP listener (STARTTLS required before LOGIN). 0 disables it.")
    imaps_port: int = _setting(1993, "IMAP listener with implicit TLS. 0 disables it.")
    trusted_networks: list[str] = _setting(
        [], "Networks (CIDR) that may submit on the submission port without TLS or AUTH, like Postfix's mynetworks. Off by default."
    )
    trusted_proxies: list[str] = _setting(
        [],
        "Networks (CIDR) of the reverse proxies in front of the HTTP app. Only a request from one of them has its "
        "X-Forwarded-For believed (the nearest address not itself a proxy is the client, for the lock-out). Empty by default: "
        "the socket's address is the client.",
    )
    smtp_max_connections_per_client: int = _setting(
        50, "Concurrent SMTP connections one client address may hold per worker (like Postfix's smtpd_client_connection_count_limit)."
    )
    imap_max_connections_per_client: int = _setting(
        100,
        "Concurrent IMAP connections one client address may hold per worker (a practice behind one NAT address opens several per person).",
    )
    imap_timeout: int = _setting(
        1800, "Seconds an authenticated IMAP connection (in IDLE too) may stay silent before it is closed (RFC 3501: at least 30 minutes)."
    )
    imap_login_timeout: int = _setting(60, "Seconds an IMAP connection may take to log in.")
    imap_command_timeout: int = _setting(
        600, "Seconds one IMAP command may take to arrive once it has begun, literals included (a client trickling bytes is cut off)."
    )
    smtp_timeout: int = _setting(300, "Seconds an SMTP client may take to send its next command (RFC 5321 4.5.3.2: at least 5 minutes).")
    smtp_data_timeout: int = _setting(
        600, "Seconds the whole DATA content may take to arrive, however steadily it trickles (then 421 and the connection closes)."
    )
    imap_poll_seconds: float = _setting(
        1.0, "How often one query per process looks for changes made elsewhere to folders that sessions are idling on."
    )
    tls_cert: str = _setting("", "PEM certificate (chain) of the listeners. Empty: the development PKI in <data dir>/pki.")
    tls_key: str = _setting(
        "", "PEM private key of the listeners (in clear, or encrypted with the passphrase derived from the master key)."
    )
    trust_anchors: str = _setting("", "PEM file of the CAs other operators' certificates must chain to (MX and relay).")
    smime: str = _setting(
        "enforce",
        "`enforce`: sign and encrypt what users send, refuse inbound mail whose signature does not verify. "
        "`off`: neither (benchmarks and tests of other stages only).",
    )
    smime_without_certificate: str = _setting(
        "refuse-remote",
        "A recipient with no certificate in the annuaire: `refuse-remote` refuses other operators' recipients "
        "(5.7.5) and gives ours at-rest encryption only; `refuse` refuses all; `deliver` delivers signed only.",
    )
    smime_cert: str = _setting(
        "", "PEM S/MIME certificate of the operator (signs for mailboxes whose keys it does not hold). Empty: the development PKI."
    )
    smime_key: str = _setting("", "PEM private key of `smime_cert` (encrypted with the passphrase derived from the master key).")
    smime_keys_dir: str = _setting(
        "", "Directory of `<address>.crt` / `<address>.key` for the mailboxes whose keys Caducée holds. Empty: `<data dir>/pki/mailboxes`."
    )
    crl_files: list[str] = _setting(
        [], "CRL files (PEM or DER) checked when verifying signatures, re-read when they change. Empty: the development PKI's CRL."
    )
    cpu_workers: int = _setting(
        0,
        "Processes doing CPU-heavy work (S/MIME, parsing large messages) per serving process (0: one per CPU for the node, shared out among `--workers`).",
    )
    relay_client_cert: str = _setting("", "PEM certificate presented to other operators when relaying (mutual TLS).")
    relay_client_key: str = _setting("", "PEM private key of the relay client certificate.")
    relay_routes: dict[str, str] = _setting(
        {}, 'Static routes `domain = "host:port"` (environment: `domain=host:port,...`); other domains use DNS MX.'
    )
    relay_retry_base: float = _setting(60.0, "First retry delay in seconds; later ones grow 1, 5, 15, 30, 60, 120, 240 times it.")
    relay_expiry_hours: float = _setting(120.0, "Hours after which an undelivered message expires and the sender gets a DSN.")
    relay_delay_warning_hours: float = _setting(4.0, "Hours after which the sender is warned that delivery is delayed.")
    relay_poll_interval: float = _setting(1.0, "Seconds between two looks at the outbound queue when it is idle.")
    hostname: str = _setting("mail.demo.mssante.fr", "Name this server gives in SMTP greetings and generated Message-IDs.")
    operator_domain: str = _setting("demo.mssante.fr", "The operator's own domain (postmaster notices come from it).")
    cnam_senders: list[str] = _setting(
        ["prevention.cnam@demo.mssante.fr"], "Addresses whose messages are CNAM campaigns (nobody may reply)."
    )
    cnam_openpgp_fingerprint: str = _setting(
        "",
        "Fingerprint of the CNAM's OpenPGP key, the only signer of population and target files accepted. "
        "Empty: the key recorded by `caducee openpgp import-cnam`.",
    )
    campaign_poll_seconds: float = _setting(
        1.0, "How often a server process looks for campaigns to send (scheduled, or a start interrupted)."
    )
    max_message_size: int = _setting(25 * 1024 * 1024, "Largest accepted message in bytes (rule 8).")
    directory_cache_seconds: float = _setting(
        5.0, "How long the gateway trusts what it read from the annuaire (a changed patient status applies within it)."
    )
    annuaire_page_size_max: int = _setting(100, "Largest page the annuaire search API returns.")
    webmail_code_minutes: int = _setting(15, "Minutes a webmail one-time login code stays valid.")
    webmail_code_attempts: int = _setting(5, "Wrong one-time codes after which the login challenge is locked.")
    webmail_idle_minutes: int = _setting(15, "Minutes without a request after which a webmail session ends.")
    webmail_session_hours: int = _setting(12, "Hours after which a webmail session ends whatever the activity.")
    webmail_cookie_secure: bool = _setting(
        True, "Send the webmail cookies with `Secure` (browsers accept them over plain HTTP on localhost only)."
    )
    webmail_max_upload: int = _setting(10 * 1024 * 1024, "Largest prescription or attachment a patient may upload, in bytes.")
    dossier_max_document: int = _setting(
        20 * 1024 * 1024, "Largest document the dossier accepts (API, IHE_XDM.ZIP or a patient's upload), in bytes."
    )
    dossier_emergency_minutes: int = _setting(120, "Minutes an emergency access (bris de glace) to a dossier lasts.")
    notify_relay: str = _setting(
        "", "`host:port` of an SMTP relay for notifications (login codes). Empty: .eml files in <data dir>/outbox."
    )
    notify_from: str = _setting("Caducée <ne-pas-repondre@demo.mssante.fr>", "From address of notifications.")
    notify_new_mail_minutes: int = _setting(60, 'At most one "a message is waiting" email per patient in this many minutes.')
    webmail_url: str = _setting("http://127.0.0.1:8080/", "The webmail's address, given in the emails sent to patients.")
    psc_discovery_url: str = _setting(
        "https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet/.well-known/openid-configuration",
        "Pro Santé Connect's OpenID discovery document (the sandbox: "
        "`https://auth.bas.psc.esante.gouv.fr/auth/realms/esante-wallet/.well-known/openid-configuration`). "
        "The issuer is this URL without `/.well-known/openid-configuration`; the document must say the same.",
    )
    psc_client_id: str = _setting(
        "", "Client id Caducée is registered under at Pro Santé Connect. Empty: no PSC sign-in, no token on the APIs, IMAP or SMTP."
    )
    psc_client_secret: str = _setting("", "Client secret of `psc_client_id` (sent to the token endpoint with HTTP Basic).")
    psc_redirect_uri: str = _setting(
        "",
        "Redirect URI registered for the portal. Empty: `<webmail_url>pro/connexion/retour`; signing out returns to `<same origin>/pro/deconnecte`.",
    )
    psc_scopes: list[str] = _setting(["openid", "scope_all"], "Scopes asked for at sign-in.")
    psc_acr_values: list[str] = _setting(
        ["eidas1"], "Authentication levels asked for (`acr_values`) and the only `acr` accepted in ID and access tokens."
    )
    psc_audiences: list[str] = _setting(
        [],
        "Audiences an access token must name one of (`aud`) to be accepted on the APIs, IMAP and SMTP. "
        "Empty: `psc_client_id` alone. Add the client ids of practice software whose tokens PSC issues for Caducée.",
    )
    psc_national_id_claim: str = _setting(
        "preferred_username", "Claim holding the professional's national id (8 + RPPS, 0 + ADELI) in ID tokens, userinfo and access tokens."
    )
    psc_cache_seconds: int = _setting(
        3600, "How long the discovery document and the signing keys are kept; a token signed by an unknown key id refetches the keys once."
    )
    psc_timeout: float = _setting(10.0, "Seconds Caducée waits for Pro Santé Connect (discovery, keys, token, userinfo).")
    psc_leeway_seconds: int = _setting(30, "Clock difference tolerated when checking token expiry and issue times.")
    pro_idle_minutes: int = _setting(15, "Minutes without a request after which a professional portal session ends.")
    pro_session_hours: int = _setting(12, "Hours after which a professional portal session ends whatever the activity.")
    demo_psc_port: int = _setting(
        8081,
        "Port of the local Pro Santé Connect stand-in that `serve --demo` starts on `http_host` (and points the psc_* settings at). "
        "0: none, the psc_* settings are used as they are.",
    )
    agenda_prevention_table: str = _setting(
        "", "TOML file of the prevention calendar (source, version, items). Empty: the one shipped in caducee/agenda/prevention.toml."
    )
    agenda_reminder_poll_seconds: float = _setting(30.0, "Seconds between two looks at the agenda's reminder queue when nothing is due.")
    agenda_daily_hour: int = _setting(
        2, "Hour (Paris time) from which each day's prevention reminders are looked for, by whichever process gets there first."
    )
    jobs_poll_seconds: float = _setting(
        60.0,
        "How often each server process looks for periodic jobs that are due (purges); each runs once per period "
        "on whichever process of whichever node claims it first.",
    )
    post_delivery_poll_seconds: float = _setting(
        2.0,
        "How often each process of an `http` node looks at the post-delivery queue (packages for the dossier, invitations "
        "for the agenda) for rows another node accepted (a mail-only node) or whose lease ran out (a process that died).",
    )
    post_delivery_lease_seconds: float = _setting(
        120.0,
        "Seconds a process holds a post-delivery row it works; a row still held after that (its process died) is taken "
        "again by another. Longer than filing one message's package or invitation takes.",
    )
    post_delivery_hold_seconds: float = _setting(
        0.0,
        "For tests only: seconds the process that accepted a message waits after the commit before filing its package or "
        "invitation (widens the window in which a crash test kills it). 0 in production.",
    )
    trace_retention_days: int = _setting(
        183,
        "Days the trace of actions per mailbox (messages sent or refused, deletions: who, when, which answer) is kept, "
        "then purged; six months, as an MSSanté operator keeps them.",
    )
    log_level: str = _setting("INFO", "Logging level (DEBUG, INFO, WARNING, ERROR).")
    roles: list[str] = _setting(
        list(ROLES),
        "What `caducee serve` runs on this node (`--role`): `smtp` (MX and submission listeners), `imap`, `http` (webmail "
        "and APIs; without it the HTTP port serves /healthz and /metrics only), `relay` (the outbound queue), `jobs` "
        "(campaign fan-out, agenda reminders and daily job). Several nodes on one PostgreSQL share the queues.",
    )
    log_format: str = _setting(
        "auto",
        "`json`: one JSON object per line (time, level, logger, process, context: the request or session id, message), "
        "for a log collector; `text`: one line of text; `auto`: JSON unless standard error is a terminal.",
    )

    @property
    def effective_database_url(self) -> str:
        """The URL with an async driver, SQLite in the data dir when none was set."""
        from caducee.db import normalise_url

        if self.database_url:
            return normalise_url(self.database_url)
        return normalise_url(f"sqlite:///{(self.data_dir / 'caducee.sqlite3').resolve()}")

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def describe_settings() -> list[tuple[str, str, str, str]]:
    """(TOML key, environment variable, default, help) for each setting: the README table."""
    rows = []
    for f in dataclasses.fields(Settings):
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if isinstance(default, list):
            shown = ",".join(default)
        elif isinstance(default, dict):
            shown = ",".join(f"{k}={v}" for k, v in default.items())
        else:
            shown = str(default)
        rows.append((f.name, ENV_PREFIX + f.name.upper(), shown, f.metadata["help"]))
    return rows


def _convert(name: str, kind: Any, raw: Any) -> Any:
    """Turn a TOML value or an environment string into the field's type, or say why not."""
    text_kind = str(kind)
    try:
        if kind is float or text_kind == "float":
            return float(raw)
        if kind is int or text_kind == "int":
            if isinstance(raw, bool):
                raise ValueError("a boolean is not a number")
            return int(raw)
        if kind is bool or text_kind == "bool":
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise ValueError(f"{raw!r} is not a boolean")
        if kind is Path or text_kind == "Path":
            return Path(str(raw))
        if text_kind.startswith("dict"):
            if isinstance(raw, dict):
                return {str(k).lower(): str(v) for k, v in raw.items()}
            pairs = [part.split("=", 1) for part in str(raw).split(",") if part.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise ValueError("expected domain=host:port pairs separated by commas")
            return {k.strip().lower(): v.strip() for k, v in pairs}
        if text_kind.startswith("list"):
            if isinstance(raw, list):
                return [str(item).strip() for item in raw if str(item).strip()]
            return [part.strip() for part in str(raw).split(",") if part.strip()]
        return str(raw)
    except ValueError as exc:
        raise SettingsError(f"setting {name!r}: {exc}") from None


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings: defaults, then the TOML file (explicit, or `CADUCEE_CONFIG`),
    then `CADUCEE_*` environment variables, then keyword overrides (command-line flags).

    Unknown keys in the file are an error rather than silently ignored: a typo in a
    production setting must not fall back to a default.
    """
    env = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}

    path = config_file or (Path(env[ENV_PREFIX + "CONFIG"]) if env.get(ENV_PREFIX + "CONFIG") else None)
    if path is not None:
        try:
            document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"configuration file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"configuration file {path}: {exc}") from None
        section = document.get("caducee", document)
        for key, raw in section.items():
            if key not in fields:
                raise SettingsError(f"configuration file {path}: unknown setting {key!r}")
            values[key] = _convert(key, fields[key].type, raw)

    for name, f in fields.items():
        raw_env = env.get(ENV_PREFIX + name.upper())
        if raw_env is not None:
            values[name] = _convert(name, f.type, raw_env)

    for name, raw in overrides.items():
        if raw is None:
            continue
        if name not in fields:
            raise SettingsError(f"unknown setting {name!r}")
        values[name] = _convert(name, fields[name].type, raw)

    settings = Settings(**values)
    if settings.max_message_size <= 0:
        raise SettingsError("setting 'max_message_size' must be positive")
    choices = {
        "smime": ("enforce", "off"),
        "smime_without_certificate": ("refuse-remote", "refuse", "deliver"),
        "log_format": ("auto", "json", "text"),
    }
    for name, allowed in choices.items():
        if getattr(settings, name) not in allowed:
            raise SettingsError(f"setting {name!r} must be one of {', '.join(allowed)}, not {getattr(settings, name)!r}")
    import ipaddress

    for network in settings.trusted_proxies:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise SettingsError(f"setting 'trusted_proxies': {network!r} is not a network (CIDR) or an address") from None
    unknown = [role for role in settings.roles if role not in ROLES]
    if unknown or not settings.roles:
        what = f"unknown role {', '.join(map(repr, unknown))}" if unknown else "no role given"
        raise SettingsError(f"setting 'roles' (--role): {what}; choose among {','.join(ROLES)}")
    if settings.database_pool_size < 1:
        raise SettingsError("setting 'database_pool_size' must be 1 or more")
    if settings.cpu_workers < 0:
        raise SettingsError("setting 'cpu_workers' must be 0 (one per CPU) or more")
    if settings.psc_client_id and not settings.psc_discovery_url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
        raise SettingsError("setting 'psc_discovery_url' must be an https:// URL (plain http only on the loopback, for the stand-in)")
    if settings.psc_client_id and not settings.psc_acr_values:
        raise SettingsError("setting 'psc_acr_values' may not be empty: it is the only defence against a weaker authentication")
    return settings
