//! The policy on a simulated clock: the behaviour the issue lists, each
//! checked against the schedule and counts it must produce.

use crate::backlog::memory::MemoryBacklog;
use crate::backlog::Backlog;
use crate::config::Settings;
use crate::point::Point;
use crate::sim::{secs, DownMode, Sim, SimServer};

fn point(i: u64) -> Point {
    let line = format!("m,host=a seq={i}i");
    Point {
        line,
        series_len: 8,
        timestamp: 1_000 + i as i64,
    }
}

fn points(range: std::ops::Range<u64>) -> Vec<Point> {
    range.map(point).collect()
}

fn server_down(from: f64, to: f64, mode: DownMode) -> SimServer {
    let mut s = SimServer::new();
    s.down.push((secs(from), secs(to)));
    s.mode = mode;
    s
}

fn sim(settings: Settings, server: SimServer) -> Sim<MemoryBacklog> {
    Sim::new(settings, MemoryBacklog::new(), server)
}

/// Attempt times in seconds, to the millisecond below (the simulated
/// server answers after 1 ms, which shifts later schedules by that much).
fn attempt_times(sim: &Sim<MemoryBacklog>) -> Vec<(f64, bool)> {
    sim.attempts
        .iter()
        .map(|a| ((a.at / 10_000_000) as f64 / 100.0, a.ok))
        .collect()
}

#[test]
fn short_glitch_recovers_at_first_attempt() {
    let mut sim = sim(
        Settings::defaults("o"),
        server_down(0.0, 3.0, DownMode::Refuse),
    );
    sim.run_until(secs(60.0));
    assert_eq!(attempt_times(&sim), vec![(5.0, true)]);
}

#[test]
fn thirty_second_outage_recovers_at_35s() {
    let mut sim = sim(
        Settings::defaults("o"),
        server_down(0.0, 30.0, DownMode::Refuse),
    );
    sim.run_until(secs(120.0));
    assert_eq!(
        attempt_times(&sim),
        vec![(5.0, false), (15.0, false), (35.0, true)]
    );
}

#[test]
fn ten_minute_outage_follows_gateway_schedule_then_max_delay() {
    let mut sim = sim(
        Settings::defaults("o"),
        server_down(0.0, 600.0, DownMode::Refuse),
    );
    sim.write(points(0..10));
    sim.run_until(secs(3600.0));
    assert_eq!(
        attempt_times(&sim),
        vec![
            (5.0, false),
            (15.0, false),
            (35.0, false),
            (75.0, false),
            (155.0, false),
            (455.0, false),
            (755.0, true)
        ]
    );
    // Never busy-loops: a handful of turns for an hour.
    assert!(sim.turns < 100, "{} turns", sim.turns);
    assert_eq!(sim.server.received.len(), 10);
    assert!(sim
        .messages()
        .iter()
        .any(|m| m.starts_with("Could not reconnect after 5 attempts")));
}

#[test]
fn hung_server_costs_connection_timeout_per_attempt() {
    let mut settings = Settings::defaults("o");
    settings.connection_timeout = 10.0;
    let mut sim = sim(settings, server_down(0.0, 100.0, DownMode::Hang));
    sim.run_until(secs(400.0));
    // initial check times out at 10 s; attempt 1 sent at 15, fails at 25;
    // attempt 2 at 35 (fails 45); attempt 3 at 65 (fails 75); attempt 4 at 115 (up).
    assert_eq!(
        attempt_times(&sim),
        vec![(15.0, false), (35.0, false), (65.0, false), (115.0, true)]
    );
}

#[test]
fn fixed_delay_and_reconnect_attempts_from_stable_network_example() {
    let mut s = Settings::defaults("o");
    s.use_exponential_backoff = false;
    s.reconnect_delay = 2.0;
    s.reconnect_attempts = 3;
    let mut sim = sim(s, server_down(0.0, 100.0, DownMode::Refuse));
    sim.run_until(secs(1000.0));
    let t: Vec<f64> = attempt_times(&sim).into_iter().map(|a| a.0).collect();
    assert_eq!(t, vec![2.0, 4.0, 6.0, 306.0]);
}

