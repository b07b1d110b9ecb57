"""The demo world `caducee serve --demo` seeds into an empty database.

Everything a newcomer needs to try each path of the system: a doctor and a nurse who send,
a pharmacy that receives prescriptions, two adult patients (one the guardian of a minor),
the CNAM sender of campaigns, our own domains and a second operator of the trust space.
Passwords are random per seed and written, with the addresses, to
`<data dir>/demo-credentials.json` (mode 0600).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, date
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from caducee.annuaire import service
from caducee.annuaire.kinds import MailboxType, PatientStatus
from caducee.campaigns import tokens as campaign_tokens
from caducee.config import Settings
from caducee.core.passwords import generate_password, hash_password

OPERATOR_DOMAIN = "demo.mssante.fr"
PEER_OPERATOR_DOMAIN = "autre-operateur.mssante.fr"
PEER_OPERATOR_DN = "CN=mx.autre-operateur.mssante.fr,O=Autre Operateur,C=FR"

# Valid identifiers (Luhn / NIR keys checked by the tests).
DOCTOR_RPPS = "10000000009"
NURSE_RPPS = "10000000017"
PHARMACIST_RPPS = "10000000025"
PHARMACY_FINESS = "750000010"
ADULT_1_INS = "285037512345688"  # Claire Martin, born March 1985 in Paris
ADULT_2_INS = "178112A12345684"  # Paul Rossi, born November 1978 in Corse-du-Sud
MINOR_INS = "215067512345674"  # Léa Martin, born June 2015, Claire's daughter
NEW_PATIENT_INS = "190076912345622"  # Marc Dubois, born July 1990 in the Rhône: profile created, not yet activated
UNKNOWN_RPPS = "10000000033"  # Jean Inconnu: Pro Santé Connect knows him, our annuaire does not
CABINET_ADDRESS = f"cabinet.lilas@{OPERATOR_DOMAIN}"  # the practice's CAB mailbox, attached to Dr Bernard
PSC_CLIENT_ID = "caducee-demo"  # the portal's client at the local Pro Santé Connect stand-in
PSC_SOFTWARE_CLIENT_ID = "logiciel-cabinet-demo"  # a public client (practice software, a mail client) whose tokens are for Caducée
ASE_MINOR_INS = "112047598765420"  # Noah Petit, born April 2012, in the care of the ASE: no legal representative has an account


def credentials_path(settings: Settings) -> Path:
    return settings.data_dir / "demo-credentials.json"


async def seed(engine: AsyncEngine, settings: Settings, *, certificates: bool = True) -> dict[str, Any] | None:
    """Seed the demo world if the database holds no mailbox; return the credentials written.

    With `certificates`, each demo mailbox also gets an S/MIME certificate from the test
    trust space, published in the annuaire (RSA key generation: about a second in all).
    """
    async with engine.begin() as conn:
        if not await service.is_empty(conn):
            return None
        credentials: dict[str, Any] = {"professionals": {}, "patients": {}, "cnam": {}}
        patient_domain = settings.patient_domain

        for domain in settings.local_domains:
            await service.add_trust_domain(conn, domain, description="Caducée (local)", is_local=True)
        await service.ensure_postmaster(conn, settings.operator_domain)
        await service.add_trust_domain(
            conn, PEER_OPERATOR_DOMAIN, description="Second operator of the demo trust space", operator_dns=[PEER_OPERATOR_DN]
        )

        cabinet = await service.add_structure(
            conn,
            id_type="SIRET",
            identifier="73282932000074",
            name="Cabinet médical des Lilas",
            address_line="12 rue des Lilas",
            postcode="75019",
            city="Paris",
        )
        pharmacy = await service.add_structure(
            conn,
            id_type="FINESS",
            identifier=PHARMACY_FINESS,
            name="Pharmacie du Canal",
            address_line="4 quai de Jemmapes",
            postcode="75010",
            city="Paris",
            is_officine=True,
        )
        cnam = await service.add_structure(
            conn,
            id_type="SIRET",
            identifier="18003502400017",
            name="Caisse nationale de l'Assurance Maladie",
            address_line="50 avenue du Professeur André Lemierre",
            postcode="75020",
            city="Paris",
        )

        people = [
            (
                "doctor",
                "8" + DOCTOR_RPPS,
                "Dr",
                "Sophie",
                "Bernard",
                "10",
                "Médecin",
                "Médecine générale",
                f"sophie.bernard@{OPERATOR_DOMAIN}",
                cabinet,
            ),
            ("nurse", "8" + NURSE_RPPS, "M.", "Karim", "Haddad", "60", "Infirmier", "", f"karim.haddad@{OPERATOR_DOMAIN}", cabinet),
        ]
        for key, national_id, civility, first, last, code, label, savoir_faire, address, structure in people:
            pro = await service.add_professional(
                conn,
                national_id=national_id,
                civility=civility,
                first_name=first,
                last_name=last,
                profession_code=code,
                profession_label=label,
                savoir_faire_label=savoir_faire,
            )
            password = generate_password()
            await service.add_mailbox(
                conn,
                address=address,
                type=MailboxType.PER,
                display_name=f"{civility} {first} {last}",
                password_hash=hash_password(password),
                professional=pro,
                structure=structure,
            )
            credentials["professionals"][key] = {"address": address, "password": password, "name": f"{first} {last}"}

        # The practice's own mailbox, attached in the annuaire to Dr Bernard (she opens it with her PSC token).
        await service.add_mailbox(
            conn,
            address=CABINET_ADDRESS,
            type=MailboxType.CAB,
            display_name="Cabinet médical des Lilas",
            professional="8" + DOCTOR_RPPS,
            structure=cabinet,
        )
        credentials["cabinet"] = {"address": CABINET_ADDRESS, "attached_to": "doctor"}

        pharmacist = await service.add_professional(
            conn,
            national_id="8" + PHARMACIST_RPPS,
            civility="Mme",
            first_name="Nadia",
            last_name="Lefèvre",
            profession_code="21",
            profession_label="Pharmacien",
        )
        del pharmacist  # the pharmacy's ORG mailbox is the one patients write to
        pharmacy_address = f"pharmacie.canal@{OPERATOR_DOMAIN}"
        password = generate_password()
        await service.add_mailbox(
            conn,
            address=pharmacy_address,
            type=MailboxType.ORG,
            display_name="Pharmacie du Canal",
            password_hash=hash_password(password),
            structure=pharmacy,
            service="Officine",
        )
        credentials["professionals"]["pharmacy"] = {"address": pharmacy_address, "password": password, "name": "Pharmacie du Canal"}

        token = generate_password(24)
        cnam_address = f"prevention.cnam@{OPERATOR_DOMAIN}"
        await service.add_mailbox(
            conn,
            address=cnam_address,
            type=MailboxType.APP,
            display_name="Assurance Maladie - Prévention",
            password_hash=hash_password(token),
            structure=cnam,
        )
        await campaign_tokens.rotate(conn, cnam_address, token)  # the campaign API's token (SHA-256 at rest)
        credentials["cnam"] = {"address": cnam_address, "api_token": token}

        patients = [
            ("adult_1", ADULT_1_INS, "Martin", "Claire Anne", date(1985, 3, 14), "F", "claire.martin@example.org"),
            ("adult_2", ADULT_2_INS, "Rossi", "Paul", date(1978, 11, 2), "M", "paul.rossi@example.org"),
        ]
        ids: dict[str, int] = {}
        for key, ins, last, first, born, sex, email in patients:
            password = generate_password()
            ids[key] = await service.add_patient(
                conn,
                ins=ins,
                last_name=last,
                first_names=first,
                birth_date=born,
                sex=sex,
                patient_domain=patient_domain,
                status=PatientStatus.ACTIVATED,
                email=email,
                password_hash=hash_password(password),
            )
            credentials["patients"][key] = {
                "ins": ins,
                "address": service.patient_address(ins, patient_domain),
                "email": email,
                "password": password,
                "name": f"{first.split()[0]} {last}",
            }
        minor = await service.add_patient(
            conn,
            ins=MINOR_INS,
            last_name="Martin",
            first_names="Léa",
            birth_date=date(2015, 6, 21),
            sex="F",
            patient_domain=patient_domain,
            status=PatientStatus.ACTIVATED,
        )
        await service.add_guardianship(conn, guardian_id=ids["adult_1"], minor_id=minor)
        credentials["patients"]["minor"] = {
            "ins": MINOR_INS,
            "address": service.patient_address(MINOR_INS, patient_domain),
            "name": "Léa Martin",
            "guardian": "adult_1",
        }
        await service.add_delegation(conn, patient_id=ids["adult_1"], carer_id=ids["adult_2"], scope="messages,dossier")
        credentials["patients"]["adult_2"]["carer_of"] = "adult_1 (read only: messages and dossier)"
        await service.add_patient(
            conn,
            ins=ASE_MINOR_INS,
            last_name="Petit",
            first_names="Noah",
            birth_date=date(2012, 4, 9),
            sex="M",
            patient_domain=patient_domain,
            status=PatientStatus.ACTIVATED,
        )
        credentials["patients"]["ase_minor"] = {
            "ins": ASE_MINOR_INS,
            "address": service.patient_address(ASE_MINOR_INS, patient_domain),
            "name": "Noah Petit",
            "guardian": None,
        }
        new_patient = await service.add_patient(
            conn,
            ins=NEW_PATIENT_INS,
            last_name="Dubois",
            first_names="Marc",
            birth_date=date(1990, 7, 8),
            sex="M",
            patient_domain=patient_domain,
            status=PatientStatus.CREATED,
        )
        credentials["patients"]["not_activated"] = {
            "ins": NEW_PATIENT_INS,
            "address": service.patient_address(NEW_PATIENT_INS, patient_domain),
            "name": "Marc Dubois",
        }
        credentials["domains"] = {"operator": OPERATOR_DOMAIN, "patients": patient_domain, "peer_operator": PEER_OPERATOR_DOMAIN}

    credentials["patients"]["not_activated"]["activation_code"] = await _activation_code(engine, settings, new_patient)
    if certificates:
        await publish_certificates(engine, settings, credentials)
    write_credentials(credentials_path(settings), credentials)
    return credentials


async def publish_certificates(engine: AsyncEngine, settings: Settings, credentials: dict[str, Any]) -> None:
    """Issue an S/MIME certificate for every demo mailbox from the test trust space and
    publish it in the annuaire.

    Caducée holds the keys of patients and organisation mailboxes (it signs and decrypts
    for them). The demo doctor and nurse keep theirs, as professionals do in their own mail
    client: their pair is left in `pki/handed-out/`, with a PKCS#12 file to import into
    Thunderbird (its password is the account password).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

    from caducee.crypto.pki import Issuer, development_space, load_key, write_private

    space, passphrase = development_space(settings)
    issuer = Issuer(space, passphrase)
    owners = [credentials["professionals"]["doctor"], credentials["professionals"]["nurse"]]
    held = [credentials["professionals"]["pharmacy"], *credentials["patients"].values(), credentials["cnam"]]
    async with engine.begin() as conn:
        for person in [*owners, *held]:
            keeps_own_key = any(person is owner for owner in owners)
            pair = space.handed_out(person["address"]) if keeps_own_key else space.mailbox(person["address"])
            if not _usable(pair):  # a data dir seeded before keeps its keys (a database reset does not rotate them)
                pair = issuer.mailbox(
                    person["address"], person.get("name", person["address"]), settings.operator_domain, held=not keeps_own_key
                )
            await service.publish_certificate(conn, person["address"], pair.cert.read_bytes())
            if keeps_own_key:
                bundle = pkcs12.serialize_key_and_certificates(
                    person["address"].encode(),
                    load_key(pair.key, passphrase),
                    x509.load_pem_x509_certificate(pair.cert.read_bytes()),
                    None,
                    BestAvailableEncryption(person["password"].encode()),
                )
                p12 = pair.cert.with_suffix(".p12")
                write_private(p12, bundle)
                person["smime_pkcs12"] = str(p12)


