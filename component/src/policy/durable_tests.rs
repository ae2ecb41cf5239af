//! `Policy::write_durable` on a simulated clock: stamps, delivery with the
//! server up and through an outage, durability after a crash (memory and
//! file backlogs), refusals when full or when storage fails, and mixing
//! with the memory path.

use tempfile::TempDir;

use super::{Level, Refusal};
use crate::backlog::file::{FileBacklog, SyncMode, MAX_RECORD_OVERHEAD};
use crate::backlog::memory::MemoryBacklog;
use crate::backlog::Backlog;
use crate::config::{BacklogSync, Settings};
use crate::endpoint::Precision;
use crate::point::Point;
use crate::sim::{secs, DownMode, Sim, SimServer};
use crate::stamp::UNSTAMPED;

fn point(i: u64) -> Point {
    Point {
        line: format!("m,host=a seq={i}i"),
        series_len: 8,
        timestamp: 1_000 + i as i64,
    }
}

fn points(range: std::ops::Range<u64>) -> Vec<Point> {
    range.map(point).collect()
}

fn server_down(from: f64, to: f64) -> SimServer {
    let mut s = SimServer::new();
    s.down.push((secs(from), secs(to)));
    s.mode = DownMode::Refuse;
    s
}

fn sim(settings: Settings, server: SimServer) -> Sim<MemoryBacklog> {
    Sim::new(settings, MemoryBacklog::new(), server)
}

/// The `seq` of every line the server received, in arrival order.
fn seqs<B: Backlog>(sim: &Sim<B>) -> Vec<u64> {
    sim.server
        .received
        .iter()
        .map(|l| {
            let v = l.split("seq=").nth(1).expect("a seq field");
            v[..v.find('i').expect("an integer")].parse().unwrap()
        })
        .collect()
}

fn distinct<B: Backlog>(sim: &Sim<B>) -> usize {
    let mut seen: Vec<&String> = sim.server.received.iter().collect();
    seen.sort();
    seen.dedup();
    seen.len()
}

/// Log lines above debug level that start with `prefix`.
fn count(sim: &Sim<impl Backlog>, prefix: &str) -> usize {
    sim.logs
        .iter()
        .filter(|(_, l)| l.level != Level::Debug && l.message.starts_with(prefix))
        .count()
}

#[test]
fn unstamped_points_of_one_series_get_distinct_stamps_and_arrive_once() {
    let mut s = Settings::defaults("o");
    s.precision = Precision::Ms;
    let unstamped = || Point {
        line: "m,host=a v=1i".into(),
        series_len: 8,
        timestamp: UNSTAMPED,
    };
    let mut sim = sim(s.clone(), SimServer::new());
    sim.run_until(secs(1.0));
    assert_eq!(sim.policy.stats().state, "connected");
    let (now, wall) = (sim.now, sim.wall());
    assert_eq!(
        sim.policy.write_durable(vec![unstamped(); 50], now, wall),
        Ok(50)
    );
    // Stored (and synced) before it returned.
    assert_eq!(sim.policy.backlog().len(), 50);
    sim.turn();
    // Sent at once from the backlog, answered after the server's 1 ms.
    sim.run_until(secs(1.0) + 2_000_000);
    assert_eq!(sim.server.received.len(), 50);
    assert_eq!(distinct(&sim), 50, "{:?}", sim.server.received);
    let stamps: Vec<i64> = sim
        .server
        .received
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    let first = (sim.wall0 + secs(1.0) as i64) / 1_000_000;
    assert_eq!(stamps, (first..first + 50).collect::<Vec<_>>());
    // The same stamps as `write` gives the same points at the same time.
    let mut twin = Sim::new(s, MemoryBacklog::new(), SimServer::new());
    twin.run_until(secs(1.0));
    twin.write(vec![unstamped(); 50]);
    let wall = twin.wall();
    twin.policy.flush(twin.now, wall);
    twin.run_until(secs(2.0));
    assert_eq!(twin.server.received, sim.server.received);
    let st = sim.policy.stats();
    assert_eq!(
        (st.counters.accepted, st.counters.delivered, st.pending),
        (50, 50, 0)
    );
    assert_eq!((st.backlog_points, st.state), (0, "connected"));
    // Routine: no "Flushing ... backlog points" per durable write (the
    // end of the flush is logged at debug level).
    assert_eq!(count(&sim, "Flushing"), 0, "{:?}", sim.messages());
    assert_eq!(count(&sim, "Successfully wrote"), 0, "{:?}", sim.messages());
}

