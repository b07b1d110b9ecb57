"""HTTP routes of the annuaire: patients find their pharmacy, professionals a colleague."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel

from caducee.annuaire import service


class MailboxOut(BaseModel):
    address: str
    type: str
    display_name: str
    civility: str
    first_name: str
    last_name: str
    profession_code: str
    profession_label: str
    savoir_faire_label: str
    structure_name: str
    service: str
    address_line: str
    postcode: str
    city: str
    is_officine: bool


class SearchOut(BaseModel):
    items: list[MailboxOut]
    total: int
    page: int
    per_page: int


router = APIRouter(prefix="/api/v1/annuaire", tags=["annuaire"])


@router.get("/search", response_model=SearchOut, summary="Search published mailboxes")
async def search(
    request: Request,
    name: Annotated[str | None, Query(max_length=200, description="Words of a name (person or structure)")] = None,
    profession: Annotated[str | None, Query(max_length=8, description="Profession code (TRE_G15), e.g. 10, 21")] = None,
    place: Annotated[str | None, Query(max_length=100, description="City or postcode (prefix)")] = None,
    type: Annotated[str | None, Query(max_length=3, description="Mailbox type: PER, ORG, APP or CAB")] = None,
    officine: Annotated[bool | None, Query(description="Only community pharmacies (true) or none (false)")] = None,
    page: Annotated[int, Query(ge=1, le=10_000)] = 1,
    per_page: Annotated[int, Query(ge=1)] = 20,
) -> Any:
    settings = request.app.state.settings
    try:
        async with request.app.state.engine.connect() as conn:
            result = await service.search(
                conn,
                name=name,
                profession_code=profession,
                place=place,
                mailbox_type=type,
                officine=officine,
                page=page,
                per_page=per_page,
                per_page_max=settings.annuaire_page_size_max,
            )
    except service.SearchError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from None
    return SearchOut(
        items=[MailboxOut(**item.as_dict()) for item in result.items],
        total=result.total,
        page=result.page,
        per_page=result.per_page,
    )


@router.get("/mailboxes/{address}", response_model=MailboxOut, summary="One published mailbox")
async def mailbox(request: Request, address: str) -> Any:
    async with request.app.state.engine.connect() as conn:
        entry = await service.get_mailbox(conn, address)
    if entry is None:
        raise HTTPException(status_code=404, detail=f"no published mailbox at {address}")
    return MailboxOut(**entry.as_dict())
