"""The `caducee` command: serve, database migrations, annuaire and population imports, the administration of
professionals and patients, patient activation codes, the access history, the test PKI, the OpenPGP keyring,
CNAM campaigns."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from caducee import db
from caducee.config import Settings, SettingsError, load_settings


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
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
    metrics_directory(_settings(args), worker=args.worker_process)
    from caducee.db import SchemaNotCurrent
    from caducee.server import PortInUse, StartupRefused, inherited_sockets, serve, serve_workers

    settings = _settings(args, http_host=args.host, http_port=args.port, roles=args.role)
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
    except (StartupRefused, SchemaNotCurrent) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def configure_logging(settings: Settings) -> None:
    """One line per event, JSON or text (`log_format`), with the request or session id
    (core.logcontext)."""
    from caducee.core import logcontext

    logcontext.configure(settings.log_level, settings.log_format)


def metrics_directory(settings: Settings, *, worker: bool) -> None:
    """prometheus-client's multiprocess mode: every process of this `caducee serve` writes its
    metrics under `<data dir>/metrics` (emptied by the parent at start: files of a previous
    run would add its counts), and /metrics adds them up. Set before anything imports
    prometheus_client; the workers inherit it."""
    import os
    import shutil

    if worker and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    directory = (settings.data_dir / "metrics").resolve()
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


def cmd_agenda(args: argparse.Namespace) -> int:
    """The agenda's jobs by hand (a server runs both by itself): the day's prevention
    reminders, or one pass of the reminder queue until nothing is due."""
    from datetime import date

    from caducee.agenda import background
    from caducee.agenda.daily import DailyJob
    from caducee.agenda.schedule import load_table
    from caducee.notify.notifier import notifier_from_settings

    settings = _settings(args)

    async def run() -> int:
        engine = db.create_engine(settings.effective_database_url)
        try:
            if args.agenda_command == "check-table":
                table = load_table(settings.agenda_prevention_table or None)
                print(f"{table.name}\nversion {table.version}: {len(table.rules)} items")
                return 0
            if args.agenda_command == "daily":
                day = date.fromisoformat(args.day) if args.day else date.today()
                report = await DailyJob(engine, load_table(settings.agenda_prevention_table or None)).run(day)
                print(f"{report.day}: {report.chunks} chunks, {report.patients} patients, {report.queued} reminders queued")
                return 0
            worker = background.reminder_worker(engine, settings, notifier_from_settings(settings))
            total = 0
            while handled := await worker.run_once():
                total += handled
            print(f"{total} reminders handled")
            return 0
        finally:
            await engine.dispose()

    return asyncio.run(run())


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = _settings(args)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db.upgrade(settings.effective_database_url)
    print(f"database at revision {db.current_revision(settings.effective_database_url)}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """`caducee backup DIR`: the database (SQLite's online backup API, or pg_dump's directory
    format), the data directory and the configured key and certificate files, while serving."""
    from caducee.backup import BackupError, backup

    settings = _settings(args)
    try:
        manifest = backup(settings, Path(args.directory))
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    rows = manifest["rows"]
    print(
        f"backup of {manifest['database']['kind']} at {manifest['alembic_heads']} written to {args.directory}: "
        f"{sum(rows.values())} rows in {len(rows)} tables, {len(manifest['data_files'])} files of the data directory, "
        f"{sum(len(items) for items in manifest['configured_files'].values())} configured files; "
        f"master key {manifest['master_key']['source']}. Keep it as secret as the data directory."
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """`caducee restore DIR`: a backup into an empty database and data directory."""
    from caducee.backup import BackupError, restore

    settings = _settings(args)
    try:
        report = restore(settings, Path(args.directory))
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if report.missing:
        for table, (expected, found) in sorted(report.missing.items()):
            print(f"error: table {table}: {expected} rows in the backup, {found} restored", file=sys.stderr)
        return 1
    print(f"restored {sum(report.rows.values())} rows in {len(report.rows)} tables and {report.files} files; every table has its rows")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """`keys generate`: a new key for CADUCEE_MASTER_KEY or CADUCEE_SEALING_KEYS. `keys rotate`:
    re-seal every sealed column under the first sealing key, beside serving nodes (short
    batches); the previous keys stay readable until this ends, then may be removed."""
    import base64
    import os

    from caducee.crypto.atrest import BodyCipher, load_master_key

    if args.keys_command == "generate":
        print(base64.b64encode(os.urandom(32)).decode("ascii"))
        return 0
    from caducee.dossier.service import reseal as reseal_dossier
    from caducee.mailbox.store import reseal as reseal_messages
    from caducee.webmail.drafts import reseal as reseal_drafts

    settings = _settings(args)
    cipher = BodyCipher(load_master_key(settings.data_dir))

    async def run() -> int:
        engine = db.create_engine(settings.effective_database_url)
        try:
            for name, reseal in (("messages", reseal_messages), ("dossier", reseal_dossier), ("drafts", reseal_drafts)):
                print(f"{name}: {await reseal(engine, cipher)} rows re-sealed", flush=True)
        finally:
            await engine.dispose()
        print(f"every sealed value is under key {cipher.current_id.hex()}: the other keys of CADUCEE_SEALING_KEYS may go")
        return 0

    return asyncio.run(run())


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


def _admin(args: argparse.Namespace, work):  # type: ignore[no-untyped-def]
    """Run `work(conn, settings)` in one transaction on the migrated database; an AdminError is
    printed as `error: ...` (exit 1) and nothing is changed."""
    from caducee.annuaire.admin import AdminError

    settings = _settings(args)

    async def run():  # type: ignore[no-untyped-def]
        await asyncio.to_thread(db.upgrade, settings.effective_database_url)
        engine = db.create_engine(settings.effective_database_url)
        try:
            async with engine.begin() as conn:
                return await work(conn, settings)
        finally:
            await engine.dispose()

    try:
        return 0, asyncio.run(run())
    except AdminError as exc:
        print(f"error: {exc}; nothing was changed", file=sys.stderr)
        return 1, None


def _new_password() -> tuple[str, str]:
    from caducee.core.passwords import generate_password, hash_password

    password = generate_password()
    return password, hash_password(password)


APPLIED = "a running server applies it within directory_cache_seconds"


def cmd_professionals(args: argparse.Namespace) -> int:
    """`caducee professionals add | change | retire | reset-password | show`: the operator's own
    professionals and their mailboxes (source "local": no directory import rewrites them)."""
    from caducee.annuaire import admin

    command = args.professionals_command
    password, password_hash = _new_password() if command in {"add", "reset-password"} else ("", "")

    async def work(conn, settings: Settings):  # type: ignore[no-untyped-def]
        if command == "add":
            return await admin.add_professional_mailbox(
                conn,
                national_id=admin.national_id_of(args.rpps, args.adeli),
                address=args.address,
                password_hash=password_hash,
                local_domains=settings.local_domains,
                patient_domain=settings.patient_domain,
                civility=args.civility,
                first_name=args.first_name,
                last_name=args.last_name,
                profession_code=args.profession,
                profession=args.profession_label,
                specialty=args.specialty,
                structure=args.structure,
                service=args.service or "",
                liste_rouge=args.liste_rouge == "yes",
            )
        if command == "change":
            return await admin.change_professional(
                conn,
                args.who,
                civility=args.civility,
                first_name=args.first_name,
                last_name=args.last_name,
                profession_code=args.profession,
                profession=args.profession_label,
                specialty=args.specialty,
                structure=args.structure,
                service=args.service,
                liste_rouge=None if args.liste_rouge is None else args.liste_rouge == "yes",
            )
        if command == "retire":
            return await admin.retire_professional(conn, args.who)
        if command == "reset-password":
            return await admin.set_mailbox_password(conn, args.address, password_hash)
        return await admin.show_professional(conn, args.who)

    code, done = _admin(args, work)
    if code:
        return code
    if command == "add":
        address, created = done
        print(f"mailbox {address} created{' with its professional' if created else ' for the professional already in the annuaire'}")
        print(f"  password: {password}")
        print("  give it to its owner by another channel (it is stored hashed only); their mail client signs in with it over TLS")
        print(f"  S/MIME: `caducee pki issue {address}` gives them a certificate and the PKCS#12 file for their mail client")
    elif command == "change":
        print(f"{args.who} changed; {APPLIED}")
        for note in done:
            print(f"  note: {note}")
    elif command == "retire":
        if done:
            print(f"retired: {', '.join(done)} (no login, no mail accepted, out of the search; the messages are kept); {APPLIED}")
        else:
            print(f"{args.who} retired (they had no active mailbox of ours)")
    elif command == "reset-password":
        print(f"new password for {done}: {password}")
        print("  the previous one no longer works; give this one to its owner by another channel")
    else:
        state = "active" if done.active else "retired"
        print(f"{done.name} ({done.national_id}), {done.profession}, {state}{', listed in the PS file' if done.in_ps_file else ''}")
        for address, kind, active in done.mailboxes:
            print(f"  {address} {kind}{'' if active else ' (retired)'}")
    return 0


def cmd_patients_admin(args: argparse.Namespace) -> int:
    """`caducee patients add | change | retire`: one profile by hand (the population import does them in bulk)."""
    from caducee.annuaire import admin
    from caducee.crypto.atrest import load_master_key
    from caducee.notify.notifier import notifier_from_settings
    from caducee.webmail.accounts import Accounts
    from caducee.webmail.codes import CodeHasher

    command = args.patients_command

    async def work(conn, settings: Settings):  # type: ignore[no-untyped-def]
        if command == "add":
            patient_id = await admin.add_patient_profile(
                conn,
                ins=args.ins,
                last_name=args.last_name,
                first_names=args.first_names,
                birth_date=args.birth_date,
                sex=args.sex,
                patient_domain=settings.patient_domain,
                email=args.email,
            )
            return await admin.find_patient(conn, args.ins), patient_id
        if command == "change":
            return await admin.change_patient(
                conn,
                args.ins,
                last_name=args.last_name,
                first_names=args.first_names,
                birth_date=args.birth_date,
                sex=args.sex,
                email=args.email,
            ), None
        return await admin.retire_patient(conn, args.ins), None

    code, done = _admin(args, work)
    if code:
        return code
    patient, _ = done
    settings = _settings(args)

    async def after() -> str:
        """After the commit: the provisional code of a new profile, or the end of a closed one's sessions."""
        engine = db.create_engine(settings.effective_database_url)
        try:
            accounts = Accounts(engine, settings, notifier_from_settings(settings), CodeHasher(load_master_key(settings.data_dir)))
            if command == "add":
                return await accounts.issue_activation_code(patient.id, valid_days=args.days)
            if command == "retire":
                await accounts.close_all_sessions(patient.id)
            return ""
        finally:
            await engine.dispose()

    extra = asyncio.run(after())
    if command == "add":
        print(f"profile of {patient.name} ({patient.ins}) created, mailbox {patient.address}: not activated yet")
        print(f"  provisional code {extra}, valid {args.days} days: send it by post; the patient activates (or opposes) with it")
    elif command == "change":
        print(f"profile of {patient.name} ({patient.ins}) changed; {APPLIED}")
    else:
        print(f"profile of {patient.name} ({patient.ins}) closed: it receives nothing now, its sessions ended; messages kept")
    return 0


