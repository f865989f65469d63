#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::PgPool;

use super::*;

async fn create_items(url: String) -> Result<(), String> {
    let pool = PgPool::connect(&url).await.map_err(|e| e.to_string())?;
    sqlx::raw_sql("CREATE TABLE item (id int PRIMARY KEY, label text NOT NULL)")
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;
    pool.close().await;
    Ok(())
}

async fn exists(name: &str) -> bool {
    let mut admin = PgConnection::connect(&admin_url().await.unwrap())
        .await
        .unwrap();
    database_exists(&mut admin, name).await.unwrap()
}

#[tokio::test]
async fn clones_are_isolated_and_dropped() {
    let a = TestDatabase::from_template("testdb_selftest_items_v1", create_items)
        .await
        .unwrap();
    let b = TestDatabase::from_template("testdb_selftest_items_v1", create_items)
        .await
        .unwrap();
    assert_ne!(a.name(), b.name());

    let pool_a = PgPool::connect(a.url()).await.unwrap();
    let pool_b = PgPool::connect(b.url()).await.unwrap();
    sqlx::query("INSERT INTO item VALUES (1, 'only in a')")
        .execute(&pool_a)
        .await
        .unwrap();
    let count = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM item")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(count(pool_a.clone()).await, 1);
    assert_eq!(
        count(pool_b.clone()).await,
        0,
        "the table comes from the template, the row does not"
    );

    let name = a.name().to_owned();
    assert!(exists(&name).await);
    drop(a); // while pool_a is still open: WITH (FORCE) disconnects it
    assert!(!exists(&name).await);
    assert!(exists(b.name()).await);
}

#[tokio::test]
async fn concurrent_first_use_runs_init_once() {
    let key = format!("testdb_race_{}", uuid::Uuid::new_v4().simple());
    let calls = AtomicUsize::new(0);
    let init = |url: String| {
        calls.fetch_add(1, Ordering::SeqCst);
        create_items(url)
    };
    let (a, b, c, d) = tokio::join!(
        TestDatabase::from_template(&key, init),
        TestDatabase::from_template(&key, init),
        TestDatabase::from_template(&key, init),
        TestDatabase::from_template(&key, init),
    );
    let names = [a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap()].map(|db| db.name().to_owned());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        names.iter().collect::<std::collections::HashSet<_>>().len(),
        4
    );

    let mut admin = PgConnection::connect(&admin_url().await.unwrap())
        .await
        .unwrap();
    drop_database(&mut admin, &template_name(&key))
        .await
        .unwrap(); // don't pile up one-off templates
}

#[tokio::test]
async fn failed_init_leaves_no_template() {
    let key = format!("testdb_fail_{}", uuid::Uuid::new_v4().simple());
    let err = TestDatabase::from_template(&key, |_| async { Err("boom".to_owned()) })
        .await
        .unwrap_err();
    assert!(
        matches!(err, TestDbError::Init(ref m) if m == "boom"),
        "{err}"
    );
    assert!(!exists(&template_name(&key)).await);
}

#[tokio::test]
async fn throwaway_cluster_accepts_connections() {
    let url = admin_url_from(None).await.unwrap();
    assert!(url.starts_with("postgres://postgres@127.0.0.1:"), "{url}");
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    assert_eq!(
        admin_url_from(None).await.unwrap(),
        url,
        "reused, not restarted"
    );
}

#[tokio::test]
async fn owned_cluster_stops_and_starts_again_keeping_its_data() {
    if !OwnedCluster::binaries_installed() {
        eprintln!("SKIPPED: no PostgreSQL binaries (initdb) installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap(); // declared first: dropped after the cluster
    let mut cluster = OwnedCluster::start(dir.path()).unwrap();
    let url = cluster.url();
    assert_eq!(
        url,
        format!("postgres://postgres@127.0.0.1:{}/postgres", cluster.port())
    );
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE kept (id int); INSERT INTO kept VALUES (7)")
        .execute(&mut conn)
        .await
        .unwrap();

    cluster.stop().unwrap();
    assert!(
        sqlx::query("SELECT 1").execute(&mut conn).await.is_err(),
        "sessions are disconnected"
    );
    assert!(
        PgConnection::connect(&url).await.is_err(),
        "nothing listens"
    );
    cluster.stop().unwrap(); // stopping a stopped cluster is a no-op

    cluster.start_again().unwrap();
    assert_eq!(cluster.url(), url, "same port after a restart");
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let kept: i32 = sqlx::query_scalar("SELECT id FROM kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(kept, 7, "committed data survives the stop");
    let _ = conn.close().await;

    drop(cluster);
    assert!(
        PgConnection::connect(&url).await.is_err(),
        "stopped on drop"
    );
}

#[test]
fn names_and_urls() {
    assert_eq!(
        template_name("Store v2/Search"),
        "careplane_tmpl_store_v2_search"
    );
    assert_eq!(template_name(&"x".repeat(100)).len(), 63);
    assert_eq!(
        with_database(
            "postgres://postgres@127.0.0.1:5432/test?sslmode=disable&dbname=test",
            "db1"
        )
        .unwrap(),
        "postgres://postgres@127.0.0.1:5432/db1?sslmode=disable"
    );
    assert_eq!(
        with_database("postgresql://u:p%40ss@h", "db1").unwrap(),
        "postgresql://u:p%40ss@h/db1"
    );
    assert!(with_database("not a url", "db1").is_err());
}
