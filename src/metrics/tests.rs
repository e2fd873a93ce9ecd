use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::config::Config;
use crate::net::io::{NetShared, CLOSE_LABELS};
use crate::net::udp::UdpError;

/// The value of the sample whose name and labels are exactly `series` (e.g. `name{a="b"}`), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok()).flatten()
    })
}

#[test]
fn operator_names_are_exported_from_a_fresh_registry() {
    let m = Metrics::new("starter-vale");
    let text = m.render();
    for name in [
        "# TYPE game_server_players_online gauge",
        "# TYPE game_server_tick_duration_seconds histogram",
        "# TYPE game_server_network_latency_seconds histogram",
        "# TYPE game_server_tick_phase_duration_seconds histogram",
        "# TYPE game_server_tick_overruns_total counter",
        "# TYPE game_server_inputs_rejected_total counter",
        "# TYPE game_server_network_packets_total counter",
    ] {
        assert!(text.contains(name), "missing {name:?} in\n{text}");
    }
    let info = format!("game_server_build_info{{version=\"{}\",zone=\"starter-vale\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(sample(&text, &info), Some(1.0));
    // Phase histograms exist for every phase before the first observation, so dashboards never see gaps.
    for phase in TickPhase::ALL {
        let series = format!("game_server_tick_phase_duration_seconds_count{{phase=\"{}\"}}", phase.label());
        assert_eq!(sample(&text, &series), Some(0.0), "{series}");
    }
}

#[test]
fn two_instances_do_not_share_series() {
    let a = Metrics::new("a");
    let b = Metrics::new("b");
    a.players_online.set(5);
    assert_eq!(sample(&b.render(), "game_server_players_online"), Some(0.0));
    assert_eq!(sample(&a.render(), "game_server_players_online"), Some(5.0));
}

#[test]
fn tick_observations_land_in_the_50ms_buckets() {
    let m = Metrics::new("z");
    m.tick.observe(0.004);
    m.tick.observe(0.060);
    m.tick_phases.observe(TickPhase::Combat, 0.0003);
    m.tick_overruns.inc();
    let text = m.render();
    assert_eq!(sample(&text, "game_server_tick_duration_seconds_bucket{le=\"0.005\"}"), Some(1.0));
    assert_eq!(sample(&text, "game_server_tick_duration_seconds_bucket{le=\"0.05\"}"), Some(1.0));
    assert_eq!(sample(&text, "game_server_tick_duration_seconds_bucket{le=\"0.075\"}"), Some(2.0));
    assert_eq!(sample(&text, "game_server_tick_duration_seconds_count"), Some(2.0));
    assert_eq!(sample(&text, "game_server_tick_phase_duration_seconds_count{phase=\"combat\"}"), Some(1.0));
    assert_eq!(sample(&text, "game_server_tick_overruns_total"), Some(1.0));
}

#[test]
fn sim_totals_are_exported_as_labelled_counters() {
    let m = Metrics::new("z");
    m.set_sim_totals(&SimTotals {
        inputs_applied: 10,
        inputs_rejected_speed: 1,
        inputs_rejected_invalid: 2,
        inputs_rejected_stale: 3,
        combat_hits: 4,
        kills: 5,
        chats: 6,
        snapshots: 7,
        snapshot_truncated_entities: 8,
        delta_snapshots_acknowledged: 9,
        delta_snapshots_whole: 11,
        ..SimTotals::default()
    });
    let text = m.render();
    assert_eq!(sample(&text, "game_server_inputs_applied_total"), Some(10.0));
    assert_eq!(sample(&text, "game_server_inputs_rejected_total{reason=\"stale\"}"), Some(3.0));
    assert_eq!(sample(&text, "game_server_combat_events_total{kind=\"kill\"}"), Some(5.0));
    assert_eq!(sample(&text, "game_server_snapshot_truncated_entities_total"), Some(8.0));
    assert_eq!(sample(&text, "game_server_delta_snapshots_total{baseline=\"acknowledged\"}"), Some(9.0));
    assert_eq!(sample(&text, "game_server_delta_snapshots_total{baseline=\"none\"}"), Some(11.0));
}

#[test]
fn net_counters_are_read_from_netstats_at_scrape_time() {
    let m = Metrics::new("z");
    let net = Arc::new(NetShared::new(&Config::default()));
    m.attach_net(Arc::clone(&net)).unwrap();
    assert_eq!(m.attach_net(Arc::clone(&net)), Err(AlreadyAttached("net")));

    let before = m.render();
    for reason in UdpError::REASONS {
        let series = format!("game_server_network_packets_dropped_total{{channel=\"udp\",reason=\"{reason}\"}}");
        assert_eq!(sample(&before, &series), Some(0.0), "{series}");
    }
    for reason in CLOSE_LABELS {
        assert_eq!(sample(&before, &format!("game_server_sessions_closed_total{{reason=\"{reason}\"}}")), Some(0.0));
    }

    let replayed = UdpError::REASONS.iter().position(|r| *r == "replayed").unwrap();
    net.stats.udp_dropped[replayed].fetch_add(3, Ordering::Relaxed);
    let idle = CLOSE_LABELS.iter().position(|r| *r == "idle_timeout").unwrap();
    net.stats.closed[idle].fetch_add(2, Ordering::Relaxed);
    net.stats.udp_in.fetch_add(11, Ordering::Relaxed);
    net.stats.open_connections.fetch_add(4, Ordering::Relaxed);
    net.stats.refused_rate_limited.fetch_add(1, Ordering::Relaxed);
    net.stats.control_dropped_flood.fetch_add(9, Ordering::Relaxed);
    net.stats.tcp_frames_in.fetch_add(2, Ordering::Relaxed);
    net.stats.tcp_bytes_in.fetch_add(300, Ordering::Relaxed);

    let after = m.render();
    assert_eq!(
        sample(&after, "game_server_network_packets_dropped_total{channel=\"udp\",reason=\"replayed\"}"),
        Some(3.0)
    );
    assert_eq!(
        sample(&after, "game_server_network_packets_dropped_total{channel=\"tcp\",reason=\"flood\"}"),
        Some(9.0)
    );
    assert_eq!(sample(&after, "game_server_sessions_closed_total{reason=\"idle_timeout\"}"), Some(2.0));
    assert_eq!(sample(&after, "game_server_network_packets_total{channel=\"udp\",direction=\"in\"}"), Some(11.0));
    assert_eq!(sample(&after, "game_server_network_packets_total{channel=\"tcp\",direction=\"in\"}"), Some(2.0));
    assert_eq!(sample(&after, "game_server_network_bytes_total{channel=\"tcp\",direction=\"in\"}"), Some(300.0));
    assert_eq!(sample(&after, "game_server_connections_open"), Some(4.0));
    assert_eq!(sample(&after, "game_server_connections_refused_total{reason=\"rate_limited\"}"), Some(1.0));
    assert_eq!(sample(&after, "game_server_udp_sessions"), Some(0.0));
}

#[test]
fn worker_pool_counters_and_job_timings_are_exported() {
    let m = Metrics::new("z");
    let (tx, mut rx) = crate::queue::channel::<u8>();
    let (pool, jobs) = crate::worker::WorkerPool::start(1, 4, Arc::new(()), tx).unwrap();
    m.attach_workers("jobs", Arc::clone(pool.stats())).unwrap();
    jobs.submit("save_batch", |_: &()| Some(1)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !matches!(rx.pop(), crate::queue::Pop::Item(_)) {
        assert!(Instant::now() < deadline, "job never ran");
        std::thread::sleep(Duration::from_millis(1));
    }
    // The result is pushed after the timing is recorded, so the job is counted by now.
    let text = m.render();
    assert_eq!(
        sample(&text, "game_server_worker_job_duration_seconds_count{pool=\"jobs\",job=\"save_batch\"}"),
        Some(1.0)
    );
    assert_eq!(sample(&text, "game_server_worker_job_panics_total{pool=\"jobs\",job=\"save_batch\"}"), Some(0.0));
    assert_eq!(sample(&text, "game_server_worker_jobs_rejected_total{pool=\"jobs\"}"), Some(0.0));
    drop(jobs);
    pool.join();
}

#[test]
fn data_layer_samples_are_exported_and_replaced() {
    let m = Metrics::new("z");
    let pool = PoolSample { up: true, max_size: 16, in_use: 3, idle: 2, waits: 7, timeouts: 1, ..Default::default() };
    m.set_pool_stats("primary", pool);
    m.set_pool_stats("primary", PoolSample { waits: 9, ..pool });
    m.set_replica_lag("replica-0", ReplicaSample { up: true, lag_seconds: Some(0.25) });
    m.set_replica_lag("replica-1", ReplicaSample { up: false, lag_seconds: None });
    m.set_cache_stats("player", CacheSample { hits: 90, misses: 10, evictions: 4, entries: 50 });
    m.observe_query("load_player", 0.003, true);
    m.observe_query("load_player", 5.0, false);
    let mut counts = vec![0; QUERY_BUCKETS.len() + 1];
    counts[0] = 2;
    counts[3] = 1;
    m.set_statement_stats(
        "save_player",
        StatementSample { bounds: QUERY_BUCKETS.to_vec(), counts, sum_seconds: 0.0012, errors: 0 },
    );
    m.set_statement_stats("broken", StatementSample { bounds: vec![0.1], counts: vec![1], ..Default::default() });

    let text = m.render();
    assert_eq!(sample(&text, "game_server_db_pool_waits_total{pool=\"primary\"}"), Some(9.0));
    assert_eq!(sample(&text, "game_server_db_pool_connections{pool=\"primary\",state=\"in_use\"}"), Some(3.0));
    assert_eq!(sample(&text, "game_server_db_pool_up{pool=\"primary\"}"), Some(1.0));
    assert_eq!(sample(&text, "game_server_db_replica_lag_seconds{replica=\"replica-0\"}"), Some(0.25));
    assert_eq!(sample(&text, "game_server_db_replica_lag_seconds{replica=\"replica-1\"}"), None);
    assert_eq!(sample(&text, "game_server_db_replica_up{replica=\"replica-1\"}"), Some(0.0));
    assert_eq!(sample(&text, "game_server_cache_hits_total{cache=\"player\"}"), Some(90.0));
    assert_eq!(
        sample(&text, "game_server_db_query_duration_seconds_bucket{statement=\"load_player\",le=\"0.005\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "game_server_db_query_duration_seconds_bucket{statement=\"load_player\",le=\"+Inf\"}"),
        Some(2.0)
    );
    assert_eq!(sample(&text, "game_server_db_query_errors_total{statement=\"load_player\"}"), Some(1.0));
    assert_eq!(
        sample(&text, "game_server_db_query_duration_seconds_bucket{statement=\"save_player\",le=\"0.001\"}"),
        Some(3.0)
    );
    assert_eq!(sample(&text, "game_server_db_query_duration_seconds_count{statement=\"save_player\"}"), Some(3.0));
    assert!(!text.contains("statement=\"broken\""), "an invalid sample must be ignored");
}

#[test]
fn queue_depths_are_gauges_by_label() {
    let m = Metrics::new("z");
    m.queue_depth_gauge("inbound").set(40);
    m.set_queue_depth("outbound-0", 3);
    m.population.npcs.set(20_000);
    let text = m.render();
    assert_eq!(sample(&text, "game_server_queue_depth{queue=\"inbound\"}"), Some(40.0));
    assert_eq!(sample(&text, "game_server_queue_depth{queue=\"outbound-0\"}"), Some(3.0));
    assert_eq!(sample(&text, "game_server_zone_population{kind=\"npc\"}"), Some(20_000.0));
}

#[test]
fn every_rendered_family_is_listed_in_metric_names() {
    let m = Metrics::new("z");
    m.attach_net(Arc::new(NetShared::new(&Config::default()))).unwrap();
    m.set_pool_stats("primary", PoolSample::default());
    m.set_replica_lag("replica-0", ReplicaSample { up: true, lag_seconds: Some(0.0) });
    m.set_cache_stats("c", CacheSample::default());
    m.observe_query("s", 0.001, true);
    for line in m.render().lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(METRIC_NAMES.contains(&name), "{name} is exported but not in METRIC_NAMES");
    }
}
