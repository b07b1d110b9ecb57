"""Recording, reading and verifying the access history.

Records are written through a group commit: a page view waits for its record to be on
disk (an access that is not recorded did not happen), but fifty readers at once share one
transaction instead of fifty fsyncs. Each record is chained to its patient's previous one
(`chain.py`): the patient's head row is moved first, under its row lock (PostgreSQL) or the
write lock (SQLite), so two processes appending for the same patient take turns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from caducee.core.groupcommit import GroupCommitter
from caducee.history import chain
from caducee.history.models import AccessRecord, HistoryHead

ACTION_LABELS = {
    "login": "Connexion",
    "message-read": "Lecture d'une conversation",
    "attachment-read": "Ouverture d'une pièce jointe",
    "message-sent": "Envoi d'un message",
    "profile-closed": "Fermeture du profil",
    "profile-opposed": "Opposition à l'ouverture du profil",
    "activated": "Activation du profil",
    "password-changed": "Changement du mot de passe",
    "password-reset": "Nouveau mot de passe (mot de passe oublié)",
    "email-changed": "Changement de l'adresse e-mail",
    "data-exported": "Téléchargement des messages",
    "dossier-opened": "Consultation de la liste des documents",
    "document-read": "Lecture d'un document",
    "document-added": "Ajout d'un document",
    "document-replaced": "Nouvelle version d'un document",
    "document-deleted": "Suppression d'un document",
    "document-revealed": "Document rendu visible au patient par son auteur",
    "document-masked": "Document masqué aux professionnels",
    "document-unmasked": "Document de nouveau visible des professionnels",
    "all-masked": "Tous les documents masqués aux professionnels",
    "all-unmasked": "Tous les documents de nouveau visibles des professionnels",
    "professional-blocked": "Professionnel bloqué",
    "professional-unblocked": "Professionnel débloqué",
    "emergency-refused": "Accès en urgence refusé par avance",
    "emergency-allowed": "Accès en urgence de nouveau permis",
    "emergency-access": "Accès en urgence (bris de glace)",
    "consent-declared": "Accord du patient déclaré",
    "medical-profile-read": "Consultation du profil médical",
    "medical-profile-changed": "Modification du profil médical",
    "access-refused": "Accès refusé",
    "intake-refused": "Documents refusés",
}
RIGHT_LABELS = {
    "": "",
    "patient": "Vous-même",
    "guardian": "Représentant légal",
    "carer": "Aidant",
    "author": "Auteur du document",
    "authorised": "Autorisé",
    "emergency": "Urgence (bris de glace)",
    "refused": "Refusé",
}
CHECKPOINT_DIR = "history-checkpoints"


@dataclass(frozen=True)
class Access:
    patient_id: int
    actor: str
    action: str
    detail: str = ""
    structure: str = ""
    right: str = ""
    hidden_from_guardians: bool = False  # concerns a document a minor keeps from their legal representatives


@dataclass(frozen=True)
class AccessEntry:
    at: datetime
    actor: str
    action: str
    label: str
    detail: str
    structure: str = ""
    right: str = ""
    right_label: str = ""


@dataclass(frozen=True)
class VerifyReport:
    patients: int
    entries: int
    before_chain: int  # recorded before the chain existed: kept, not verifiable
    checkpoints: int
    problems: list[chain.Problem]

    @property
    def ok(self) -> bool:
        return not self.problems


def _insert_ignore(conn: Connection | AsyncConnection):  # type: ignore[no-untyped-def]
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    return dialect_insert(HistoryHead.__table__).on_conflict_do_nothing()


_MOVE_HEAD = text("UPDATE access_history_heads SET seq = seq + :n WHERE patient_id = :patient RETURNING seq - :n AS seq, entry_hash")


class AccessHistory:
    def __init__(self, engine: AsyncEngine, key: bytes) -> None:
        self.engine = engine
        self.key = key
        self._committer = GroupCommitter(self._write)

    async def _write(self, items: list[Access]) -> list[None]:
        async with self.engine.begin() as conn:
            await conn.run_sync(self.append, items)
        return [None] * len(items)

    def append(self, conn: Connection, items: list[Access]) -> None:
        """Append `items` inside the caller's (synchronous) transaction: a component that
        writes what was accessed and its record together (the dossier's filing) commits
        both or neither, in one fsync."""
        now = datetime.now(UTC)
        by_patient: dict[int, list[Access]] = {}
        for access in items:
            by_patient.setdefault(access.patient_id, []).append(access)
        rows = []
        for patient_id in sorted(by_patient):  # one order for every writer: no deadlock between two
            accesses = by_patient[patient_id]
            conn.execute(_insert_ignore(conn), [{"patient_id": patient_id, "seq": 0, "entry_hash": chain.genesis(self.key, patient_id)}])
            head = conn.execute(_MOVE_HEAD, {"n": len(accesses), "patient": patient_id}).one()
            seq, previous = int(head.seq), str(head.entry_hash)
            for access in accesses:
                seq += 1
                fields = chain.Fields(
                    patient_id,
                    now,
                    access.actor[:256],
                    access.action[:32],
                    access.detail[:512],
                    access.structure[:256],
                    access.right[:16],
                    access.hidden_from_guardians,
                )
                digest = chain.entry_hash(self.key, previous, fields)
                rows.append(
                    {
                        "patient_id": patient_id,
                        "actor": fields.actor,
                        "action": fields.action,
                        "detail": fields.detail,
                        "at": now,
                        "structure": fields.structure,
                        "access_right": fields.access_right,
                        "hidden_from_guardians": fields.hidden_from_guardians,
                        "seq": seq,
                        "prev_hash": previous,
                        "entry_hash": digest,
                    }
                )
                previous = digest
            conn.execute(update(HistoryHead).where(HistoryHead.patient_id == patient_id).values(entry_hash=previous))
        if rows:
            conn.execute(insert(AccessRecord.__table__), rows)

    async def record(self, access: Access) -> None:
        """Append one record; returns once it is committed."""
        await self._committer.submit(access)

    async def read(self, patient_id: int, *, limit: int = 100, for_guardian: bool = False) -> list[AccessEntry]:
        """The patient's most recent records, newest first. A guardian does not see the
        records about documents the minor keeps from their legal representatives."""
        query = (
            select(
                AccessRecord.at,
                AccessRecord.actor,
                AccessRecord.action,
                AccessRecord.detail,
                AccessRecord.structure,
                AccessRecord.access_right,
            )
            .where(AccessRecord.patient_id == patient_id)
            .order_by(AccessRecord.id.desc())
            .limit(limit)
        )
        if for_guardian:
            query = query.where(AccessRecord.hidden_from_guardians.is_(False))
        async with self.engine.connect() as conn:
            rows = await conn.execute(query)
            return [
                AccessEntry(
                    row.at,
                    row.actor,
                    row.action,
                    ACTION_LABELS.get(row.action, row.action),
                    row.detail,
                    row.structure,
                    row.access_right,
                    RIGHT_LABELS.get(row.access_right, row.access_right),
                )
                for row in rows
            ]

    async def close(self) -> None:
        await self._committer.stop()

    # ---- verification and checkpoints -------------------------------------------------------

    async def verify(self, *, patient_id: int | None = None, checkpoints: Path | None = None) -> VerifyReport:
        """Walk every chain (or one patient's); report each altered, removed, reordered or
        cut-off entry, and any disagreement with the checkpoints in `checkpoints`."""
        anchors, count = load_checkpoints(checkpoints) if checkpoints is not None else ({}, 0)
        problems: list[chain.Problem] = []
        entries = before = 0
        async with self.engine.connect() as conn:
            heads_query = select(HistoryHead.patient_id, HistoryHead.seq, HistoryHead.entry_hash)
            legacy_query = select(func.count()).select_from(AccessRecord).where(AccessRecord.seq.is_(None))
            if patient_id is not None:
                heads_query = heads_query.where(HistoryHead.patient_id == patient_id)
                legacy_query = legacy_query.where(AccessRecord.patient_id == patient_id)
            heads = {row.patient_id: (int(row.seq), row.entry_hash) for row in await conn.execute(heads_query)}
            before = int((await conn.execute(legacy_query)).scalar_one())
            chained_query = select(AccessRecord.patient_id).where(AccessRecord.seq.is_not(None)).distinct()
            if patient_id is not None:
                chained_query = chained_query.where(AccessRecord.patient_id == patient_id)
            patients = sorted(
                set(heads) | set((await conn.execute(chained_query)).scalars()) | ({*anchors} if patient_id is None else set())
            )
            for patient in patients:
                stored = await _entries(conn, patient)
                entries += len(stored)
                problems += chain.check_chain(self.key, patient, stored, heads.get(patient), anchors.get(patient))
        return VerifyReport(len(patients), entries, before, count, problems)

    async def checkpoint(self, directory: Path) -> tuple[Path, str]:
        """Write the heads changed since the last checkpoint (all of them the first time) and
        their Merkle root to `directory`; return the file and the root to publish."""
        directory.mkdir(parents=True, exist_ok=True)
        anchors, _ = load_checkpoints(directory)
        latest = {patient: max(seqs) for patient, seqs in anchors.items()}
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(HistoryHead.patient_id, HistoryHead.seq, HistoryHead.entry_hash).where(HistoryHead.seq > 0))
            heads = [(int(r.patient_id), int(r.seq), str(r.entry_hash)) for r in rows if latest.get(int(r.patient_id), 0) != int(r.seq)]
        root = chain.checkpoint_root(heads)
        moment = datetime.now(UTC)
        path = directory / f"{moment:%Y%m%dT%H%M%S%fZ}.json"
        path.write_text(json.dumps({"at": moment.isoformat(), "root": root, "heads": heads}, separators=(",", ":")), encoding="utf-8")
        return path, root


def load_checkpoints(directory: Path) -> tuple[dict[int, dict[int, str]], int]:
    """patient -> {seq: hash} from every checkpoint file in `directory`, each file's root
    checked against its heads (a file edited after it was published no longer matches)."""
    anchors: dict[int, dict[int, str]] = {}
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        heads = [(int(p), int(s), str(h)) for p, s, h in data["heads"]]
        if chain.checkpoint_root(heads) != data["root"]:
            raise ValueError(f"checkpoint {path.name} does not match its own root: it was edited")
        for patient, seq, digest in heads:
            anchors.setdefault(patient, {})[seq] = digest
    return anchors, len(files)


async def _entries(conn: AsyncConnection, patient_id: int) -> list[chain.StoredEntry]:
    rows = await conn.execute(
        select(AccessRecord).where(AccessRecord.patient_id == patient_id, AccessRecord.seq.is_not(None)).order_by(AccessRecord.seq)
    )
    return [
        chain.StoredEntry(
            row.id,
            int(row.seq),
            row.prev_hash or "",
            row.entry_hash or "",
            chain.Fields(
                row.patient_id, row.at, row.actor, row.action, row.detail, row.structure, row.access_right, bool(row.hidden_from_guardians)
            ),
        )
        for row in rows
    ]
