-- Creates vital-sign Observations shaped like Synthea's (code, category, subject, encounter,
-- effective time, a UCUM quantity, a profile): a resource with many SearchParameters to index.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/fhir+json"
wrk.body = '{"resourceType":"Observation","status":"final","meta":{"profile":["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},'
  .. '"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category","code":"vital-signs"}]}],'
  .. '"code":{"coding":[{"system":"http://loinc.org","code":"8302-2","display":"Body Height"}]},'
  .. '"subject":{"reference":"Patient/bench-patient"},"encounter":{"reference":"Encounter/bench-encounter"},'
  .. '"effectiveDateTime":"2017-07-31T06:07:14+00:00","issued":"2017-07-31T06:07:14.384+00:00",'
  .. '"valueQuantity":{"value":56.4,"unit":"cm","system":"http://unitsofmeasure.org","code":"cm"}}'