def cmd_traces(args: argparse.Namespace) -> int:
    """`caducee traces show ADDRESS`: the operator's trace of one mailbox (what was sent or
    refused, what was deleted, by whom, from where, with which answer), oldest first."""
    from datetime import UTC, datetime, timedelta

    from caducee.traces.service import Traces

    settings = _settings(args)
    since = datetime.now(UTC) - timedelta(days=args.days)

    async def run() -> int:
        engine = db.create_engine(settings.effective_database_url)
        try:
            shown = await Traces(engine).read(args.address, since=since, limit=args.limit)
        finally:
            await engine.dispose()
        for trace in shown:
            print(
                "\t".join(
                    (
                        trace.at.strftime("%Y-%m-%d %H:%M:%S"),
                        trace.channel,
                        trace.action,
                        str(trace.items),
                        trace.actor or "-",
                        trace.client or "-",
                        trace.message_id or "-",
                        trace.answer or "-",
                        trace.detail,
                    )
                )
            )
        print(f"{len(shown)} trace(s) of {args.address.lower()} since {since:%Y-%m-%d}", file=sys.stderr)
        return 0

    return asyncio.run(run())


def cmd_history(args: argparse.Namespace) -> int:
    """`caducee history verify | checkpoint`: check every chain of the access history, or
    write today's checkpoint (the heads and their Merkle root, to publish)."""
    from caducee.crypto.atrest import load_master_key
    from caducee.history.chain import history_key
    from caducee.history.service import CHECKPOINT_DIR, AccessHistory

    settings = _settings(args)
    directory = Path(args.checkpoints) if args.checkpoints else settings.data_dir / CHECKPOINT_DIR

    async def run() -> int:
        engine = db.create_engine(settings.effective_database_url)
        history = AccessHistory(engine, history_key(load_master_key(settings.data_dir)))
        try:
            if args.history_command == "checkpoint":
                path, root = await history.checkpoint(directory)
                print(f"checkpoint {path} written; publish its root: {root}")
                return 0
            try:
                report = await history.verify(patient_id=args.patient, checkpoints=directory)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            for problem in report.problems:
                print(problem, file=sys.stderr)
            state = "intact" if report.ok else f"{len(report.problems)} problem(s)"
            print(
                f"{report.entries} entries of {report.patients} patient(s) checked against {report.checkpoints} checkpoint(s): {state}"
                + (f"; {report.before_chain} entries recorded before the chain are not verifiable" if report.before_chain else "")
            )
            return 0 if report.ok else 1
        finally:
            await history.close()
            await engine.dispose()

    return asyncio.run(run())


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


