-- Live rest-hook Subscriptions by the resource type their criteria search (maintained with the
-- Subscription's index rows; rebuilt by reindex). A write transaction asks once, at commit,
-- whether any of the types it wrote has listeners, and only then enqueues a match job: the
-- outbox costs one indexed lookup per transaction and nothing when no one subscribes.
-- Additive (expand only): older binaries never read it.
CREATE TABLE subscription_topics (
    tenant          TEXT NOT NULL,
    subscription_id TEXT NOT NULL,
    resource_type   TEXT NOT NULL,
    PRIMARY KEY (tenant, subscription_id)
);
CREATE INDEX subscription_topics_by_type ON subscription_topics (tenant, resource_type);
