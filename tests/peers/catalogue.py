"""SDK-independent data shared by py1_server.py and py2_server.py.

node/catalogue.mjs mirrors this module byte for byte in its outputs, so every
peer serves identical PII, identical big_result text and identical prompts.
"""

import json

CUSTOMER_TEMPLATE = {
    "name": "Jane Doe",
    "email": "jane.doe@example.com",
    "phone": "+44 20 7946 0958",
    # A mobile number as CRMs store it: E.164 digits without the `+`, a phone number only
    # under its key (in the text of a JSON resource too).
    "mobile": "447700900123",
    "iban": "GB82WEST12345698765432",
    "portal_api_key": "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
}
README_URI = "file:///crm/readme.txt"
README_TEXT = (
    "CRM export service.\n"
    "Questions about this data set go to dpo@crm.example.com.\n"
)
LINE_BYTES = 64
MIB = 1024 * 1024


def num(x: float) -> str:
    """Render a number the way JavaScript's String() does for the values the tests use (5, 2.5)."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def iban_gb(account: int) -> str:
    """A checksum-valid GB IBAN (bank WEST, sort code 123456) for the given account number."""
    bban = f"WEST123456{account:08d}"
    digits = "".join(str(int(c, 36)) for c in bban + "GB00")
    return f"GB{98 - int(digits) % 97:02d}{bban}"


def customer(cid: str) -> dict:
    return {"id": str(cid), **CUSTOMER_TEMPLATE}


def customer_json(cid: str) -> str:
    return json.dumps(customer(cid), separators=(",", ":"))


def customer_text(cid: str) -> str:
    c = customer(cid)
    return f"Customer {c['id']}: {c['name']}, email {c['email']}, phone {c['phone']}, IBAN {c['iban']}"


def export_record(i: int) -> dict:
    return {
        "id": i,
        "name": f"Customer {i}",
        "email": f"customer{i}@example.com",
        "phone": f"+44 20 7946 {i % 10000:04d}",
        "iban": iban_gb(98765432 + i),
    }


def export_jsonl(limit: int) -> str:
    return "".join(json.dumps(export_record(i), separators=(",", ":")) + "\n" for i in range(1, limit + 1))


def big_text(mb: int) -> str:
    """mb MiB of ASCII: 64-byte lines 'line 0000000000 xxx...x\\n' with a counter."""
    pad = "x" * (LINE_BYTES - len("line 0000000000 \n"))
    return "".join(f"line {i:010d} {pad}\n" for i in range(mb * MIB // LINE_BYTES))


def prompt_text(cid: str) -> str:
    return f"Summarize the account history of this customer. {customer_text(cid)}"


def pii_log(email: str) -> str:
    return f"looking up {email} for the caller"


def pii_progress(email: str) -> str:
    return f"found the record of {email}, phone +44 20 7946 0958"


def pii_link_description(email: str) -> str:
    return f"Record of {email}"


def completion_values(prefix: str) -> list[str]:
    return [f"{prefix}jane.doe@example.com", f"{prefix}john.roe@example.org"]


def debug_caller() -> str:
    """An address a careless server puts in a response header."""
    return "jane.doe@example.com"


def debug_text() -> str:
    """A plain (non-MCP) answer that carries personal data."""
    return "debug: last caller jane.doe@example.com, account GB82WEST12345698765432"
