-- Settings the store keeps in its database, for every replica to read (same numbering and
-- content on both backends). Additive (expand only): older binaries never read it.
--
-- derived_index_rows: whether writes store the index rows of search parameters derived from
-- others (`combo-code` = `code` | `component-code`; careplane-fhir search::index). This release
-- searches the sources' rows either way, but the previous release reads the derived rows by
-- name, so a database it may still be serving keeps getting them ('written') until the
-- operator runs `careplane contract` after the rollout ('omitted', and the old rows deleted).
-- A database that holds no resources yet has no earlier release to serve: it starts 'omitted'.
CREATE TABLE store_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT INTO store_settings (name, value)
SELECT 'derived_index_rows',
       CASE WHEN EXISTS (SELECT 1 FROM resources) THEN 'written' ELSE 'omitted' END;
