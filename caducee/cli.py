"""The `caducee` command: serve, database migrations, annuaire imports, patient activation codes, the test PKI."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from caducee import db
from caducee.config import Settings, SettingsError, load_settings


def _settings(args: argparse.Namespace, **extra: object) -> Settings:
    return load_settings(
        config_file=getattr(args, "config", None),
        data_dir=getattr(args, "data_dir", None),
        database_url=getattr(args, "database_url", None),
        **extra,
    )


def use_fast_event_loop() -> None:
    """uvloop when installed: asyncio's transports and callbacks in C, where the SMTP
    listeners spend most of their time (see docs/benchmarks.md). `CADUCEE_EVENT_LOOP=asyncio`
    keeps the standard loop."""
    import os

    if os.environ.get("CADUCEE_EVENT_LOOP", "uvloop") != "uvloop":
        return
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_serve(args: argparse.Namespace) -> int:
    from caducee.server import PortInUse, inherited_sockets, serve, serve_workers

    settings = _settings(args, http_host=args.host, http_port=args.port)
    configure_logging(settings)
    try:
        if args.workers > 1 and not args.worker_process:
            argv = [a for a in sys.argv[1:] if a != "--demo"] if sys.argv[1:2] == ["serve"] else ["serve"]
            return serve_workers(settings, argv, args.workers, demo=args.demo)
        use_fast_event_loop()
        asyncio.run(serve(settings, demo=args.demo, migrate=not args.worker_process, sockets=inherited_sockets()))
    except PortInUse as exc:
        print(f"error: {exc.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def configure_logging(settings: Settings) -> None:
    """One line per event. aiosmtpd's own "mail.log" logger writes every SMTP command at INFO
    (patients' addresses in each RCPT TO) and warns of its deprecated `login_data` at every
    login: it is kept to warnings, and Caducée's own lines say what happened, with patient
    identifiers pseudonymised (core.pseudonyms)."""
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mail.log").setLevel(logging.ERROR)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db.upgrade(settings.effective_database_url)
    print(f"database at revision {db.current_revision(settings.effective_database_url)}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    print(db.current_revision(_settings(args).effective_database_url) or "(empty database)")
    return 0


def cmd_activation_code(args: argparse.Namespace) -> int:
    """Issue the provisional code of a created profile (the operator sends it by post)."""
    from caducee.annuaire import patients
    from caducee.crypto.atrest import load_master_key
    from caducee.notify.notifier import notifier_from_settings
    from caducee.webmail.accounts import Accounts
    from caducee.webmail.codes import CodeHasher

    settings = _settings(args)

    async def issue() -> tuple[int, str]:
        engine = db.create_engine(settings.effective_database_url)
        try:
            async with engine.connect() as conn:
                account = await patients.find_for_login(conn, args.ins)
            if account is None:
                return 1, f"error: no patient profile with INS {args.ins!r} (check the 15 characters and the key)"
            if account.status != "created":
                return 1, f"error: the profile of {account.name} is {account.status}: only a created profile is activated with a code"
            accounts = Accounts(engine, settings, notifier_from_settings(settings), CodeHasher(load_master_key(settings.data_dir)))
            code = await accounts.issue_activation_code(account.id, valid_days=args.days)
            return 0, f"{account.name} ({account.ins}): provisional code {code}, valid {args.days} days"
        finally:
            await engine.dispose()

    code, message = asyncio.run(issue())
    print(message, file=sys.stderr if code else sys.stdout)
    return code


def cmd_import(args: argparse.Namespace) -> int:
    from caducee.annuaire.importer import ImportFileError, import_file

    settings = _settings(args)
    path = Path(args.file)
    if not path.is_file():
        print(f"error: {path} does not exist or is not a file", file=sys.stderr)
        return 2
    report_stream = open(args.report, "w", encoding="utf-8") if args.report else None
    try:
        report = asyncio.run(import_file(settings, args.kind, path, report_stream=report_stream))
    except ImportFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if report_stream is not None:
            report_stream.close()
    print(report.summary())
    if args.report:
        print(f"bad rows written to {args.report}")
    return 0


def cmd_pki(args: argparse.Namespace) -> int:
    """`caducee pki init | issue ADDRESS | revoke SERIAL`: the test trust space in <data dir>/pki."""
    from caducee.crypto.atrest import load_master_key
    from caducee.crypto.pki import Issuer, TrustSpace, development_space, key_passphrase

    settings = _settings(args)
    directory = settings.data_dir / "pki"
    if args.pki_command == "init":
        existed = TrustSpace(directory).exists()
        space, _ = development_space(settings, force=args.force)
        print(f"trust space {'kept' if existed and not args.force else 'created'} in {space.directory}")
        print(f"  anchors (give these to peers): {space.anchors}")
        return 0
    passphrase = key_passphrase(load_master_key(settings.data_dir))
    space = TrustSpace(directory)
    if not space.exists():
        print(f"error: no trust space in {directory}: run `caducee pki init` first", file=sys.stderr)
        return 1
    issuer = Issuer(space, passphrase)
    if args.pki_command == "revoke":
        try:
            serial = int(args.serial, 16)
        except ValueError:
            print(f"error: {args.serial!r} is not a hexadecimal serial number", file=sys.stderr)
            return 2
        if serial not in issuer.issued_serials():
            print(
                f"error: no certificate with serial {args.serial} was issued by the trust space in {directory}: nothing revoked",
                file=sys.stderr,
            )
            return 1
        issuer.revoke(serial)
        print(f"serial {args.serial} added to {space.crl}")
        return 0
    return asyncio.run(_issue_and_publish(settings, issuer, args.address, args.holder))


HELD_TYPES = {"PAT", "ORG", "APP"}  # patients and organisation mailboxes: Caducée signs and decrypts for them


async def _issue_and_publish(settings: Settings, issuer: object, address: str, holder: str) -> int:
    from caducee.annuaire import service

    engine = db.create_engine(settings.effective_database_url)
    try:
        async with engine.begin() as conn:
            mailbox = await service.get_mailbox(conn, address, published_only=False)
            if mailbox is None:
                print(f"error: no mailbox {address} in the annuaire", file=sys.stderr)
                return 1
            held = mailbox.type in HELD_TYPES if holder == "auto" else holder == "operator"
            pair = issuer.mailbox(
                address.lower(),
                mailbox.display_name or address,
                settings.operator_domain,  # type: ignore[attr-defined]
                held=held,
            )
            await service.publish_certificate(conn, address, pair.cert.read_bytes())
    finally:
        await engine.dispose()
    print(f"certificate for {address} issued ({pair.cert}) and published in the annuaire")
    if not held:
        p12, secret = _pkcs12(pair, address, issuer)
        print(f"  the key is for the owner's mail client; Caducée does not keep it. Import {p12} into the mail client;")
        print(f"  its password is in {secret} (readable by you only): give it to the owner by another channel, then delete it")
    return 0


def _pkcs12(pair: object, address: str, issuer: object) -> tuple[Path, Path]:
    """The owner's key and certificate as a PKCS#12 file for a mail client (Thunderbird),
    encrypted with a new random password written beside it (mode 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

    from caducee.core.passwords import generate_password
    from caducee.crypto.pki import load_key, write_private

    password = generate_password()
    bundle = pkcs12.serialize_key_and_certificates(
        address.encode(),
        load_key(pair.key, issuer.passphrase),  # type: ignore[attr-defined]
        x509.load_pem_x509_certificate(pair.cert.read_bytes()),  # type: ignore[attr-defined]
        None,
        BestAvailableEncryption(password.encode()),
    )
    p12 = pair.cert.with_suffix(".p12")  # type: ignore[attr-defined]
    write_private(p12, bundle)
    secret = p12.with_name(p12.name + ".password")
    write_private(secret, (password + "\n").encode())
    return p12, secret


def build_parser() -> argparse.ArgumentParser:
    from caducee import __version__

    parser = argparse.ArgumentParser(prog="caducee", description="Caducée secure health messaging operator")
    parser.add_argument("--version", action="version", version=f"caducee {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="TOML settings file (also CADUCEE_CONFIG)")
    common.add_argument("--data-dir", type=Path, help="data directory (default ./var, CADUCEE_DATA_DIR)")
    common.add_argument("--database-url", help="database URL (default SQLite in the data dir)")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", parents=[common], help="run every listener")
    serve.add_argument("--demo", action="store_true", help="seed the demo world into an empty database")
    serve.add_argument("--host", help="HTTP listen address")
    serve.add_argument("--port", type=int, help="HTTP port")
    serve.add_argument(
        "--workers", type=int, default=1, help="processes sharing the listening sockets bound once by this command, e.g. one per core"
    )
    serve.add_argument("--worker-process", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    database = commands.add_parser("db", help="database migrations").add_subparsers(dest="db_command", required=True)
    database.add_parser("upgrade", parents=[common], help="apply migrations").set_defaults(func=cmd_db_upgrade)
    database.add_parser("current", parents=[common], help="show the revision").set_defaults(func=cmd_db_current)

    annuaire = commands.add_parser("annuaire", help="national directory").add_subparsers(dest="annuaire_command", required=True)
    importer = annuaire.add_parser("import", parents=[common], help="import a public directory file")
    importer.add_argument(
        "kind",
        choices=["extraction", "ps", "whitelist"],
        help="extraction: Extraction_Correspondance_MSSante_*.txt; ps: PS_LibreAcces_Personne_activite_*.txt; whitelist: trust-space XML",
    )
    importer.add_argument("file", help="the file to import")
    importer.add_argument("--report", help="write every refused row (line number, reason) to this file")
    importer.set_defaults(func=cmd_import)

    patients = commands.add_parser("patients", help="patient profiles").add_subparsers(dest="patients_command", required=True)
    activation = patients.add_parser("activation-code", parents=[common], help="issue the provisional code of a created profile")
    activation.add_argument("ins", help="the patient's INS (15 characters, spaces allowed)")
    activation.add_argument("--days", type=int, default=90, help="how long the code stays valid")
    activation.set_defaults(func=cmd_activation_code)

    pki = commands.add_parser("pki", help="the test trust space (IGC-Santé shaped)").add_subparsers(dest="pki_command", required=True)
    init = pki.add_parser("init", parents=[common], help="create root CA, organisation CA, TLS certificates and CRL")
    init.add_argument("--force", action="store_true", help="replace an existing trust space")
    init.set_defaults(func=cmd_pki)
    issue = pki.add_parser("issue", parents=[common], help="issue and publish the S/MIME certificate of a mailbox")
    issue.add_argument("address")
    issue.add_argument(
        "--holder",
        choices=["auto", "operator", "owner"],
        default="auto",
        help="who keeps the private key: the operator (signs and decrypts for the mailbox) or the owner's "
        "mail client; auto: the operator for patients and organisation mailboxes",
    )
    issue.set_defaults(func=cmd_pki)
    revoke = pki.add_parser("revoke", parents=[common], help="revoke a certificate by its serial number (hex)")
    revoke.add_argument("serial")
    revoke.set_defaults(func=cmd_pki)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
