"""Password checks: argon2id, and the memo of recent successes that spares it on reconnection."""

from __future__ import annotations

from caducee.core import passwords


def test_a_success_is_remembered_for_the_same_stored_hash_only(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    passwords.forget_verified()
    stored = passwords.hash_password("correct horse")
    calls: list[str] = []
    real = passwords._HASHER

    class Counting:
        def hash(self, password: str) -> str:
            return real.hash(password)

        def verify(self, stored: str, password: str) -> bool:
            calls.append(password)
            return real.verify(stored, password)

    monkeypatch.setattr(passwords, "_HASHER", Counting())
    assert passwords.verify_password(stored, "correct horse")
    assert passwords.verify_password(stored, "correct horse")
    assert calls == ["correct horse"]  # the second check needed no argon2
    assert not passwords.verify_password(stored, "wrong")
    assert not passwords.verify_password(stored, "wrong")
    assert calls == ["correct horse", "wrong", "wrong"]  # failures are never remembered
    changed = passwords.hash_password("correct horse")  # the same password set again: a new hash, checked again
    assert passwords.verify_password(changed, "correct horse") and calls[-1] == "correct horse" and len(calls) == 4
    passwords.forget_verified()
    assert passwords.verify_password(stored, "correct horse") and len(calls) == 5