#[test]
fn durable_writes_are_kept_through_an_outage_and_delivered_after_it() {
    let mut s = Settings::defaults("o");
    s.batch_size = 50;
    let mut sim = sim(s, server_down(0.0, 30.0));
    for k in 0..10u64 {
        sim.run_until(secs(1.0 + k as f64));
        assert_eq!(sim.write_durable(points(k * 20..k * 20 + 20)), Ok(20));
    }
    let st = sim.policy.stats();
    assert_eq!((st.backlog_points, st.pending), (200, 200));
    assert_eq!((st.counters.accepted, st.counters.delivered), (200, 0));
    assert!(sim.server.received.is_empty());
    sim.run_until(secs(200.0));
    assert_eq!(seqs(&sim), (0..200).collect::<Vec<_>>(), "not oldest first");
    let st = sim.policy.stats();
    assert_eq!((st.backlog_points, st.pending), (0, 0));
    let c = &st.counters;
    assert_eq!(
        (c.accepted, c.delivered, c.backlogged, c.dropped),
        (200, 200, 200, 0)
    );
    // A recovery flush is news, as for any backlog.
    assert_eq!(
        count(&sim, "Flushing 200 backlog points"),
        1,
        "{:?}",
        sim.messages()
    );
    assert_eq!(count(&sim, "Successfully wrote 200 backlog points"), 1);
}

#[test]
fn acknowledged_points_survive_a_power_cut_whatever_backlog_sync_says() {
    for sync in [
        BacklogSync::Never,
        BacklogSync::IntervalMs(60_000),
        BacklogSync::Batch,
    ] {
        let mut s = Settings::defaults("o");
        s.backlog_sync = sync;
        let mut sim = sim(s.clone(), server_down(0.0, 1e6));
        sim.run_until(secs(1.0));
        assert_eq!(sim.write_durable(points(0..30)), Ok(30));
        assert_eq!(sim.write_durable(points(30..40)), Ok(10));
        let mut backlog = sim.policy.into_backlog();
        backlog.crash();
        assert_eq!(backlog.len(), 40, "{sync}");
        assert_eq!(backlog.peek(100).unwrap(), points(0..40), "{sync}");
    }
    // The same points through `write` are not synced yet under `never`: the
    // check above can fail.
    let mut s = Settings::defaults("o");
    s.backlog_sync = BacklogSync::Never;
    let mut sim = sim(s, server_down(0.0, 1e6));
    sim.run_until(secs(1.0));
    sim.write(points(0..30));
    let wall = sim.wall();
    sim.policy.flush(sim.now, wall);
    let mut backlog = sim.policy.into_backlog();
    assert_eq!(backlog.len(), 30);
    backlog.crash();
    assert_eq!(backlog.len(), 0);
}

