"""The JSON Schemas in schemas/ against the real encoder output.

EV_ENCODE_SAMPLE must name the built ev_encode_sample binary (CTest sets it);
the test fails, rather than skips, when it is missing. Each schema must accept
what the encoder writes and reject what the decoder rejects.
"""

import copy
import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "schemas"
SCHEMA_FILES = {
    "OrderCreated": "order-created.schema.json",
    "PaymentCompleted": "payment-completed.schema.json",
    "InventoryReserved": "inventory-reserved.schema.json",
}
MISSING = object()  # marks a member to delete


def load_schema(name):
    with open(SCHEMA_DIR / SCHEMA_FILES[name], encoding="utf-8") as f:
        return json.load(f)


def validator(name):
    return jsonschema.Draft202012Validator(load_schema(name))


@pytest.fixture(scope="module")
def samples():
    path = os.environ.get("EV_ENCODE_SAMPLE")
    if not path:
        pytest.fail("EV_ENCODE_SAMPLE is not set; it must name the ev_encode_sample binary")
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        pytest.fail(f"EV_ENCODE_SAMPLE={path!r} is not an executable file")
    proc = subprocess.run([path], capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, f"{path} exited {proc.returncode}: {proc.stderr}"
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, f"expected 3 lines, got {proc.stdout!r}"
    out = {}
    for line in lines:
        name, _, text = line.partition(" ")
        assert name in SCHEMA_FILES, f"unknown event type in {line!r}"
        assert name not in out, f"{name} printed twice"
        out[name] = json.loads(text)
    return out


def mutated(doc, field, value):
    doc = copy.deepcopy(doc)
    if value is MISSING:
        del doc[field]
    else:
        doc[field] = value
    return doc


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_schema_is_valid_draft_2020_12(name):
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"] == name
    assert schema.get("additionalProperties", True) is True


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_encoder_output_matches_schema(samples, name):
    doc = samples[name]
    errors = [e.message for e in validator(name).iter_errors(doc)]
    assert not errors, f"{name} {json.dumps(doc)} violates its schema: {errors}"
    # The encoder writes exactly the required members, in the seed's order.
    assert list(doc) == load_schema(name)["required"]


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_missing_each_required_field_rejected(samples, name):
    v = validator(name)
    for field in load_schema(name)["required"]:
        doc = mutated(samples[name], field, MISSING)
        assert not v.is_valid(doc), f"{name} without {field} was accepted"


ID_BAD = ["", "a b", " ", "x" * 65, "abc\n", "tab\there", "\u00e9", "a\u0000b", "\u007f", 1, None]
REJECTED = [
    ("OrderCreated", "quantity", [0, -1, 1000001, 1.5, "2", True, None, 2**63]),
    ("OrderCreated", "amountCents", [-1, 10**12 + 1, 0.5, "1", False, None, 2**63]),
    ("OrderCreated", "orderId", ID_BAD),
    ("OrderCreated", "customerId", ID_BAD),
    ("OrderCreated", "sku", ID_BAD),
    ("PaymentCompleted", "orderId", ID_BAD),
    ("PaymentCompleted", "approved", [0, 1, "true", None]),
    ("PaymentCompleted", "reason", ["a\nb", "\u0000", "\u0085", "\u009f", "r" * 129, 7, None]),
    ("InventoryReserved", "orderId", ID_BAD),
    ("InventoryReserved", "reserved", [0, 1, "false", None]),
    ("InventoryReserved", "reason", ["\t", "x\u007f", "r" * 129, [], None]),
]


@pytest.mark.parametrize("name,field,values", REJECTED, ids=[f"{n}.{f}" for n, f, _ in REJECTED])
def test_schema_rejects_what_decoder_rejects(samples, name, field, values):
    v = validator(name)
    for value in values:
        doc = mutated(samples[name], field, value)
        assert not v.is_valid(doc), f"{name} with {field}={value!r} was accepted"


ACCEPTED = [
    ("OrderCreated", "quantity", [1, 1000000]),
    ("OrderCreated", "amountCents", [0, 10**12]),
    ("OrderCreated", "sku", ["x" * 64, "!~", "A"]),
    ("PaymentCompleted", "reason", ["", "r" * 128, "caf\u00e9 \u2713", "nbsp\u00a0"]),
    ("InventoryReserved", "reason", ["", "OUT_OF_STOCK"]),
]


@pytest.mark.parametrize("name,field,values", ACCEPTED, ids=[f"{n}.{f}" for n, f, _ in ACCEPTED])
def test_schema_accepts_boundaries(samples, name, field, values):
    v = validator(name)
    for value in values:
        doc = mutated(samples[name], field, value)
        errors = [e.message for e in v.iter_errors(doc)]
        assert not errors, f"{name} with {field}={value!r} was rejected: {errors}"


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_unknown_fields_allowed(samples, name):
    doc = mutated(samples[name], "futureField", {"nested": [1, 2.5, None]})
    assert validator(name).is_valid(doc)
