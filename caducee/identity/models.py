"""Tables of the identity component: sign-ins under way at Pro Santé Connect, and the
professional portal's sessions.

Nothing in them is usable as a secret if read: the browser's `state`, its binding cookie
and the session cookie are stored as their SHA-256. The PKCE verifier and the nonce are
kept as they are for the few minutes of a sign-in (the callback needs them), and the row
is deleted when the callback uses it, so a `state` works once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, String
from sqlalchemy.orm import Mapped, mapped_column

from caducee.core.clock import utcnow
from caducee.db import Base


class LoginState(Base):
    """One sign-in sent to the provider and not yet come back."""

    __tablename__ = "identity_login_states"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of `state`
    browser: Mapped[str] = mapped_column(String(64))  # SHA-256 of the binding cookie set with the redirect
    nonce: Mapped[str] = mapped_column(String(64))
    code_verifier: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class ProSession(Base):
    """A professional signed in to the portal with Pro Santé Connect."""

    __tablename__ = "identity_pro_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the cookie value
    national_id: Mapped[str] = mapped_column(String(40), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    acr: Mapped[str] = mapped_column(String(64))
    provider_session: Mapped[str] = mapped_column(String(128), default="")  # the ID token's `sid`, for the logs
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
