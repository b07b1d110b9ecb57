"""What a patient manages of their own account: a forgotten password, changing it, the
email the codes go to, and whether they get "a message is waiting" emails.

- Forgotten password: the page answers the same whether or not the INS or email names an
  account ("if a profile matches, a code was sent"); a code goes only to the email already
  registered, valid `webmail_code_minutes`, 5 tries, single use. Requests are throttled per
  account (canonical form, known or not) and per client address. A reset ends every session
  of the account and tells the registered email.
- Changing the password or the email needs the current password (counted by the login
  lock-out). A new email is confirmed by a code sent to it, and the old one is told.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.annuaire import patients
from caducee.annuaire.kinds import PatientStatus
from caducee.core import timing
from caducee.core.passwords import hash_password
from caducee.core.pseudonyms import pseudonym
from caducee.core.throttle import LoginThrottle
from caducee.webmail.accounts import Accounts, Refused, aware, now, password_problem
from caducee.webmail.codes import new_code, new_token, token_id
from caducee.webmail.models import AlertSettings, EmailChange, PasswordReset

log = logging.getLogger(__name__)

RESET_ANSWER_FLOOR = 0.4  # seconds: above a row written and an email handed to a relay on the LAN
RESET_REQUESTS_PER_HOUR = 3  # per account: enough for a lost email, too few to flood a mailbox
WRONG_RESET_CODE = "Code incorrect ou plus valable. Vérifiez le dernier code reçu, ou refaites une demande."
WRONG_PASSWORD = "Mot de passe actuel incorrect : rien n'a été changé."


def valid_email(email: str) -> bool:
    local, at, domain = email.rpartition("@")
    return bool(at and local and "." in domain and len(email) <= 254 and not any(ch.isspace() for ch in email))


class SelfService:
    def __init__(self, engine: AsyncEngine, accounts: Accounts) -> None:
        self.engine = engine
        self.accounts = accounts
        self.settings = accounts.settings
        self.reset_throttle = LoginThrottle(
            max_failures=RESET_REQUESTS_PER_HOUR,
            window=3600,
            lockout=3600,
            max_failures_per_address=20,
            store=accounts.failures,
            namespace="reset",
        )

    # ---- forgotten password ------------------------------------------------------------------

    async def request_reset(self, identifier: str, client: str) -> str:
        """A token for the browser, whatever `identifier` names; a code is emailed only if it
        names an activated account with an email. The answer takes as long either way
        (`core.timing`): writing the code and handing its email over would otherwise tell."""
        async with timing.no_sooner_than(RESET_ANSWER_FLOOR, "a password reset request"):
            return await self._request_reset(identifier, client)

    async def _request_reset(self, identifier: str, client: str) -> str:
        async with self.engine.connect() as conn:
            account = await patients.find_for_login(conn, identifier)
        key, address_key = "reset-" + self.accounts.login_key(account, identifier), f"reset-web:{client}"
        await self.accounts._check_throttle(self.reset_throttle, key, address_key)
        await self.reset_throttle.failed(key, address_key)  # every request counts: a bound on emails sent
        token = new_token()
        if account is None or account.status != PatientStatus.ACTIVATED.value or not account.email:
            log.info("webmail password reset asked for %s from %s: no code sent", pseudonym(key), client)
            return token
        code = new_code()
        async with self.engine.begin() as conn:
            await conn.execute(
                PasswordReset.__table__.insert().values(
                    id=token_id(token),
                    patient_id=account.id,
                    code_hash=self.accounts.codes.hash("reset", account.id, code),
                    attempts=0,
                    state="pending",
                    created_at=now(),
                    expires_at=now() + timedelta(minutes=self.settings.webmail_code_minutes),
                )
            )
        await self.accounts.notifier.send(
            account.email,
            "Votre code pour choisir un nouveau mot de passe",
            f"Bonjour,\n\nVous avez demandé à choisir un nouveau mot de passe pour votre messagerie santé Caducée.\n"
            f"Votre code est : {code}\n\nIl est valable {self.settings.webmail_code_minutes} minutes et ne sert qu'une fois.\n"
            "Si vous n'avez rien demandé, ignorez ce message : votre mot de passe reste le même.\n",
        )
        return token

    async def finish_reset(self, token: str, code: str, password: str, confirmation: str) -> int:
        """The patient id once the password is changed; Refused otherwise."""
        problem = password_problem(password, confirmation)
        if problem:
            raise Refused(problem)
        digits = "".join(ch for ch in code if ch in "0123456789")
        async with self.engine.begin() as conn:  # the try is counted before the code is compared
            row = (
                await conn.execute(
                    update(PasswordReset)
                    .where(PasswordReset.id == token_id(token), PasswordReset.state == "pending")
                    .values(attempts=PasswordReset.attempts + 1)
                    .returning(PasswordReset.patient_id, PasswordReset.code_hash, PasswordReset.attempts, PasswordReset.expires_at)
                )
            ).first()
            ok = (
                row is not None
                and aware(row.expires_at) >= now()
                and row.attempts <= self.settings.webmail_code_attempts
                and self.accounts.codes.matches(row.code_hash, "reset", row.patient_id, digits)
            )
            if row is not None and (ok or row.attempts >= self.settings.webmail_code_attempts):
                await conn.execute(
                    update(PasswordReset).where(PasswordReset.id == token_id(token)).values(state="used" if ok else "locked")
                )
        if not ok or row is None:
            raise Refused(WRONG_RESET_CODE)
        await self._set_password(row.patient_id, password)
        await self.accounts.close_all_sessions(row.patient_id)
        await self._tell(
            row.patient_id, "Votre mot de passe a été changé", "le mot de passe de votre messagerie santé Caducée a été changé"
        )
        return int(row.patient_id)

    # ---- changes made while signed in -----------------------------------------------------------

    async def _check_password(self, patient_id: int, password: str, client: str) -> patients.PatientAccount:
        async with self.engine.connect() as conn:
            account = await patients.get_account(conn, patient_id)
        assert account is not None
        key, address_key = self.accounts.login_key(account, ""), f"web:{client}"
        await self.accounts._check_throttle(self.accounts.throttle, key, address_key)
        if not await self.accounts._verify_password(account.password_hash, password):
            await self.accounts.throttle.failed(key, address_key)
            raise Refused(WRONG_PASSWORD)
        return account

    async def change_password(self, patient_id: int, session_id: str, current: str, new: str, confirmation: str, client: str) -> None:
        problem = password_problem(new, confirmation)
        if problem:
            raise Refused(problem)
        await self._check_password(patient_id, current, client)
        await self._set_password(patient_id, new)
        await self.accounts.close_other_sessions(patient_id, session_id)
        await self._tell(patient_id, "Votre mot de passe a été changé", "le mot de passe de votre messagerie santé Caducée a été changé")

    async def start_email_change(self, patient_id: int, email: str, password: str, client: str) -> str:
        """Sends a code to the new address; its masked form."""
        email = email.strip().lower()
        if not valid_email(email):
            raise Refused("Cette adresse e-mail n'est pas valide. Exemple : prenom.nom@exemple.fr")
        await self._check_password(patient_id, password, client)
        async with self.engine.connect() as conn:
            taken = await patients.email_taken(conn, email, patient_id)
        # An address already another profile's goes through the same steps (a change waits
        # for a code), so that no patient learns who else has a profile; but its code is
        # never sent: the address's owner gets a word instead, and the change cannot finish.
        code = new_code()
        async with self.engine.begin() as conn:
            await conn.execute(delete(EmailChange).where(EmailChange.patient_id == patient_id))
            await conn.execute(
                EmailChange.__table__.insert().values(
                    patient_id=patient_id,
                    new_email=email,
                    code_hash=self.accounts.codes.hash("email", patient_id, code),
                    attempts=0,
                    created_at=now(),
                    expires_at=now() + timedelta(minutes=self.settings.webmail_code_minutes),
                )
            )
        if taken:
            await self.accounts.notifier.send(
                email,
                "Votre adresse e-mail et Caducée",
                "Bonjour,\n\nQuelqu'un a demandé à utiliser cette adresse pour un autre profil de la messagerie santé Caducée. "
                "Elle reste celle de votre profil : rien n'a été changé, et vous n'avez rien à faire.\n",
            )
            from caducee.webmail.codes import mask_email

            return mask_email(email)
        await self.accounts.notifier.send(
            email,
            "Confirmez votre nouvelle adresse e-mail",
            f"Bonjour,\n\nPour que vos codes de connexion Caducée arrivent à cette adresse, saisissez ce code : {code}\n\n"
            f"Il est valable {self.settings.webmail_code_minutes} minutes. Si vous n'avez rien demandé, ignorez ce message.\n",
        )
        from caducee.webmail.codes import mask_email

        return mask_email(email)

    async def pending_email(self, patient_id: int) -> str | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(select(EmailChange.new_email, EmailChange.expires_at).where(EmailChange.patient_id == patient_id))
            ).first()
        return str(row.new_email) if row is not None and aware(row.expires_at) >= now() else None

    async def confirm_email_change(self, patient_id: int, code: str) -> str:
        digits = "".join(ch for ch in code if ch in "0123456789")
        async with self.engine.begin() as conn:
            row = (
                await conn.execute(
                    update(EmailChange)
                    .where(EmailChange.patient_id == patient_id)
                    .values(attempts=EmailChange.attempts + 1)
                    .returning(EmailChange.new_email, EmailChange.code_hash, EmailChange.attempts, EmailChange.expires_at)
                )
            ).first()
        if row is None or aware(row.expires_at) < now() or row.attempts > self.settings.webmail_code_attempts:
            raise Refused("Ce code n'est plus valable : recommencez le changement d'adresse.", locked=True)
        if not self.accounts.codes.matches(row.code_hash, "email", patient_id, digits):
            left = self.settings.webmail_code_attempts - row.attempts
            raise Refused(f"Code incorrect. Il vous reste {left} essai{'s' if left > 1 else ''}." if left > 0 else "Code incorrect.")
        async with self.engine.begin() as conn:
            if await patients.email_taken(conn, row.new_email, patient_id):  # taken since the code was sent
                raise Refused("Ce code n'est plus valable : recommencez le changement d'adresse.", locked=True)
            old = await patients.get_account(conn, patient_id)
            await patients.set_email(conn, patient_id, row.new_email)
            await conn.execute(delete(EmailChange).where(EmailChange.patient_id == patient_id))
        self.accounts.forget_profiles(patient_id)
        if old is not None and old.email:
            await self.accounts.notifier.send(
                old.email,
                "Votre adresse e-mail a été changée",
                "Bonjour,\n\nVos codes de connexion Caducée seront désormais envoyés à une autre adresse.\n"
                "Si vous n'avez rien demandé, contactez votre caisse d'assurance maladie.\n",
            )
        return str(row.new_email)

    # ---- new-mail alerts ------------------------------------------------------------------------

    async def alerts_enabled(self, patient_id: int) -> bool:
        async with self.engine.connect() as conn:
            value = (await conn.execute(select(AlertSettings.new_mail_alerts).where(AlertSettings.patient_id == patient_id))).scalar()
        return True if value is None else bool(value)

    async def set_alerts(self, patient_id: int, enabled: bool) -> None:
        async with self.engine.begin() as conn:
            changed = await conn.execute(
                update(AlertSettings).where(AlertSettings.patient_id == patient_id).values(new_mail_alerts=enabled, updated_at=now())
            )
            if not changed.rowcount:
                await conn.execute(
                    AlertSettings.__table__.insert().values(patient_id=patient_id, new_mail_alerts=enabled, updated_at=now())
                )

    async def muted(self, addresses: Iterable[str]) -> set[str]:
        return await muted_addresses(self.engine, addresses)

    # ---- helpers --------------------------------------------------------------------------------

    async def _set_password(self, patient_id: int, password: str) -> None:
        hashed = await asyncio.to_thread(hash_password, password)
        async with self.engine.begin() as conn:
            await patients.set_password(conn, patient_id, hashed, None)

    async def _tell(self, patient_id: int, subject: str, what: str) -> None:
        async with self.engine.connect() as conn:
            account = await patients.get_account(conn, patient_id)
        if account is not None and account.email:
            await self.accounts.notifier.send(
                account.email,
                subject,
                f"Bonjour,\n\nNous vous confirmons que {what}.\n"
                "Si ce n'est pas vous, choisissez vite un nouveau mot de passe avec « Mot de passe oublié » "
                f"({self.settings.webmail_url.rstrip('/')}/mot-de-passe-oublie).\n",
            )


async def muted_addresses(engine: AsyncEngine, addresses: Iterable[str]) -> set[str]:
    """The patient addresses among `addresses` whose owner turned the new-mail emails off
    (server.py hands this to the notifier's alerts, which ask before emailing)."""
    async with engine.connect() as conn:
        owners = await patients.ids_of(conn, list(addresses))
        if not owners:
            return set()
        off = set(
            (
                await conn.execute(
                    select(AlertSettings.patient_id).where(
                        AlertSettings.patient_id.in_(list(owners.values())), AlertSettings.new_mail_alerts.is_(False)
                    )
                )
            ).scalars()
        )
    return {address for address, owner in owners.items() if owner in off}
