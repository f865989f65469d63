-- Same number as ../postgres/0006_search_statistics.sql, which adds multi-column planner
-- statistics. SQLite has no equivalent object (its planner reads sqlite_stat1/stat4, which
-- `careplane import` refreshes with ANALYZE), so this migration changes nothing here.
SELECT 1;