#[test]
fn acknowledged_points_are_in_the_file_backlog_when_it_is_reopened() {
    for mode in [SyncMode::Never, SyncMode::Batch, SyncMode::Always] {
        let dir = TempDir::new().unwrap();
        let (backlog, _) = FileBacklog::open(dir.path(), mode).unwrap();
        let mut s = Settings::defaults("o");
        s.batch_size = 25;
        let mut sim = Sim::new(s.clone(), backlog, server_down(0.0, 1e6));
        sim.policy.backlog_mut().set_segment_bytes(64 * 1024);
        let mut acked = Vec::new();
        for k in 0..8u64 {
            sim.run_until(secs(1.0 + k as f64));
            let batch = points(k * 300..k * 300 + 300);
            assert_eq!(sim.write_durable(batch.clone()), Ok(300));
            acked.extend(batch);
        }
        // The process ends without a shutdown: only what is on disk counts.
        drop(sim.policy.into_backlog());
        let (mut reopened, report) = FileBacklog::open(dir.path(), mode).unwrap();
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert_eq!((report.points, report.lost_points), (2400, 0));
        assert_eq!(reopened.peek(10_000).unwrap(), acked, "{mode:?}");
        // A new run delivers every one of them, once.
        let mut sim = Sim::new(s, reopened, SimServer::new());
        sim.run_until(secs(60.0));
        assert_eq!(seqs(&sim), (0..2400).collect::<Vec<_>>(), "{mode:?}");
        assert!(sim.policy.backlog().is_empty());
        assert_eq!(sim.policy.counters().delivered, 2400);
    }
}

#[test]
fn a_full_backlog_refuses_without_storing_or_dropping_then_takes_it_after_delivery() {
    let mut s = Settings::defaults("o");
    s.max_backlog_size = 100;
    s.batch_size = 50;
    let mut sim = sim(s, server_down(0.0, 30.0));
    sim.run_until(secs(1.0));
    assert_eq!(sim.write_durable(points(0..60)), Ok(60));
    assert_eq!(sim.policy.durable_room().0, 40);
    // Backing off until the attempt at 5 s: retry after 4 s.
    assert_eq!(
        sim.write_durable(points(60..110)),
        Err(Refusal::Full { retry_after_s: 4 })
    );
    sim.run_until(secs(2.0));
    assert_eq!(
        sim.write_durable(points(60..110)),
        Err(Refusal::Full { retry_after_s: 3 })
    );
    assert!(matches!(
        sim.write_durable(points(200..301)),
        Err(Refusal::TooLarge(r)) if r.contains("at most 100 (max_backlog_size)")
    ));
    let st = sim.policy.stats();
    assert_eq!(
        (st.backlog_points, st.counters.accepted, st.counters.dropped),
        (60, 60, 0)
    );
    assert_eq!(st.counters.backlogged, 60);
    assert_eq!(sim.policy.backlog_mut().peek(1000).unwrap(), points(0..60));
    assert_eq!(
        count(&sim, "Refusing a durable write: the backlog is full"),
        1,
        "logged once for a run of refusals: {:?}",
        sim.messages()
    );
    sim.run_until(secs(40.0)); // back at 30, reconnected at 35
    assert!(sim.policy.backlog().is_empty());
    assert_eq!(sim.write_durable(points(60..110)), Ok(50));
    assert_eq!(count(&sim, "Durable writes are stored again (3 refused"), 1);
    sim.run_until(secs(41.0));
    assert_eq!(seqs(&sim), (0..110).collect::<Vec<_>>());
    let c = sim.policy.counters();
    assert_eq!((c.accepted, c.delivered, c.dropped), (110, 110, 0));
}

#[test]
fn the_byte_limit_refuses_too_and_durable_room_says_so_first() {
    let batch = points(0..50);
    let mut probe = MemoryBacklog::new();
    probe.append(&batch, 0).unwrap();
    let b = probe.bytes();
    let mut s = Settings::defaults("o");
    s.max_backlog_bytes = 2 * b + MAX_RECORD_OVERHEAD - 1;
    let mut sim = sim(s, server_down(0.0, 1e6));
    sim.run_until(secs(1.0));
    assert_eq!(sim.policy.durable_room(), (10_000, 2 * b - 1));
    assert_eq!(sim.write_durable(batch.clone()), Ok(50));
    // Not room for another `b` bytes: a listener can refuse before reading.
    assert_eq!(sim.policy.durable_room(), (9_950, b - 1));
    assert!(matches!(
        sim.write_durable(batch.clone()),
        Err(Refusal::Full { .. })
    ));
    let big = points(0..200);
    assert!(matches!(
        sim.write_durable(big),
        Err(Refusal::TooLarge(r)) if r.contains("max_backlog_bytes")
    ));
    let c = sim.policy.counters();
    assert_eq!((c.accepted, c.dropped), (50, 0));
    assert_eq!(sim.policy.backlog().len(), 50);
}