async def _activation_code(engine: AsyncEngine, settings: Settings, patient_id: int) -> str:
    """The provisional code a created profile is activated with (sent by post in real life)."""
    from caducee.crypto.atrest import load_master_key
    from caducee.notify.notifier import notifier_from_settings
    from caducee.webmail.accounts import Accounts
    from caducee.webmail.codes import CodeHasher

    accounts = Accounts(engine, settings, notifier_from_settings(settings), CodeHasher(load_master_key(settings.data_dir)))
    return await accounts.issue_activation_code(patient_id)


def _usable(pair: Any) -> bool:
    """Whether an S/MIME pair on disk exists and is valid for at least another month."""
    from datetime import datetime, timedelta

    from cryptography import x509

    if not (pair.cert.exists() and pair.key.exists()):
        return False
    cert = x509.load_pem_x509_certificate(pair.cert.read_bytes())
    return cert.not_valid_after_utc > datetime.now(UTC) + timedelta(days=30)


def psc_standin_users() -> list[Any]:
    """The professionals the local Pro Santé Connect stand-in knows: the demo's doctor, nurse
    and pharmacist (in the annuaire), and one the annuaire does not know."""
    from caducee.identity.standin.config import StandinUser

    cabinet = {"structure_name": "Cabinet médical des Lilas", "structure_id": "R10000001", "siret": "73282932000074", "postcode": "75019"}
    return [
        StandinUser(
            "8" + DOCTOR_RPPS,
            "DR",
            "Sophie",
            "Bernard",
            "10",
            "Médecin",
            savoir_faire="SM54",
            email="sophie.bernard@example.org",
            **cabinet,
        ),
        StandinUser("8" + NURSE_RPPS, "M", "Karim", "Haddad", "60", "Infirmier", **cabinet),
        StandinUser(
            "8" + PHARMACIST_RPPS,
            "MME",
            "Nadia",
            "Lefèvre",
            "21",
            "Pharmacien",
            structure_name="Pharmacie du Canal",
            structure_id="R10000002",
            finess=PHARMACY_FINESS,
            postcode="75010",
        ),
        StandinUser("8" + UNKNOWN_RPPS, "M", "Jean", "Inconnu", "10", "Médecin", structure_name="Cabinet hors annuaire", postcode="69001"),
    ]


