"""The campaign API for the CNAM: `Authorization: Bearer <token>`, every call audited.

Answers carry counts only (targeted, delivered, skipped by reason, read): the CNAM never
learns which patient read what. A target file is uploaded as it arrives from the CNAM,
signed and encrypted; a file that fails its signature check is refused (422) and nothing
of it is kept.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse

from caducee.annuaire.targets import Criteria
from caducee.campaigns import audit, schemas, targeting, tokens
from caducee.campaigns.service import CampaignError, Campaigns
from caducee.campaigns.targetfile import TargetFileError
from caducee.core.ids import MAX_ROW_ID, RowId

router = APIRouter(prefix="/api/v1/campaigns", tags=["campaigns"])
MAX_PDF = 5 * 1024 * 1024


def _service(request: Request) -> Campaigns:
    return request.app.state.campaigns


async def caller(request: Request) -> tokens.Caller:
    """The CNAM sender a bearer token belongs to; a missing or dead token is refused (and audited)."""
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else ""
    service = _service(request)
    async with service.engine.connect() as conn:
        found = await tokens.authenticate(conn, token)
    if found is None or found.sender not in {s.lower() for s in service.settings.cnam_senders}:
        await audit.record(service.engine, action=f"{request.method} {request.url.path}", status=401, client=_client(request))
        raise HTTPException(401, "jeton d'API absent ou invalide / missing or invalid API token")
    return found


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


async def _audited(
    request: Request, who: tokens.Caller, action: str, campaign_id: int | None, work: Callable[[], Awaitable[Any]]
) -> JSONResponse:
    service = _service(request)
    status, body, detail = 200, None, ""
    try:
        body = await work()
    except CampaignError as exc:
        status, body, detail = exc.status, {"detail": str(exc)}, str(exc)
    except (TargetFileError, ValueError) as exc:  # a refused file (OpenPgpError is a ValueError), bad criteria
        status, body, detail = 422, {"detail": str(exc)}, str(exc)
    if isinstance(body, dict) and campaign_id is None and isinstance(body.get("id"), int):
        campaign_id = body["id"]
    await audit.record(
        service.engine,
        action=action,
        status=status,
        token_id=who.token_id,
        sender=who.sender,
        client=_client(request),
        campaign_id=campaign_id,
        detail=detail,
    )
    return JSONResponse(body, status_code=status)


def parse_criteria(data: dict[str, Any] | None) -> Criteria:
    """Criteria from the API's JSON: sex, born_from/born_to, or age_min/age_max on age_on; statuses; with_guardian."""
    data = dict(data or {})
    unknown = set(data) - {"sex", "born_from", "born_to", "age_min", "age_max", "age_on", "statuses", "with_guardian"}
    if unknown:
        raise ValueError(f"unknown criteria: {', '.join(sorted(unknown))}")
    born_from = date.fromisoformat(data["born_from"]) if data.get("born_from") else None
    born_to = date.fromisoformat(data["born_to"]) if data.get("born_to") else None
    if data.get("age_min") is not None or data.get("age_max") is not None:
        on = date.fromisoformat(data["age_on"]) if data.get("age_on") else date.today()
        born_from, born_to = targeting.age_range(data.get("age_min"), data.get("age_max"), on)
    sex = data.get("sex")
    if sex is not None and sex not in {"M", "F", "I"}:
        raise ValueError("sex is M, F or I")
    return Criteria(
        sex=sex, born_from=born_from, born_to=born_to, statuses=tuple(data.get("statuses") or ()), with_guardian=data.get("with_guardian")
    )


