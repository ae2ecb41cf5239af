//! Building influx-sink INI configs and line-protocol input for tests.

/// An `influxdb_out` output section `[name]` pointing at `127.0.0.1:port`
/// (never `localhost`), database `database`, plus `extra` keys verbatim.
pub fn output_section(name: &str, port: u16, database: &str, extra: &[(&str, &str)]) -> String {
    let mut s = format!(
        "[{name}]\ntransport = influxdb_out\nhost = 127.0.0.1\nport = {port}\ndatabase = {database}\n"
    );
    for (k, v) in extra {
        s.push_str(&format!("{k} = {v}\n"));
    }
    s.push('\n');
    s
}

/// The `[generator]` source section: `count` points at `rate` points/s
/// (0 = as fast as possible), plus `extra` keys (fields, series,
/// measurement) verbatim.
pub fn generator_section(count: u64, rate: u64, extra: &[(&str, &str)]) -> String {
    let mut s = format!("[generator]\ntransport = generator\ncount = {count}\nrate = {rate}\n");
    for (k, v) in extra {
        s.push_str(&format!("{k} = {v}\n"));
    }
    s.push('\n');
    s
}

/// Wall-clock now in nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as i64
}

/// One valid line-protocol point: `measurement,device=dev<seq % 10>
/// seq=<seq>i,f1=<seq>.5 <ts>`.
pub fn point_line(measurement: &str, seq: u64, ts_ns: i64) -> String {
    format!(
        "{measurement},device=dev{} seq={seq}i,f1={seq}.5 {ts_ns}\n",
        seq % 10
    )
}

/// `n` points [`point_line`] with `seq` 0..n and explicit, unique
/// timestamps `base_ts_ns + seq * 1000` (microsecond apart).
pub fn points(measurement: &str, n: u64, base_ts_ns: i64) -> String {
    (0..n)
        .map(|seq| point_line(measurement, seq, base_ts_ns + seq as i64 * 1000))
        .collect()
}
