//! The relay: the listener's writes routed to the sinks of the outputs
//! that write to the database the client named, answered only once every
//! one of them has the points on disk.
//!
//! Each sink task takes [`DurableJob`]s from its own queue between its
//! turns, gathers all that wait (up to [`Routes::group_bytes`]) and hands
//! them to its instance in one `write-durable` call: one backlog record and
//! one fsync for the group (a group commit), then one answer per job.
//!
//! Routing: an output writes to one database (v1: `database` and
//! `retention_policy`; v2: `bucket`, else `database`). A v1 write goes to
//! the outputs with its `db` (and its `rp`, when it names one); a v2 write
//! to those whose database is its `bucket` (a `db/rp` bucket, as InfluxDB
//! 1.8 maps them, matches a v1 output's database and retention policy).
//! A write no output takes is refused (`404`), never written elsewhere.

use tokio::sync::{mpsc, oneshot};

use crate::bindings::{DurableRefusal, DurableWrite, Precision as WitPrecision, WriteResult};
use crate::config::OutputSpec;
use crate::listener::{Accepted, Acceptor, Precision, Rejected, Target, Write};
use crate::runtime::SinkInstance;
use influx_sink_component::endpoint::Api;

/// Jobs queued for one sink before writers wait for room.
pub const JOB_QUEUE: usize = 256;
/// Seconds a writer is told to wait when its output cannot answer now.
const RETRY_AFTER_RESTART_S: u64 = 1;
/// Seconds a writer is told to wait when an output's disk failed.
const RETRY_AFTER_STORAGE_S: u64 = 5;

/// One client write for one sink, and where its answer goes.
pub struct DurableJob {
    pub write: DurableWrite,
    pub reply: oneshot::Sender<JobAnswer>,
}

/// What one sink made of a job.
#[derive(Debug, Clone)]
pub enum JobAnswer {
    Stored(WriteResult),
    Refused(DurableRefusal),
}

/// Where one output's jobs go.
struct Route {
    name: String,
    database: String,
    retention_policy: String,
    jobs: mpsc::Sender<DurableJob>,
}

/// The listener's [`Acceptor`]: every routed output's queue.
pub struct Routes {
    routes: Vec<Route>,
    in_memory_ok: bool,
}

/// The database (and v1 retention policy) an output writes to.
pub fn output_database(output: &OutputSpec) -> (String, String) {
    let s = &output.settings;
    match s.api {
        Api::V1 => (s.database.clone(), s.retention_policy.clone()),
        Api::V2 if !s.bucket.is_empty() => (s.bucket.clone(), String::new()),
        _ => (s.database.clone(), String::new()),
    }
}

impl Routes {
    pub fn new(in_memory_ok: bool) -> Routes {
        Routes {
            routes: Vec::new(),
            in_memory_ok,
        }
    }

    /// Route writes for `output`'s database to `jobs`.
    pub fn add(&mut self, output: &OutputSpec, jobs: mpsc::Sender<DurableJob>) {
        let (database, retention_policy) = output_database(output);
        self.routes.push(Route {
            name: output.settings.name.clone(),
            database,
            retention_policy,
            jobs,
        });
    }

    /// Whether outputs without persistent storage may acknowledge from
    /// memory (`acknowledge_from_memory`).
    pub fn in_memory_ok(&self) -> bool {
        self.in_memory_ok
    }

    /// `database "x" -> [out], ...` for the log.
    pub fn describe(&self) -> String {
        if self.routes.is_empty() {
            return "no output routed".into();
        }
        let each: Vec<String> = self
            .routes
            .iter()
            .map(|r| {
                let rp = if r.retention_policy.is_empty() {
                    String::new()
                } else {
                    format!(" rp {:?}", r.retention_policy)
                };
                format!("database {:?}{rp} -> [{}]", r.database, r.name)
            })
            .collect();
        each.join(", ")
    }

    fn matching<'a>(&'a self, target: &'a Target) -> impl Iterator<Item = &'a Route> + 'a {
        self.routes.iter().filter(move |r| r.takes(target))
    }
}