#[test]
fn jitter_spreads_attempts_within_band() {
    let mut s = Settings::defaults("o");
    s.reconnect_jitter = 0.2;
    let mut sim = sim(s, server_down(0.0, 100.0, DownMode::Refuse));
    sim.run_until(secs(1000.0));
    let first = sim.attempts[0].at as f64 / 1e9;
    assert!((4.0..=6.0).contains(&first), "{first}");
    assert_ne!(first, 5.0);
}

#[test]
fn batch_goes_out_at_batch_size_without_waiting() {
    let mut s = Settings::defaults("o");
    s.batch_size = 10;
    let mut sim = sim(s, SimServer::new());
    sim.run_until(secs(1.0));
    sim.write(points(0..10));
    sim.run_until(secs(1.1));
    assert_eq!(sim.server.received.len(), 10);
}

#[test]
fn partial_batch_goes_out_at_batch_timeout_driven_by_the_timer() {
    let mut s = Settings::defaults("o");
    s.batch_timeout = 10.0;
    let mut sim = sim(s, SimServer::new());
    sim.run_until(secs(1.0));
    sim.write(points(0..3));
    sim.run_until(secs(10.9));
    assert_eq!(sim.server.received.len(), 0, "sent before batch_timeout");
    sim.run_until(secs(11.1));
    assert_eq!(sim.server.received.len(), 3, "not sent at batch_timeout");
}

#[test]
fn outage_points_go_to_backlog_and_drain_oldest_first_in_batches() {
    let mut s = Settings::defaults("o");
    s.batch_size = 100;
    s.batch_timeout = 1.0;
    let mut sim = sim(s, server_down(0.0, 30.0, DownMode::Refuse));
    for k in 0..20u64 {
        sim.run_until(secs(1.0 + k as f64));
        sim.write(points(k * 50..k * 50 + 50));
    }
    sim.run_until(secs(34.0));
    assert_eq!(sim.policy.backlog().len(), 1000);
    assert!(sim
        .messages()
        .contains(&"Not connected to InfluxDB, storing data in backlog"));
    sim.write(points(1000..1010)); // newer, arrives before recovery
    sim.run_until(secs(200.0));
    let got: Vec<u64> = sim
        .server
        .received
        .iter()
        .map(|l| {
            l.split("seq=")
                .nth(1)
                .unwrap()
                .split('i')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(got, (0..1010).collect::<Vec<_>>(), "not oldest first");
    let msgs = sim.messages();
    assert!(
        msgs.contains(&"Attempting to reconnect to InfluxDB at localhost:8086 (attempt 3)"),
        "{msgs:?}"
    );
    assert!(msgs.contains(&"Successfully reconnected to InfluxDB"));
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("Flushing 10") && m.ends_with("backlog points to InfluxDB")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("Successfully wrote 10")
                && m.ends_with("backlog points to InfluxDB")),
        "{msgs:?}"
    );
    // Log lines do not grow with points.
    assert!(msgs.len() < 20, "{msgs:?}");
    let c = sim.policy.counters();
    assert_eq!((c.accepted, c.delivered, c.dropped), (1010, 1010, 0));
}

#[test]
fn backlog_batch_leaves_only_after_acknowledgement() {
    let mut s = Settings::defaults("o");
    s.batch_size = 100;
    let mut server = server_down(0.0, 10.0, DownMode::Refuse);
    server
        .script
        .push_back((500, "{\"error\":\"boom\"}".into()));
    let mut sim = sim(s, server);
    sim.write(points(0..100));
    sim.run_until(secs(5.5)); // attempt 1 ok at 5; first backlog write answered 500
    assert_eq!(
        sim.policy.backlog().len(),
        100,
        "a failed batch left the backlog"
    );
    sim.run_until(secs(100.0));
    assert_eq!(sim.policy.backlog().len(), 0);
    assert_eq!(sim.server.received.len(), 100);
}

