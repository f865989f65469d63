-- Creates small Patients.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/fhir+json"
wrk.body = '{"resourceType":"Patient","active":true,"name":[{"family":"Bench","given":["Load"]}],"gender":"other","birthDate":"1980-01-01"}'
