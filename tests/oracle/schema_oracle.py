"""Differential test: HL7's FHIR R4 JSON schema as an independent oracle for Careplane's validator.

Usage: schema_oracle.py BASE_URL SYNTHEA_DIR [SCHEMA_PATH]

SCHEMA_PATH defaults to $CAREPLANE_SHARED_DIR/fhir/r4/fhir.schema.json, else
<SYNTHEA_DIR>/../../fhir/r4/fhir.schema.json (the layout of the shared directory).

A deterministic sample of Synthea resources (fixed seed, round-robin over resource types) is
validated unchanged and under mutations the schema can judge. Every case gets two verdicts:
the schema's (jsonschema, Draft 6) and Careplane's (POST {base}/{type}/$validate: 200 = valid,
400 = invalid). The run fails when

* Careplane rejects an unmutated Synthea resource, or
* the schema rejects a mutation that Careplane accepts ("missed by Careplane").

Careplane rejecting what the schema accepts is expected and only reported: it also checks
cardinality of choice elements, bindings, references, invariants and primitive value spaces.

Schema quirks (found while writing this test; they decide which mutations are generated):

* Complex datatypes (CodeableConcept, Reference, ...) have `properties` and
  `additionalProperties: false` but no `"type": "object"`, so a JSON array or scalar where a
  single complex value belongs is schema-valid. "array where single" is therefore only applied
  to primitive-typed elements, whose definitions carry a `type`.
* Required primitives are not in `required` (the value may live only in `_status`), e.g.
  Observation.status is not required by the schema. "remove required" uses the schema's own
  `required` lists (Observation.code, Encounter.class, ...), so every such case is judgeable.
* `integer`, `positiveInt`, `unsignedInt` are `"type": "number"` and `pattern` does not apply to
  numbers, so 1.5 or 0 pass the schema; Careplane rejecting them is "stricter", not a miss.
* Python's `re` (used by jsonschema for `pattern`) lets `$` match before a trailing newline,
  unlike ECMA 262: no mutation relies on a trailing newline.
* The date patterns do not know month lengths (2021-02-30 passes) and accept second 60.
* This copy of the schema carries Medplum additions (Meta.project/author/account/compartment,
  Reference.resource, Project, Bot, ... in ResourceList): the unknown-property mutation uses
  `bogusProperty`, which no variant defines.
* If the schema rejects an unmutated Synthea resource, that is a schema/data quirk: it is
  reported, not failed, and that resource's mutations are skipped (they would inherit the
  original's schema errors and be misclassified).
"""

import copy
import glob
import gzip
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request

import jsonschema

SEED = 20240611
SAMPLE_SIZE = 300
PRIMITIVE_TYPES = {"string", "boolean", "number"}
DATE_KINDS = {"date", "dateTime", "instant"}
BAD_DATES = {
    "date": ["2020-13-01", "2020/01/01", "20200101", "2020-1-5", "2020-01-01T10:00:00Z"],
    "dateTime": ["2020-13-01", "2020-01-01T10:00:00", "2020-01-01 10:00:00Z", "2020-01-32", "1-01-01"],
    "instant": ["2020-01-01", "2020-01-01T10:00:00", "2020-01-01T25:00:00Z", "2020-01-01T10:00Z", "yesterday"],
}