#[test]
fn crash_during_recovery_resends_at_most_the_batch_in_flight() {
    let mut s = Settings::defaults("o");
    s.batch_size = 100;
    let mut server = server_down(0.0, 10.0, DownMode::Refuse);
    server.latency = secs(1.0);
    let mut sim = sim(s.clone(), server);
    sim.write(points(0..1000));
    sim.run_until(secs(20.5)); // recovery from 15 s: a few batches acknowledged, one in flight
    let delivered_before = sim.server.received.len();
    assert!(delivered_before > 0 && delivered_before < 1000);
    // Crash: the policy and its memory are gone; the backlog survives.
    let Sim { policy, server, .. } = sim;
    let mut backlog = policy_into_backlog(policy);
    backlog.crash();
    let mut sim2 = Sim::new(
        s,
        backlog,
        SimServer {
            received: Vec::new(),
            ..server
        },
    );
    sim2.run_until(secs(200.0));
    let total = delivered_before + sim2.server.received.len();
    assert!(
        (1000..=1100).contains(&total),
        "resent {} points",
        total - 1000
    );
    let mut all: Vec<&String> = sim2.server.received.iter().collect();
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        sim2.server.received.len(),
        "second run sent something twice"
    );
}

fn policy_into_backlog(p: crate::policy::Policy<MemoryBacklog>) -> MemoryBacklog {
    p.into_backlog()
}

#[test]
fn size_limit_drops_oldest_and_counts() {
    let mut s = Settings::defaults("o");
    s.max_backlog_size = 500;
    s.batch_size = 100;
    let mut sim = sim(s, server_down(0.0, 100.0, DownMode::Refuse));
    sim.write(points(0..800));
    assert_eq!(sim.policy.backlog().len(), 500);
    assert_eq!(sim.policy.counters().dropped, 300);
    assert!(sim
        .messages()
        .iter()
        .any(|m| m.contains("Backlog full (max_backlog_size=500): dropped")));
    sim.run_until(secs(400.0));
    let first: &str = &sim.server.received[0];
    assert!(
        first.contains("seq=300i"),
        "oldest were not the ones dropped: {first}"
    );
}

#[test]
fn age_limit_is_enforced_while_running() {
    let mut s = Settings::defaults("o");
    s.max_backlog_age = 60.0;
    s.batch_size = 10;
    let mut sim = sim(s, server_down(0.0, 10_000.0, DownMode::Refuse));
    sim.write(points(0..10));
    sim.run_until(secs(30.0));
    sim.write(points(10..20));
    sim.run_until(secs(59.0));
    assert_eq!(sim.policy.backlog().len(), 20);
    sim.run_until(secs(61.0));
    assert_eq!(
        sim.policy.backlog().len(),
        10,
        "first batch not expired at 60 s"
    );
    assert_eq!(sim.policy.counters().dropped, 10);
    sim.run_until(secs(91.0));
    assert_eq!(sim.policy.backlog().len(), 0);
    assert!(sim
        .messages()
        .iter()
        .any(|m| m.contains("older than max_backlog_age")));
}

#[test]
fn periodic_reconnect_checks_the_server_when_idle() {
    let mut s = Settings::defaults("o");
    s.periodic_reconnect_interval = 3600.0;
    let mut sim = sim(s, SimServer::new());
    sim.run_until(secs(3.0 * 3600.0 + 1.0));
    let periodic: Vec<f64> = sim
        .logs
        .iter()
        .filter(|(_, l)| l.message.starts_with("Performing periodic reconnect"))
        .map(|(t, _)| *t as f64 / 1e9)
        .collect();
    assert_eq!(periodic.len(), 3, "{periodic:?}");
    assert!(
        (periodic[0] - 3600.0).abs() < 0.01 && (periodic[1] - 7200.0).abs() < 0.1,
        "{periodic:?}"
    );
}

#[test]
fn failed_periodic_check_enters_backoff_and_flushes_backlog_on_recovery() {
    let mut s = Settings::defaults("o");
    s.periodic_reconnect_interval = 600.0;
    s.batch_timeout = 1.0;
    let mut sim = sim(s, server_down(550.0, 700.0, DownMode::Refuse));
    sim.run_until(secs(560.0));
    sim.write(points(0..5)); // fails at 561: into the backlog
    sim.run_until(secs(1000.0));
    assert_eq!(
        sim.server.received.len(),
        5,
        "backlog not flushed without new data"
    );
    assert!(sim.attempts.iter().any(|a| a.ok));
    sim.run_until(secs(2000.0));
    assert!(sim
        .messages()
        .iter()
        .any(|m| m.starts_with("Periodic reconnect: connection to InfluxDB is healthy")));
}