def psc_standin_config(settings: Settings) -> tuple[Path, str]:
    """The stand-in's configuration file in the data dir (written once, mode 0600) and the
    portal's client secret in it."""
    from caducee.identity.standin.config import StandinClient, StandinConfig, dump

    path = settings.data_dir / "psc-standin.json"
    if path.exists():
        document = json.loads(path.read_text(encoding="utf-8"))
        return path, next(client["client_secret"] for client in document["clients"] if client["client_id"] == PSC_CLIENT_ID)
    secret = generate_password(32)
    config = StandinConfig(
        realms=("esante-wallet",),
        clients=(
            StandinClient(PSC_CLIENT_ID, secret, ("http://127.0.0.1/pro/connexion/retour",), ("http://127.0.0.1/pro/deconnecte",)),
            StandinClient(PSC_SOFTWARE_CLIENT_ID, None, ("http://127.0.0.1/callback",), audience=(PSC_CLIENT_ID,)),
        ),
        users=tuple(psc_standin_users()),
    )
    write_credentials(path, dump(config))
    return path, secret


def write_credentials(path: Path, credentials: dict[str, Any]) -> None:
    """Write the file readable by its owner only, created so from the start (no window)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(credentials, handle, indent=2, ensure_ascii=False)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# ---- the first messages ------------------------------------------------------------------------

RESULTS_SUBJECT = "Résultats de votre analyse de sang"
RESULTS_PDF = "resultats-analyse-sang.pdf"
CLOSED_SUBJECT = "Renouvellement de votre traitement"
CNAM_SUBJECT = "La vaccination contre la grippe a commencé"


async def send_messages(pipeline: Any, settings: Settings, credentials: dict[str, Any], store: Any = None) -> list[str]:
    """The few messages a new demo world starts with, so that the webmail and the IMAP example of
    the README show something at once: a conversation Dr Bernard closed after Claire's reply (her
    reply is in the doctor's INBOX), a CNAM prevention message (no reply possible), and the
    doctor's results with a PDF, the newest. They go through the gateway's accept pipeline like
    any message (rules, S/MIME, sealed bodies); `store` (the mailbox's MailStore) marks what
    Claire read before answering. Returns the subjects delivered, oldest first."""
    from caducee.gateway.pipeline import Channel, Envelope
    from caducee.webmail.compose import reply

    doctor, claire = credentials["professionals"]["doctor"], credentials["patients"]["adult_1"]
    doctor_name = "Dr Sophie Bernard"
    claire_name = credentials["patients"]["adult_1"]["name"]
    delivered: list[str] = []

    async def send(sender: str, to: str, raw: bytes, channel: Channel, *, keep_sent: bool = False) -> None:
        result = await pipeline.accept(Envelope(sender, [to], raw, channel, authenticated=sender, keep_sent=keep_sent))
        if not result.accepted:
            raise RuntimeError(f"the demo message from {sender} to {to} was refused: {result.reply}")

    first, first_id = _message(
        (doctor_name, doctor["address"]),
        (claire_name, claire["address"]),
        CLOSED_SUBJECT,
        "Bonjour Madame Martin,\n\nVotre traitement arrive à son terme à la fin du mois. Je vous le renouvelle pour trois mois : "
        "souhaitez-vous passer chercher l'ordonnance au cabinet ?\n\nDr Sophie Bernard\nCabinet médical des Lilas",
        settings.hostname,
    )
    await send(doctor["address"], claire["address"], first, Channel.SUBMISSION)
    answer = reply(
        sender_name=claire_name,
        sender=claire["address"],
        to=[(doctor_name, doctor["address"])],
        subject=CLOSED_SUBJECT,
        in_reply_to=first_id,
        references=[],
        text="Bonjour Docteur,\n\nOui, je passerai la chercher jeudi en fin de matinée.\n\nMerci, bonne journée.\nClaire Martin",
        upload=None,
        hostname=settings.hostname,
    )
    await send(claire["address"], doctor["address"], answer, Channel.WEBMAIL, keep_sent=True)
    if store is not None:  # she read the message she answered (the first of her INBOX), as the webmail would have marked it
        inbox = await store.folder(await store.mailbox_id(claire["address"]), "INBOX")
        if inbox is not None:
            await store.store_flags(inbox.id, [1], "+FLAGS", ["\\Seen"])
    closing, _ = _message(
        (doctor_name, doctor["address"]),
        (claire_name, claire["address"]),
        f"Re: {CLOSED_SUBJECT}",
        "Très bien, l'ordonnance vous attendra à l'accueil du cabinet. Je clos cette conversation.\n\nDr Sophie Bernard",
        settings.hostname,
        headers={"In-Reply-To": first_id, "References": first_id, "X-MSS-MES": "FIN"},
    )
    await send(doctor["address"], claire["address"], closing, Channel.SUBMISSION)
    delivered.append(CLOSED_SUBJECT)

    cnam = credentials["cnam"]
    prevention, _ = _message(
        ("Assurance Maladie", cnam["address"]),
        (claire_name, claire["address"]),
        CNAM_SUBJECT,
        "Bonjour,\n\nLa campagne de vaccination contre la grippe saisonnière a commencé. Le vaccin est pris en charge à 100 % "
        "pour les personnes à risque ; votre médecin, votre pharmacien ou votre infirmier peut vous vacciner.\n\n"
        "Plus d'informations : https://www.ameli.fr/assure/sante/themes/grippe\n\nL'Assurance Maladie",
        settings.hostname,
    )
    await send(cnam["address"], claire["address"], prevention, Channel.API)
    delivered.append(CNAM_SUBJECT)

    results, _ = _message(
        (doctor_name, doctor["address"]),
        (claire_name, claire["address"]),
        RESULTS_SUBJECT,
        "Bonjour Madame Martin,\n\nVous trouverez ci-joint les résultats de votre analyse de sang. Ils sont normaux : "
        "la glycémie à jeun est à 0,95 g/L.\n\nVous pouvez me répondre ici si vous avez une question.\n\n"
        "Dr Sophie Bernard\nCabinet médical des Lilas",
        settings.hostname,
        attachment=(RESULTS_PDF, results_pdf(claire_name)),
    )
    await send(doctor["address"], claire["address"], results, Channel.SUBMISSION)
    delivered.append(RESULTS_SUBJECT)
    return delivered


def _message(
    sender: tuple[str, str],
    to: tuple[str, str],
    subject: str,
    text: str,
    hostname: str,
    *,
    headers: dict[str, str] | None = None,
    attachment: tuple[str, bytes] | None = None,
) -> tuple[bytes, str]:
    """A message as a professional's mail client writes it (CRLF, headers encoded) and its Message-ID."""
    import email.policy
    from email.headerregistry import Address
    from email.message import EmailMessage
    from email.utils import formatdate, make_msgid

    def address(name: str, mailbox: str) -> Address:
        local, _, domain = mailbox.partition("@")
        return Address(display_name=name, username=local, domain=domain)

    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = address(*sender)
    message["To"] = address(*to)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    message_id = make_msgid(domain=hostname)
    message["Message-ID"] = message_id
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(text + "\n", charset="utf-8", cte="quoted-printable")
    if attachment is not None:
        message.add_attachment(attachment[1], maintype="application", subtype="pdf", filename=attachment[0])
    return message.as_bytes(), message_id


def results_pdf(patient: str) -> bytes:
    """A one-page PDF of made-up blood test results (PDF 1.4, Helvetica in WinAnsiEncoding):
    small, valid, and opened by any reader."""
    lines = [
        ("F2", 16, "Cabinet médical des Lilas - Dr Sophie Bernard"),
        ("F1", 11, "12 rue des Lilas, 75019 Paris"),
        ("F1", 11, ""),
        ("F2", 13, f"Résultats d'analyse de sang - {patient}"),
        ("F1", 11, "Document de démonstration : ces valeurs sont inventées."),
        ("F1", 11, ""),
        ("F1", 11, "Glycémie à jeun : 0,95 g/L (valeurs usuelles 0,70 à 1,10)"),
        ("F1", 11, "Cholestérol total : 1,85 g/L (inférieur à 2,00)"),
        ("F1", 11, "Hémoglobine : 13,6 g/dL (12,0 à 16,0)"),
        ("F1", 11, "Créatinine : 7,2 mg/L (5,0 à 9,0)"),
        ("F1", 11, ""),
        ("F1", 11, "Conclusion : bilan normal."),
    ]

    def literal(text: str) -> bytes:
        return b"(" + text.encode("cp1252").replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"

    content = (
        b"BT 72 770 Td 18 TL\n"
        + b"".join(b"/%s %d Tf %s Tj T*\n" % (font.encode(), size, literal(text)) for font, size, text in lines)
        + b"ET\n"
    )
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 4 0 R /F2 5 0 R >> >> /Contents 6 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n%sendstream" % (len(content), content),
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)
