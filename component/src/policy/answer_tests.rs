//! What the policy does with each answer a server can give, on a simulated
//! clock against a simulated server that refuses lines as the real ones do.

use std::collections::BTreeSet;

use crate::backlog::memory::MemoryBacklog;
use crate::backlog::Backlog;
use crate::config::Settings;
use crate::point::Point;
use crate::policy::Level;
use crate::sim::{secs, DownMode, RejectMode, Sim, SimServer};

/// Point `i`; the ones in `bad` carry a marker the server refuses.
fn point(i: u64, bad: &[u64]) -> Point {
    let mark = if bad.contains(&i) { "bad" } else { "ok" };
    Point {
        line: format!("m,host=a seq={i}i,v=\"{mark}\""),
        series_len: 8,
        timestamp: 1_000 + i as i64,
    }
}

fn points(range: std::ops::Range<u64>, bad: &[u64]) -> Vec<Point> {
    range.map(|i| point(i, bad)).collect()
}

fn settings(batch: u32) -> Settings {
    let mut s = Settings::defaults("o");
    s.batch_size = batch;
    s
}

fn refusing(mode: RejectMode) -> SimServer {
    let mut server = SimServer::new();
    server.bad = Some("\"bad\"".into());
    server.reject_mode = mode;
    server
}

fn sim(s: Settings, server: SimServer) -> Sim<MemoryBacklog> {
    Sim::new(s, MemoryBacklog::new(), server)
}

/// Sequence numbers of the lines in `lines`.
fn seqs<'a>(lines: impl IntoIterator<Item = &'a str>) -> Vec<u64> {
    lines
        .into_iter()
        .map(|l| {
            let at = l.find("seq=").expect("a seq field") + 4;
            l[at..].split('i').next().unwrap().parse().unwrap()
        })
        .collect()
}

fn dead_seqs(sim: &Sim<MemoryBacklog>) -> Vec<u64> {
    let text: Vec<String> = sim
        .dead
        .iter()
        .map(|d| String::from_utf8(d.lines.clone()).unwrap())
        .collect();
    let mut v = seqs(text.iter().flat_map(|t| t.lines()));
    v.sort_unstable();
    v
}

fn received(sim: &Sim<MemoryBacklog>) -> Vec<u64> {
    seqs(sim.server.received.iter().map(String::as_str))
}

fn distinct(v: &[u64]) -> BTreeSet<u64> {
    v.iter().copied().collect()
}

/// Every good point of `0..n` in, the bad ones dead-lettered, nothing
/// pending, counters to match.
fn assert_sorted_out(sim: &Sim<MemoryBacklog>, n: u64, bad: &[u64]) {
    let good: BTreeSet<u64> = (0..n).filter(|i| !bad.contains(i)).collect();
    assert_eq!(distinct(&received(sim)), good, "good points delivered");
    assert_eq!(dead_seqs(sim), bad.to_vec(), "bad points dead-lettered");
    let st = sim.policy.stats();
    assert_eq!(
        (st.counters.delivered, st.counters.rejected, st.pending),
        (n - bad.len() as u64, bad.len() as u64, 0)
    );
}

#[test]
fn v1_partial_write_bisects_to_the_refused_points_only() {
    let bad = [3, 17];
    let mut sim = sim(settings(10), refusing(RejectMode::PartialV1));
    sim.write(points(0..20, &bad));
    sim.run_until(secs(5.0));
    assert_sorted_out(&sim, 20, &bad);
    // The reason is logged at warning level once, then at debug.
    let warns = sim
        .logs
        .iter()
        .filter(|(_, l)| l.level == Level::Warn && l.message.contains("rejected 1 of 1"))
        .count();
    assert_eq!(warns, 1, "{:?}", sim.messages());
    assert!(sim.dead[0].reason.contains("field type conflict"));
}

#[test]
fn whole_batch_refusal_finds_the_bad_lines_and_sends_the_rest_once() {
    let bad = [0, 5, 6, 29];
    let mut sim = sim(settings(10), refusing(RejectMode::WholeBatch));
    sim.write(points(0..30, &bad));
    sim.run_until(secs(5.0));
    assert_sorted_out(&sim, 30, &bad);
    // Nothing stored twice: a refused batch stores nothing.
    let got = received(&sim);
    assert_eq!(got.len(), 26, "{got:?}");
    // Order kept within the bisection (pieces finish left to right).
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
    assert!(sim
        .messages()
        .iter()
        .any(|m| m.contains("resending them in halves")));
}

#[test]
fn v3_named_lines_are_dead_lettered_without_resending() {
    let bad = [2, 4];
    let mut s = settings(10);
    s.api = crate::config::Api::V3;
    let mut sim = sim(s, refusing(RejectMode::PartialV3));
    sim.write(points(0..10, &bad));
    sim.run_until(secs(5.0));
    assert_sorted_out(&sim, 10, &bad);
    assert_eq!(received(&sim).len(), 8);
    let writes = sim
        .server
        .paths
        .iter()
        .filter(|p| p.contains("write_lp"))
        .count();
    assert_eq!(writes, 1);
}

