#!/usr/bin/env python3
"""Independent oracle of FHIR R4 search answers over the Synthea test patients.

Reads the gzip'd FHIR R4 transaction Bundles in the Synthea directory, applies the
id/reference rewriting that `careplane import --stable-ids` performs (every resource keeps
the uuid of its `urn:uuid:` fullUrl as id, every `urn:uuid:` reference becomes
`<Type>/<uuid>`), evaluates a fixed, deterministically chosen list of search URLs with a
small, self-contained implementation of R4 search semantics and writes the expected
answers as JSON for the Rust integration tests.

This is deliberately a *second* implementation, written without looking at the server's
search code: stdlib only, simple data structures, no indexes.

Usage:
    python3 tools/synthea_search_answers.py [SYNTHEA_DIR] [--out FILE]

SYNTHEA_DIR defaults to $CAREPLANE_SHARED_DIR/data/synthea-r4 (shared dir defaults to
/work/shared); FILE defaults to crates/careplane/tests/fixtures/synthea_search_answers.json
next to this script's repository root.
"""

from __future__ import annotations

import argparse
import collections
import copy
import datetime as dt
import decimal
import glob
import gzip
import json
import math
import os
import re
import sys
import unicodedata
import urllib.parse
from fractions import Fraction

INF = float("inf")
NEG_INF = float("-inf")
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


class Store:
    """All resources after import, keyed by type then id."""

    def __init__(self) -> None:
        self.by_type: dict[str, dict[str, dict]] = collections.defaultdict(dict)
        self.quirks: list[str] = []
        self.files: list[str] = []
        self.patient_file: dict[str, str] = {}

    def get(self, ref: str) -> dict | None:
        if "/" not in ref:
            return None
        rtype, rid = ref.split("/", 1)
        return self.by_type.get(rtype, {}).get(rid)

    def all(self, rtype: str) -> list[dict]:
        return [self.by_type[rtype][k] for k in sorted(self.by_type.get(rtype, {}))]


