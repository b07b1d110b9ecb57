"""Bearer tokens on the JSON APIs, for practice software (`Authorization: Bearer <PSC access token>`).

`professional` is the FastAPI dependency an API route takes to require a professional
(the dossier API will): a missing, malformed, foreign, expired or too weak token, or one
whose professional the annuaire does not know or has retired, gets a 401 whose
`WWW-Authenticate` says why in RFC 6750's terms (RFC 9470's
`insufficient_user_authentication` for a weak `acr`), with a French `detail`.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel

from caducee.identity.professionals import Principal
from caducee.identity.provider import ProviderUnavailable
from caducee.identity.tokens import MAX_TOKEN_LENGTH, TokenRefused
from caducee.identity.web import context

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/pro", tags=["professionnels"])
REALM = "caducee"

DETAILS = {
    "expired": "Le jeton a expiré : demandez-en un nouveau à Pro Santé Connect.",
    "acr": "Le jeton ne prouve pas une authentification assez forte (carte CPS ou e-CPS exigée).",
    "audience": "Le jeton n'est pas destiné à Caducée.",
    "issuer": "Le jeton n'a pas été émis par Pro Santé Connect.",
    "unknown-professional": "Le professionnel de ce jeton n'est pas inscrit dans l'annuaire de Caducée.",
    "retired-professional": "Le professionnel de ce jeton n'est plus actif dans l'annuaire de Caducée.",
}


def _refuse(error: str | None, description: str, detail: str, extra: str = "") -> HTTPException:
    challenge = f'Bearer realm="{REALM}"'
    if error:
        challenge += f', error="{error}", error_description="{description}"{extra}'
    return HTTPException(401, detail=detail, headers={"WWW-Authenticate": challenge})


async def professional(request: Request) -> Principal:
    """The professional whose PSC access token this request carries (or a 401)."""
    ctx = context(request)
    header = request.headers.get("authorization", "")
    if not header:
        raise _refuse(None, "", "Authentification requise : envoyez un jeton Pro Santé Connect (Authorization: Bearer).")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_LENGTH or " " in token:
        raise _refuse(
            "invalid_request", "expected Authorization: Bearer <token>", "En-tête Authorization invalide : attendu « Bearer <jeton> »."
        )
    if ctx.tokens is None:
        raise _refuse(
            "invalid_token", "Pro Sante Connect is not configured", "Les jetons Pro Santé Connect ne sont pas acceptés par ce service."
        )
    client = request.client.host if request.client else "unknown"
    try:
        return await ctx.tokens.principal(token)
    except ProviderUnavailable as failure:
        log.error("API bearer from %s: Pro Santé Connect unavailable (%s)", client, failure)
        raise HTTPException(
            503, detail="Pro Santé Connect ne répond pas : réessayez dans un instant.", headers={"Retry-After": "30"}
        ) from None
    except TokenRefused as refused:
        log.warning("API bearer from %s refused on %s: %s", client, request.url.path, refused)
        detail = DETAILS.get(refused.reason, "Le jeton n'est pas valable.")
        if refused.reason == "acr":
            acr = " ".join(ctx.tokens.policy.acr_values)
            raise _refuse(
                "insufficient_user_authentication", "a stronger authentication is required", detail, f', acr_values="{acr}"'
            ) from None
        raise _refuse("invalid_token", refused.reason, detail) from None


Professional = Annotated[Principal, Depends(professional)]


class MailboxOut(BaseModel):
    address: str
    type: str
    display_name: str


class ProfessionalOut(BaseModel):
    national_id: str
    civility: str
    first_name: str
    last_name: str
    profession_code: str
    profession_label: str
    acr: str | None
    mailboxes: list[MailboxOut]


@router.get("/me", summary="The professional of the bearer token and the mailboxes they may open", response_model=ProfessionalOut)
async def me(principal: Professional) -> ProfessionalOut:
    pro = principal.professional
    return ProfessionalOut(
        national_id=pro.national_id,
        civility=pro.civility,
        first_name=pro.first_name,
        last_name=pro.last_name,
        profession_code=pro.profession_code,
        profession_label=pro.profession_label,
        acr=principal.acr,
        mailboxes=[MailboxOut(address=box.address, type=box.type, display_name=box.display_name) for box in principal.mailboxes],
    )