#[test]
fn poisoned_point_never_holds_back_a_backlog_drain() {
    // An outage fills the backlog; the drain meets the bad point.
    let bad = [42];
    let mut server = refusing(RejectMode::WholeBatch);
    server.down.push((0, secs(20.0)));
    let mut sim = sim(settings(10), server);
    for i in 0..10 {
        sim.write(points(i * 10..i * 10 + 10, &bad));
    }
    assert_eq!(sim.policy.backlog().len(), 100);
    sim.run_until(secs(60.0));
    assert_sorted_out(&sim, 100, &bad);
    assert!(sim.policy.backlog().is_empty());
    assert_eq!(received(&sim).len(), 99, "a good point was sent twice");
}

#[test]
fn crash_in_the_middle_of_a_bisection_resends_nothing_already_stored() {
    let bad = [7];
    let mut server = refusing(RejectMode::WholeBatch);
    server.down.push((0, secs(20.0)));
    server.latency = secs(1.0);
    let mut sim = sim(settings(16), server);
    sim.write(points(0..32, &bad));
    // The pieces of the refused first batch go out one a second: stop
    // once a few are acknowledged, with none in flight (a crash with a
    // write in flight may resend that one write, as any at-least-once
    // sink must).
    sim.run_while(secs(300.0), |s| {
        s.policy.counters().delivered < 4
            || s.server.received.len() as u64 != s.policy.counters().delivered
    });
    let before = received(&sim);
    assert!(!before.is_empty() && before.len() < 31, "{before:?}");
    let dead_before = dead_seqs(&sim);
    // The crash: only the backlog survives.
    let backlog = std::mem::replace(&mut sim.policy, {
        let s = settings(16);
        crate::policy::Policy::new(s, MemoryBacklog::new(), 0, 0)
    })
    .into_backlog();
    let mut again = Sim::new(settings(16), backlog, refusing(RejectMode::WholeBatch));
    again.run_until(secs(10.0));
    let mut all = before.clone();
    all.extend(received(&again));
    let unique = distinct(&all);
    assert_eq!(unique.len(), 31, "lost points: {all:?}");
    assert_eq!(all.len(), 31, "points sent twice: {all:?}");
    let mut dead = dead_before;
    dead.extend(dead_seqs(&again));
    assert_eq!(dead, vec![7]);
}

#[test]
fn too_large_batches_are_split_until_they_fit() {
    let mut server = SimServer::new();
    server.max_points = Some(3);
    let mut sim = sim(settings(10), server);
    sim.write(points(0..20, &[]));
    sim.run_until(secs(5.0));
    let got = received(&sim);
    assert_eq!(got, (0..20).collect::<Vec<_>>());
    assert_eq!(sim.policy.counters().rejected, 0);
    assert!(sim.messages().iter().any(|m| m.contains("too large")));
}

#[test]
fn a_single_point_too_large_is_dead_lettered() {
    let mut server = SimServer::new();
    server.max_points = Some(0);
    let mut sim = sim(settings(4), server);
    sim.write(points(0..4, &[]));
    sim.run_until(secs(5.0));
    assert_eq!(dead_seqs(&sim), vec![0, 1, 2, 3]);
    assert_eq!(sim.policy.counters().rejected, 4);
    assert!(sim.dead[0].reason.contains("single point larger"));
}

