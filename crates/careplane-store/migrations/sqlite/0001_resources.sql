-- Versioned resources: every version in resource_versions (history), the current one per
-- logical id in resources. seq is a global, never-reused order used for stable history paging.
CREATE TABLE resource_versions (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant        TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    last_updated  INTEGER NOT NULL, -- unix milliseconds (UTC)
    method        TEXT    NOT NULL CHECK (method IN ('create', 'update', 'delete')),
    body          TEXT,             -- NULL for a deletion
    UNIQUE (tenant, resource_type, id, version)
);
CREATE INDEX resource_versions_by_type ON resource_versions (tenant, resource_type, seq);
CREATE INDEX resource_versions_by_tenant ON resource_versions (tenant, seq);

CREATE TABLE resources (
    tenant        TEXT    NOT NULL,
    resource_type TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    seq           INTEGER NOT NULL REFERENCES resource_versions (seq),
    deleted       INTEGER NOT NULL DEFAULT 0,
    last_updated  INTEGER NOT NULL,
    PRIMARY KEY (tenant, resource_type, id)
) WITHOUT ROWID;

-- Identifier lookups for conditional create (If-None-Exist: identifier=...). Full search
-- indexes come with the search issue.
CREATE TABLE resource_identifiers (
    tenant        TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    system        TEXT NOT NULL DEFAULT '',
    value         TEXT NOT NULL
);
CREATE INDEX resource_identifiers_lookup ON resource_identifiers (tenant, resource_type, value, system);
CREATE INDEX resource_identifiers_owner ON resource_identifiers (tenant, resource_type, id);