def cmd_patients_import(args: argparse.Namespace) -> int:
    """`caducee patients import FILE`: the CNAM's population file, signed and encrypted (OpenPGP)."""
    from caducee.annuaire.importing import ImportFileError
    from caducee.annuaire.population import PlainSource, import_population
    from caducee.crypto.atrest import load_master_key
    from caducee.crypto.openpgp import LetterWriter, OpenPgpError, SignedFile, keyring_from_settings
    from caducee.crypto.pki import write_private
    from caducee.webmail.codes import CodeHasher
    from caducee.webmail.letters import LetterCodes

    settings = _settings(args)
    path = Path(args.file)
    if not path.is_file():
        print(f"error: {path} does not exist or is not a file", file=sys.stderr)
        return 2
    keyring = keyring_from_settings(settings)
    try:
        cnam = keyring.cnam_fingerprint(settings.cnam_openpgp_fingerprint)
    except OpenPgpError:
        cnam = None
    if args.unsigned:
        source = PlainSource(path)
    elif cnam is None:
        print("error: no CNAM key in the keyring: `caducee openpgp import-cnam KEYFILE` first (or --unsigned for a trial)", file=sys.stderr)
        return 1
    else:
        source = SignedFile(keyring, path, cnam)  # type: ignore[assignment]
    stem = path.name.split(".")[0]
    letters = Path(args.letters) if args.letters else settings.data_dir / "letters" / f"{stem}-codes.txt{'.gpg' if cnam else ''}"
    writer: LetterWriter | None = None
    write: Callable[[bytes], Any]
    if cnam:
        writer = LetterWriter(keyring, cnam, letters)
        write = writer.write
    else:  # a trial without the CNAM's key: the letters stay in clear, readable by the operator only
        write_private(letters, b"")
        handle = open(letters, "ab")
        write = handle.write
    codes = LetterCodes(CodeHasher(load_master_key(settings.data_dir)), write, valid_days=args.days)
    report_stream = open(args.report, "w", encoding="utf-8") if args.report else None

    async def run():  # type: ignore[no-untyped-def]
        await asyncio.to_thread(db.upgrade, settings.effective_database_url)
        engine = db.create_engine(settings.effective_database_url)
        try:
            async with engine.begin() as conn:
                return await import_population(
                    conn, source, patient_domain=settings.patient_domain, on_created=codes, report_stream=report_stream
                )
        finally:
            await engine.dispose()

    try:
        report = asyncio.run(run())
    except (ImportFileError, OpenPgpError) as exc:
        print(f"error: {exc}; nothing was changed", file=sys.stderr)
        letters.unlink(missing_ok=True)
        return 1
    finally:
        if writer is not None:
            writer.close()
        else:
            handle.close()
        if report_stream is not None:
            report_stream.close()
    print(report.summary())
    print(f"{codes.issued} provisional codes in {letters}" + (" (encrypted to the CNAM's key)" if cnam else ""))
    return 0


