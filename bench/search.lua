-- Patient-scoped searches (what a clinic app does when it opens a chart): each request picks a
-- random patient and one of the query shapes below. Ids come from ids.txt, written by search.sh.
local ids = {}
for line in io.lines(os.getenv("IDS_FILE")) do ids[#ids + 1] = line end
local shapes = {
  "/fhir/Observation?patient=%s&_count=50",
  "/fhir/Observation?subject=Patient/%s&code=http://loinc.org|8302-2",
  "/fhir/Encounter?patient=%s&_sort=-date&_count=20",
  "/fhir/Condition?patient=%s&clinical-status=active",
  "/fhir/MedicationRequest?patient=%s&_include=MedicationRequest:patient",
}
-- THINK_MS: each connection pauses about this long (0.5-1.5x) between a response and its next
-- request, like a clinician reading the chart, so 16 connections offer a steady load instead of
-- saturating the server. wrk times each request from when it is sent, without the pause.
local think = tonumber(os.getenv("THINK_MS") or "0")
if think > 0 then
  delay = function() return math.random(math.floor(think / 2), math.floor(think * 3 / 2)) end
end
request = function()
  local shape = shapes[math.random(#shapes)]
  return wrk.format("GET", string.format(shape, ids[math.random(#ids)]))
end
