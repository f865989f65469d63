-- Search index: one table per SearchParameter type, rows extracted on every write from the
-- official FHIRPath expressions (careplane-fhir search::index). A resource's rows are replaced
-- as a whole on each write and removed on delete. Lookups go (tenant, type, param, value) ->
-- resource_id; the owner index serves rewrites, sort keys and _include.
-- COLLATE "C" on the prefix-matched columns makes range scans mean "starts with".
-- grp ties the components of one composite value together (0 for plain parameters).
-- Same numbering, tables and columns as ../sqlite/0002_search_index.sql.

CREATE TABLE search_string (
    tenant        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    grp           BIGINT NOT NULL DEFAULT 0,
    value_norm    TEXT COLLATE "C" NOT NULL, -- lowercased, accents removed: default and :contains
    value_exact   TEXT NOT NULL  -- as written: :exact
);
CREATE INDEX search_string_lookup ON search_string (tenant, resource_type, param, value_norm);
CREATE INDEX search_string_owner ON search_string (tenant, resource_type, resource_id, param);

CREATE TABLE search_token (
    tenant        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    grp           BIGINT NOT NULL DEFAULT 0,
    system        TEXT,
    code          TEXT,
    text_norm     TEXT COLLATE "C" -- display / text, normalized: :text
);
CREATE INDEX search_token_lookup ON search_token (tenant, resource_type, param, code, system);
CREATE INDEX search_token_owner ON search_token (tenant, resource_type, resource_id, param);

CREATE TABLE search_reference (
    tenant        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    grp           BIGINT NOT NULL DEFAULT 0,
    target_type   TEXT,
    target_id     TEXT,
    url           TEXT
);
CREATE INDEX search_reference_lookup ON search_reference (tenant, resource_type, param, target_id, target_type);
CREATE INDEX search_reference_owner ON search_reference (tenant, resource_type, resource_id, param);
-- _revinclude, _has and compartments go from the target back to the referrers.
CREATE INDEX search_reference_target ON search_reference (tenant, target_type, target_id, resource_type, param);

CREATE TABLE search_date (
    tenant        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    grp           BIGINT NOT NULL DEFAULT 0,
    low           BIGINT NOT NULL, -- unix ms, inclusive
    high          BIGINT NOT NULL  -- unix ms, inclusive
);
CREATE INDEX search_date_lookup ON search_date (tenant, resource_type, param, low, high);
CREATE INDEX search_date_owner ON search_date (tenant, resource_type, resource_id, param);

CREATE TABLE search_number (
    tenant        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    grp           BIGINT NOT NULL DEFAULT 0,
    value         DOUBLE PRECISION NOT NULL
);
CREATE INDEX search_number_lookup ON search_number (tenant, resource_type, param, value);
CREATE INDEX search_number_owner ON search_number (tenant, resource_type, resource_id, param);

CREATE TABLE search_quantity (
    tenant        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    grp           BIGINT NOT NULL DEFAULT 0,
    value         DOUBLE PRECISION NOT NULL,
    system        TEXT,
    code          TEXT,
    unit          TEXT
);
CREATE INDEX search_quantity_lookup ON search_quantity (tenant, resource_type, param, value);
CREATE INDEX search_quantity_owner ON search_quantity (tenant, resource_type, resource_id, param);

CREATE TABLE search_uri (
    tenant        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id   TEXT NOT NULL,
    param         TEXT NOT NULL,
    grp           BIGINT NOT NULL DEFAULT 0,
    value         TEXT COLLATE "C" NOT NULL
);
CREATE INDEX search_uri_lookup ON search_uri (tenant, resource_type, param, value);
CREATE INDEX search_uri_owner ON search_uri (tenant, resource_type, resource_id, param);
