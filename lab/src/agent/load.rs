//! Real load: busy threads duty-cycled to a CPU target in millicores, and a touched allocation held at
//! a memory target, so Docker stats of a worker container see what its pods declare.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One duty cycle of a burner thread.
const PERIOD: Duration = Duration::from_millis(100);
/// The page size touched to make memory resident.
const PAGE: usize = 4096;

/// How often the duty cycle is corrected against the CPU the process really got.
const CORRECTION_PERIOD: Duration = Duration::from_secs(2);

struct Burner {
    /// This thread's share, in millicores (at most 1000).
    millis: Arc<AtomicU64>,
    /// Set to stop the thread.
    stop: Arc<AtomicBool>,
    handle: JoinHandle<()>,
}

/// Burns CPU and holds memory at the targets last set.
#[derive(Default)]
pub struct LoadGenerator {
    burners: Vec<Burner>,
    /// The duty-cycle correction (f64 bits; 1.0 = none), shared with the burners and the corrector.
    gain: Arc<AtomicU64>,
    /// The thread measuring the process's CPU and adjusting `gain`, while any burner runs.
    corrector: Option<Burner>,
    /// The memory held.
    memory: Vec<u8>,
    /// The last targets, to skip no-op updates.
    target: (u64, u64),
}

impl LoadGenerator {
    /// A generator using nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current targets: (CPU millicores, memory bytes).
    pub fn target(&self) -> (u64, u64) {
        self.target
    }

    /// Moves to `cpu_millis` of CPU and `memory_bytes` of resident memory.
    pub fn set_target(&mut self, cpu_millis: u64, memory_bytes: u64) {
        if self.target == (cpu_millis, memory_bytes) {
            return;
        }
        self.target = (cpu_millis, memory_bytes);
        let threads = cpu_millis.div_ceil(1000) as usize;
        if self.gain.load(Ordering::Relaxed) == 0 {
            self.gain.store(1.0f64.to_bits(), Ordering::Relaxed);
        }
        while self.burners.len() > threads {
            if let Some(b) = self.burners.pop() {
                b.stop.store(true, Ordering::Relaxed);
                let _ = b.handle.join();
            }
        }
        while self.burners.len() < threads {
            let millis = Arc::new(AtomicU64::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let (m, s, g) = (millis.clone(), stop.clone(), self.gain.clone());
            let handle = std::thread::spawn(move || burn(&m, &s, &g));
            self.burners.push(Burner {
                millis,
                stop,
                handle,
            });
        }
        let mut left = cpu_millis;
        for b in &self.burners {
            let share = left.min(1000);
            b.millis.store(share, Ordering::Relaxed);
            left -= share;
        }
        match (&self.corrector, cpu_millis) {
            (Some(c), 0) => {
                c.stop.store(true, Ordering::Relaxed);
                self.corrector = None;
            }
            (Some(c), t) => c.millis.store(t, Ordering::Relaxed),
            (None, 0) => {}
            (None, t) => {
                let millis = Arc::new(AtomicU64::new(t));
                let stop = Arc::new(AtomicBool::new(false));
                let (m, s, g) = (millis.clone(), stop.clone(), self.gain.clone());
                let handle = std::thread::spawn(move || correct(&m, &s, &g));
                self.corrector = Some(Burner {
                    millis,
                    stop,
                    handle,
                });
            }
        }
        let want = usize::try_from(memory_bytes).unwrap_or(usize::MAX);
        if want < self.memory.len() {
            self.memory.truncate(want);
            self.memory.shrink_to_fit();
        } else if want > self.memory.len() {
            let from = self.memory.len();
            self.memory.resize(want, 0);
            // Zeroed pages from the allocator are not resident until written.
            let mut i = from;
            while i < want {
                self.memory[i] = 1;
                i += PAGE;
            }
        }
    }

    /// Stops every burner and frees the memory.
    pub fn stop(&mut self) {
        self.set_target(0, 0);
    }
}

impl Drop for LoadGenerator {
    fn drop(&mut self) {
        for b in self.burners.iter().chain(self.corrector.iter()) {
            b.stop.store(true, Ordering::Relaxed);
        }
    }
}

fn burn(millis: &AtomicU64, stop: &AtomicBool, gain: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        let share = millis.load(Ordering::Relaxed).min(1000) as f64 / 1000.0;
        let busy =
            PERIOD.mul_f64((share * f64::from_bits(gain.load(Ordering::Relaxed))).clamp(0.0, 1.0));
        let start = Instant::now();
        let mut x: u64 = 0;
        while start.elapsed() < busy {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        std::thread::sleep(PERIOD.saturating_sub(start.elapsed()));
    }
}

/// The CPU time this process has used (user + system), from `/proc/self/stat`; None off Linux.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux the lab runs on.
    Some(Duration::from_millis(ticks * 10))
}

/// Wall-clock duty cycles fall short when the host is busy (a descheduled burner still counts its
/// busy window as spent). Every couple of seconds, compare the CPU the process got with the target and
/// scale the duty cycle, within bounds.
fn correct(target: &AtomicU64, stop: &AtomicBool, gain: &AtomicU64) {
    let Some(mut last_cpu) = process_cpu() else {
        return;
    };
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if last.elapsed() < CORRECTION_PERIOD {
            continue;
        }
        let Some(cpu) = process_cpu() else { return };
        let got = (cpu - last_cpu).as_secs_f64() * 1000.0 / last.elapsed().as_secs_f64();
        let want = target.load(Ordering::Relaxed) as f64;
        if got > 0.0 && want > 0.0 {
            let g = f64::from_bits(gain.load(Ordering::Relaxed));
            // Half a step towards the ratio: steady without oscillating.
            let next = (g * (want / got).sqrt()).clamp(0.5, 3.0);
            gain.store(next.to_bits(), Ordering::Relaxed);
        }
        last_cpu = cpu;
        last = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_start_and_stop_burners_and_hold_memory() {
        let mut load = LoadGenerator::new();
        load.set_target(1500, 1 << 20);
        assert_eq!(load.burners.len(), 2);
        assert_eq!(load.burners[0].millis.load(Ordering::Relaxed), 1000);
        assert_eq!(load.burners[1].millis.load(Ordering::Relaxed), 500);
        assert_eq!(load.memory.len(), 1 << 20);
        // Keep the test cheap: the burners ran for a moment only.
        load.set_target(20, 0);
        assert_eq!(load.burners.len(), 1);
        assert!(load.memory.is_empty());
        assert!(load.corrector.is_some());
        load.stop();
        assert!(load.burners.is_empty());
        assert!(load.corrector.is_none());
    }
}
