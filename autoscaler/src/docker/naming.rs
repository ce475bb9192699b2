//! Worker names: `<name_prefix><n>`, the lowest free `n` (starting at 1).

/// The index `n` of `name` if it is `<prefix><n>` with a plain decimal `n`.
pub fn index_of(prefix: &str, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // "01" would make two names for index 1: only canonical numbers count.
    if rest.len() > 1 && rest.starts_with('0') {
        return None;
    }
    rest.parse().ok()
}

/// The lowest `n >= 1` such that `<prefix><n>` is not among `taken` (container names, with or without
/// Docker's leading `/`). Reusing a freed low index keeps names short and stable across scale cycles.
pub fn next_free_name<'a>(prefix: &str, taken: impl IntoIterator<Item = &'a str>) -> String {
    let mut used: Vec<u32> = taken
        .into_iter()
        .filter_map(|n| index_of(prefix, n.trim_start_matches('/')))
        .collect();
    used.sort_unstable();
    used.dedup();
    let mut n = 1;
    for u in used {
        if u == n {
            n += 1;
        } else if u > n {
            break;
        }
    }
    format!("{prefix}{n}")
}

/// The named volume holding a worker's agent state; removed with the worker.
pub fn state_volume_name(worker: &str) -> String {
    format!("{worker}-state")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_names_take_the_lowest_free_index() {
        let p = "k3s-worker-";
        assert_eq!(next_free_name(p, []), "k3s-worker-1");
        assert_eq!(
            next_free_name(p, ["/k3s-worker-1", "/k3s-worker-2"]),
            "k3s-worker-3"
        );
        assert_eq!(
            next_free_name(p, ["k3s-worker-1", "k3s-worker-3"]),
            "k3s-worker-2"
        );
        assert_eq!(next_free_name(p, ["k3s-worker-2"]), "k3s-worker-1");
    }

    #[test]
    fn docker_names_ignore_other_containers() {
        let p = "k3s-worker-";
        assert_eq!(
            next_free_name(
                p,
                [
                    "k3s-worker-1-state",
                    "k3s-worker-x",
                    "redis",
                    "k3s-worker-01"
                ]
            ),
            "k3s-worker-1"
        );
        assert_eq!(index_of(p, "k3s-worker-12"), Some(12));
        assert_eq!(index_of(p, "k3s-worker-"), None);
        assert_eq!(index_of(p, "k3s-worker-007"), None);
    }
}
