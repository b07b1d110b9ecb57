"""Patient accounts in the webmail: login in two steps, sessions, and the profile lifecycle.

Login: an identifier (INS or registered email) and a password, then a 6-digit code sent
through the notifier, valid `webmail_code_minutes`, single use, locked after
`webmail_code_attempts` wrong tries. Each step refuses with one sentence a person can act
on, and never says whether an account exists.

Lifecycle: a created profile is activated with the provisional code the patient received
(by post), choosing a password; the same code lets them oppose the profile instead. An
activated patient can close their profile. Both stop all mail to them (rule 7).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee import db
from caducee.annuaire import patients
from caducee.annuaire.kinds import PatientStatus
from caducee.config import Settings
from caducee.core import timing
from caducee.core.passwords import hash_password, verify_password
from caducee.core.pseudonyms import pseudonym
from caducee.core.singleflight import SingleFlight
from caducee.core.throttle import FailureStore, Locked, LoginThrottle, MemoryFailures
from caducee.notify.notifier import Notifier
from caducee.webmail.codes import CodeHasher, mask_email, new_code, new_token, token_id
from caducee.webmail.models import ActivationCode, LoginChallenge, WebSession

log = logging.getLogger(__name__)

MIN_PASSWORD = 10
ACTIVATION_ANSWER_FLOOR = 0.3  # seconds: above the try's committed write on a loaded node
PROFILES_SECONDS = 10.0
SESSION_RECHECK_SECONDS = 2.0
TOUCH_EVERY = timedelta(seconds=60)  # a session's last-seen time is written at most this often


_SESSION = text(
    "SELECT id, patient_id, acting_patient_id, csrf_token, last_seen_at, expires_at FROM webmail_sessions WHERE id = :id"
).columns(
    WebSession.id,
    WebSession.patient_id,
    WebSession.acting_patient_id,
    WebSession.csrf_token,
    WebSession.last_seen_at,
    WebSession.expires_at,
)  # the columns' types: datetimes come back typed


def aware(moment: datetime) -> datetime:
    """SQLite gives datetimes back without their zone; they were written in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def now() -> datetime:
    return datetime.now(UTC)