#[test]
fn periodic_check_failing_in_quiet_period_backs_off() {
    let mut s = Settings::defaults("o");
    s.periodic_reconnect_interval = 600.0;
    let mut sim = sim(s, server_down(590.0, 640.0, DownMode::Refuse));
    sim.run_until(secs(700.0));
    // check at 600 fails: attempts at 605, 615, 635 (fail), 675 ok
    let t: Vec<(f64, bool)> = attempt_times(&sim);
    assert_eq!(
        t,
        vec![
            (605.0, false),
            (615.0, false),
            (635.0, false),
            (675.0, true)
        ]
    );
}

#[test]
fn hung_server_keeps_accepting_with_bounded_memory() {
    let mut s = Settings::defaults("o");
    s.batch_size = 100;
    s.connection_timeout = 10.0;
    s.max_backlog_size = 1_000_000;
    let mut sim = sim(s, server_down(1.0, 1000.0, DownMode::Hang));
    sim.run_until(secs(0.5));
    for k in 0..500u64 {
        sim.now += secs(0.01);
        sim.write(points(k * 100..k * 100 + 100));
        let st = sim.policy.stats();
        let in_memory = st.pending - st.backlog_points;
        // What the host may hand over while connected, the batch being
        // filled and those out.
        let out = Settings::defaults("o").max_requests_in_flight as u64;
        let bound = super::MIN_READY_POINTS as u64 + (1 + out) * 100;
        assert!(in_memory <= bound, "{in_memory} points held in memory");
    }
    let st = sim.policy.stats();
    assert_eq!(st.counters.accepted, 50_000);
    assert!(
        st.counters.delivered > 0,
        "nothing delivered before the hang"
    );
    assert_eq!(st.pending + st.counters.delivered, 50_000, "points lost");
}

#[test]
fn shutdown_moves_everything_undelivered_to_the_backlog() {
    let mut s = Settings::defaults("o");
    s.batch_size = 100;
    let mut sim = sim(s, server_down(0.0, 1e6, DownMode::Hang));
    sim.write(points(0..250));
    let (now, wall) = (sim.now, sim.wall());
    sim.policy.shutdown(now, wall);
    assert_eq!(sim.policy.backlog().len(), 250);
    assert_eq!(sim.policy.stats().pending, 250);
}

#[test]
fn unwritable_backlog_holds_points_in_memory_and_resumes_by_itself() {
    let mut s = Settings::defaults("o");
    s.batch_size = 10;
    s.batch_timeout = 0.1;
    let mut sim = sim(s, server_down(0.0, 100.0, DownMode::Refuse));
    sim.policy.backlog_mut().fail_appends(true);
    for k in 0..5 {
        sim.write(points(k * 10..k * 10 + 10));
    }
    assert_eq!(sim.policy.held_points(), 50);
    assert_eq!(sim.policy.stats().pending, 50);
    assert_eq!(sim.policy.counters().dropped, 0);
    let errors = sim
        .messages()
        .iter()
        .filter(|m| m.starts_with("Could not write to the backlog"))
        .count();
    assert_eq!(errors, 1, "warned more than once: {:?}", sim.messages());
    sim.run_until(secs(5.0));
    sim.policy.backlog_mut().fail_appends(false); // space came back
    sim.run_until(secs(7.0));
    assert_eq!(sim.policy.held_points(), 0);
    assert_eq!(sim.policy.backlog().len(), 50);
    assert!(sim
        .messages()
        .iter()
        .any(|m| m.starts_with("Backlog writable again: stored 50 held points")));
    sim.run_until(secs(400.0));
    assert_eq!(sim.server.received.len(), 50);
}

#[test]
fn memory_hold_is_bounded_and_drops_oldest_with_a_count() {
    let mut s = Settings::defaults("o");
    s.batch_size = 100;
    let mut sim = sim(s, server_down(0.0, 1e6, DownMode::Refuse));
    sim.policy.backlog_mut().fail_appends(true);
    for k in 0..150u64 {
        sim.write(points(k * 100..k * 100 + 100));
    }
    let c = sim.policy.counters();
    assert_eq!(sim.policy.held_points(), 10_000, "hold not bounded");
    assert_eq!((c.drops.storage, c.dropped), (5_000, 5_000));
    assert_eq!(
        sim.policy.stats().pending + c.dropped,
        15_000,
        "points unaccounted for"
    );
    assert!(sim
        .messages()
        .iter()
        .any(|m| m.contains("memory hold full (10000 points): dropped")));
}

