//! How many new workers a set of pending pods needs: first-fit-decreasing bin-packing of their
//! requests onto the worker template's allocatable (CPU, memory, pod slots).

use bus::scheduling::PodSpec;

use crate::policy::WorkerTemplate;

/// The result of packing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Packing {
    /// New workers needed.
    pub workers: u32,
    /// Pods larger than a whole worker (`namespace/name`): no scale-up helps them.
    pub unschedulable: Vec<String>,
}

/// Workers needed for `pods`; when the watcher sent no requests, `pending_count` pods are assumed to
/// need only a pod slot each (so at least one worker when anything is pending).
pub fn workers_needed(pods: &[PodSpec], pending_count: u32, template: &WorkerTemplate) -> Packing {
    if pods.is_empty() {
        let slots = template.max_pods.max(1);
        return Packing {
            workers: pending_count.div_ceil(slots),
            unschedulable: Vec::new(),
        };
    }
    let mut sorted: Vec<&PodSpec> = pods.iter().collect();
    // Decreasing by the larger share of a worker the pod takes; name breaks ties so the result is
    // deterministic.
    let share = |p: &PodSpec| {
        let cpu = p.cpu_millis as f64 / template.cpu_millis.max(1) as f64;
        let mem = p.memory_bytes as f64 / template.memory_bytes.max(1) as f64;
        cpu.max(mem)
    };
    sorted.sort_by(|a, b| {
        share(b)
            .total_cmp(&share(a))
            .then_with(|| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)))
    });
    // Remaining (cpu, memory, pods) per opened worker.
    let mut bins: Vec<(u64, u64, u32)> = Vec::new();
    let mut unschedulable = Vec::new();
    for p in sorted {
        if p.cpu_millis > template.cpu_millis
            || p.memory_bytes > template.memory_bytes
            || template.max_pods == 0
        {
            unschedulable.push(format!("{}/{}", p.namespace, p.name));
            continue;
        }
        match bins
            .iter_mut()
            .find(|b| b.0 >= p.cpu_millis && b.1 >= p.memory_bytes && b.2 >= 1)
        {
            Some(b) => {
                b.0 -= p.cpu_millis;
                b.1 -= p.memory_bytes;
                b.2 -= 1;
            }
            None => bins.push((
                template.cpu_millis - p.cpu_millis,
                template.memory_bytes - p.memory_bytes,
                template.max_pods - 1,
            )),
        }
    }
    Packing {
        workers: u32::try_from(bins.len()).unwrap_or(u32::MAX),
        unschedulable,
    }
}
