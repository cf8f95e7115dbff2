"""PII planted in random text: the scrubber curation runs (`pii.scrub_sql`, the recipe's `pii` step) leaves none
of the e-mail addresses, phone numbers in the formats below, or Luhn-valid card numbers (Visa, Mastercard, Amex
groupings) it is given. What it does not promise (see `warehouse/pii.py`): phone numbers without separators,
names, street addresses, national ids. A quick run in `make test`, a deep one in the reliability tier."""

from __future__ import annotations

import duckdb
import pytest
from hypothesis import strategies as st

from flywheel.infra.testing.hostile import DEEP, QUICK, fuzz
from flywheel.warehouse import pii


def _luhn(prefix: str, length: int, body: str) -> str:
    digits = (prefix + body)[: length - 1]
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return digits + str((10 - total % 10) % 10)


def _grouped(number: str, sep: str) -> str:
    groups = (4, 6, 5) if len(number) == 15 else (4, 4, 4, 4)
    out, i = [], 0
    for g in groups:
        out.append(number[i:i + g])
        i += g
    return sep.join(out)


cards = st.builds(lambda net, body, sep: _grouped(_luhn(net[0], net[1], body), sep),
                  st.sampled_from([("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("6011", 16), ("34", 15),
                                   ("37", 15)]),
                  st.text("0123456789", min_size=16, max_size=16), st.sampled_from([" ", "-", ""]))
emails = st.builds(lambda user, host, tld: f"{user}@{host}.{tld}", st.from_regex(r"[a-z][a-z0-9._+-]{0,10}[a-z0-9]",
                                                                                 fullmatch=True),
                   st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]", fullmatch=True), st.sampled_from(["com", "org", "io",
                                                                                                "co.uk"]))
phones = st.builds(lambda cc, a, b, c, fmt: fmt.format(cc=cc, a=a, b=b, c=c),
                   st.sampled_from(["+1", "+44", "+49"]), st.from_regex(r"[2-9][0-9]{2}", fullmatch=True),
                   st.from_regex(r"[2-9][0-9]{2}", fullmatch=True), st.from_regex(r"[0-9]{4}", fullmatch=True),
                   st.sampled_from(["{cc} {a}-{b}-{c}", "({a}) {b}-{c}", "{a}.{b}.{c}", "{cc} {a} {b} {c}"]))
words = st.lists(st.sampled_from(["please", "call", "me", "at", "or", "mail", "my", "card", "is", "thanks", ",", ".",
                                  "(", ")", ":", "é", "日本"]), max_size=6).map(" ".join)
planted = st.tuples(words, st.lists(st.one_of(emails, phones, cards), min_size=1, max_size=3), words)


@pytest.fixture(scope="module")
def con() -> duckdb.DuckDBPyConnection:
    c = duckdb.connect()
    c.execute(pii.LUHN_MACRO)
    return c


@pytest.mark.parametrize("examples", [pytest.param(QUICK * 4, id="quick"),
                                      pytest.param(DEEP * 4, id="deep", marks=pytest.mark.reliability)])
def test_planted_emails_phones_and_cards_never_survive_the_scrubber(con: duckdb.DuckDBPyConnection,
                                                                    examples: int) -> None:
    sql = f"SELECT {pii.scrub_sql('t')} FROM (SELECT $t::VARCHAR AS t)"

    def check(case: tuple[str, list[str], str]) -> None:
        before, values, after = case
        text = " ".join([before, *(f"{v} ;" for v in values), after])
        row = con.execute(sql, {"t": text}).fetchone()
        assert row is not None
        for v in values:
            assert v not in row[0], (text, row[0])

    fuzz(planted, check, examples)


@pytest.mark.parametrize("text", [" +1 200-200-0000 ;", "+1 415-555-0132, +1 415-555-0133", "a ; 415.555.0132 ; "
                                  "415.555.0133 ; 415.555.0134", "10.0.0.1, 10.0.0.2"])
def test_neighbouring_and_leading_phones_and_addresses_are_scrubbed(con: duckdb.DuckDBPyConnection,
                                                                   text: str) -> None:
    """What the property above found: a phone right after a leading space, and the second of two neighbours whose
    context the first match had consumed, survived (the addresses passed already: kept as a guard)."""
    (out,) = con.execute(f"SELECT {pii.scrub_sql('t')} FROM (SELECT $t::VARCHAR AS t)", {"t": text}).fetchone() or ("",)
    assert not any(ch.isdigit() for ch in out), out