#[test]
fn refused_credentials_keep_the_data_back_off_and_resume_by_themselves() {
    let mut server = SimServer::new();
    for _ in 0..4 {
        server
            .script
            .push_back((401, r#"{"error":"authorization failed"}"#.into()));
    }
    let mut sim = sim(settings(10), server);
    sim.write(points(0..10, &[]));
    sim.run_until(secs(600.0));
    assert_eq!(received(&sim), (0..10).collect::<Vec<_>>());
    assert_eq!(sim.policy.counters().rejected, 0);
    let errors: Vec<&str> = sim
        .logs
        .iter()
        .filter(|(_, l)| l.level == Level::Error)
        .map(|(_, l)| l.message.as_str())
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("Authentication failed") && errors[0].contains("[o]"));
    // Backed off between the refusals: 5 s, then 10 s, then 20 s (exponential).
    let writes: Vec<u64> = sim
        .logs
        .iter()
        .filter(|(_, l)| l.message.contains("failed: HTTP 401"))
        .map(|(t, _)| *t / 1_000_000_000)
        .collect();
    assert!(writes.windows(2).all(|w| w[1] - w[0] >= 5), "{writes:?}");
}

#[test]
fn missing_database_is_created_once_then_written() {
    let mut server = SimServer::new();
    server
        .script
        .push_back((404, r#"{"error":"database not found: \"solar\""}"#.into()));
    let mut sim = sim(settings(10), server);
    sim.write(points(0..10, &[]));
    sim.run_until(secs(2.0));
    assert_eq!(received(&sim).len(), 10);
    let creates = sim.server.paths.iter().filter(|p| *p == "/query").count();
    assert_eq!(creates, 2, "one create at connect, one after the 404");
    assert!(sim.messages().iter().any(|m| m.contains("creating it")));
}

#[test]
fn missing_database_without_auto_create_keeps_the_data_and_backs_off() {
    let mut s = settings(10);
    s.auto_create_database = false;
    let mut server = SimServer::new();
    for _ in 0..2 {
        server
            .script
            .push_back((404, r#"{"error":"database not found: \"solar\""}"#.into()));
    }
    let mut sim = sim(s, server);
    sim.write(points(0..10, &[]));
    sim.run_until(secs(60.0));
    assert!(sim.server.paths.iter().all(|p| p != "/query"));
    assert_eq!(received(&sim).len(), 10);
    assert!(sim
        .messages()
        .iter()
        .any(|m| m.contains("set auto_create_database = true")));
}

#[test]
fn retry_after_sets_the_next_attempt_capped_at_max_reconnect_delay() {
    for (header, expect_s) in [("7", 7u64), ("100000", 300)] {
        let mut server = SimServer::new();
        server.script.push_back((503, "busy".into()));
        server.retry_after = Some(header.into());
        let mut sim = sim(settings(10), server);
        sim.write(points(0..10, &[]));
        sim.run_until(secs(1000.0));
        assert_eq!(received(&sim).len(), 10);
        let attempt = sim.attempts.first().expect("a reconnect attempt");
        assert_eq!(attempt.at / 1_000_000_000, expect_s, "Retry-After {header}");
    }
}

#[test]
fn throttling_without_retry_after_follows_the_backoff_schedule() {
    let mut server = SimServer::new();
    server.script.push_back((429, "slow down".into()));
    let mut sim = sim(settings(10), server);
    sim.write(points(0..10, &[]));
    sim.run_until(secs(100.0));
    assert_eq!(received(&sim).len(), 10);
    assert_eq!(sim.attempts[0].at / 1_000_000_000, 5);
}

#[test]
fn server_errors_and_resets_never_drop_data() {
    let mut server = SimServer::new();
    for status in [500, 502, 504] {
        server.script.push_back((status, "oops".into()));
    }
    server.down.push((secs(40.0), secs(41.0)));
    server.mode = DownMode::Refuse;
    let mut sim = sim(settings(10), server);
    sim.write(points(0..50, &[]));
    sim.run_until(secs(400.0));
    assert_eq!(distinct(&received(&sim)).len(), 50);
    assert_eq!(sim.policy.counters().rejected, 0);
}

#[test]
fn a_limit_dropping_reserved_points_does_not_consume_newer_ones() {
    use crate::policy::storage::{Report, Storage};
    let s = settings(10);
    let mut st = Storage::new(MemoryBacklog::new(), &s, 0);
    let mut logs = Default::default();
    let mut drops = Default::default();
    let mut stored = 0;
    let mut r = Report {
        logs: &mut logs,
        drops: &mut drops,
        stored: &mut stored,
    };
    st.put(points(0..30, &[]), 0, 1_000, &mut r);
    st.reserve(10);
    // The age limit (default 1 day) drops the 30 points while 10 are out.
    st.tick(0, 1_000 + 86_400 * 1_000_000_000, &mut r);
    assert!(st.is_empty());
    st.put(
        points(30..40, &[]),
        0,
        2_000 + 86_400 * 1_000_000_000,
        &mut r,
    );
    let done = st.consume_reserved(10).unwrap();
    assert_eq!(done.consumed, 0);
    assert_eq!(done.reclaimed.age, 10, "the answered ones are not dropped");
    assert_eq!(st.len(), 10, "newer points were consumed in their place");
}

#[test]
fn failover_sends_each_batch_to_one_healthy_server_and_rests_failing_ones() {
    // Server 0 is down from 10 s to 200 s; server 1 is always up. The
    // simulated server stands for both; it is told apart by the path prefix.
    let mut s = settings(10);
    s.endpoints = vec![
        crate::endpoint::Endpoint::parse("http://a:1/a").unwrap(),
        crate::endpoint::Endpoint::parse("http://b:1/b").unwrap(),
    ];
    let mut server = SimServer::new();
    server.down_prefix = Some(("/a".into(), secs(10.0), secs(200.0)));
    let mut sim = sim(s, server);
    for k in 0..30u64 {
        sim.write(points(k * 10..k * 10 + 10, &[]));
        let t = sim.now + secs(10.0);
        sim.run_until(t);
    }
    sim.run_until(secs(400.0));
    // Every point once (no batch went to both servers).
    let got = received(&sim);
    assert_eq!(distinct(&got).len(), 300);
    assert_eq!(got.len(), 300, "a batch was sent twice");
    let writes_a: Vec<&String> = sim
        .server
        .paths
        .iter()
        .filter(|p| p.starts_with("/a/write"))
        .collect();
    let writes_b: Vec<&String> = sim
        .server
        .paths
        .iter()
        .filter(|p| p.starts_with("/b/write"))
        .collect();
    assert!(!writes_a.is_empty() && !writes_b.is_empty());
    assert!(sim
        .messages()
        .iter()
        .any(|m| m.contains("Failing over from a:1 to b:1")));
    assert_eq!(sim.policy.stats().pending, 0);
}
