"""The hash chain that makes the access history tamper-evident, as pure functions.

Each entry's hash is an HMAC-SHA256, under a key derived from the master key (never in the
database), of the previous entry's hash and the entry's own fields: whoever can write to the
database but does not hold the master key cannot forge an entry, change one, or close the
gap left by one removed. Order is the chain itself (`prev_hash`), not a column, so an entry
moved elsewhere in its patient's history breaks the link before it. Cutting the newest
entries off, heads included, is caught by the checkpoints (`checkpoint_root`): the roots of
the patients' heads, written out daily and kept where the database's administrators cannot
rewrite them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def history_key(master_key: bytes) -> bytes:
    """The chain's HMAC key, derived from the master key (HKDF-SHA256, its own label)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"caducee:access-history:v1").derive(master_key)


def canonical_time(moment: datetime) -> str:
    """UTC to the microsecond, whatever the backend returns (SQLite gives naive datetimes back)."""
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return aware.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Fields:
    """What an entry says: everything the patient reads, and whose history it is in."""

    patient_id: int
    at: datetime
    actor: str
    action: str
    detail: str
    structure: str
    access_right: str
    hidden_from_guardians: bool

    def canonical(self) -> bytes:
        values = [
            1,
            self.patient_id,
            canonical_time(self.at),
            self.actor,
            self.action,
            self.detail,
            self.structure,
            self.access_right,
            self.hidden_from_guardians,
        ]
        return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode()


def genesis(key: bytes, patient_id: int) -> str:
    """The `prev_hash` of a patient's first entry."""
    return hmac.new(key, b"genesis:%d" % patient_id, hashlib.sha256).hexdigest()


def entry_hash(key: bytes, prev_hash: str, fields: Fields) -> str:
    return hmac.new(key, prev_hash.encode("ascii") + b"\n" + fields.canonical(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class StoredEntry:
    id: int
    seq: int
    prev_hash: str
    entry_hash: str
    fields: Fields


@dataclass(frozen=True)
class Problem:
    patient_id: int
    seq: int
    kind: str  # altered / removed / reordered / truncated / checkpoint
    text: str

    def __str__(self) -> str:
        return f"patient {self.patient_id}, entry {self.seq}: {self.kind}: {self.text}"


def check_chain(
    key: bytes, patient_id: int, entries: list[StoredEntry], head: tuple[int, str] | None, anchors: dict[int, str] | None = None
) -> list[Problem]:
    """Every problem of one patient's chain (`entries` in `seq` order, `head` its heads row,
    `anchors` the seq -> hash pairs checkpoints recorded for it)."""
    problems: list[Problem] = []
    previous_hash, previous_seq, previous_id = genesis(key, patient_id), 0, 0
    by_seq: dict[int, str] = {}
    for entry in entries:
        by_seq[entry.seq] = entry.entry_hash
        if entry.fields.patient_id != patient_id or entry_hash(key, entry.prev_hash, entry.fields) != entry.entry_hash:
            problems.append(Problem(patient_id, entry.seq, "altered", "what the entry says is not what was recorded"))
        elif entry.seq != previous_seq + 1:
            missing = entry.seq - previous_seq - 1
            problems.append(Problem(patient_id, entry.seq, "removed", f"{missing} entr{'y' if missing == 1 else 'ies'} missing before it"))
        elif entry.prev_hash != previous_hash or entry.id < previous_id:
            problems.append(Problem(patient_id, entry.seq, "reordered", "the entry does not follow the one recorded before it"))
        previous_hash, previous_seq, previous_id = entry.entry_hash, entry.seq, entry.id
    if head is not None and (head[0] != previous_seq or head[1] != previous_hash):
        problems.append(Problem(patient_id, head[0], "truncated", f"the history should end at entry {head[0]}, it ends at {previous_seq}"))
    for seq, recorded in sorted((anchors or {}).items()):
        if by_seq.get(seq) != recorded:
            problems.append(Problem(patient_id, seq, "checkpoint", "a published checkpoint recorded another entry here"))
    return problems


def merkle_root(leaves: list[bytes]) -> str:
    """SHA-256 Merkle root of `leaves` (each hashed first; an odd node is carried up)."""
    level = [hashlib.sha256(b"\x00" + leaf).digest() for leaf in leaves] or [hashlib.sha256(b"").digest()]
    while len(level) > 1:
        paired = [hashlib.sha256(b"\x01" + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0].hex()


def checkpoint_root(heads: list[tuple[int, int, str]]) -> str:
    """The root of (patient, seq, hash) heads, sorted by patient: what is published."""
    return merkle_root([f"{patient}:{seq}:{digest}".encode() for patient, seq, digest in sorted(heads)])