class Refused(Exception):
    """A step refused; `text` is the French sentence shown to the person."""

    def __init__(self, text: str, *, locked: bool = False, remaining: int | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.locked = locked
        self.remaining = remaining


WRONG_CREDENTIALS = "Identifiant ou mot de passe incorrect. Vérifiez votre numéro INS (ou votre adresse e-mail) et votre mot de passe."
WRONG_ACTIVATION = (
    "Numéro INS ou code provisoire incorrect, ou code plus valable. Vérifiez les deux numéros sur le courrier reçu ; "
    "si le code a plus de 90 jours, demandez-en un nouveau à votre caisse d'assurance maladie."
)


def password_problem(password: str, confirmation: str) -> str | None:
    if password != confirmation:
        return "Les deux mots de passe ne sont pas identiques."
    if len(password) < MIN_PASSWORD:
        return f"Le mot de passe doit contenir au moins {MIN_PASSWORD} caractères."
    if password.isdigit() or password.isalpha():
        return "Le mot de passe doit mélanger des lettres et des chiffres (ou d'autres signes)."
    return None


@dataclass(frozen=True)
class Challenge:
    token: str
    sent_to: str


@dataclass(frozen=True)
class SessionInfo:
    id: str
    patient_id: int
    acting_patient_id: int
    csrf_token: str


class Accounts:
    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        notifier: Notifier,
        codes: CodeHasher,
        throttle: LoginThrottle | None = None,
        failures: FailureStore | None = None,
    ) -> None:
        """`failures` is where the lock-out counters live (server.py: the database, shared by
        every node); without it, this process's memory."""
        self.engine = engine
        self.reads = db.autocommit_reads(engine)
        self.settings = settings
        self.notifier = notifier
        self.codes = codes
        self.failures: FailureStore = failures if failures is not None else MemoryFailures()
        self.throttle = throttle or LoginThrottle(store=self.failures, namespace="webmail")
        self.activation_throttle = LoginThrottle(store=self.failures, namespace="activation")
        self._checks = asyncio.Semaphore(2)  # argon2 uses 64 MiB per check: bound the memory
        self._profiles: dict[int, tuple[float, list[patients.Profile]]] = {}
        self._sessions: dict[str, tuple[float, SessionInfo, datetime, datetime]] = {}
        self._reading_sessions: SingleFlight[str, tuple[float, SessionInfo, datetime, datetime] | None] = SingleFlight()
        self._loading_profiles: SingleFlight[int, list[patients.Profile]] = SingleFlight()
        self._touching: set[str] = set()

    async def profiles(self, patient_id: int) -> list[patients.Profile]:
        """The profiles a person may act on, reused for a few seconds: every page asks, and
        guardianships, delegations and statuses change seldom (a closed profile also ends
        its sessions, which is checked on every request)."""
        moment = time.monotonic()
        cached = self._profiles.get(patient_id)
        if cached is not None and moment - cached[0] < PROFILES_SECONDS:
            return cached[1]

        async def load() -> list[patients.Profile]:
            async with self.reads.connect() as conn:
                found = await patients.profiles_for(conn, patient_id)
            if len(self._profiles) > 10_000:
                self._profiles.clear()
            self._profiles[patient_id] = (moment, found)
            return found

        return await self._loading_profiles.run(patient_id, load)

    def forget_profiles(self, patient_id: int | None = None) -> None:
        if patient_id is None:
            self._profiles.clear()
        else:
            self._profiles.pop(patient_id, None)

    async def _verify_password(self, stored: str | None, password: str) -> bool:
        async with self._checks:
            return await asyncio.to_thread(verify_password, stored, password)

    # ---- login, step 1: identifier and password -------------------------------------------

    @staticmethod
    def login_key(account: patients.PatientAccount | None, identifier: str) -> str:
        """What the per-account lock-out counts: the account itself, however it was named
        (INS with or without spaces, dots or dashes, or the email in any case); for a name
        that matches no account, its canonical spelling, so that it locks the same way."""
        return f"patient:{account.id}" if account is not None else f"unknown-{patients.canonical_identifier(identifier)}"

    async def _check_throttle(self, throttle: LoginThrottle, *keys: str) -> None:
        try:
            await throttle.check(*keys)
        except Locked as locked:
            raise Refused(f"Trop d'essais. Pour votre sécurité, réessayez dans {locked.seconds // 60 + 1} minutes.", locked=True) from None

    async def start_login(self, identifier: str, password: str, client: str) -> Challenge:
        async with self.reads.connect() as conn:
            account = await patients.find_for_login(conn, identifier)
        account_key, address_key = self.login_key(account, identifier), f"web:{client}"
        await self._check_throttle(self.throttle, account_key, address_key)
        ok = await self._verify_password(account.password_hash if account else None, password)
        if not ok or account is None:
            await self.throttle.failed(account_key, address_key)
            log.info("webmail login refused: %s from %s", pseudonym(account_key), client)
            raise Refused(WRONG_CREDENTIALS)
        await self.throttle.succeeded(account_key)
        if account.status == PatientStatus.CREATED.value:
            raise Refused("Votre profil n'est pas encore activé. Activez-le avec le code provisoire reçu par courrier.")
        if account.status in {PatientStatus.OPPOSED.value, PatientStatus.CLOSED.value}:
            raise Refused("Ce profil est fermé : il ne permet plus de se connecter.")
        if not account.email:
            raise Refused("Aucune adresse e-mail n'est enregistrée pour vous envoyer le code. Contactez votre caisse d'assurance maladie.")
        return await self._send_login_code(account)

    async def _send_login_code(self, account: patients.PatientAccount) -> Challenge:
        assert account.email
        code, token = new_code(), new_token()
        sent_to = mask_email(account.email)
        async with self.engine.begin() as conn:
            await conn.execute(
                LoginChallenge.__table__.insert().values(
                    id=token_id(token),
                    patient_id=account.id,
                    code_hash=self.codes.hash("login", account.id, code),
                    sent_to=sent_to,
                    attempts=0,
                    state="pending",
                    created_at=now(),
                    expires_at=now() + timedelta(minutes=self.settings.webmail_code_minutes),
                )
            )
        await self.notifier.send(
            account.email,
            "Votre code de connexion Caducée",
            f"Bonjour,\n\nVotre code de connexion est : {code}\n\n"
            f"Il est valable {self.settings.webmail_code_minutes} minutes et ne sert qu'une fois.\n"
            "Ne le donnez à personne : Caducée ne vous le demandera jamais par téléphone.\n\n"
            "Si vous n'avez pas essayé de vous connecter, quelqu'un connaît peut-être votre mot de passe : "
            f"changez-le dans « Mon compte » ({self.settings.webmail_url.rstrip('/')}/compte), "
            f"ou, si vous ne pouvez plus vous connecter, avec « Mot de passe oublié » ({self.settings.webmail_url.rstrip('/')}/mot-de-passe-oublie).\n",
        )
        return Challenge(token, sent_to)

    async def challenge_destination(self, token: str) -> str | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(LoginChallenge.sent_to, LoginChallenge.state, LoginChallenge.expires_at).where(
                        LoginChallenge.id == token_id(token)
                    )
                )
            ).first()
        if row is None or row.state != "pending" or aware(row.expires_at) < now():
            return None
        return str(row.sent_to)

    # ---- login, step 2: the code ---------------------------------------------------------

    async def verify_code(self, token: str, code: str) -> int:
        """The patient id once the code is right; Refused otherwise (with tries left)."""
        limit = self.settings.webmail_code_attempts
        challenge = token_id(token)
        code = "".join(ch for ch in code if ch.isdigit())
        refusal: Refused | None = None
        async with self.engine.begin() as conn:
            # The try is counted before the code is compared, in the same transaction: two
            # requests at once cannot both get a free try. A refusal is raised only after the
            # commit, so that the counted try stays counted.
            row = (
                await conn.execute(
                    update(LoginChallenge)
                    .where(LoginChallenge.id == challenge, LoginChallenge.state == "pending")
                    .values(attempts=LoginChallenge.attempts + 1)
                    .returning(LoginChallenge.patient_id, LoginChallenge.code_hash, LoginChallenge.attempts, LoginChallenge.expires_at)
                )
            ).first()
            if row is None:
                refusal = Refused("Ce code n'est plus valable. Reconnectez-vous pour recevoir un nouveau code.", locked=True)
            elif aware(row.expires_at) < now():
                refusal = Refused("Ce code a expiré. Reconnectez-vous pour recevoir un nouveau code.", locked=True)
            elif len(code) != 6 or not self.codes.matches(row.code_hash, "login", row.patient_id, code):
                remaining = limit - row.attempts
                if remaining > 0:
                    refusal = Refused(
                        f"Code incorrect. Il vous reste {remaining} essai{'s' if remaining > 1 else ''}.", remaining=remaining
                    )
                else:
                    refusal = Refused(
                        "Code incorrect. Trop d'essais : ce code est bloqué. Reconnectez-vous pour recevoir un nouveau code.", locked=True
                    )
            new_state = "used" if refusal is None else ("locked" if refusal.locked and row is not None else None)
            if new_state is not None:
                await conn.execute(update(LoginChallenge).where(LoginChallenge.id == challenge).values(state=new_state))
        if refusal is not None:
            raise refusal
        assert row is not None
        return int(row.patient_id)

    # ---- sessions ------------------------------------------------------------------------

    async def open_session(self, patient_id: int, acting_patient_id: int | None = None) -> tuple[str, SessionInfo]:
        token, csrf = new_token(), new_token()
        moment = now()
        acting = acting_patient_id or patient_id
        info = SessionInfo(token_id(token), patient_id, acting, csrf)
        async with self.engine.begin() as conn:
            await conn.execute(  # ended sessions kept for drafts: a day is enough
                delete(WebSession).where(WebSession.patient_id == patient_id, WebSession.last_seen_at < moment - timedelta(days=1))
            )
            await conn.execute(
                WebSession.__table__.insert().values(
                    id=info.id,
                    patient_id=patient_id,
                    acting_patient_id=acting,
                    csrf_token=csrf,
                    created_at=moment,
                    last_seen_at=moment,
                    expires_at=moment + timedelta(hours=self.settings.webmail_session_hours),
                )
            )
        return token, info

    async def session(self, token: str) -> SessionInfo | None:
        """The live session of a cookie value; None when unknown, idle too long or too old.

        The row is re-read at most every `SESSION_RECHECK_SECONDS` per process: every request
        asks, and the query costs more than the rest of a page. A session ended in this
        process is forgotten at once; one ended in another worker process (a logout there)
        still opens pages here for at most that long.
        """
        if not token or len(token) > 100:
            return None
        session_id = token_id(token)
        moment_mono = time.monotonic()
        cached = self._sessions.get(session_id)
        if cached is None or moment_mono - cached[0] > SESSION_RECHECK_SECONDS:
            cached = await self._reading_sessions.run(session_id, lambda: self._read_session(session_id, moment_mono))
            if cached is None:
                return None
        _, info, last_seen, expires = cached
        moment = now()
        if expires < moment or last_seen + timedelta(minutes=self.settings.webmail_idle_minutes) < moment:
            # The row stays (it opens nothing now): a form posted after the expiry can still
            # say whose draft it carries (`expired_owner`). Old rows go at the next login.
            self._sessions.pop(session_id, None)
            return None
        if moment - last_seen > TOUCH_EVERY and session_id not in self._touching:
            # One write per session and minute, not one per request in flight at that moment.
            self._touching.add(session_id)
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(update(WebSession).where(WebSession.id == session_id).values(last_seen_at=moment))
                current = self._sessions.get(session_id)
                if current is not None:
                    self._sessions[session_id] = (current[0], current[1], moment, current[3])
            finally:
                self._touching.discard(session_id)
        return info

    async def _read_session(self, session_id: str, moment_mono: float) -> tuple[float, SessionInfo, datetime, datetime] | None:
        async with self.reads.connect() as conn:  # a prepared statement, no ORM, no transaction
            row = (await conn.execute(_SESSION, {"id": session_id})).first()
        if row is None:
            self._sessions.pop(session_id, None)
            return None
        if len(self._sessions) > 100_000:
            self._sessions.clear()
        cached = (
            moment_mono,
            SessionInfo(row.id, row.patient_id, row.acting_patient_id, row.csrf_token),
            aware(row.last_seen_at),
            aware(row.expires_at),
        )
        self._sessions[session_id] = cached
        return cached

    async def switch_profile(self, session: SessionInfo, acting_patient_id: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(update(WebSession).where(WebSession.id == session.id).values(acting_patient_id=acting_patient_id))
        self._sessions.pop(session.id, None)

    async def close_session(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        async with self.engine.begin() as conn:
            await conn.execute(delete(WebSession).where(WebSession.id == session_id))

    async def expired_owner(self, token: str) -> SessionInfo | None:
        """Who an ended session belonged to (for at most a day after it ended), to keep what
        they were writing when it ended; None for an unknown token."""
        if not token or len(token) > 100:
            return None
        async with self.engine.connect() as conn:
            row = (await conn.execute(_SESSION, {"id": token_id(token)})).first()
        if row is None or aware(row.last_seen_at) < now() - timedelta(days=1):
            return None
        return SessionInfo(row.id, row.patient_id, row.acting_patient_id, row.csrf_token)

    async def extend(self, session_id: str) -> None:
        """ "Rester connecté": the idle time starts again now."""
        moment = now()
        async with self.engine.begin() as conn:
            await conn.execute(update(WebSession).where(WebSession.id == session_id).values(last_seen_at=moment))
        current = self._sessions.get(session_id)
        if current is not None:
            self._sessions[session_id] = (current[0], current[1], moment, current[3])

    async def close_other_sessions(self, patient_id: int, keep: str) -> None:
        for key in [key for key, cached in self._sessions.items() if cached[1].patient_id == patient_id and key != keep]:
            self._sessions.pop(key, None)
        async with self.engine.begin() as conn:
            await conn.execute(delete(WebSession).where(WebSession.patient_id == patient_id, WebSession.id != keep))

    async def close_all_sessions(self, patient_id: int) -> None:
        for key in [key for key, cached in self._sessions.items() if cached[1].patient_id == patient_id]:
            self._sessions.pop(key, None)
        async with self.engine.begin() as conn:
            await conn.execute(delete(WebSession).where(WebSession.patient_id == patient_id))

    # ---- lifecycle -----------------------------------------------------------------------

    async def issue_activation_code(self, patient_id: int, *, valid_days: int = 90) -> str:
        """A provisional code for a created profile (sent by post; the demo writes it down)."""
        code = new_code(8)
        async with self.engine.begin() as conn:
            await conn.execute(delete(ActivationCode).where(ActivationCode.patient_id == patient_id))
            await conn.execute(
                ActivationCode.__table__.insert().values(
                    patient_id=patient_id,
                    code_hash=self.codes.hash("activation", patient_id, code),
                    attempts=0,
                    created_at=now(),
                    expires_at=now() + timedelta(days=valid_days),
                )
            )
        return code

    async def _check_activation(self, ins: str, code: str, client: str) -> patients.PatientAccount:
        """The created profile `ins` names, if `code` is its provisional code.

        Every failure gets the same sentence, whether the INS is unknown, its profile already
        activated, opposed or closed, the code wrong or expired: the page must not tell an
        INS's status to whoever types it. Tries are counted per INS (canonical form) and per
        client address, like logins, before anything is compared. Nor must its timing: a
        created profile's try is a committed write the others do not make, so every answer
        is held to the same floor (`core.timing`)."""
        async with timing.no_sooner_than(ACTIVATION_ANSWER_FLOOR, "an activation code check"):
            return await self._check_activation_now(ins, code, client)

    async def _check_activation_now(self, ins: str, code: str, client: str) -> patients.PatientAccount:
        async with self.reads.connect() as conn:
            account = None if "@" in ins else await patients.find_for_login(conn, ins)
        ins_key, address_key = f"activation-{patients.canonical_identifier(ins)}", f"activation-web:{client}"
        await self._check_throttle(self.activation_throttle, ins_key, address_key)
        row = None
        if account is not None and account.status == PatientStatus.CREATED.value:
            async with self.engine.begin() as conn:  # the try is counted (and committed) before the code is compared
                row = (
                    await conn.execute(
                        update(ActivationCode)
                        .where(ActivationCode.patient_id == account.id)
                        .values(attempts=ActivationCode.attempts + 1)
                        .returning(ActivationCode.code_hash, ActivationCode.attempts, ActivationCode.expires_at)
                    )
                ).first()
        digits = "".join(ch for ch in code if ch in "0123456789")
        if (
            account is None
            or row is None
            or aware(row.expires_at) < now()
            or row.attempts > self.settings.webmail_code_attempts
            or not self.codes.matches(row.code_hash, "activation", account.id, digits)
        ):
            await self.activation_throttle.failed(ins_key, address_key)
            log.info("webmail activation refused: %s from %s", pseudonym(ins_key), client)
            raise Refused(WRONG_ACTIVATION)
        await self.activation_throttle.succeeded(ins_key)
        return account

    async def activate(
        self, ins: str, code: str, email: str, password: str, confirmation: str, client: str = "?"
    ) -> patients.PatientAccount:
        problem = password_problem(password, confirmation)
        email = email.strip().lower()
        if problem is None and ("@" not in email or "." not in email.rpartition("@")[2] or len(email) > 254):
            problem = "L'adresse e-mail n'est pas valide : elle sert à vous envoyer vos codes de connexion."
        if problem:
            raise Refused(problem)
        account = await self._check_activation(ins, code, client)
        hashed = await asyncio.to_thread(hash_password, password)
        async with self.engine.begin() as conn:
            if await patients.email_taken(conn, email, account.id):
                raise Refused("Cette adresse e-mail est déjà utilisée par un autre profil.")
            await patients.set_password(conn, account.id, hashed, email)
            await patients.set_status(conn, account.id, PatientStatus.ACTIVATED)
            await conn.execute(delete(ActivationCode).where(ActivationCode.patient_id == account.id))
        return account

    async def oppose(self, ins: str, code: str, client: str = "?") -> patients.PatientAccount:
        account = await self._check_activation(ins, code, client)
        async with self.engine.begin() as conn:
            await patients.set_status(conn, account.id, PatientStatus.OPPOSED)
            await conn.execute(delete(ActivationCode).where(ActivationCode.patient_id == account.id))
        return account

    async def close_profile(self, patient_id: int, password: str) -> None:
        async with self.engine.connect() as conn:
            account = await patients.get_account(conn, patient_id)
        if account is None or not await self._verify_password(account.password_hash, password):
            raise Refused("Mot de passe incorrect : votre profil n'a pas été fermé.")
        async with self.engine.begin() as conn:
            await patients.set_status(conn, patient_id, PatientStatus.CLOSED)
        await self.close_all_sessions(patient_id)
        self.forget_profiles()  # guardians and carers of this profile lose it at once in this process


async def purge_expired(engine: AsyncEngine) -> int:
    """Delete what can no longer be used: sessions past their end, login challenges, activation
    codes, password resets and email changes past their expiry (the purge job runs it)."""
    from caducee.webmail.models import EmailChange, PasswordReset

    moment = now()
    removed = 0
    async with engine.begin() as conn:
        for table in (WebSession, LoginChallenge, ActivationCode, PasswordReset, EmailChange):
            result = await conn.execute(delete(table).where(table.expires_at < moment))
            removed += int(result.rowcount or 0)
    return removed