def cmd_openpgp(args: argparse.Namespace) -> int:
    """`caducee openpgp init | import-cnam KEYFILE | export`: the operator's keyring in <data dir>/openpgp."""
    from caducee.crypto.openpgp import OpenPgpError, keyring_from_settings

    settings = _settings(args)
    keyring = keyring_from_settings(settings)
    try:
        if args.openpgp_command == "init":
            fingerprint = keyring.ensure_operator_key(f"Caducée {settings.operator_domain} <postmaster@{settings.operator_domain}>")
            print(f"operator key {fingerprint} in {keyring.home}; give the CNAM its public key: `caducee openpgp export`")
        elif args.openpgp_command == "import-cnam":
            fingerprint = keyring.import_cnam(Path(args.keyfile).read_bytes())
            print(f"CNAM key {fingerprint} recorded: only files it signed are accepted")
        else:
            fingerprint = keyring.operator_fingerprint() or ""
            if not fingerprint:
                print("error: no operator key: run `caducee openpgp init` first", file=sys.stderr)
                return 1
            print(keyring.export_public(fingerprint))
    except OpenPgpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_campaigns(args: argparse.Namespace) -> int:
    """`caducee campaigns token | list | show | run | start | pause | resume | cancel | recall`."""
    import json

    from caducee.campaigns import tokens
    from caducee.campaigns.runner import Runner
    from caducee.campaigns.service import CampaignError, Campaigns

    settings = _settings(args)

    async def run() -> int:
        await asyncio.to_thread(db.upgrade, settings.effective_database_url)
        engine = db.create_engine(settings.effective_database_url)
        pipeline = None
        try:
            if args.campaigns_command == "token":
                sender = (args.sender or settings.cnam_senders[0]).lower()
                async with engine.begin() as conn:
                    token = await tokens.rotate(conn, sender)
                print(f"new API token for {sender} (the previous ones no longer work):\n{token}")
                return 0
            if args.campaigns_command in {"run", "start", "resume"}:
                pipeline = _campaign_pipeline(settings, engine)
            service = Campaigns(engine, settings, pipeline)
            if args.campaigns_command == "list":
                for progress in await service.list():
                    print(json.dumps(progress.as_dict(), ensure_ascii=False))
            elif args.campaigns_command == "show":
                print(json.dumps((await service.progress(args.id)).as_dict(), ensure_ascii=False, indent=2))
            elif args.campaigns_command == "run":
                await _run_with_bar(engine, service, Runner(service), args)
            elif args.campaigns_command == "recall":
                print(json.dumps((await service.recall(args.id)).as_dict(), ensure_ascii=False, indent=2))
            else:
                print(f"campaign {args.id}: {await getattr(service, args.campaigns_command)(args.id)}")
            return 0
        except CampaignError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            if pipeline is not None:
                await pipeline.close()
            await engine.dispose()

    return asyncio.run(run())