impl Route {
    fn takes(&self, target: &Target) -> bool {
        match target {
            Target::V1 { db, rp } => *db == self.database && self.takes_rp(rp.as_deref()),
            Target::V2 { bucket, .. } => {
                *bucket == self.database
                    || bucket
                        .split_once('/')
                        .is_some_and(|(db, rp)| db == self.database && self.takes_rp(Some(rp)))
            }
        }
    }

    /// A named retention policy must be this output's; `autogen`, the
    /// default's usual name, matches an output that names none.
    fn takes_rp(&self, rp: Option<&str>) -> bool {
        match rp.filter(|rp| !rp.is_empty()) {
            None => true,
            Some(rp) => {
                rp == self.retention_policy || (self.retention_policy.is_empty() && rp == "autogen")
            }
        }
    }
}

fn to_wit(p: Precision) -> WitPrecision {
    match p {
        Precision::Nanoseconds => WitPrecision::Nanoseconds,
        Precision::Microseconds => WitPrecision::Microseconds,
        Precision::Milliseconds => WitPrecision::Milliseconds,
        Precision::Seconds => WitPrecision::Seconds,
        Precision::Minutes => WitPrecision::Minutes,
        Precision::Hours => WitPrecision::Hours,
    }
}

impl Acceptor for Routes {
    async fn accept(&self, write: Write) -> Accepted {
        let lines = write.lines.to_vec();
        let precision = to_wit(write.precision);
        // Queue the write for every output first, so they store it in
        // parallel; then wait for all of them.
        let mut waiting = Vec::new();
        for route in self.matching(&write.target) {
            let (reply, answer) = oneshot::channel();
            let job = DurableJob {
                write: DurableWrite {
                    lines: lines.clone(),
                    precision,
                },
                reply,
            };
            if route.jobs.send(job).await.is_err() {
                return stopping(&route.name);
            }
            waiting.push((route.name.as_str(), answer));
        }
        if waiting.is_empty() {
            return Accepted::Unroutable;
        }
        let mut first: Option<WriteResult> = None;
        let mut refusal: Option<Accepted> = None;
        for (name, answer) in waiting {
            match answer.await {
                Ok(JobAnswer::Stored(r)) => {
                    first.get_or_insert(r);
                }
                Ok(JobAnswer::Refused(r)) => {
                    refusal.get_or_insert_with(|| refused(name, r));
                }
                Err(_) => {
                    refusal.get_or_insert_with(|| stopping(name));
                }
            }
        }
        if let Some(refusal) = refusal {
            return refusal;
        }
        let result = first.expect("one answer per route");
        Accepted::Durable {
            accepted: result.accepted as usize,
            rejected: result
                .rejected
                .into_iter()
                .map(|r| Rejected {
                    line: r.index as usize,
                    reason: r.reason,
                })
                .collect(),
        }
    }
}

fn stopping(name: &str) -> Accepted {
    Accepted::Busy {
        retry_after_s: RETRY_AFTER_RESTART_S,
        why: format!("output [{name}] is restarting or stopping; nothing was stored for it"),
    }
}

fn refused(name: &str, r: DurableRefusal) -> Accepted {
    match r {
        DurableRefusal::Full(s) => Accepted::Busy {
            retry_after_s: s,
            why: format!(
                "the backlog of output [{name}] is full: its server is down, refusing, or slower than the writers; retry later"
            ),
        },
        DurableRefusal::TooLarge(why) => Accepted::TooLarge(format!("output [{name}]: {why}")),
        DurableRefusal::Storage(why) => Accepted::Busy {
            retry_after_s: RETRY_AFTER_STORAGE_S,
            why: format!("output [{name}]: {why}"),
        },
    }
}

/// `first` and the jobs waiting behind it, up to `max_bytes` of lines in
/// all (a job alone may be larger: one request is at most
/// `max_body_size`). A job that would go over is kept in `carry` for the
/// next group.
pub fn gather(
    first: DurableJob,
    rx: &mut mpsc::Receiver<DurableJob>,
    carry: &mut Option<DurableJob>,
    max_bytes: usize,
) -> Vec<DurableJob> {
    let mut bytes = first.write.lines.len();
    let mut group = vec![first];
    while let Ok(job) = rx.try_recv() {
        let len = job.write.lines.len();
        if bytes + len > max_bytes {
            *carry = Some(job);
            break;
        }
        bytes += len;
        group.push(job);
    }
    group
}