#[test]
fn a_failing_append_is_refused_and_counts_nothing_until_it_heals() {
    let mut sim = sim(Settings::defaults("o"), server_down(0.0, 30.0));
    sim.run_until(secs(1.0));
    sim.policy.backlog_mut().fail_appends(true);
    for _ in 0..3 {
        match sim.write_durable(points(0..10)) {
            Err(Refusal::Storage(r)) => assert!(
                r.starts_with("could not store the points in the backlog")
                    && r.contains("No space left on device"),
                "{r}"
            ),
            other => panic!("{other:?}"),
        }
    }
    let st = sim.policy.stats();
    let c = &st.counters;
    assert_eq!((c.accepted, c.backlogged, c.dropped), (0, 0, 0));
    assert_eq!((st.backlog_points, st.pending), (0, 0));
    assert_eq!(sim.policy.held_points(), 0, "nothing held in memory");
    assert_eq!(count(&sim, "Refusing a durable write: could not store"), 1);
    sim.policy.backlog_mut().fail_appends(false);
    assert_eq!(sim.write_durable(points(10..20)), Ok(10));
    assert_eq!(sim.policy.counters().accepted, 10);
    sim.run_until(secs(100.0));
    assert_eq!(seqs(&sim), (10..20).collect::<Vec<_>>());
    let c = sim.policy.counters();
    assert_eq!((c.accepted, c.delivered), (10, 10));
}

#[test]
fn a_failing_sync_is_refused_but_the_stored_points_are_counted_and_delivered() {
    let mut sim = sim(Settings::defaults("o"), server_down(0.0, 30.0));
    sim.run_until(secs(1.0));
    sim.policy.backlog_mut().fail_syncs(true);
    match sim.write_durable(points(0..10)) {
        Err(Refusal::Storage(r)) => assert!(
            r.starts_with("stored 10 points in the backlog but could not sync it"),
            "{r}"
        ),
        other => panic!("{other:?}"),
    }
    let st = sim.policy.stats();
    assert_eq!(
        (st.counters.accepted, st.backlog_points, st.pending),
        (10, 10, 10)
    );
    sim.policy.backlog_mut().fail_syncs(false);
    assert_eq!(sim.write_durable(points(10..20)), Ok(10));
    // That sync made the earlier record durable too.
    sim.run_until(secs(100.0));
    assert_eq!(seqs(&sim), (0..20).collect::<Vec<_>>());
    let c = sim.policy.counters();
    assert_eq!((c.accepted, c.delivered, c.dropped), (20, 20, 0));
}

#[test]
fn without_persistent_storage_nothing_is_acknowledged_as_durable() {
    let mut s = Settings::defaults("o");
    s.enable_persistent_storage = false;
    let mut sim = sim(s, SimServer::new());
    sim.run_until(secs(1.0));
    assert_eq!(sim.policy.durable_room(), (0, 0));
    assert!(matches!(
        sim.write_durable(points(0..10)),
        Err(Refusal::Storage(r)) if r.contains("enable_persistent_storage = false")
    ));
    assert_eq!(sim.policy.counters().accepted, 0);
    assert!(sim.policy.backlog().is_empty());
}

