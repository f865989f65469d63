-- Versioned resources: every version in resource_versions (history), the current one per
-- logical id in resources. seq is a global, never-reused order used for stable history paging.
-- Same numbering, tables and columns as ../sqlite/0001_resources.sql; only the types differ.
CREATE TABLE resource_versions (
    seq           BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant        TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version       BIGINT  NOT NULL,
    last_updated  BIGINT  NOT NULL, -- unix milliseconds (UTC)
    method        TEXT    NOT NULL CHECK (method IN ('create', 'update', 'delete')),
    body          TEXT,             -- NULL for a deletion; TEXT, not JSONB: served as stored
    UNIQUE (tenant, resource_type, id, version)
);
CREATE INDEX resource_versions_by_type ON resource_versions (tenant, resource_type, seq);
CREATE INDEX resource_versions_by_tenant ON resource_versions (tenant, seq);

CREATE TABLE resources (
    tenant        TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version       BIGINT  NOT NULL,
    seq           BIGINT  NOT NULL REFERENCES resource_versions (seq),
    deleted       BOOLEAN NOT NULL DEFAULT FALSE,
    last_updated  BIGINT  NOT NULL,
    PRIMARY KEY (tenant, resource_type, id)
);

CREATE TABLE resource_identifiers (
    tenant        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    system        TEXT NOT NULL DEFAULT '',
    value         TEXT NOT NULL
);
CREATE INDEX resource_identifiers_lookup ON resource_identifiers (tenant, resource_type, value, system);
CREATE INDEX resource_identifiers_owner ON resource_identifiers (tenant, resource_type, id);