def _campaign_pipeline(settings: Settings, engine):  # type: ignore[no-untyped-def]
    """The accept pipeline a campaign's message is stored through (signed once, S/MIME as configured)."""
    from caducee.core.cpu import shared_pool
    from caducee.crypto.atrest import BodyCipher, load_master_key
    from caducee.gateway.pipeline import AcceptPipeline
    from caducee.server import smime_stage

    pool = shared_pool(1)
    return AcceptPipeline(
        engine, settings, BodyCipher(load_master_key(settings.data_dir)), smime=smime_stage(settings, engine, pool), cpu=pool
    )


async def _run_with_bar(engine, service, runner, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]
    """Send what is due (`--forever`: keep watching), with a progress bar of the patients reached.

    Sending writes nothing per patient (each inbox is filed when the webmail opens it), so
    the bar moves once per campaign sent."""
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(unit=" patients", desc="sent", file=sys.stderr)
    try:
        while True:
            reached = await runner.work()
            if bar is not None and reached:
                bar.update(reached)
            if not args.forever:
                break
            await asyncio.sleep(service.settings.campaign_poll_seconds)
    finally:
        if bar is not None:
            bar.close()


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


async def _issue_and_publish(settings: Settings, issuer: Any, address: str, holder: str) -> int:
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
                settings.operator_domain,
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
    serve.add_argument(
        "--role",
        help="what this node runs, comma-separated among smtp,imap,http,relay,jobs (default all; also CADUCEE_ROLES); "
        "without http the HTTP port serves /healthz and /metrics only",
    )
    serve.add_argument("--worker-process", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(func=cmd_serve)

    database = commands.add_parser("db", help="database migrations").add_subparsers(dest="db_command", required=True)
    database.add_parser("upgrade", parents=[common], help="apply migrations").set_defaults(func=cmd_db_upgrade)
    database.add_parser("current", parents=[common], help="show the revision").set_defaults(func=cmd_db_current)

    saving = commands.add_parser("backup", parents=[common], help="back up the database, keys and certificates (while serving)")
    saving.add_argument("directory", help="a new or empty directory (it will hold private keys: keep it secret)")
    saving.set_defaults(func=cmd_backup)
    restoring = commands.add_parser("restore", parents=[common], help="restore a backup into an empty database and data directory")
    restoring.add_argument("directory", help="a directory written by `caducee backup`")
    restoring.set_defaults(func=cmd_restore)
    keys = commands.add_parser("keys", help="the sealing keys of bodies at rest").add_subparsers(dest="keys_command", required=True)
    keys.add_parser("generate", parents=[common], help="print a new random key (base64)").set_defaults(func=cmd_keys)
    keys.add_parser("rotate", parents=[common], help="re-seal everything under the first key of CADUCEE_SEALING_KEYS").set_defaults(
        func=cmd_keys
    )

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

    population = patients.add_parser("import", parents=[common], help="import the CNAM's population file (signed and encrypted)")
    population.add_argument("file", help="the population file (OpenPGP, signed by the CNAM and encrypted to the operator)")
    population.add_argument("--report", help="write every refused row and warning (line number, reason) to this file")
    population.add_argument("--letters", help="where the provisional codes go (encrypted to the CNAM's key); default <data dir>/letters/")
    population.add_argument("--days", type=int, default=90, help="how long the provisional codes stay valid")
    population.add_argument("--unsigned", action="store_true", help="a plain file, for trials only (no signature to check)")
    population.set_defaults(func=cmd_patients_import)

    for name, text in (("add", "create a profile (not activated: prints its provisional code)"), ("change", "correct a profile")):
        one = patients.add_parser(name, parents=[common], help=text)
        one.add_argument("ins", help="the patient's INS (15 characters, spaces allowed)")
        required = name == "add"
        one.add_argument("--last-name", required=required)
        one.add_argument("--first-names", required=required, help="all the first names, as on the birth certificate")
        one.add_argument("--birth-date", required=required, help="YYYY-MM-DD")
        one.add_argument("--sex", required=required, help="M, F or I")
        one.add_argument("--email", help="where the sign-in codes go" + ("" if required else " (empty: none)"))
        if required:
            one.add_argument("--days", type=int, default=90, help="how long the provisional code stays valid")
        one.set_defaults(func=cmd_patients_admin)
    retire_patient = patients.add_parser("retire", parents=[common], help="close a profile: it receives nothing, messages kept")
    retire_patient.add_argument("ins")
    retire_patient.set_defaults(func=cmd_patients_admin)

    pros = commands.add_parser("professionals", help="professionals and their mailboxes").add_subparsers(
        dest="professionals_command", required=True
    )
    add_pro = pros.add_parser("add", parents=[common], help="create a professional's mailbox (and the professional if new)")
    who = add_pro.add_mutually_exclusive_group(required=True)
    who.add_argument("--rpps", help="the RPPS number (11 digits)")
    who.add_argument("--adeli", help="the ADELI number (9 characters), for those without an RPPS number")
    add_pro.add_argument("--address", required=True, help="the mailbox address, on one of our domains")
    change_pro = pros.add_parser("change", parents=[common], help="change a professional, or one of their mailboxes")
    change_pro.add_argument("who", help="a mailbox address (then its structure and service can change too), or an RPPS number")
    for parser_ in (add_pro, change_pro):
        parser_.add_argument("--civility", help="Dr, M., Mme...")
        parser_.add_argument("--first-name")
        parser_.add_argument("--last-name")
        parser_.add_argument("--profession", help="the profession code (TRE_G15: 10 médecin, 21 pharmacien, 60 infirmier...)")
        parser_.add_argument("--profession-label", help="its label, for a code not in Caducée's short list")
        parser_.add_argument("--specialty", help="the savoir-faire, e.g. Médecine générale")
        parser_.add_argument(
            "--structure", help="the structure's key, e.g. FINESS:750000010 or SIRET:73282932000074 (change: none to detach)"
        )
        parser_.add_argument("--service", help="the service within the structure")
        parser_.add_argument("--liste-rouge", choices=["yes", "no"], help="kept out of the public search")
        parser_.set_defaults(func=cmd_professionals)
    retire_pro = pros.add_parser("retire", parents=[common], help="retire a mailbox, or a professional and all their mailboxes")
    retire_pro.add_argument("who", help="a mailbox address, or an RPPS number (every mailbox of theirs)")
    retire_pro.set_defaults(func=cmd_professionals)
    reset = pros.add_parser("reset-password", parents=[common], help="give a mailbox a new random password (printed once)")
    reset.add_argument("address")
    reset.set_defaults(func=cmd_professionals)
    show = pros.add_parser("show", parents=[common], help="a professional and their mailboxes")
    show.add_argument("who", help="a mailbox address or an RPPS number")
    show.set_defaults(func=cmd_professionals)

    openpgp = commands.add_parser("openpgp", help="the OpenPGP keyring (CNAM files)").add_subparsers(dest="openpgp_command", required=True)
    openpgp.add_parser("init", parents=[common], help="create the operator's key pair").set_defaults(func=cmd_openpgp)
    cnam_key = openpgp.add_parser("import-cnam", parents=[common], help="import the CNAM's public key (the one signer accepted)")
    cnam_key.add_argument("keyfile")
    cnam_key.set_defaults(func=cmd_openpgp)
    openpgp.add_parser("export", parents=[common], help="print the operator's public key (for the CNAM)").set_defaults(func=cmd_openpgp)

    campaigns = commands.add_parser("campaigns", help="CNAM prevention campaigns").add_subparsers(dest="campaigns_command", required=True)
    token = campaigns.add_parser("token", parents=[common], help="issue a new campaign API token (the previous ones stop working)")
    token.add_argument("--sender", help="the CNAM sender address (default: the first of cnam_senders)")
    token.set_defaults(func=cmd_campaigns)
    campaigns.add_parser("list", parents=[common], help="every campaign and its progress (counts)").set_defaults(func=cmd_campaigns)
    runner = campaigns.add_parser(
        "run", parents=[common], help="send the campaigns that are due (scheduled, or a start interrupted), with a progress bar"
    )
    runner.add_argument("--forever", action="store_true", help="keep watching for campaigns (what `serve` does too)")
    runner.set_defaults(func=cmd_campaigns)
    for name, text in (
        ("show", "progress of one campaign"),
        ("start", "start a draft (or schedule it for its send_at)"),
        ("pause", "stop filing it into inboxes not opened yet"),
        ("resume", "resume a paused campaign"),
        ("cancel", "cancel: what is not delivered never will be"),
        ("recall", "recall: gone from every inbox where it was not read"),
    ):
        one = campaigns.add_parser(name, parents=[common], help=text)
        one.add_argument("id", type=int)
        one.set_defaults(func=cmd_campaigns)

    traces = commands.add_parser("traces", help="the operator's trace of actions per mailbox").add_subparsers(
        dest="traces_command", required=True
    )
    show_traces = traces.add_parser("show", parents=[common], help="what was sent, refused or deleted in one mailbox")
    show_traces.add_argument("address", help="the mailbox's address")
    show_traces.add_argument("--days", type=int, default=183, help="how far back (default: 183, the retention)")
    show_traces.add_argument("--limit", type=int, default=10_000, help="at most this many lines (default 10000)")
    show_traces.set_defaults(func=cmd_traces)
    history = commands.add_parser("history", help="the access history").add_subparsers(dest="history_command", required=True)
    verify = history.add_parser("verify", parents=[common], help="detect altered, removed, reordered or cut-off entries")
    verify.add_argument("--patient", type=int, help="one patient's chain (annuaire patient id)")
    verify.add_argument("--checkpoints", help="folder of published checkpoints (default <data dir>/history-checkpoints)")
    verify.set_defaults(func=cmd_history)
    checkpoint = history.add_parser("checkpoint", parents=[common], help="write the heads changed since the last checkpoint and their root")
    checkpoint.add_argument("--checkpoints", help="where to write it (default <data dir>/history-checkpoints)")
    checkpoint.set_defaults(func=cmd_history, patient=None)

    agenda = commands.add_parser("agenda", help="the health agenda's jobs").add_subparsers(dest="agenda_command", required=True)
    daily = agenda.add_parser("daily", parents=[common], help="queue the reminders of prevention items falling due (one day)")
    daily.add_argument("--day", help="YYYY-MM-DD (default today)")
    daily.set_defaults(func=cmd_agenda)
    agenda.add_parser("remind", parents=[common], help="send every reminder due now, then stop").set_defaults(func=cmd_agenda)
    agenda.add_parser("check-table", parents=[common], help="load the prevention table and say its version").set_defaults(func=cmd_agenda)

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
    from caducee.crypto.openpgp import agent_running, stop_agent

    args = build_parser().parse_args(argv)
    keyring = _keyring_home(args)
    agent_before = keyring is not None and agent_running(keyring)
    try:
        return int(args.func(args))
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        # A command or a server that used the data directory's OpenPGP keyring (an import, a
        # target file uploaded to the campaign API) ends the gpg-agent gpg started for it, and
        # only that one: an agent that was already running serves someone else.
        if keyring is not None and not agent_before:
            stop_agent(keyring)


def _keyring_home(args: argparse.Namespace) -> Path | None:
    """The keyring of the commands that may use it (the others neither read settings nor ask gpg here)."""
    if args.func not in (cmd_serve, cmd_patients_import, cmd_openpgp, cmd_campaigns):
        return None
    try:
        return Path(_settings(args).data_dir) / "openpgp"
    except SettingsError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
