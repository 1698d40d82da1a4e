//! Stalls of the disk under PostgreSQL: spans in which requests were waiting
//! on the device and none completed. A commit waits for its WAL flush, so a
//! flush the device sits on for 200 ms stalls every writer for 200 ms, and a
//! p99 measured across it shows the disk, not the service.
//!
//! Read from /proc/diskstats every few milliseconds by a thread of its own
//! (a runtime busy with the load would see stalls of its own), for the
//! device holding PostgreSQL's WAL, which every commit waits on. Passive: it
//! adds no I/O. Linux, and a server on this machine, only.

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// How often the device's counters are read: a tenth of the shortest stall
/// reported, so that its length is right to within that.
const EVERY: Duration = Duration::from_millis(5);
/// Shorter waits are a flush's ordinary time on a virtual disk.
pub const STALL: Duration = Duration::from_millis(50);

/// What the watch has seen: each stall's start and end; whether it stopped
/// reading (its figures then end there, and are not shown).
#[derive(Debug, Default)]
pub struct Seen {
    stalls: Mutex<Vec<(Instant, Instant)>>,
    failed: AtomicBool,
}

pub type Stalls = Arc<Seen>;

/// Watches one device until dropped.
pub struct DiskWatch {
    pub device: String,
    pub stalls: Stalls,
    stop: Arc<AtomicBool>,
}

impl DiskWatch {
    /// Watches the device holding `data_directory`'s WAL; why not, when it
    /// cannot be read here.
    pub fn start(data_directory: &str) -> Result<DiskWatch, String> {
        // Through pg_wal: it may be a link to a disk of its own.
        let wal = format!("{data_directory}/pg_wal");
        let dev = std::fs::metadata(&wal)
            .map_err(|e| format!("{wal} cannot be read here: {e}"))?
            .dev();
        let (major, minor) = (dev_major(dev), dev_minor(dev));
        let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
            .map_err(|_| format!("{wal} is on no block device ({major}:{minor})"))?;
        let device = uevent
            .lines()
            .find_map(|l| l.strip_prefix("DEVNAME="))
            .ok_or("its block device has no name")?
            .to_owned();
        read(&device).ok_or_else(|| format!("/proc/diskstats has no line for {device}"))?;
        let seen = Stalls::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (name, log, halt) = (device.clone(), seen.clone(), stop.clone());
        std::thread::Builder::new()
            .name("disk-watch".into())
            .spawn(move || {
                let mut detector = Detector::default();
                while !halt.load(Ordering::Relaxed) {
                    std::thread::sleep(EVERY);
                    let Some(c) = read(&name) else {
                        log.failed.store(true, Ordering::Relaxed);
                        return;
                    };
                    if let Some((start, end)) = detector.observe(c, Instant::now()) {
                        if end - start >= STALL {
                            lock(&log.stalls).push((start, end));
                        }
                    }
                }
            })
            .map_err(|e| format!("no thread to watch it: {e}"))?;
        Ok(DiskWatch {
            device,
            stalls: seen,
            stop,
        })
    }
}

impl Drop for DiskWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The part of each stall that fell within `[from, to]`, longest first;
/// None when the watch stopped reading. A stall still under way when this
/// is asked is not known yet.
pub fn between(seen: &Stalls, from: Instant, to: Instant) -> Option<Vec<Duration>> {
    if seen.failed.load(Ordering::Relaxed) {
        return None;
    }
    let mut v: Vec<Duration> = lock(&seen.stalls)
        .iter()
        .map(|&(start, end)| end.min(to).saturating_duration_since(start.max(from)))
        .filter(|d| !d.is_zero())
        .collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    Some(v)
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
/// discards and flushes completed (the kernel's iostats fields 1, 5, 12 and
/// 16; the last two since Linux 4.18 and 5.5), and I/Os in flight (field 9).
/// The line starts with the device's numbers and name, so field n is at
/// index n + 2.
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

/// Turns successive readings into stalls: from the last reading before
/// requests waited with nothing completing, until the first reading in
/// which something completed or nothing waits.
#[derive(Default)]
struct Detector {
    last: Option<(Counters, Instant)>,
    since: Option<Instant>,
}

impl Detector {
    /// A reading at `at`; the start and end of a stall that it ends.
    fn observe(&mut self, c: Counters, at: Instant) -> Option<(Instant, Instant)> {
        let previous = self.last.replace((c, at));
        let stuck = previous.is_some_and(|(l, _)| l.completed == c.completed && c.in_flight > 0);
        match (stuck, self.since) {
            (true, None) => {
                self.since = previous.map(|(_, t)| t);
                None
            }
            (true, Some(_)) => None,
            (false, since) => {
                self.since = None;
                since.map(|s| (s, at))
            }
        }
    }
}

// glibc's `major()` and `minor()` of a 64-bit `dev_t`, by hand: std has
// neither, and this is the one use the crate would have for `libc`.
fn dev_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff)
}

fn dev_minor(dev: u64) -> u64 {
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
        // Waiting, nothing done: the stall runs from the last reading
        // before.
        assert_eq!(d.observe(c(10, 1), at(5)), None);
        assert_eq!(d.observe(c(10, 2), at(10)), None);
        assert_eq!(d.observe(c(10, 2), at(205)), None);
        // Something completed: it ends.
        assert_eq!(d.observe(c(12, 1), at(210)), Some((at(0), at(210))));
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
        assert_eq!((dev_major(0xfe00), dev_minor(0xfe00)), (254, 0));
        assert_eq!((dev_major(0x811), dev_minor(0x811)), (8, 17));
    }

    #[test]
    fn a_phase_counts_the_part_of_each_stall_inside_it() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let seen = Stalls::default();
        lock(&seen.stalls).extend([(at(0), at(100)), (at(150), at(400)), (at(900), at(1000))]);
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        // One straddles the start, one lies inside, one is after the end.
        assert_eq!(between(&seen, at(50), at(500)), Some(ms(&[250, 50])));
        seen.failed.store(true, Ordering::Relaxed);
        assert_eq!(between(&seen, at(50), at(500)), None);
    }
}