#[test]
fn write_and_write_durable_mixed_deliver_everything_once() {
    let mut s = Settings::defaults("o");
    s.batch_size = 10;
    s.batch_timeout = 0.5;
    let mut sim = sim(s, server_down(5.0, 20.0));
    let mut next = 0u64;
    for k in 0..40u64 {
        sim.run_until(secs(0.5 * k as f64 + 0.2));
        let n = [10, 7, 3, 12][(k % 4) as usize];
        let batch = points(next..next + n);
        next += n;
        if k % 2 == 0 {
            sim.write(batch);
        } else {
            assert_eq!(sim.write_durable(batch), Ok(n));
        }
    }
    sim.run_until(secs(300.0));
    let total = next;
    let mut got = seqs(&sim);
    assert_eq!(got.len() as u64, total, "lost or duplicated");
    got.sort();
    assert_eq!(got, (0..total).collect::<Vec<_>>());
    let st = sim.policy.stats();
    let c = &st.counters;
    assert_eq!((c.accepted, c.delivered, c.dropped), (total, total, 0));
    assert_eq!((st.backlog_points, st.pending), (0, 0));
    assert_eq!(sim.policy.held_points(), 0);
}

#[test]
fn a_durable_write_that_meets_an_outage_is_announced_when_flushed() {
    let mut server = SimServer::new();
    server.script.push_back((503, String::new()));
    let mut sim = sim(Settings::defaults("o"), server);
    sim.run_until(secs(1.0));
    assert_eq!(sim.write_durable(points(0..10)), Ok(10));
    sim.run_until(secs(1.1)); // answered 503: backing off
    assert!(sim.server.received.is_empty());
    assert_eq!(sim.policy.stats().state, "backing-off");
    sim.run_until(secs(60.0));
    assert_eq!(seqs(&sim), (0..10).collect::<Vec<_>>());
    assert_eq!(
        count(&sim, "Flushing 10 backlog points"),
        1,
        "{:?}",
        sim.messages()
    );
    assert_eq!(count(&sim, "Successfully wrote 10 backlog points"), 1);
}

#[test]
fn a_group_commit_takes_each_write_whole_or_refuses_it_whole_in_order() {
    let mut s = Settings::defaults("o");
    s.max_backlog_size = 100;
    let mut sim = sim(s, server_down(0.0, 1e6));
    sim.run_until(secs(1.0));
    let got = sim.write_durable_group(vec![
        points(0..30),
        Vec::new(),
        points(30..110), // 80 more do not fit after 30
        points(110..150),
        points(150..251), // more than the backlog ever holds
        points(250..290), // 40 more do not fit after 70
    ]);
    assert_eq!(got.len(), 6);
    assert_eq!(got[0], Ok(30));
    assert_eq!(got[1], Ok(0));
    assert!(matches!(got[2], Err(Refusal::Full { .. })), "{:?}", got[2]);
    assert_eq!(got[3], Ok(40));
    assert!(matches!(&got[4], Err(Refusal::TooLarge(_))), "{:?}", got[4]);
    assert!(matches!(got[5], Err(Refusal::Full { .. })), "{:?}", got[5]);
    let mut expected = points(0..30);
    expected.extend(points(110..150));
    let c = sim.policy.counters();
    assert_eq!((c.accepted, c.dropped), (70, 0));
    // What was taken is one durable record: it survives a power cut, in
    // the order of the writes.
    let mut backlog = sim.policy.into_backlog();
    backlog.crash();
    assert_eq!(backlog.peek(1000).unwrap(), expected);
}

#[test]
fn a_group_whose_sync_fails_refuses_every_write_in_it() {
    let mut sim = sim(Settings::defaults("o"), server_down(0.0, 1e6));
    sim.run_until(secs(1.0));
    sim.policy.backlog_mut().fail_syncs(true);
    let got = sim.write_durable_group(vec![points(0..10), points(10..15)]);
    assert!(
        got.iter()
            .all(|r| matches!(r, Err(Refusal::Storage(m)) if m.contains("could not sync"))),
        "{got:?}"
    );
    // Stored though not synced: counted and delivered, as for one write.
    assert_eq!(sim.policy.counters().accepted, 15);
}
