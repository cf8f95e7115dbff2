"""The PII detectors, run in DuckDB exactly as the quality suites run them (prefilter, then per-kind flags)."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from flywheel.warehouse import pii

CASES = {
    "email": (["write to jane.doe@example.com today", "ftp://user:pw@ftp.example.co.uk/x", "A.B+tag@sub.mail.org"],
              ["no at sign here", "a @ b", "user@localhost", "@handle on social"]),
    "phone": (["call +1 415-555-0133 now", "(020) 7946 0958", "tel: 208 365 1717.", "+44 20 7946 0958"],
              ["card 4539 5787 6362 1486", "version 1.2.3", "in 2026-11-28 at 10:00", "id 41586-021-03798-x"]),
    "credit_card": (["visa 4539 5787 6362 1486 ok", "amex 3714-496353-98431", "mc 5555555555554444",
                     "disc 6011111111111117."],
                    ["4539 5787 6362 1487 (bad check digit)", "ts 20170908153437", "pi 3.43397884615385",
                     "0000000000000000", "order 1234567812345678"]),
    "ip_address": (["server at 192.168.10.24 fails", "ping 8.8.8.8", "from 10.0.0.1.",
                    "v6 2001:0db8:85a3:0000:0000:8a2e:0370:7334"],
                   ["999.1.1.1 is not an address", "version 1.2.3", "pi is 3.14159", "release 2.10.4.1.7"]),
    "secret": (["key sk-proj-Abcdefghijklmnopqrstuvwx12", "AKIAIOSFODNN7EXAMPLE", "api_key = 'abcd1234efgh5678ijkl'",
                "ghp_" + "a" * 36, "xoxb-1234567890-abcdef"],
               ["sk-short", "the skeleton key", "api key rotation policy", "token: abc"]),
}


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    c.execute(pii.LUHN_MACRO)
    return c


def _flags(con: duckdb.DuckDBPyConnection, kind: str, texts: list[str]) -> list[bool]:
    con.register("t", pa.table({"text": texts}))
    sql = f"SELECT {pii.flag_sql(kind, 'text', 'any')} FROM (SELECT text, {pii.any_sql('text')} AS any FROM t)"
    return [v for (v,) in con.sql(sql).fetchall()]


@pytest.mark.parametrize("kind", pii.KINDS)
def test_detector_finds_its_kind_and_ignores_look_alikes(con: duckdb.DuckDBPyConnection, kind: str) -> None:
    positives, negatives = CASES[kind]
    assert _flags(con, kind, positives) == [True] * len(positives)
    assert _flags(con, kind, negatives) == [False] * len(negatives)


def test_luhn_macro(con: duckdb.DuckDBPyConnection) -> None:
    got = con.sql("SELECT fw_luhn('79927398713'), fw_luhn('79927398710'), fw_card('4539578763621486'), "
                  "fw_card('4539578763621487'), fw_card('20170908153437')").fetchall()
    assert got == [(True, False, True, False, False)]


def test_nulls_are_not_pii(con: duckdb.DuckDBPyConnection) -> None:
    assert _flags(con, "email", [None, ""]) == [False, False]  # type: ignore[list-item]
