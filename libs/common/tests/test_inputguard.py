"""The input guard's checks, and what the problem handlers do with a value PostgreSQL refuses."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, MetaData, String, Table, insert, text
from sqlalchemy.exc import DBAPIError

from civicsignals.common.db import create_engine, is_sqlite
from civicsignals.common.inputguard import nul_in_form, unstorable_json
from civicsignals.common.problems import unstorable_character


@pytest.mark.parametrize(
    ("document", "pointers"),
    [
        ('{"text": "a\\u0000b"}', ["/text"]),
        ('{"a": {"b\\u0000": 1}}', ["/a/b\x00"]),
        ('{"list": [1, NaN, {"x": Infinity}], "y": -Infinity}', ["/list/1", "/list/2/x", "/y"]),
        ('{"big": 1e999, "fine": 1e308, "small": 1e-999}', ["/big"]),
        ('{"path/with~": "\\u0000"}', ["/path~1with~0"]),
        ('["\\u0000"]', ["/0"]),
    ],
)
def test_unstorable_values_are_found_with_their_pointers(document: str, pointers: list[str]) -> None:
    found = unstorable_json(document.encode())
    assert [error["pointer"] for error in found] == sorted(pointers)
    assert all(error["detail"] for error in found)


@pytest.mark.parametrize(
    "document",
    [
        '{"text": "NaN and Infinity are words here"}',
        '{"text": "a literal \\\\u0000 is a backslash and five letters"}',
        '{"n": 2e100, "m": 1.5E+308}',
        "{not json at all NaN",  # not JSON: the route's own reader answers 400
        '{"plain": "nothing suspicious"}',
    ],
)
def test_values_that_only_look_unstorable_pass(document: str) -> None:
    assert unstorable_json(document.encode()) == []


def test_a_nul_in_a_form_or_query_string_names_its_field() -> None:
    assert nul_in_form(b"a=1&description=x%00y&b=2") == [
        {"pointer": "/description", "detail": "a NUL character (U+0000) is not allowed"}
    ]
    assert [error["pointer"] for error in nul_in_form(b"na%00me=1")] == ["/na\\u0000me"]
    assert nul_in_form(b"a=1&b=%2500") == []  # an encoded percent sign and two zeros
    assert nul_in_form(b"") == []


async def test_a_nul_that_postgresql_refuses_is_recognised(database_url: str) -> None:
    """What the guard cannot see (a multipart form's text field) still reaches the database; the
    problem handler answers PostgreSQL's refusal as the client's error (422), not as a 500."""
    if is_sqlite(database_url):
        pytest.skip("SQLite stores U+0000; only PostgreSQL refuses it")
    table = Table("notes", MetaData(), Column("text", String))
    engine = create_engine(database_url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(table.metadata.create_all)
        with pytest.raises(DBAPIError) as refused:
            async with engine.begin() as connection:
                await connection.execute(insert(table).values(text="a\x00b"))
        assert unstorable_character(refused.value)
        with pytest.raises(DBAPIError) as other:  # any other error of the database stays a 500
            async with engine.begin() as connection:
                await connection.execute(text("SELECT 1 / 0"))
        assert not unstorable_character(other.value)
    finally:
        await engine.dispose()
