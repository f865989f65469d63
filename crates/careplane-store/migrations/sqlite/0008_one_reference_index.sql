-- search_reference had two lookup indexes over the same six columns in two orders: by (type,
-- param, target) for reference filters and chains, and by (target, type, param) for _revinclude,
-- _has and compartments. Every query of the second kind names the referring type and parameter
-- too, so search_reference_lookup_v2 answers it with equality on all its leading columns
-- (compartments as one probe per (type, parameter) pair). Over the 25 Synthea patients the
-- reference-heavy searches took the same time without the second index on both backends
-- (docs/performance.md), and every reference row now costs one B-tree insert less.
-- Expand-safe: the previous release's queries run unchanged on the remaining index.
DROP INDEX IF EXISTS search_reference_target_v2;