#[test]
fn held_points_are_sent_directly_while_the_backlog_stays_unwritable() {
    let mut s = Settings::defaults("o");
    s.batch_size = 10;
    let mut server = SimServer::new();
    server.script.push_back((503, String::new()));
    let mut sim = sim(s, server);
    sim.run_until(secs(1.0));
    sim.policy.backlog_mut().fail_appends(true);
    sim.write(points(0..10)); // sent, answered 503: cannot go to the backlog
    sim.run_until(secs(1.1));
    assert_eq!(sim.policy.held_points(), 10);
    sim.run_until(secs(60.0));
    assert_eq!(sim.server.received.len(), 10, "held points not delivered");
    assert_eq!(sim.policy.stats().pending, 0);
}

#[test]
fn byte_limit_drops_oldest_and_counts_by_reason() {
    let mut s = Settings::defaults("o");
    s.batch_size = 100;
    s.max_backlog_size = 1_000_000;
    let mut sim = sim(s.clone(), server_down(0.0, 1e6, DownMode::Refuse));
    sim.write(points(0..100));
    let per_batch = sim.policy.backlog().bytes();
    let mut s2 = s;
    s2.max_backlog_bytes = per_batch * 5;
    let mut sim = Sim::new(
        s2,
        MemoryBacklog::new(),
        server_down(0.0, 1e6, DownMode::Refuse),
    );
    for k in 0..20u64 {
        sim.write(points(k * 100..k * 100 + 100));
    }
    let c = sim.policy.counters();
    assert!(
        sim.policy.backlog().bytes() <= per_batch * 5,
        "over the byte limit"
    );
    assert!(c.drops.bytes >= 1400, "{:?}", c.drops);
    assert_eq!(
        (c.drops.size, c.drops.age, c.dropped),
        (0, 0, c.drops.bytes)
    );
    assert_eq!(sim.policy.backlog().len() + c.dropped, 2000);
    assert!(sim
        .messages()
        .iter()
        .any(|m| m.starts_with("Backlog over max_backlog_bytes=")));
}

#[test]
fn interval_sync_makes_appends_durable_within_the_interval() {
    use crate::config::BacklogSync;
    let mut s = Settings::defaults("o");
    s.batch_size = 10;
    s.backlog_sync = BacklogSync::IntervalMs(1000);
    let run = |crash_at: f64| {
        let mut sim = sim(s.clone(), server_down(0.0, 1e6, DownMode::Refuse));
        sim.run_until(secs(0.1));
        sim.write(points(0..10));
        sim.run_until(secs(crash_at));
        let mut backlog = sim.policy.into_backlog();
        backlog.crash();
        backlog.len()
    };
    assert_eq!(run(0.5), 0, "synced before the interval");
    assert_eq!(run(1.2), 10, "not synced within the interval");
}

#[test]
fn batch_sync_makes_every_stored_batch_durable_at_once() {
    let mut s = Settings::defaults("o");
    s.batch_size = 10;
    let mut sim = sim(s, server_down(0.0, 1e6, DownMode::Refuse));
    sim.write(points(0..25));
    let mut backlog = sim.policy.into_backlog();
    backlog.crash();
    assert_eq!(
        backlog.len(),
        20,
        "the two full batches must survive a crash"
    );
}

