//! The fault runs crash Postgres mid-run (an immediate stop, `pg_restart` in
//! infra/scripts/pg.sh), and the turn engine's promise rests on every acknowledged commit
//! surviving that: a part's `Sending` state is committed before its request is written. The
//! local cluster may give up durability against a crash of the machine (fsync off) for speed,
//! never against its own crash. With `synchronous_commit=off` it did: a commit acknowledged
//! within the last few hundred milliseconds was gone after the restart, the engine found the
//! part still pending and sent the reply a second time (found by the short fault run in CI).

use std::path::{Path, PathBuf};
use std::process::Command;

use devstack::free_port;
use shared::db::{Db, DbConfig};

fn pg(root: &Path, script: &str) {
    let status = Command::new("bash")
        .current_dir(root)
        .arg("-c")
        .arg(format!(
            "source infra/scripts/env.sh && source infra/scripts/pg.sh && {script}"
        ))
        .status()
        .expect("bash runs");
    assert!(status.success(), "`{script}` failed");
}

#[tokio::test]
async fn a_crash_restart_of_the_local_postgres_keeps_every_acknowledged_commit() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    // Under target/ (not /tmp): Postgres runs as its own user and must reach the directory.
    let dir = root.join(format!("target/pg-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = free_port();
    let d = dir.display();
    pg(&root, &format!("pg_start '{d}' {port}"));
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable");
    let db = Db::new(DbConfig::new(url.clone()));
    let c = db.client().await.unwrap();
    c.batch_execute("CREATE TABLE acked (i int)").await.unwrap();
    const N: i32 = 300;
    for i in 0..N {
        // One acknowledged commit each, as the engine stores a turn's state.
        c.execute("INSERT INTO acked VALUES ($1)", &[&i])
            .await
            .unwrap();
    }
    drop(c);
    drop(db);
    // At once, as the fault run does: no time for a background WAL flush.
    pg(&root, &format!("pg_restart '{d}'"));
    let db = Db::new(DbConfig::new(url));
    let count: i64 = db
        .client()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM acked", &[])
        .await
        .unwrap()
        .get(0);
    pg(&root, &format!("pg_stop '{d}'"));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        count,
        i64::from(N),
        "commits acknowledged before the crash were lost"
    );
}