/// Hand a group to the instance and answer each job. `Err`: the call
/// failed (the instance is to be torn down); the jobs' answers are dropped,
/// which their writers take as "not stored".
pub async fn commit(
    sink: &mut SinkInstance,
    group: Vec<DurableJob>,
    in_memory_ok: bool,
) -> wasmtime::Result<u64> {
    let (writes, replies): (Vec<DurableWrite>, Vec<_>) =
        group.into_iter().map(|j| (j.write, j.reply)).unzip();
    let results = sink.write_durable(&writes, in_memory_ok).await?;
    drop(writes);
    let mut accepted = 0;
    for (reply, result) in replies.into_iter().zip(results) {
        let answer = match result {
            Ok(r) => {
                accepted += u64::from(r.accepted);
                JobAnswer::Stored(r)
            }
            Err(r) => JobAnswer::Refused(r),
        };
        // A writer that hung up still had its points stored.
        let _ = reply.send(answer);
    }
    Ok(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(database: &str, rp: &str) -> Route {
        Route {
            name: "o".into(),
            database: database.into(),
            retention_policy: rp.into(),
            jobs: mpsc::channel(1).0,
        }
    }

    fn v1(db: &str, rp: Option<&str>) -> Target {
        Target::V1 {
            db: db.into(),
            rp: rp.map(Into::into),
        }
    }

    fn v2(bucket: &str) -> Target {
        Target::V2 {
            org: None,
            bucket: bucket.into(),
        }
    }

    #[test]
    fn writes_reach_only_the_database_they_name() {
        let plain = route("solar", "");
        assert!(plain.takes(&v1("solar", None)));
        assert!(plain.takes(&v1("solar", Some(""))));
        assert!(plain.takes(&v1("solar", Some("autogen"))));
        assert!(!plain.takes(&v1("solar", Some("week"))));
        assert!(!plain.takes(&v1("Solar", None)));
        assert!(!plain.takes(&v1("solar2", None)));
        assert!(plain.takes(&v2("solar")));
        assert!(plain.takes(&v2("solar/autogen")));
        assert!(!plain.takes(&v2("solar/week")));
        assert!(!plain.takes(&v2("other/autogen")));
        let week = route("solar", "week");
        assert!(week.takes(&v1("solar", Some("week"))));
        assert!(week.takes(&v1("solar", None)));
        assert!(!week.takes(&v1("solar", Some("autogen"))));
        assert!(week.takes(&v2("solar/week")));
    }

    fn job(len: usize) -> (DurableJob, oneshot::Receiver<JobAnswer>) {
        let (reply, rx) = oneshot::channel();
        let write = DurableWrite {
            lines: vec![b'x'; len],
            precision: WitPrecision::Nanoseconds,
        };
        (DurableJob { write, reply }, rx)
    }

    #[test]
    fn a_group_stays_within_its_bytes_and_keeps_the_job_that_did_not_fit() {
        let (tx, mut rx) = mpsc::channel(8);
        let mut answers = Vec::new();
        for len in [40, 30, 50, 10] {
            let (j, a) = job(len);
            answers.push(a);
            tx.try_send(j).unwrap();
        }
        let (first, _a) = job(20);
        let mut carry = None;
        let group = gather(first, &mut rx, &mut carry, 100);
        let sizes: Vec<usize> = group.iter().map(|j| j.write.lines.len()).collect();
        assert_eq!(sizes, [20, 40, 30]);
        assert_eq!(carry.as_ref().map(|j| j.write.lines.len()), Some(50));
        // A body larger than the budget still goes, alone.
        let (big, _b) = job(500);
        let group = gather(big, &mut rx, &mut carry, 100);
        assert_eq!(group.len(), 1);
    }
}
