"""The JSON shapes of Open311 responses, for the OpenAPI document (the views render them by hand,
in XML or JSON, through :mod:`civicsignals.intake.open311.render`). Ids are strings; lists are
always arrays; empty values are ``null``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, RootModel


class ServiceOut(BaseModel):
    service_code: str
    service_name: str
    description: str
    metadata: bool
    type: Literal["realtime", "batch", "blackbox"]
    keywords: str
    group: str


class ServiceList(RootModel[list[ServiceOut]]):
    pass


class ValueOut(BaseModel):
    key: str
    name: str


class AttributeOut(BaseModel):
    variable: bool
    code: str
    datatype: Literal["string", "number", "datetime", "text", "singlevaluelist", "multivaluelist"]
    required: bool
    datatype_description: str | None
    order: int
    description: str
    values: list[ValueOut]


class ServiceDefinitionOut(BaseModel):
    service_code: str
    attributes: list[AttributeOut]


class RequestCreatedOut(BaseModel):
    service_request_id: str
    service_notice: str | None
    account_id: str | None


class RequestCreatedList(RootModel[list[RequestCreatedOut]]):
    pass


class RequestOut(BaseModel):
    service_request_id: str
    status: Literal["open", "closed"]
    status_notes: str | None
    service_name: str | None
    service_code: str | None
    description: str | None
    agency_responsible: str | None
    service_notice: str | None
    requested_datetime: str
    updated_datetime: str | None
    expected_datetime: str | None
    address: str | None
    address_id: str | None
    zipcode: str | None
    lat: float | None
    long: float | None
    media_url: str | None


class RequestList(RootModel[list[RequestOut]]):
    pass


class TokenOut(BaseModel):
    service_request_id: str
    token: str


class TokenList(RootModel[list[TokenOut]]):
    pass


class UpdateOut(BaseModel):
    update_id: str
    service_request_id: str
    status: str
    updated_datetime: str
    description: str | None
    media_url: str | None


class UpdateList(RootModel[list[UpdateOut]]):
    pass


class UpdateCreatedOut(BaseModel):
    update_id: str


class UpdateCreatedList(RootModel[list[UpdateCreatedOut]]):
    pass


class ErrorOut(BaseModel):
    code: int
    description: str


class ErrorList(RootModel[list[ErrorOut]]):
    pass


class EndpointOut(BaseModel):
    specification: str
    url: str
    changeset: str
    type: str
    formats: list[str]


class DiscoveryOut(BaseModel):
    changeset: str
    contact: str
    key_service: str
    endpoints: list[EndpointOut]
