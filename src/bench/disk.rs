//! Stalls of the disk under PostgreSQL: spans in which requests were waiting
//! on the device and none completed. A commit waits for its WAL flush, so a
//! flush the device sits on for 200 ms stalls every writer for 200 ms, and a
//! p99 measured across it shows the disk, not the service.
//!
//! Read from /proc/diskstats every few milliseconds by a thread of its own
//! (a runtime busy with the load would see stalls of its own), for the
//! device holding PostgreSQL's data directory. Passive: it adds no I/O.
//! Linux, and a server on this machine, only.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How often the device's counters are read.
const EVERY: Duration = Duration::from_millis(5);
/// Shorter waits are a flush's ordinary time on a virtual disk.
pub const STALL: Duration = Duration::from_millis(50);

/// Stalls seen so far: when each ended, and how long it was.
pub type Stalls = Arc<Mutex<Vec<(Instant, Duration)>>>;

/// Watches one device until dropped.
pub struct DiskWatch {
    pub device: String,
    pub stalls: Stalls,
    stop: Arc<AtomicBool>,
}

impl DiskWatch {
    /// Watches the device holding `data_directory`; None when it cannot be
    /// found here (a server on another machine, or no /proc).
    pub fn start(data_directory: &str) -> Option<DiskWatch> {
        let dev = std::fs::metadata(data_directory).ok()?.dev();
        let (major, minor) = (libc_major(dev), libc_minor(dev));
        let uevent =
            std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")).ok()?;
        let device = uevent
            .lines()
            .find_map(|l| l.strip_prefix("DEVNAME="))?
            .to_owned();
        read(&device)?;
        let stalls = Stalls::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (name, log, halt) = (device.clone(), stalls.clone(), stop.clone());
        std::thread::Builder::new()
            .name("disk-watch".into())
            .spawn(move || {
                let mut detector = Detector::default();
                while !halt.load(Ordering::Relaxed) {
                    std::thread::sleep(EVERY);
                    let Some(c) = read(&name) else { return };
                    if let Some(stall) = detector.observe(c, Instant::now()) {
                        if stall >= STALL {
                            lock(&log).push((Instant::now(), stall));
                        }
                    }
                }
            })
            .ok()?;
        Some(DiskWatch {
            device,
            stalls,
            stop,
        })
    }
}

impl Drop for DiskWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The stalls that ended in `(from, to]`, longest first.
pub fn between(stalls: &Stalls, from: Instant, to: Instant) -> Vec<Duration> {
    let mut v: Vec<Duration> = lock(stalls)
        .iter()
        .filter(|(end, _)| *end > from && *end <= to)
        .map(|(_, d)| *d)
        .collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v
}

/// A device's counters: requests completed (of every kind), and requests
/// in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counters {
    completed: u64,
    in_flight: u64,
}

fn read(device: &str) -> Option<Counters> {
    let text = std::fs::read_to_string("/proc/diskstats").ok()?;
    text.lines().find_map(|l| parse(l, device))
}

/// One line of /proc/diskstats, if it is `device`'s: reads, writes,
/// discards and flushes completed (fields 4, 8, 15 and 19; the last two on
/// newer kernels), and I/Os in flight (field 12).
fn parse(line: &str, device: &str) -> Option<Counters> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.get(2) != Some(&device) {
        return None;
    }
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    Some(Counters {
        completed: n(3)? + n(7)? + n(14).unwrap_or(0) + n(18).unwrap_or(0),
        in_flight: n(11)?,
    })
}

/// Turns successive readings into stalls: from the first reading with
/// requests waiting and nothing completed since the one before, until the
/// next reading in which something completed or nothing waits.
#[derive(Default)]
struct Detector {
    last: Option<Counters>,
    since: Option<Instant>,
}

impl Detector {
    /// A reading at `at`; the length of a stall that it ends.
    fn observe(&mut self, c: Counters, at: Instant) -> Option<Duration> {
        let stuck = self
            .last
            .is_some_and(|l| l.completed == c.completed && c.in_flight > 0);
        self.last = Some(c);
        match (stuck, self.since) {
            (true, None) => {
                self.since = Some(at);
                None
            }
            (true, Some(_)) => None,
            (false, since) => {
                self.since = None;
                since.map(|s| at.saturating_duration_since(s))
            }
        }
    }
}

// The split of a `dev_t` as glibc encodes it (major 12 bits, minor 20).
fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_device_line() {
        let line = " 254       0 vda 101902 9543 8637066 284731 5186030 48821 142134576 \
                    1204011 3 357608 1602197 26451 31 21462224 5154 2254497 108299";
        assert_eq!(
            parse(line, "vda"),
            Some(Counters {
                completed: 101_902 + 5_186_030 + 26_451 + 2_254_497,
                in_flight: 3
            })
        );
        assert_eq!(parse(line, "vdb"), None);
        // An older kernel: no discards or flushes.
        let old = "   8       0 sda 10 0 80 5 20 0 160 9 1 12 14";
        assert_eq!(
            parse(old, "sda"),
            Some(Counters {
                completed: 30,
                in_flight: 1
            })
        );
    }

    #[test]
    fn a_stall_runs_while_requests_wait_and_none_completes() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let c = |completed, in_flight| Counters {
            completed,
            in_flight,
        };
        let mut d = Detector::default();
        assert_eq!(d.observe(c(10, 1), at(0)), None);
        // Waiting, nothing done: the stall starts at the first such reading.
        assert_eq!(d.observe(c(10, 1), at(5)), None);
        assert_eq!(d.observe(c(10, 2), at(10)), None);
        assert_eq!(d.observe(c(10, 2), at(205)), None);
        // Something completed: it ends.
        assert_eq!(
            d.observe(c(12, 1), at(210)),
            Some(Duration::from_millis(205))
        );
        // Idle is not a stall: nothing waits.
        assert_eq!(d.observe(c(12, 0), at(215)), None);
        assert_eq!(d.observe(c(12, 0), at(300)), None);
        // Steady progress is not either.
        assert_eq!(d.observe(c(13, 1), at(305)), None);
        assert_eq!(d.observe(c(14, 1), at(310)), None);
    }

    #[test]
    fn device_numbers_split_as_glibc_does() {
        // makedev(254, 0) and makedev(8, 17).
        assert_eq!((libc_major(0xfe00), libc_minor(0xfe00)), (254, 0));
        assert_eq!((libc_major(0x811), libc_minor(0x811)), (8, 17));
    }
}
