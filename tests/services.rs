//! The test environment itself: the suite is only meaningful if the services it claims to use are real and
//! wired as documented (a replica that replicates, shards that are distinct databases, a Redis that answers).

mod common;

use std::time::{Duration, Instant};

#[test]
#[ignore = "needs PostgreSQL and Redis: run scripts/test.sh"]
fn primary_replica_and_shards_are_real_and_replication_flows() {
    let (primary, replica, shards) = (common::pg_url(), common::pg_replica_url(), common::pg_shard_urls());
    let mut p = postgres::Client::connect(&primary, postgres::NoTls).expect("primary reachable");
    let mut r = postgres::Client::connect(&replica, postgres::NoTls).expect("replica reachable");
    let in_recovery: bool = r.query_one("select pg_is_in_recovery()", &[]).unwrap().get(0);
    assert!(in_recovery, "the replica must be a standby");

    let table = common::unique("replication_probe");
    p.batch_execute(&format!("create table {table} (v text)")).unwrap();
    p.execute(&format!("insert into {table} values ($1)"), &[&"hello"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = r.query(&format!("select v from {table}"), &[]);
        if let Ok(rows) = got {
            if rows.len() == 1 {
                assert_eq!(rows[0].get::<_, String>(0), "hello");
                break;
            }
        }
        assert!(Instant::now() < deadline, "row written on the primary never reached the replica");
        std::thread::sleep(Duration::from_millis(50));
    }
    p.batch_execute(&format!("drop table {table}")).unwrap();

    assert!(shards.len() >= 2, "at least two shard databases");
    let mut names = Vec::new();
    for url in &shards {
        let mut c = postgres::Client::connect(url, postgres::NoTls).expect("shard reachable");
        names.push(c.query_one("select current_database()", &[]).unwrap().get::<_, String>(0));
    }
    names.dedup();
    assert_eq!(names.len(), shards.len(), "shards are distinct databases");
}

#[test]
#[ignore = "needs PostgreSQL and Redis: run scripts/test.sh"]
fn redis_answers_and_stores() {
    let url = common::redis_url();
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_connection().expect("redis reachable");
    let key = common::unique("realm_test_probe");
    let _: () = redis::cmd("SET").arg(&key).arg("v").arg("PX").arg(10_000).query(&mut con).unwrap();
    let v: String = redis::cmd("GET").arg(&key).query(&mut con).unwrap();
    assert_eq!(v, "v");
    let _: () = redis::cmd("DEL").arg(&key).query(&mut con).unwrap();
}
