//! A failed migration run must not leave the migration lock behind.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use sqlx::PgPool;

/// Advisory locks held in this test's database (other tests use other databases).
async fn advisory_locks(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn a_failed_migration_run_releases_the_migration_lock(pool: PgPool) {
    // Migrated as a first start does, then an applied migration no longer matches the binary's.
    sqlx::migrate!("./migrations").run(&pool).await.unwrap();
    sqlx::query("UPDATE _sqlx_migrations SET checksum = sha384('tampered')")
        .execute(&pool)
        .await
        .unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let last_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let runner = tokio::spawn(backend::store::migrate_until_done(
        pool.clone(),
        done.clone(),
        last_error.clone(),
    ));
    // The first run fails; the next one starts 200 ms later. Look in between.
    let mut error = None;
    for _ in 0..500 {
        error = last_error.lock().unwrap().clone();
        if error.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let error = error.expect("the migration run did not fail");
    assert!(
        error.contains("previously applied but has been modified"),
        "{error}"
    );
    let held = advisory_locks(&pool).await;
    runner.abort();
    assert_eq!(held, 0, "the failed run left the migration lock held");
}