def walk_references(node, fn):
    """Call fn(dict_with_reference) for every Reference-like object (a dict with 'reference')."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            fn(node)
        for v in node.values():
            walk_references(v, fn)
    elif isinstance(node, list):
        for v in node:
            walk_references(v, fn)


def load(directory: str) -> Store:
    store = Store()
    files = sorted(glob.glob(os.path.join(directory, "*.json.gz")))
    if not files:
        sys.exit(f"no *.json.gz bundles in {directory}")
    entries = []  # (file, fullUrl, resource)
    methods = collections.Counter()
    for path in files:
        store.files.append(os.path.basename(path))
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            # Decimals kept exact: quantity comparisons must not go through binary floats.
            bundle = json.load(fh, parse_float=decimal.Decimal)
        if bundle.get("type") != "transaction":
            store.quirks.append(f"{os.path.basename(path)}: bundle type {bundle.get('type')}")
        for entry in bundle.get("entry", []):
            req = entry.get("request", {})
            methods[req.get("method")] += 1
            if req.get("ifNoneExist"):
                store.quirks.append(f"conditional create in {os.path.basename(path)}: {req['ifNoneExist']}")
            entries.append((os.path.basename(path), entry.get("fullUrl", ""), entry["resource"]))

    # fullUrl -> "Type/id". Duplicated fullUrls (shared Practitioner/Organization/...) collapse.
    urn_target: dict[str, str] = {}
    dup_counts = collections.Counter()
    dup_differ = 0
    first_seen: dict[str, dict] = {}
    for fname, full_url, res in entries:
        if not full_url.startswith("urn:uuid:"):
            store.quirks.append(f"{fname}: non-urn fullUrl {full_url}")
            continue
        rid = full_url[len("urn:uuid:"):]
        if res.get("id") not in (None, rid):
            store.quirks.append(f"{fname}: resource.id {res.get('id')} differs from fullUrl {rid}")
        key = f"{res['resourceType']}/{rid}"
        if full_url in urn_target:
            dup_counts[res["resourceType"]] += 1
            if first_seen[full_url] != res:
                dup_differ += 1
            continue
        urn_target[full_url] = key
        first_seen[full_url] = res

    conditional: collections.Counter = collections.Counter()
    unresolved: list[str] = []
    for fname, full_url, res in entries:
        if first_seen.get(full_url) is not res:
            continue  # a duplicate of an earlier entry
        rid = full_url[len("urn:uuid:"):]
        res = copy.deepcopy(res)
        res["id"] = rid

        def rewrite(ref_obj, fname=fname):
            ref = ref_obj["reference"]
            if ref.startswith("urn:uuid:"):
                if ref in urn_target:
                    ref_obj["reference"] = urn_target[ref]
                else:
                    unresolved.append(f"{fname}: {ref}")
            elif "?" in ref:
                conditional[ref] += 1

        walk_references(res, rewrite)
        store.by_type[res["resourceType"]][rid] = res
        if res["resourceType"] == "Patient":
            store.patient_file[rid] = fname

    # Conditional references (`Type?identifier=system|value`) resolve against the whole data set.
    if conditional:
        resolved_map = {}
        for ref in conditional:
            rtype, query = ref.split("?", 1)
            hits = [
                r for r in store.all(rtype)
                if matches_query_string(store, rtype, r, query)
            ]
            resolved_map[ref] = f"{rtype}/{hits[0]['id']}" if len(hits) == 1 else None
            if len(hits) != 1:
                unresolved.append(f"conditional {ref}: {len(hits)} matches")
        for rtype in list(store.by_type):
            for res in store.by_type[rtype].values():
                def fix(ref_obj):
                    if ref_obj["reference"] in resolved_map and resolved_map[ref_obj["reference"]]:
                        ref_obj["reference"] = resolved_map[ref_obj["reference"]]
                walk_references(res, fix)
        store.quirks.append(
            f"{sum(conditional.values())} conditional references ({len(conditional)} distinct)"
        )
    else:
        store.quirks.append("no conditional references (Type?identifier=...) in any bundle")
    if unresolved:
        store.quirks.append(f"{len(unresolved)} unresolved references, e.g. {unresolved[:3]}")
    else:
        store.quirks.append("every urn:uuid reference resolves to an entry of the same bundle set")
    if dup_counts:
        store.quirks.append(
            "resources repeated across bundles with the same fullUrl (imported once): "
            + ", ".join(f"{t} x{n}" for t, n in sorted(dup_counts.items()))
            + ("; all copies identical" if dup_differ == 0 else f"; {dup_differ} copies DIFFER")
        )
    store.quirks.append(
        "request methods: " + ", ".join(f"{m} x{n}" for m, n in sorted(methods.items(), key=str))
    )
    return store


# --------------------------------------------------------------------------------------
# Value extraction per search parameter (only what the cases need; expressions from R4
# search-parameters.json)
# --------------------------------------------------------------------------------------


def as_list(v):
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def strings_humanname(names):
    out = []
    for n in as_list(names):
        out += as_list(n.get("family"))
        out += as_list(n.get("given"))
        out += as_list(n.get("prefix"))
        out += as_list(n.get("suffix"))
        out += as_list(n.get("text"))
    return out


def tokens_codeable(cc):
    out = []
    for c in as_list(cc):
        for coding in as_list(c.get("coding")):
            out.append((coding.get("system"), coding.get("code")))
    return out


def tokens_identifier(idents):
    return [(i.get("system"), i.get("value")) for i in as_list(idents)]


def ref_if_type(ref_obj, rtype):
    refs = []
    for r in as_list(ref_obj):
        ref = r.get("reference", "")
        if ref.startswith(rtype + "/"):
            refs.append(ref)
    return refs


def all_refs(ref_obj):
    return [r["reference"] for r in as_list(ref_obj) if "reference" in r]


def period_range(p):
    lo = date_range(p["start"])[0] if p.get("start") else NEG_INF
    hi = date_range(p["end"])[1] if p.get("end") else INF
    return (lo, hi)


def quantity(q):
    return [(q["value"], q.get("system"), q.get("code"), q.get("unit"))] if q and "value" in q else []


# (type, code) -> (param type, extractor, reference target types)
PARAMS = {
    ("Patient", "name"): ("string", lambda r: strings_humanname(r.get("name")), None),
    ("Patient", "family"): ("string", lambda r: [n.get("family") for n in as_list(r.get("name")) if n.get("family")], None),
    ("Patient", "given"): ("string", lambda r: [g for n in as_list(r.get("name")) for g in as_list(n.get("given"))], None),
    ("Patient", "birthdate"): ("date", lambda r: [date_range(r["birthDate"])] if r.get("birthDate") else [], None),
    ("Patient", "gender"): ("token", lambda r: [(None, r["gender"])] if r.get("gender") else [], None),
    ("Patient", "address-city"): ("string", lambda r: [a.get("city") for a in as_list(r.get("address")) if a.get("city")], None),
    ("Patient", "address-state"): ("string", lambda r: [a.get("state") for a in as_list(r.get("address")) if a.get("state")], None),
    ("Patient", "identifier"): ("token", lambda r: tokens_identifier(r.get("identifier")), None),
    ("Observation", "code"): ("token", lambda r: tokens_codeable(r.get("code")), None),
    ("Observation", "subject"): ("reference", lambda r: all_refs(r.get("subject")), ["Group", "Device", "Patient", "Location"]),
    ("Observation", "patient"): ("reference", lambda r: ref_if_type(r.get("subject"), "Patient"), ["Patient"]),
    ("Observation", "date"): (
        "date",
        lambda r: ([date_range(r["effectiveDateTime"])] if r.get("effectiveDateTime") else [])
        + ([period_range(r["effectivePeriod"])] if r.get("effectivePeriod") else [])
        + ([date_range(r["effectiveInstant"])] if r.get("effectiveInstant") else []),
        None,
    ),
    ("Observation", "value-quantity"): ("quantity", lambda r: quantity(r.get("valueQuantity")), None),
    ("Condition", "clinical-status"): ("token", lambda r: tokens_codeable(r.get("clinicalStatus")), None),
    ("Condition", "code"): ("token", lambda r: tokens_codeable(r.get("code")), None),
    ("Condition", "patient"): ("reference", lambda r: ref_if_type(r.get("subject"), "Patient"), ["Patient"]),
    ("Encounter", "date"): ("date", lambda r: [period_range(r["period"])] if r.get("period") else [], None),
    ("Encounter", "patient"): ("reference", lambda r: ref_if_type(r.get("subject"), "Patient"), ["Patient"]),
    ("MedicationRequest", "subject"): ("reference", lambda r: all_refs(r.get("subject")), ["Group", "Patient"]),
    ("MedicationRequest", "patient"): ("reference", lambda r: ref_if_type(r.get("subject"), "Patient"), ["Patient"]),
    ("MedicationRequest", "medication"): (
        "reference", lambda r: all_refs(r.get("medicationReference")), ["Medication"]),
    ("Provenance", "target"): ("reference", lambda r: all_refs(r.get("target")), None),
}


# --------------------------------------------------------------------------------------
# Matching primitives
# --------------------------------------------------------------------------------------


def fold(s: str) -> str:
    """Case- and accent-insensitive form: NFKD, drop combining marks, casefold."""
    decomposed = unicodedata.normalize("NFKD", s)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def string_match(values, search, modifier):
    for v in values:
        if modifier == "exact":
            if v == search:
                return True
        elif modifier == "contains":
            if fold(search) in fold(v):
                return True
        elif modifier is None:
            if fold(v).startswith(fold(search)):
                return True
        else:
            raise ValueError(f"string modifier {modifier}")
    return False


def token_match(values, search, modifier):
    if modifier is not None:
        raise ValueError(f"token modifier {modifier}")
    if "|" in search:
        system, code = search.split("|", 1)
        for vs, vc in values:
            if system == "":
                if vs is None and vc == code:
                    return True
            elif vs == system and (code == "" or vc == code):
                return True
        return False
    return any(vc == search for _, vc in values)


_DATE_RE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _seconds(y, mo, d, h=0, mi=0, s=0) -> Fraction:
    delta = dt.datetime(y, mo, d, h, mi, s, tzinfo=dt.timezone.utc) - _EPOCH
    return Fraction(delta.days * 86400 + delta.seconds)


def date_range(text: str) -> tuple[Fraction, Fraction]:
    """The half-open range [low, high) in UTC epoch seconds that a FHIR date/dateTime/instant
    (or a search date value) covers, by its precision. No timezone => UTC."""
    m = _DATE_RE.match(text)
    if not m:
        raise ValueError(f"bad date {text!r}")
    y, mo, d, h, mi, s, frac, tz = m.groups()
    y = int(y)
    if mo is None:
        return _seconds(y, 1, 1), _seconds(y + 1, 1, 1)
    mo = int(mo)
    if d is None:
        ny, nmo = (y + 1, 1) if mo == 12 else (y, mo + 1)
        return _seconds(y, mo, 1), _seconds(ny, nmo, 1)
    d = int(d)
    if h is None:
        lo = _seconds(y, mo, d)
        return lo, lo + 86400
    offset = 0
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        offset = sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    base = _seconds(y, mo, d, int(h), int(mi), int(s or 0)) - offset
    if s is None:
        return base, base + 60
    if frac is None:
        return base, base + 1
    lo = base + Fraction(int(frac), 10 ** len(frac))
    return lo, lo + Fraction(1, 10 ** len(frac))


def date_compare(prefix, search_rng, target_rng) -> bool:
    """R4 search.html 'date' prefix table, with S=[sl,sh) search range and T=[tl,th) target
    range (both half-open):
      eq: S fully contains T                      sl <= tl and th <= sh
      ne: not eq
      gt: range above S intersects T               th > sh
      lt: range below S intersects T               tl < sl
      ge: gt, or S fully contains T
      le: lt, or S fully contains T
      sa: T does not overlap S and lies above it   tl >= sh
      eb: T does not overlap S and lies below it   th <= sl
    """
    sl, sh = search_rng
    tl, th = target_rng
    contains = sl <= tl and th <= sh
    if prefix == "eq":
        return contains
    if prefix == "ne":
        return not contains
    if prefix == "gt":
        return th > sh
    if prefix == "lt":
        return tl < sl
    if prefix == "ge":
        return th > sh or contains
    if prefix == "le":
        return tl < sl or contains
    if prefix == "sa":
        return tl >= sh
    if prefix == "eb":
        return th <= sl
    raise ValueError(f"date prefix {prefix}")


PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


def split_prefix(value):
    if len(value) > 2 and value[:2] in PREFIXES and not value[:2].isdigit():
        return value[:2], value[2:]
    return "eq", value


def date_match(values, search, modifier):
    if modifier is not None:
        raise ValueError("date modifier")
    prefix, text = split_prefix(search)
    rng = date_range(text)
    return any(date_compare(prefix, rng, t) for t in values)


def quantity_match(values, search, modifier):
    """R4 quantity: [prefix]number[|system|code]. With gt/lt/ge/le the search number is
    taken at arbitrary precision (compared exactly); eq uses the implicit precision range
    of the search number. Without system/code the unit is ignored; with code only (||code)
    unit code *or* unit text must equal it; with system|code both must equal."""
    if modifier is not None:
        raise ValueError("quantity modifier")
    prefix, rest = split_prefix(search)
    parts = rest.split("|")
    number = decimal.Decimal(parts[0])
    system = parts[1] if len(parts) > 1 and parts[1] else None
    code = parts[2] if len(parts) > 2 and parts[2] else None
    exp = number.as_tuple().exponent
    half = decimal.Decimal(1).scaleb(exp) / 2
    for v, vsys, vcode, vunit in values:
        if system is not None and vsys != system:
            continue
        if code is not None and not (vcode == code or (system is None and vunit == code)):
            continue
        v = decimal.Decimal(v)
        ok = {
            "gt": v > number,
            "lt": v < number,
            "ge": v >= number,
            "le": v <= number,
            "eq": number - half <= v < number + half,
            "ne": not (number - half <= v < number + half),
        }.get(prefix)
        if ok is None:
            raise ValueError(f"quantity prefix {prefix}")
        if ok:
            return True
    return False


# --------------------------------------------------------------------------------------
# Query evaluation
# --------------------------------------------------------------------------------------


def parse_query(query: str):
    rtype, _, qs = query.partition("?")
    params = []
    for part in qs.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        params.append((urllib.parse.unquote(name), urllib.parse.unquote(value)))
    return rtype, params


def split_or(value):
    # No escaped commas are used by the generated cases.
    return value.split(",")


def matches_param(store: Store, rtype: str, res: dict, name: str, value: str) -> bool:
    if name == "_id":
        return any(token_match([(None, res["id"])], v, None) for v in split_or(value))
    chain = None
    if "." in name:
        name, chain = name.split(".", 1)
    modifier = None
    if ":" in name:
        name, modifier = name.split(":", 1)
    if (rtype, name) not in PARAMS:
        raise ValueError(f"unsupported parameter {rtype}.{name}")
    ptype, extract, targets = PARAMS[(rtype, name)]
    values = extract(res)
    if chain is not None:
        if ptype != "reference":
            raise ValueError("chain on non-reference")
        allowed = [modifier] if modifier else targets
        for ref in values:
            target = store.get(ref)
            if target is None or target["resourceType"] not in allowed:
                continue
            if (target["resourceType"], chain.split(":")[0].split(".")[0]) not in PARAMS:
                continue
            if matches_param(store, target["resourceType"], target, chain, value):
                return True
        return False
    alternatives = split_or(value)
    if ptype == "string":
        return any(string_match(values, v, modifier) for v in alternatives)
    if ptype == "token":
        return any(token_match(values, v, modifier) for v in alternatives)
    if ptype == "date":
        return any(date_match(values, v, modifier) for v in alternatives)
    if ptype == "quantity":
        return any(quantity_match(values, v, modifier) for v in alternatives)
    if ptype == "reference":
        for v in alternatives:
            if modifier is not None:
                v = f"{modifier}/{v}" if "/" not in v else v
            if "/" in v:
                if v in values:
                    return True
            elif any(r.split("/", 1)[1] == v for r in values):
                return True
        return False
    raise ValueError(ptype)


def matches_query_string(store, rtype, res, qs):
    _, params = parse_query(f"{rtype}?{qs}")
    return all(matches_param(store, rtype, res, n, v) for n, v in params)


def search(store: Store, query: str):
    rtype, params = parse_query(query)
    filters = [(n, v) for n, v in params if n not in ("_include", "_revinclude", "_count", "_sort")]
    includes = [v for n, v in params if n == "_include"]
    revincludes = [v for n, v in params if n == "_revinclude"]
    matches = [
        r for r in store.all(rtype)
        if all(matches_param(store, rtype, r, n, v) for n, v in filters)
    ]
    match_keys = {f"{rtype}/{r['id']}" for r in matches}
    included: set[str] = set()
    for inc in includes:
        src_type, pname, *target = inc.split(":")
        ptype, extract, targets = PARAMS[(src_type, pname)]
        for r in matches:
            if r["resourceType"] != src_type:
                continue
            for ref in extract(r):
                if target and not ref.startswith(target[0] + "/"):
                    continue
                if store.get(ref) is not None:
                    included.add(ref)
    for rev in revincludes:
        src_type, pname, *target = rev.split(":")
        ptype, extract, targets = PARAMS[(src_type, pname)]
        for r in store.all(src_type):
            if any(ref in match_keys for ref in extract(r)):
                included.add(f"{src_type}/{r['id']}")
    return sorted(match_keys), sorted(included - match_keys)


# --------------------------------------------------------------------------------------
# Case selection (deterministic)
# --------------------------------------------------------------------------------------


def q(value: str) -> str:
    """URL-encode a search value; `|`, `,`, `/` and `:` stay literal (FHIR syntax, URLs)."""
    return urllib.parse.quote(value, safe="|,/:")


def qd(value: str) -> str:
    """URL-encode a date search value: `:` and the `+` of a timezone offset are escaped."""
    return urllib.parse.quote(value, safe="")


def build_cases(store: Store):
    cases = []
    notes = []

    def add(name, query, expect_nonzero=True):
        ids, included = search(store, query)
        case = {"name": name, "query": query, "total": len(ids), "ids": ids}
        if "_include" in query or "_revinclude" in query:
            case["included"] = included
        if expect_nonzero and not ids:
            raise SystemExit(f"case {name} unexpectedly empty: {query}")
        if not expect_nonzero and ids:
            raise SystemExit(f"negative control {name} matched: {query}")
        cases.append(case)
        return case

    patients = store.all("Patient")  # sorted by id
    pid = [p["id"] for p in patients]
    first = patients[0]

    # ---- Patient -------------------------------------------------------------------
    families = collections.Counter(
        n["family"] for p in patients for n in p["name"] if n.get("use") == "official")
    common_family = sorted(families.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
    add("patient-name-family-prefix-lowercase", f"Patient?name={q(common_family[:3].lower())}")
    add("patient-name-matches-prefix-element", "Patient?name=mr")
    maiden = sorted(n["family"] for p in patients for n in p["name"] if n.get("use") == "maiden")
    if maiden:
        add("patient-name-matches-maiden-name", f"Patient?name={q(maiden[0].lower())}")
    add("patient-family-exact", f"Patient?family:exact={q(common_family)}")
    apos = sorted(f for f in families if "'" in f)
    if apos:
        add("patient-family-exact-apostrophe", f"Patient?family:exact={q(apos[0])}")
    first_given = first["name"][0]["given"][0]
    add("patient-given-prefix", f"Patient?given={q(first_given[:4].lower())}")
    accented = sorted(
        s for p in patients for s in strings_humanname(p["name"]) if fold(s) != s.lower())
    if accented:
        plain = fold(accented[0])
        add("patient-given-accent-insensitive", f"Patient?given={q(plain)}")
        add("patient-name-accent-insensitive-prefix", f"Patient?name={q(plain[:3])}")
        add("patient-given-exact-accented", f"Patient?given:exact={q(accented[0])}")
        notes.append(f"accented name element(s): {accented} (NFC in the data)")
    else:
        notes.append("no accented names in the data")
    add("patient-birthdate-eq-day", f"Patient?birthdate={first['birthDate']}")
    add("patient-birthdate-ge-year", "Patient?birthdate=ge1980")
    add("patient-birthdate-lt-year", "Patient?birthdate=lt1950")
    add("patient-birthdate-year-range", "Patient?birthdate=ge1980&birthdate=lt1990")
    add("patient-gender-female", "Patient?gender=female")
    add("patient-gender-male", "Patient?gender=male")
    city = sorted(a["city"] for p in patients for a in p.get("address", []))[0]
    state = sorted(a["state"] for p in patients for a in p.get("address", []))[0]
    add("patient-address-city", f"Patient?address-city={q(city.lower())}")
    add("patient-address-state-prefix", f"Patient?address-state={q(state[:4].lower())}")
    mrn = [i for i in first["identifier"]
           if any(c.get("code") == "MR" for c in i.get("type", {}).get("coding", []))][0]
    add("patient-identifier-mrn", f"Patient?identifier={q(mrn['system'] + '|' + mrn['value'])}")
    add("patient-id-revinclude-provenance",
        f"Patient?_id={first['id']}&_revinclude=Provenance:target")

    # ---- Observation -----------------------------------------------------------------
    obs = store.all("Observation")
    loinc_counts = collections.Counter(
        c["code"] for o in obs for c in o["code"].get("coding", []) if c.get("system") == LOINC)
    obs_by_patient = collections.defaultdict(list)
    for o in obs:
        obs_by_patient[o["subject"]["reference"]].append(o)
    # The most common LOINC codes, skipping a code whose per-patient counts equal those of a
    # code already taken (vital signs are recorded together, which would make cases redundant).
    top, profiles = [], set()
    for code, _ in sorted(loinc_counts.items(), key=lambda kv: (-kv[1], kv[0])):
        profile = tuple(
            sum(1 for o in obs_by_patient[f"Patient/{p}"]
                if any(c.get("code") == code for c in o["code"]["coding"]))
            for p in pid)
        if profile not in profiles:
            top.append(code)
            profiles.add(profile)
        if len(top) == 3:
            break

    def has_code(p, code):
        return any(c.get("code") == code for o in obs_by_patient[f"Patient/{p}"]
                   for c in o["code"]["coding"])

    obs_patients = [p for p in pid if all(has_code(p, c) for c in top)][:3]
    for i, p in enumerate(obs_patients, 1):
        for code in top:
            add(f"observation-subject{i}-code-{code}",
                f"Observation?subject=Patient/{p}&code={q(LOINC + '|' + code)}")
    n = 0
    for p in pid:
        if n == 3:
            break
        query = (f"Observation?subject=Patient/{p}&code={q(LOINC + '|' + top[0])}"
                 f"&date=ge2015-01-01&date=lt2018-01-01")
        if search(store, query)[0]:
            n += 1
            add(f"observation-subject-code-date-range-{n}", query)
    add("observation-patient-param-code",
        f"Observation?patient=Patient/{obs_patients[0]}&code={q(LOINC + '|' + top[1])}")
    add("observation-code-or-list",
        f"Observation?subject=Patient/{obs_patients[1]}"
        f"&code={q(LOINC + '|' + top[0])},{q(LOINC + '|' + top[2])}")
    height = "8302-2"
    add("observation-code-without-system", f"Observation?code={height}")
    weight = "29463-7"
    add("observation-weight-value-quantity-gt",
        f"Observation?code={q(LOINC + '|' + weight)}&value-quantity=gt100")
    add("observation-weight-value-quantity-gt-with-unit",
        f"Observation?code={q(LOINC + '|' + weight)}&value-quantity={q('gt100|' + UCUM + '|kg')}")
    weights = [decimal.Decimal(o["valueQuantity"]["value"]) for o in obs
               if any(c["code"] == weight for c in o["code"]["coding"]) and "valueQuantity" in o]
    nearest = min(weights, key=lambda v: abs(v - 100))
    notes.append(f"body weight closest to the gt100 boundary: {nearest} kg")

    # chained search on the subject's name
    chain_family = common_family
    add("observation-chain-subject-name",
        f"Observation?subject.name={q(chain_family.lower())}&code={q(LOINC + '|' + top[0])}")
    add("observation-chain-patient-family",
        f"Observation?patient.family={q(chain_family[:4].lower())}&code={q(LOINC + '|' + top[1])}")

    # dateTime search values with a timezone offset (+ must travel as %2B)
    p = obs_patients[0]
    times = sorted({o["effectiveDateTime"] for o in obs_by_patient[f"Patient/{p}"]})
    t0 = times[len(times) // 2]
    lo, _ = date_range(t0)
    second = math.floor(lo)  # floor to whole seconds (UTC epoch)
    local = (_EPOCH + dt.timedelta(seconds=second)).astimezone(
        dt.timezone(dt.timedelta(hours=5, minutes=30)))
    stamp = local.strftime("%Y-%m-%dT%H:%M:%S+05:30")
    add("observation-date-eq-second-with-offset",
        f"Observation?subject=Patient/{p}&date={qd(stamp)}")
    add("observation-date-lt-second-with-offset",
        f"Observation?subject=Patient/{p}&date={qd('lt' + stamp)}")
    notes.append(f"offset cases use {stamp} == {(_EPOCH + dt.timedelta(seconds=second)).isoformat()} "
                 f"(floor of effectiveDateTime {t0})")

    # ---- Condition -------------------------------------------------------------------
    add("condition-clinical-status-active", "Condition?clinical-status=active")
    cond_patient = next(
        p for p in pid
        if search(store, f"Condition?patient=Patient/{p}&clinical-status=resolved")[0])
    add("condition-patient-resolved",
        f"Condition?patient=Patient/{cond_patient}&clinical-status=resolved")
    cond_counts = collections.Counter(
        (c.get("system"), c.get("code")) for r in store.all("Condition")
        for c in r["code"].get("coding", []))
    (csys, ccode), _ = sorted(cond_counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]
    add("condition-code-most-common", f"Condition?code={q(csys + '|' + ccode)}")

    # ---- Encounter -------------------------------------------------------------------
    add("encounter-date-year-2019", "Encounter?date=ge2019-01-01&date=lt2020-01-01")
    enc_patients = [
        p for p in pid
        if search(store, f"Encounter?patient=Patient/{p}&date=ge2019-01-01&date=lt2020-01-01")[0]
    ][:2]
    for i, p in enumerate(enc_patients, 1):
        add(f"encounter-patient{i}-date-year-2019",
            f"Encounter?patient=Patient/{p}&date=ge2019-01-01&date=lt2020-01-01")
    add("encounter-date-eq-month", "Encounter?date=2019-06")

    # ---- MedicationRequest -------------------------------------------------------------
    med_refs = sum(1 for r in store.all("MedicationRequest") if "medicationReference" in r)
    med_cc = sum(1 for r in store.all("MedicationRequest") if "medicationCodeableConcept" in r)
    notes.append(f"MedicationRequest: {med_cc} use medicationCodeableConcept, {med_refs} "
                 f"medicationReference; {len(store.all('Medication'))} Medication resources")
    mr_patient = next(
        p for p in pid if search(store, f"MedicationRequest?subject=Patient/{p}")[0])
    if med_refs:
        add("medicationrequest-subject-include-medication",
            f"MedicationRequest?subject=Patient/{mr_patient}&_include=MedicationRequest:medication")
    add("medicationrequest-subject-include-patient",
        f"MedicationRequest?subject=Patient/{mr_patient}&_include=MedicationRequest:patient")

    # ---- negative controls -------------------------------------------------------------
    add("negative-observation-unknown-code",
        f"Observation?code={q(LOINC + '|0000-0')}", expect_nonzero=False)
    add("negative-patient-unknown-name", "Patient?name=zzyzxq", expect_nonzero=False)

    # ---- boundary sensitivity of the date cases ------------------------------------------
    sensitive = 0
    for case in cases:
        if "date=" not in case["query"]:
            continue
        lenient = lenient_search(store, case["query"])
        if lenient != case["ids"]:
            sensitive += 1
            notes.append(f"{case['name']}: a naive overlap reading of ge/le would give "
                         f"{len(lenient)} instead of {case['total']}")
    if not sensitive:
        notes.append("no date case changes if ge/le are read as plain overlap (th > sl / tl < sh) "
                     "instead of the R4 wording")
    return cases, notes


def lenient_search(store, query):
    """Same query with ge/le read as plain overlap (th > sl / tl < sh), to flag cases whose
    answer depends on the exact R4 wording."""
    global date_compare
    strict = date_compare

    def naive(prefix, s, t):
        if prefix == "ge":
            return t[1] > s[0]
        if prefix == "le":
            return t[0] < s[1]
        return strict(prefix, s, t)

    date_compare = naive
    try:
        return search(store, query)[0]
    finally:
        date_compare = strict


def main():
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shared = os.environ.get("CAREPLANE_SHARED_DIR", "/work/shared")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("directory", nargs="?", default=os.path.join(shared, "data", "synthea-r4"))
    ap.add_argument("--out", default=os.path.join(
        repo_root, "crates", "careplane", "tests", "fixtures", "synthea_search_answers.json"))
    args = ap.parse_args()

    store = load(args.directory)
    cases, notes = build_cases(store)

    # Data quirks worth knowing when reading failures.
    all_dates = [o["effectiveDateTime"] for o in store.all("Observation")] + [
        v for e in store.all("Encounter") for v in e["period"].values()]
    offsets = collections.Counter(re.sub(r"^.*?(Z|[+-]\d{2}:\d{2})?$", r"\1", d) or "none"
                                  for d in all_dates)
    notes.append("timezone designators on Observation.effectiveDateTime/Encounter.period: "
                 + ", ".join(f"{k} x{v}" for k, v in sorted(offsets.items())))
    youngest = max(store.all("Patient"), key=lambda p: (p["birthDate"], p["id"]))
    notes.append(f"latest birthDate {youngest['birthDate']} ({store.patient_file[youngest['id']]}, "
                 f"Patient/{youngest['id']}); it counts for birthdate=ge1980")

    counts = ", ".join(f"{t} {len(v)}" for t, v in sorted(store.by_type.items()))
    source = (
        f"tools/synthea_search_answers.py over {len(store.files)} Synthea R4 transaction bundles "
        f"({store.files[0]}..{store.files[-1]}), imported with stable ids: id = uuid of the "
        f"urn:uuid fullUrl, urn:uuid references rewritten to Type/uuid, resources repeated across "
        f"bundles counted once. Distinct resources: {counts}. "
        "Semantics (independent Python implementation of FHIR R4 search): "
        "string = prefix match after NFKD + removal of combining marks + casefold, compared "
        "element by element (name: HumanName family/given/prefix/suffix/text over every name "
        "incl. maiden; family/given/address-city/address-state: that element); :exact = exact, "
        "case- and accent-sensitive equality. token: 'code' matches any system, 'system|code' "
        "both, '|code' no system; on Coding/CodeableConcept/Identifier/code; ',' = OR; repeated "
        "parameter = AND. reference: 'Type/id' equality on the rewritten reference; "
        "patient = subject where it is a Patient; chains resolve the reference and apply the "
        "chained parameter to the target. date: every value is a half-open range [low, high) "
        "given by its precision (year/month/day/minute/second/fraction digits); no timezone = "
        "UTC; Period = [low(start), high(end)), missing end = +infinity; search prefixes per "
        "R4 search.html: eq S contains T; ne not eq; gt th > sh; lt tl < sl; ge gt or S contains "
        "T; le lt or S contains T; sa tl >= sh; eb th <= sl. quantity: gt/lt/ge/le compare the "
        "number exactly (decimals parsed exactly); unit ignored when not given, system|code "
        "must both match when given. _include adds the referenced resources, _revinclude the "
        "resources whose parameter references a match; 'included' excludes matches. "
        "Data notes: " + "; ".join(store.quirks + notes) + "."
    )
    out = {"source": source, "cases": cases}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(out, fh, sort_keys=True, indent=1)
        fh.write("\n")

    width = max(len(c["name"]) for c in cases)
    print(f"{'case'.ljust(width)}  {'total':>6}  {'incl':>4}  query")
    for c in cases:
        incl = str(len(c["included"])) if "included" in c else ""
        query = c["query"] if len(c["query"]) <= 110 else c["query"][:107] + "..."
        print(f"{c['name'].ljust(width)}  {c['total']:>6}  {incl:>4}  {query}")
    print(f"\n{len(cases)} cases written to {os.path.relpath(args.out)}")
    for line in store.quirks + notes:
        print(f"note: {line}")


if __name__ == "__main__":
    main()
