"""The benchmark's reference: a bare FastAPI endpoint that validates what intake validates (the
same ``SignalCreate`` body and a bearer header) and answers 201 without writing anything."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Header, HTTPException

from civicsignals.common.ids import new_id, new_tracking_code
from civicsignals.intake.models import SignalCreate, SignalCreated

app = FastAPI()


@app.post("/v1/signals", status_code=201, response_model=SignalCreated)
async def post_signal(
    payload: SignalCreate, authorization: Annotated[str | None, Header()] = None
) -> SignalCreated:
    if not authorization or not authorization.startswith("Bearer "):
        raise HTTPException(401)
    code = new_tracking_code()
    return SignalCreated(
        id=new_id(), tracking_code=code, status_url=f"http://127.0.0.1:8000/v1/tracking/{code}"
    )


@app.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}