async def _saved(upload: UploadFile, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    path = directory / f"{uuid.uuid4().hex}.gpg"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        while chunk := await upload.read(1024 * 1024):
            handle.write(chunk)
    return path


@router.post("", summary="Create a campaign (draft); with `targets`, a signed and encrypted target file", response_model=schemas.Created)
async def create(
    request: Request,
    subject: str = Form(...),
    body: str = Form(...),
    reference: str = Form(""),
    criteria: str = Form("{}"),
    send_at: str = Form(""),
    pdf: UploadFile | None = File(None),
    targets: UploadFile | None = File(None),
    who: tokens.Caller = Depends(caller),
) -> JSONResponse:
    service = _service(request)

    async def work() -> dict[str, Any]:
        chosen = parse_criteria(json.loads(criteria or "{}"))
        when = datetime.fromisoformat(send_at) if send_at else None
        document = await pdf.read(MAX_PDF + 1) if pdf is not None else None
        if document is not None and len(document) > MAX_PDF:
            raise CampaignError("the PDF is larger than 5 MB", 413)
        source, saved = None, None
        if targets is not None:
            from caducee.crypto.openpgp import SignedFile, keyring_from_settings

            keyring = keyring_from_settings(service.settings)
            saved = await _saved(targets, service.settings.data_dir / "incoming")
            source = SignedFile(keyring, saved, keyring.cnam_fingerprint(service.settings.cnam_openpgp_fingerprint))
        try:
            campaign_id, report = await service.create(
                who.sender,
                subject=subject,
                body=body,
                criteria=chosen,
                reference=reference,
                pdf=document,
                pdf_name=pdf.filename if pdf is not None else None,
                send_at=when,
                target_file=source,
            )
        finally:
            if saved is not None:
                saved.unlink(missing_ok=True)
        estimate = await service.estimate(who.sender, chosen, campaign_id)
        answer: dict[str, Any] = {"id": campaign_id, "state": "draft", "estimate": estimate.as_dict()}
        if report is not None:
            answer["file"] = {"rows": report.rows, "problems": report.problems}
        return answer

    return await _audited(request, who, "create", None, work)


@router.post(
    "/estimate", summary="How many would receive it, and why the others would not (nothing is sent)", response_model=schemas.EstimateOut
)
async def estimate(request: Request, who: tokens.Caller = Depends(caller)) -> JSONResponse:
    service = _service(request)
    try:
        data = await request.json()
    except ValueError:
        data = None
    given = data.get("campaign_id") if isinstance(data, dict) else None
    # An id no row can have (a string, a float, 2**64) names no campaign; it never reaches a column.
    campaign_id = given if isinstance(given, int) and not isinstance(given, bool) and 1 <= given <= MAX_ROW_ID else None

    async def work() -> dict[str, Any]:
        if not isinstance(data, dict):
            raise CampaignError("the body is a JSON object: {criteria} or {campaign_id}", 422)
        if given is not None and campaign_id is None:
            raise CampaignError("no such campaign", 404)
        found = await service.estimate(who.sender, parse_criteria(data.get("criteria")), campaign_id)
        return found.as_dict()

    return await _audited(request, who, "estimate", campaign_id, work)


@router.get("", summary="Every campaign of this sender, with its progress", response_model=list[schemas.ProgressOut])
async def listing(request: Request, who: tokens.Caller = Depends(caller)) -> JSONResponse:
    service = _service(request)

    async def work() -> list[dict[str, object]]:
        return [p.as_dict() for p in await service.list(who.sender)]

    return await _audited(request, who, "list", None, work)


@router.get(
    "/{campaign_id}", summary="Progress: targeted, delivered, skipped by reason, read (counts only)", response_model=schemas.ProgressOut
)
async def progress(campaign_id: RowId, request: Request, who: tokens.Caller = Depends(caller)) -> JSONResponse:
    service = _service(request)

    async def work() -> dict[str, object]:
        return (await service.progress(campaign_id, who.sender)).as_dict()

    return await _audited(request, who, "progress", campaign_id, work)


@router.get("/{campaign_id}/problems", summary="The target file's bad lines (line number, problem)", response_model=list[schemas.Problem])
async def problems(campaign_id: RowId, request: Request, who: tokens.Caller = Depends(caller)) -> JSONResponse:
    service = _service(request)

    async def work() -> list[dict[str, object]]:
        return await service.problems(campaign_id, who.sender)

    return await _audited(request, who, "problems", campaign_id, work)


def _action(name: str):  # type: ignore[no-untyped-def]
    async def act(campaign_id: RowId, request: Request, who: tokens.Caller = Depends(caller)) -> JSONResponse:
        service = _service(request)

        async def work() -> dict[str, object]:
            if name == "recall":
                return (await service.recall(campaign_id, who.sender)).as_dict()
            state = await getattr(service, name)(campaign_id, who.sender)
            return {"id": campaign_id, "state": state}

        return await _audited(request, who, name, campaign_id, work)

    return act


for _name, _summary in (
    ("start", "Start now, or at send_at"),
    ("pause", "Pause the fan-out"),
    ("resume", "Resume a paused campaign"),
    ("cancel", "Cancel: what is not delivered yet never will be"),
    ("recall", "Recall: gone from every inbox where it was not read; the count of those where it was"),
):
    model = schemas.ProgressOut if _name == "recall" else schemas.StateOut
    router.add_api_route(f"/{{campaign_id}}/{_name}", _action(_name), methods=["POST"], summary=_summary, response_model=model)