#[test]
fn a_successor_carries_on_the_backoff_schedule_and_the_points() {
    let mut s = Settings::defaults("o");
    s.batch_size = 10;
    let mut sim = sim(s.clone(), server_down(0.0, 30.0, DownMode::Refuse));
    sim.write(points(0..25));
    sim.run_until(secs(7.0));
    // Swap: the old instance's carry, a new policy over the same backlog.
    let carried = sim.policy.carry(sim.now).to_owned();
    assert_eq!(carried.points.len(), 5, "the batch being filled");
    let (now, wall) = (sim.now, sim.wall());
    let old = std::mem::replace(
        &mut sim.policy,
        crate::policy::Policy::new(s.clone(), MemoryBacklog::new(), now, wall),
    );
    let mut next = crate::policy::Policy::new(s, old.into_backlog(), now, wall);
    next.resume(carried, now, wall);
    sim.policy = next;
    sim.write(points(25..28)); // a partial batch, in memory
    sim.run_until(secs(120.0));
    // The schedule goes on as if nothing happened: 5 s, 15 s, 35 s.
    assert_eq!(
        attempt_times(&sim),
        vec![(5.0, false), (15.0, false), (35.0, true)]
    );
    assert_eq!(sim.server.received.len(), 28);
    let c = sim.policy.counters();
    assert_eq!((c.accepted, c.delivered), (28, 28));
}

/// Write `n` points in chunks the way the host does with a source that
/// can wait: never more than the policy's `room`, running the clock
/// while it has none. Returns the largest number of requests seen out.
fn feed_within_room(sim: &mut Sim<MemoryBacklog>, n: u64) -> usize {
    let mut next = 0;
    let mut most_out = 0;
    while next < n {
        let room = sim.policy.room();
        if room == 0 {
            let t = sim
                .next_event()
                .expect("a policy with no room has a wake-up");
            sim.now = sim.now.max(t);
            sim.turn();
        } else {
            let k = room.min(n - next).min(1000);
            sim.write(points(next..next + k));
            next += k;
        }
        most_out = most_out.max(sim.in_flight());
    }
    sim.run_until(sim.now + secs(60.0));
    most_out
}

#[test]
fn a_source_within_room_never_fills_the_backlog_of_a_slow_server() {
    let mut s = Settings::defaults("o");
    s.max_backlog_size = 100;
    let mut server = SimServer::new();
    server.latency = 20_000_000; // 20 ms a request: far slower than the input
    let mut sim = sim(s, server);
    sim.run_until(secs(0.1));
    let most_out = feed_within_room(&mut sim, 50_000);
    let c = sim.policy.counters();
    assert_eq!(
        (c.accepted, c.delivered, c.dropped, c.backlogged),
        (50_000, 50_000, 0, 0),
        "accepted, delivered, dropped, backlogged"
    );
    assert_eq!(distinct(&sim), 50_000);
    assert_eq!(
        most_out,
        Settings::defaults("o").max_requests_in_flight as usize,
        "max_requests_in_flight requests out at once"
    );
}

#[test]
fn no_room_while_the_first_check_is_out_and_all_room_in_an_outage() {
    let mut sim = sim(
        Settings::defaults("o"),
        server_down(0.0, 30.0, DownMode::Hang),
    );
    sim.turn();
    assert_eq!(sim.policy.room(), 0, "first connection check under way");
    sim.run_until(secs(20.0));
    assert_eq!(
        sim.policy.room(),
        u64::MAX,
        "backing off: points go to the backlog"
    );
}

#[test]
fn one_request_at_a_time_when_so_configured() {
    let mut s = Settings::defaults("o");
    s.max_requests_in_flight = 1;
    let mut server = SimServer::new();
    server.latency = 20_000_000;
    let mut sim = sim(s, server);
    sim.run_until(secs(0.1));
    assert_eq!(feed_within_room(&mut sim, 5_000), 1);
    assert_eq!(sim.policy.counters().delivered, 5_000);
}

#[test]
fn a_failure_with_two_out_keeps_every_point_in_order() {
    // The server goes away while two memory batches are out: both come
    // back to the backlog, older first, and are delivered once it returns.
    let mut server = server_down(1.0, 8.0, DownMode::Refuse);
    server.latency = 50_000_000;
    let mut sim = sim(Settings::defaults("o"), server);
    sim.run_until(secs(0.9));
    sim.write(points(0..1_000));
    sim.run_until(secs(60.0));
    let c = sim.policy.counters();
    assert_eq!((c.delivered, c.dropped), (1_000, 0));
    assert_eq!(distinct(&sim), 1_000);
}

/// Distinct points the simulated server received.
fn distinct(sim: &Sim<MemoryBacklog>) -> usize {
    let mut seen: Vec<&String> = sim.server.received.iter().collect();
    seen.sort();
    seen.dedup();
    seen.len()
}
