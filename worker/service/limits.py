"""Bounds on what an inbound event may hold, so that every accepted value fits the database and the contract.

A value outside them is refused at validation (a dead letter with `InvalidEvent` or `UndecodableMessage`)
instead of failing later in PostgreSQL, in date arithmetic or in a metric label. README.md, "Input
limits", lists every bound with the reason for it; keep the two in step.
"""

from __future__ import annotations

import datetime as dt
import re

# A whole inbound message value (Avro header and body). Kafka refuses a produce request over ~1 MB; a dead
# letter carries the original value, so an inbound value must leave room for it and the headers we add.
MAX_MESSAGE_BYTES = 256 * 1024

# Identifiers are keys of btree indexes (PostgreSQL refuses an index row over ~2,700 bytes: 200 characters
# are at most 800 bytes of UTF-8, twice over for the (order_id, line_id) key) and metric or log values.
MAX_IDENTIFIER_LENGTH = 200
MAX_PRODUCT_NAME_LENGTH = 500
MAX_NOTE_LENGTH = 2_000

# One order is handled in one transaction and fans out into one status event per line.
MAX_LINES_PER_ORDER = 500
MAX_LINE_IDS_PER_CANCELLATION = MAX_LINES_PER_ORDER

# quantity x unit price stays below 2**63 (the bigint product the value metrics sum), and the units of an
# order (MAX_LINES_PER_ORDER x MAX_QUANTITY) fit the integer column order_units.
MAX_QUANTITY = 1_000_000
MAX_UNIT_PRICE_MINOR = 10**12
MAX_BACKORDER_QTY_PER_CUSTOMER = MAX_QUANTITY
# Lead time and staleness are added to dates; ten years keeps every derived date far inside the calendar.
MAX_POLICY_DAYS = 3_650

# Business dates and event times; anything outside is a producer's bug, and dates far out overflow arithmetic.
EARLIEST_DATE = dt.date(2000, 1, 1)
LATEST_DATE = dt.date(2100, 12, 31)

# How much of an offending value an error message quotes: a dead letter must not echo a megabyte back.
QUOTE_LENGTH = 80

# ISO 4217 List One, active currencies as of 2025 (BGN and ANG kept while they are being replaced by EUR and
# XCG); without fund codes (BOV, CHE, ...), precious metals (XAU, ...) and special codes (XDR, XTS, XXX). The
# order's currency is a metric label, so this set also bounds that label's values.
_ISO_4217 = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN BZD "
    "CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD "
    "GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT "
    "LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR "
    "NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP "
    "STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VED VES VND VUV WST XAF XCD "
    "XCG XOF XPF YER ZAR ZMW ZWG"
)
CURRENCIES = frozenset(_ISO_4217.split())

# C0 controls (NUL included), DEL, C1 controls, and UTF-16 surrogates, which no UTF-8 text can hold.
_NOT_IN_IDENTIFIER = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# Free text may hold tabs and line breaks, but PostgreSQL text cannot hold NUL, nor UTF-8 a lone surrogate.
_NOT_IN_TEXT = re.compile("[\x00\ud800-\udfff]")


def quote(value: object) -> str:
    """`repr` of a value for an error message: at most QUOTE_LENGTH characters (or 3 items) of it, then its size."""
    if isinstance(value, str | bytes):
        if len(value) <= QUOTE_LENGTH:
            return repr(value)
        unit = "characters" if isinstance(value, str) else "bytes"
        return f"{value[:QUOTE_LENGTH]!r}... ({len(value):,} {unit})"
    if isinstance(value, list | tuple):
        shown = ", ".join(quote(item) for item in value[:3])
        return f"[{shown}]" if len(value) <= 3 else f"[{shown}, ...] ({len(value):,} items)"
    text = repr(value)
    return text if len(text) <= QUOTE_LENGTH else f"{text[:QUOTE_LENGTH]}... ({len(text):,} characters)"


def date_problem(value: dt.date) -> str | None:
    """Why a date cannot be a business date, or None when it can."""
    if not EARLIEST_DATE <= value <= LATEST_DATE:
        return f"must be from {EARLIEST_DATE} to {LATEST_DATE}"
    return None


def identifier_problem(value: str) -> str | None:
    """Why a string cannot be an identifier, or None when it can."""
    if not value.strip():
        return "must be a non-empty string"
    if len(value) > MAX_IDENTIFIER_LENGTH:
        return f"must be at most {MAX_IDENTIFIER_LENGTH:,} characters"
    bad = _NOT_IN_IDENTIFIER.search(value)
    if bad is not None:
        return f"must not hold control characters or surrogates (U+{ord(bad.group()):04X} at {bad.start()})"
    return None


def text_problem(value: str, max_length: int) -> str | None:
    """Why a string cannot be stored as free text of at most `max_length` characters, or None when it can."""
    if len(value) > max_length:
        return f"must be at most {max_length:,} characters"
    bad = _NOT_IN_TEXT.search(value)
    if bad is not None:
        return f"must not hold NUL or surrogates (U+{ord(bad.group()):04X} at {bad.start()})"
    return None
