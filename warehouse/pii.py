"""PII detectors as DuckDB SQL: which texts contain e-mail addresses, phone numbers, credit-card numbers (network
prefix and Luhn checked), IP addresses or API-key-like secrets.

The quality gates count with `flag_sql`; curation (`flywheel curate`, the recipe's `pii` step) rewrites what
`scrub_sql` finds into typed placeholders in every dataset it writes. The patterns favour precision over recall:
a phone number needs separators, a card number needs 13-19 digits that pass the Luhn check, a secret needs a
known vendor prefix or an explicit `api_key=`-style assignment.

Speed: a regular expression over a large text column costs seconds per million rows here, about the same for one
pattern as for the alternation of all of them. So each column is scanned once with `ANY_PATTERN` and the
individual detectors run only on the few texts that matched it (`flag_sql`).
"""

from __future__ import annotations

_PHONE = r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}"
_IPV4 = r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV6 = r"(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}"

PARTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "email": (("", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", ""),),
    # Not inside a longer run of digit groups (a card number is not a phone number).
    "phone": ((r"(?:^[ .-]?|[^0-9 .-]|[^0-9][ .-])", _PHONE, r"(?:$|[^0-9 .-]|[ .-](?:$|[^0-9]))"),),
    "ip_address": ((r"(?:^|[^0-9.])", _IPV4, r"(?:$|[^0-9.]|\.(?:$|[^0-9]))"), ("", _IPV6, "")),
    "secret": (("", r"sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}"
                    r"|xox[abpr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}"
                    r"|(?i:api[_-]?key|secret[_-]?key|access[_-]?token)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9_\-]{16,}",
                "",),),
}
"""Each detector as alternatives of (the context it must sit in, the PII itself, the context after it): the
context is matched but is not PII, so a scrubber keeps it (`scrub_sql`) and a detector just matches all three."""

PATTERNS: dict[str, str] = {
    "email": PARTS["email"][0][1],
    "phone": "".join(PARTS["phone"][0]),
    # Issuers' first digits are 2-6 (Mastercard, Amex, Visa, Discover); not the decimals of a number; group 1 is
    # the candidate, which `fw_card` checks.
    "credit_card": r"(?:^|[^0-9.,])([2-6](?:[ -]?[0-9]){12,18})(?:[^0-9]|$)",
    "ip_address": "|".join("".join(p) for p in PARTS["ip_address"]),
    "secret": PARTS["secret"][0][1],
}
"""RE2 patterns (DuckDB's dialect), one per kind of PII. RE2 has no look-around, so number patterns consume the
non-digit around them to avoid matching inside a longer digit run."""

KINDS = tuple(PATTERNS)

ANY_PATTERN = "|".join(f"(?:{p})" for p in PATTERNS.values())

LUHN_MACRO = """
CREATE OR REPLACE MACRO fw_luhn(d) AS (
  list_sum(list_transform(range(length(d)), lambda i:
    CASE WHEN i % 2 = 0 THEN CAST(d[length(d) - i] AS INTEGER)
         ELSE 2 * CAST(d[length(d) - i] AS INTEGER) - CASE WHEN CAST(d[length(d) - i] AS INTEGER) >= 5 THEN 9 ELSE 0 END
    END)) % 10 = 0);
CREATE OR REPLACE MACRO fw_card(d) AS (
  CASE length(d)
    WHEN 16 THEN d[1] = '4' OR left(d, 2) BETWEEN '51' AND '55' OR left(d, 4) BETWEEN '2221' AND '2720'
                 OR left(d, 4) = '6011' OR left(d, 2) = '65'
    WHEN 15 THEN left(d, 2) IN ('34', '37')
    WHEN 13 THEN d[1] = '4'
    WHEN 19 THEN d[1] = '4' OR left(d, 2) = '65'
    ELSE false END
  AND fw_luhn(d));
"""
"""`fw_card(digits)`: true when a digit string has a card network's length and prefix (Visa, Mastercard, Amex,
Discover) and passes the Luhn checksum; together these reject timestamps, decimals and ids that merely pass Luhn
(one random digit string in ten does). Define it on a connection before running `flag_sql` expressions."""


def _lit(pattern: str) -> str:
    return "'" + pattern.replace("'", "''") + "'"


def any_sql(column: str) -> str:
    """True when `column` may hold any kind of PII (one scan); the prefilter for `flag_sql`."""
    return f"coalesce(regexp_matches(\"{column}\", {_lit(ANY_PATTERN)}), false)"


def flag_sql(kind: str, column: str, any_column: str) -> str:
    """True when `column` holds PII of `kind`; evaluated only where the prefilter column `any_column` is true."""
    if kind not in PATTERNS:
        raise KeyError(f"unknown PII kind {kind!r}; the kinds are {', '.join(KINDS)}")
    col, pat = f'"{column}"', _lit(PATTERNS[kind])
    if kind == "credit_card":
        test = (f"list_bool_or(list_transform(regexp_extract_all({col}, {pat}, 1), "
                "lambda c: fw_card(regexp_replace(c, '[^0-9]', '', 'g'))))")
    else:
        test = f"regexp_matches({col}, {pat})"
    return f"CASE WHEN \"{any_column}\" THEN coalesce({test}, false) ELSE false END"


PLACEHOLDERS = {kind: f"[{kind.upper()}]" for kind in KINDS}
"""The typed placeholder that replaces each kind of PII when it is scrubbed: `[EMAIL]`, `[PHONE]`, ..."""


def scrub_sql(expr: str, kinds: tuple[str, ...] = KINDS) -> str:
    """A SQL expression: the text `expr` with every PII match of `kinds` replaced by its typed placeholder (the
    context around a number is kept). Card numbers are replaced only where `fw_card` accepts the candidate (define
    `LUHN_MACRO` first); secrets go first, so a key holding digits is not half-replaced as a phone number."""
    order = [k for k in ("secret", "email", "credit_card", "ip_address", "phone") if k in kinds]
    for kind in order:
        if kind not in PATTERNS:
            raise KeyError(f"unknown PII kind {kind!r}; the kinds are {', '.join(KINDS)}")
        if kind == "credit_card":
            cands = (f"list_filter(regexp_extract_all({expr}, {_lit(PATTERNS[kind])}, 1), "
                     "lambda c: fw_card(regexp_replace(c, '[^0-9]', '', 'g')))")
            expr = f"list_reduce({cands}, lambda acc, c: replace(acc, c, '[CREDIT_CARD]'), {expr})"
            continue
        for before, pii, after in PARTS[kind]:
            pattern, keep_context = f"({before})({pii})({after})", "\\1" + PLACEHOLDERS[kind] + "\\3"
            # A match consumes the context after it, which can be the context the next one needs ("+1 415-555-0132,
            # +1 415-555-0133"): a second pass replaces what the first skipped (never two neighbours in a row).
            for _ in range(2 if kind in ("phone", "ip_address") else 1):
                expr = f"regexp_replace({expr}, {_lit(pattern)}, {_lit(keep_context)}, 'g')"
    return expr
