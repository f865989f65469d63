"""Drives a running Careplane with two widely used FHIR client libraries, unchanged.

fhirpy posts bodies as application/json; fhirclient reads /metadata into its own R4 models
on connect. Usage: python_clients.py BASE_URL   (exit status 0 = every step worked)
"""
import sys

from fhirclient import client as smart_client
from fhirclient.models.humanname import HumanName
from fhirclient.models.patient import Patient
from fhirpy import SyncFHIRClient


def check(condition, message):
    if not condition:
        raise SystemExit(f"FAILED: {message}")
    print(f"ok: {message}")


def with_fhirpy(base):
    fhir = SyncFHIRClient(base)
    patient = fhir.resource("Patient", name=[{"family": "Lovelace", "given": ["Ada"]}], gender="female")
    patient.save()
    check(patient.id and patient.meta.versionId == "1", "fhirpy create assigns id and version 1")
    read = fhir.reference("Patient", patient.id).to_resource()
    check(read.name[0].family == "Lovelace", "fhirpy read returns the stored name")
    read.birthDate = "1815-12-10"
    read.save()
    check(read.meta.versionId == "2", "fhirpy update makes version 2")
    history = fhir.execute(f"Patient/{patient.id}/_history", method="get")
    versions = [e["resource"]["meta"]["versionId"] for e in history["entry"]]
    check(versions == ["2", "1"], "fhirpy sees the instance history newest first")


def with_fhirclient(base):
    smart = smart_client.FHIRClient(settings={"app_id": "careplane-test", "api_base": base})
    check(smart.server.capabilityStatement is not None, "fhirclient parses the CapabilityStatement")
    patient = Patient()
    name = HumanName()
    name.family = "Hopper"
    name.given = ["Grace"]
    patient.name = [name]
    patient.gender = "female"
    created = patient.create(smart.server)
    check(created["resourceType"] == "Patient", "fhirclient create")
    read = Patient.read(created["id"], smart.server)
    check(read.name[0].family == "Hopper", "fhirclient read")
    read.birthDate = None
    read.active = True
    read.update(smart.server)
    again = Patient.read(created["id"], smart.server)
    check(again.active is True and again.meta.versionId == "2", "fhirclient update")
    history = smart.server.request_json(f"Patient/{created['id']}/_history")
    check(len(history["entry"]) == 2, "fhirclient reads the history bundle")


if __name__ == "__main__":
    base_url = sys.argv[1].rstrip("/")
    with_fhirpy(base_url)
    with_fhirclient(base_url)
    print("all client steps passed")