class Schema:
    """Property typing from the schema's definitions, plus one validator per resource type."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            self.root = json.load(f)
        self.defs = self.root["definitions"]
        # Primitive definitions by pattern, to recognise primitives the schema inlines
        # (e.g. Observation.effectiveDateTime is {pattern, type}, not a $ref).
        self.by_pattern = {}
        for name, d in self.defs.items():
            if name[:1].islower() and "pattern" in d:
                self.by_pattern.setdefault(d["pattern"], name)
        self.validators = {}

    def validator(self, rtype):
        v = self.validators.get(rtype)
        if v is None:
            sub = {
                "$schema": self.root["$schema"],
                "$ref": f"#/definitions/{rtype}",
                "definitions": self.defs,
            }
            v = jsonschema.Draft6Validator(sub)
            self.validators[rtype] = v
        return v

    def errors(self, resource):
        rtype = resource.get("resourceType")
        if rtype not in self.defs:
            return [f"unknown resourceType {rtype!r}"]
        return [
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:120]}"
            for e in self.validator(rtype).iter_errors(resource)
        ]

    def describe(self, s):
        """(kind, name, pattern?) for a property schema item: kind is primitive/complex/resource."""
        if "$ref" in s:
            name = s["$ref"].rsplit("/", 1)[1]
            d = self.defs[name]
            if name == "ResourceList" or "oneOf" in d:
                return ("resource", name)
            if d.get("type") in PRIMITIVE_TYPES:
                return ("primitive", name, d["type"])
            return ("complex", name)
        if "enum" in s:
            return ("primitive", "enum-code", "string")
        if s.get("type") in PRIMITIVE_TYPES:
            return ("primitive", self.by_pattern.get(s.get("pattern"), s["type"]), s["type"])
        return ("unknown", None)

    def prop(self, defname, key):
        """(is_array, item description) for property `key` of definition `defname`, or None."""
        props = self.defs.get(defname, {}).get("properties", {})
        s = props.get(key)
        if s is None:
            return None
        if s.get("type") == "array":
            return True, self.describe(s["items"])
        return False, self.describe(s)


def walk(schema, node, defname, path, out):
    """Collects (path, is_array, description, value) for each property under an object node."""
    for key, value in node.items():
        p = schema.prop(defname, key)
        if p is None:
            continue
        is_array, desc = p
        out.append((path + [key], is_array, desc, value))
        if desc[0] != "complex":
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, dict):
                sub = path + [key, i] if is_array else path + [key]
                walk(schema, item, desc[1], sub, out)


def get_parent(doc, path):
    node = doc
    for k in path[:-1]:
        node = node[k]
    return node


def mutations(schema, resource, rng):
    """Deterministic mutations of `resource` the schema can judge: [(kind, description, doc)]."""
    rtype = resource["resourceType"]
    leaves = []
    walk(schema, resource, rtype, [], leaves)
    out = []

    def mutate(kind, path, new_value, note):
        doc = copy.deepcopy(resource)
        if path:
            get_parent(doc, path)[path[-1]] = new_value
        out.append((kind, f"{'.'.join(map(str, path))}: {note}", doc))

    def pick(candidates):
        return candidates[rng.randrange(len(candidates))] if candidates else None

    # Unknown property at root and nested (inside any complex-typed object).
    doc = copy.deepcopy(resource)
    doc["bogusProperty"] = "x"
    out.append(("unknown-root", "bogusProperty at root", doc))
    objs = []
    for path, is_array, desc, value in leaves:
        if desc[0] == "complex":
            if is_array and isinstance(value, list):
                objs += [path + [i] for i, v in enumerate(value) if isinstance(v, dict)]
            elif isinstance(value, dict):
                objs.append(path)
    target = pick(objs)
    if target is not None:
        doc = copy.deepcopy(resource)
        get_parent(doc, target + ["_"])["bogusProperty"] = "x"
        out.append(("unknown-nested", f"{'.'.join(map(str, target))}.bogusProperty", doc))

    # Primitive leaves, single-valued (arrays of primitives contribute their first item).
    prims = [
        (path, desc, value)
        for path, is_array, desc, value in leaves
        if desc[0] == "primitive" and not is_array and not isinstance(value, (list, dict))
    ]

    # Wrong JSON type: boolean where string/number belongs and vice versa.
    target = pick(prims)
    if target is not None:
        path, desc, value = target
        wrong = {"string": True, "boolean": "true", "number": str(value)}[desc[2]]
        mutate("wrong-type", path, wrong, f"{desc[1]} {value!r} -> {wrong!r}")
    strings = [t for t in prims if t[1][2] == "string"]
    target = pick(strings)
    if target is not None:
        path, desc, value = target
        mutate("wrong-type", path, 42, f"{desc[1]} {value!r} -> 42")

    # Malformed date/dateTime/instant.
    dates = [t for t in prims if t[1][1] in DATE_KINDS]
    target = pick(dates)
    if target is not None:
        path, desc, value = target
        bad = pick(BAD_DATES[desc[1]])
        mutate("bad-date", path, bad, f"{desc[1]} {value!r} -> {bad!r}")

    # Array where a single primitive belongs; single where an array belongs.
    target = pick(prims)
    if target is not None:
        path, desc, value = target
        mutate("array-for-single", path, [value], f"{desc[1]} {value!r} -> [{value!r}]")
    arrays = [
        (path, value)
        for path, is_array, desc, value in leaves
        if is_array and isinstance(value, list) and value and desc[0] != "resource"
    ]
    target = pick(arrays)
    if target is not None:
        path, value = target
        mutate("single-for-array", path, value[0], "[x, ...] -> x")

    # Invalid code: leading space (fails the `code` pattern or the inline enum).
    codes = [t for t in prims if t[1][1] in ("code", "enum-code")]
    target = pick(codes)
    if target is not None:
        path, desc, value = target
        mutate("bad-code", path, " " + value, f"{desc[1]} {value!r} -> {' ' + value!r}")

    # Schema-blind mutations (the schema accepts them; FHIR does not): these exercise the
    # "stricter in Careplane" class. An impossible calendar date, and a required primitive
    # (`status`, 1..1 in most resources that have it) that the schema does not list as required.
    full_dates = [t for t in dates if len(t[2]) >= 10 and t[2][4] == "-" and t[2][7] == "-"]
    target = pick(full_dates)
    if target is not None:
        path, desc, value = target
        bad = value[:4] + "-02-30" + value[10:]
        mutate("impossible-date", path, bad, f"{desc[1]} {value!r} -> {bad!r}")
    if "status" in resource and "status" not in schema.defs[rtype].get("required", []):
        doc = copy.deepcopy(resource)
        del doc["status"]
        out.append(("remove-status", "status removed", doc))

    # Remove a property the schema lists as required.
    required = [k for k in schema.defs[rtype].get("required", []) if k != "resourceType"]
    for key in required:
        if key in resource:
            doc = copy.deepcopy(resource)
            del doc[key]
            out.append(("remove-required", f"{key} removed", doc))
    return out


def careplane(base, resource):
    """(valid?, status, first error diagnostics)."""
    url = f"{base}/{resource['resourceType']}/$validate"
    data = json.dumps(resource).encode()
    req = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    if status not in (200, 400):
        raise SystemExit(f"unexpected HTTP {status} from {url}: {body[:500]!r}")
    outcome = json.loads(body)
    errors = [
        f"{'/'.join(i.get('expression', []))}: {i.get('diagnostics', '')}"
        for i in outcome.get("issue", [])
        if i.get("severity") in ("error", "fatal")
    ]
    if (status == 200) != (not errors):
        raise SystemExit(f"HTTP {status} disagrees with its OperationOutcome: {outcome}")
    return status == 200, status, errors


def load_sample(synthea_dir, rng):
    files = sorted(glob.glob(os.path.join(synthea_dir, "*.json.gz")))
    if not files:
        raise SystemExit(f"no *.json.gz in {synthea_dir}")
    by_type = {}
    for f in files:
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            bundle = json.load(fh)
        for i, entry in enumerate(bundle.get("entry", [])):
            r = entry.get("resource")
            if r:
                by_type.setdefault(r["resourceType"], []).append((f"{os.path.basename(f)}#{i}", r))
    for items in by_type.values():
        rng.shuffle(items)
    sample, types = [], sorted(by_type)
    while len(sample) < SAMPLE_SIZE and any(by_type[t] for t in types):
        for t in types:
            if by_type[t] and len(sample) < SAMPLE_SIZE:
                sample.append(by_type[t].pop())
    return sample


def main():
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    started = time.monotonic()
    base, synthea_dir = sys.argv[1].rstrip("/"), sys.argv[2]
    if len(sys.argv) == 4:
        schema_path = sys.argv[3]
    elif os.environ.get("CAREPLANE_SHARED_DIR"):
        schema_path = os.path.join(os.environ["CAREPLANE_SHARED_DIR"], "fhir/r4/fhir.schema.json")
    else:
        schema_path = os.path.join(synthea_dir, "../../fhir/r4/fhir.schema.json")
    schema = Schema(schema_path)
    rng = random.Random(SEED)
    sample = load_sample(synthea_dir, rng)

    counts = {"agree-valid": 0, "agree-invalid": 0, "missed": 0, "stricter": 0}
    missed, stricter, originals_rejected, schema_quirks = [], [], [], []
    by_kind = {}
    cases = 0
    for origin, resource in sample:
        rtype = resource["resourceType"]
        s_err = schema.errors(resource)
        c_ok, _, c_err = careplane(base, resource)
        cases += 1
        if not c_ok:
            originals_rejected.append((origin, rtype, c_err[:3]))
        if s_err:
            schema_quirks.append((origin, rtype, s_err[:3]))
            continue
        counts["agree-valid" if c_ok else "stricter"] += 1
        if not c_ok:
            stricter.append(("original", origin, rtype, "unmutated", c_err))
        for kind, what, doc in mutations(schema, resource, rng):
            cases += 1
            s_ok = not schema.errors(doc)
            c_ok, _, c_err = careplane(base, doc)
            k = by_kind.setdefault(kind, {"cases": 0, "schema-invalid": 0, "missed": 0})
            k["cases"] += 1
            k["schema-invalid"] += not s_ok
            if kind == "impossible-date" and c_ok:
                # The schema's patterns allow Feb 30; FHIR says dates SHALL be valid dates, so
                # Careplane must reject these even though the oracle cannot.
                counts["missed"] += 1
                k["missed"] += 1
                missed.append((kind, origin, rtype, what, ["no such calendar day"]))
            elif s_ok and c_ok:
                counts["agree-valid"] += 1
            elif not s_ok and not c_ok:
                counts["agree-invalid"] += 1
            elif not s_ok and c_ok:
                counts["missed"] += 1
                k["missed"] += 1
                missed.append((kind, origin, rtype, what, schema.errors(doc)[:2]))
            else:
                counts["stricter"] += 1
                stricter.append((kind, origin, rtype, what, c_err))

    print(f"sample: {len(sample)} resources of {len({r['resourceType'] for _, r in sample})} types")
    for kind, k in sorted(by_kind.items()):
        print(f"  {kind:17} {k['cases']:4} cases, {k['schema-invalid']:4} schema-invalid, {k['missed']} missed")
    if schema_quirks:
        print(f"schema rejects {len(schema_quirks)} unmutated Synthea resources (schema/data quirk, not failed):")
        for origin, rtype, errs in schema_quirks[:5]:
            print(f"  {rtype} {origin}: {errs}")
    if stricter:
        print(f"stricter in Careplane ({len(stricter)}), first examples:")
        for kind, origin, rtype, what, errs in stricter[:8]:
            print(f"  [{kind}] {rtype} {origin} {what} -> {errs[:2]}")
    if originals_rejected:
        print(f"FAIL: Careplane rejects {len(originals_rejected)} unmutated Synthea resources:")
        for origin, rtype, errs in originals_rejected:
            print(f"  {rtype} {origin}: {errs}")
    if missed:
        print(f"FAIL: {len(missed)} schema-invalid cases accepted by Careplane:")
        for kind, origin, rtype, what, errs in missed:
            print(f"  [{kind}] {rtype} {origin} {what}; schema: {errs}")
    agree = counts["agree-valid"] + counts["agree-invalid"]
    print(
        f"agree-valid {counts['agree-valid']}, agree-invalid {counts['agree-invalid']}, "
        f"{time.monotonic() - started:.1f} s"
    )
    print(
        f"oracle: {cases} cases, {agree} agree, {counts['missed']} missed-by-careplane, "
        f"{counts['stricter']} stricter-in-careplane"
    )
    sys.exit(1 if missed or originals_rejected else 0)


if __name__ == "__main__":
    main()
