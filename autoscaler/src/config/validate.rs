//! The semantic checks of a well-formed configuration, one function per section. Each problem names its
//! dotted field; the sections are checked in file order so `config check` lists them that way.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::schema::{
    Alerts, AutoscalerConfig, BufferConfig, Enforcement, EventsConfig, Http, KubernetesSettings,
    Leader, Limits, Metrics, Pool, Scaling, ScheduleConfig, Thresholds, Workers,
    DEFAULT_DOCKER_HOST_NAME, HANDLER_NAMES, METRICS_SOURCES,
};
use super::{Problem, Settings};

impl Settings {
    /// Every semantic problem of a well-formed configuration.
    pub fn problems(&self) -> Vec<Problem> {
        let a: &AutoscalerConfig = &self.autoscaler;
        let mut out = Problems::default();
        limits(&a.limits, &mut out);
        enforcement(&a.enforcement, &mut out);
        events(&a.events, &mut out);
        thresholds(&a.thresholds, &mut out);
        scaling(&a.scaling, &mut out);
        workers(&a.workers, &mut out);
        pools(a, &mut out);
        schedules(&a.schedules, "schedules", a.limits.max_nodes, &mut out);
        buffer(
            &a.workers.buffer,
            "workers.buffer",
            a.limits.max_nodes,
            &mut out,
        );
        metrics(&a.metrics, &mut out);
        docker(a, &mut out);
        kubernetes(&a.kubernetes, &mut out);
        leader(&a.leader, &mut out);
        http(&a.http, &mut out);
        alerts(&a.alerts, &mut out);
        placement(&a.kubernetes, &mut out);
        out.0
    }
}

/// The problems found so far; fields are given relative to `autoscaler.`.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn bad(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(Problem {
            field: format!("autoscaler.{field}"),
            message: message.into(),
        });
    }
}

/// The placement observer's periods: zero would make its loop spin.
fn placement(k: &KubernetesSettings, out: &mut Problems) {
    if k.placement_interval.is_zero() {
        out.bad("kubernetes.placement_interval", "must be positive");
    }
    if k.placement_snapshot_interval < k.placement_interval {
        out.bad(
            "kubernetes.placement_snapshot_interval",
            "must be at least placement_interval",
        );
    }
}

fn limits(l: &Limits, out: &mut Problems) {
    if l.max_nodes == 0 {
        out.bad("limits.max_nodes", "must be at least 1");
    }
    if l.min_nodes > l.max_nodes {
        out.bad(
            "limits.min_nodes",
            format!(
                "min_nodes ({}) is greater than max_nodes ({})",
                l.min_nodes, l.max_nodes
            ),
        );
    }
}

fn enforcement(e: &Enforcement, out: &mut Problems) {
    if e.emergency_scale_threshold == 0 {
        out.bad(
            "enforcement.emergency_scale_threshold",
            "must be at least 1",
        );
    }
    if e.min_violation_check_interval.is_zero() {
        out.bad(
            "enforcement.min_violation_check_interval",
            "must be positive",
        );
    }
}

fn events(e: &EventsConfig, out: &mut Problems) {
    event_bus(e, out);
    handlers(&e.handlers, out);
}

fn event_bus(e: &EventsConfig, out: &mut Problems) {
    let bus = &e.event_bus;
    if bus.kind != "redis_streams" {
        out.bad(
            "events.event_bus.type",
            format!("unsupported bus type `{}` (only `redis_streams`)", bus.kind),
        );
    }
    if bus.stream_name.is_empty() {
        out.bad("events.event_bus.stream_name", "must not be empty");
    }
    if bus.max_stream_length == 0 {
        out.bad("events.event_bus.max_stream_length", "must be at least 1");
    }
    match url::Url::parse(&bus.url) {
        Ok(u) if matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix") => {
            redis_access(bus, &u, out);
        }
        Ok(u) => out.bad(
            "events.event_bus.url",
            format!(
                "scheme `{}` is not redis://, rediss:// or unix://",
                u.scheme()
            ),
        ),
        // The URL may carry a password: name the field, never echo the value.
        Err(e) => out.bad("events.event_bus.url", format!("not a valid URL ({e})")),
    }
    match bus.topology() {
        None => out.bad(
            "events.event_bus.mode",
            format!("`{}` is not single, sentinel or cluster", bus.mode),
        ),
        Some(topology) => {
            let mut c = bus::BusConfig::new(bus.url.clone(), bus.stream_name.clone());
            c.topology = topology;
            if let Err(e) = c.validate() {
                out.bad("events.event_bus.mode", e);
            }
        }
    }
    if bus.max_deliveries == 0 {
        out.bad("events.event_bus.max_deliveries", "must be at least 1");
    }
    if bus.batch_size == 0 {
        out.bad("events.event_bus.batch_size", "must be at least 1");
    }
    if bus.concurrency == 0 {
        out.bad("events.event_bus.concurrency", "must be at least 1");
    }
    if bus.block.is_zero() {
        out.bad("events.event_bus.block", "must be positive");
    }
    // Zero would let every consumer claim every other's in-flight entries at once.
    if bus.claim_idle.is_zero() {
        out.bad("events.event_bus.claim_idle", "must be positive");
    }
    // Zero would make the idempotent publish (and with it at-most-once outputs) a no-op.
    if bus.idempotency_ttl.is_zero() {
        out.bad("events.event_bus.idempotency_ttl", "must be positive");
    }
}

/// The credentials and TLS files of a parsed bus URL `u`.
fn redis_access(bus: &super::EventBus, u: &url::Url, out: &mut Problems) {
    if u.password().is_some() && !bus.password_file.is_empty() {
        out.bad(
            "events.event_bus.password_file",
            "the URL has a password already: set it in one place",
        );
    }
    let tls = &bus.tls;
    if u.scheme() != "rediss" && !(tls.ca_file.is_empty() && tls.cert_file.is_empty()) {
        out.bad(
            "events.event_bus.tls",
            "TLS files are set but the URL is not rediss://",
        );
    }
    if tls.cert_file.is_empty() != tls.key_file.is_empty() {
        out.bad(
            "events.event_bus.tls",
            "a client certificate needs both cert_file and key_file",
        );
    }
    if bus.mode != "sentinel" {
        for (key, value) in [
            ("sentinel_username", &bus.sentinel_username),
            ("sentinel_password_file", &bus.sentinel_password_file),
        ] {
            if !value.is_empty() {
                out.bad(
                    &format!("events.event_bus.{key}"),
                    "is for mode: sentinel (the sentinels' own credentials)",
                );
            }
        }
    }
}

fn handlers(handlers: &[String], out: &mut Problems) {
    let mut seen = BTreeMap::new();
    for (i, h) in handlers.iter().enumerate() {
        if !HANDLER_NAMES.contains(&h.as_str()) {
            out.bad(
                &format!("events.handlers[{i}]"),
                format!(
                    "unknown handler `{h}` (known: {})",
                    HANDLER_NAMES.join(", ")
                ),
            );
        } else if seen.insert(h.clone(), i).is_some() {
            out.bad(
                &format!("events.handlers[{i}]"),
                format!("`{h}` listed twice"),
            );
        }
    }
}

fn thresholds(t: &Thresholds, out: &mut Problems) {
    for (name, v) in [
        ("cpu_high", t.cpu_high),
        ("memory_high", t.memory_high),
        ("cpu_low", t.cpu_low),
        ("memory_low", t.memory_low),
    ] {
        if !(0.0..=100.0).contains(&v) {
            out.bad(
                &format!("thresholds.{name}"),
                format!("{v} is not a percentage in [0, 100]"),
            );
        }
    }
    if t.cpu_low >= t.cpu_high {
        out.bad("thresholds.cpu_low", "must be below cpu_high");
    }
    if t.memory_low >= t.memory_high {
        out.bad("thresholds.memory_low", "must be below memory_high");
    }
    if t.consecutive_periods == 0 {
        out.bad("thresholds.consecutive_periods", "must be at least 1");
    }
}

fn scaling(s: &Scaling, out: &mut Problems) {
    if s.scale_up_step == 0 {
        out.bad("scaling.scale_up_step", "must be at least 1");
    }
    if !(0.0..=1.0).contains(&s.max_unhealthy_fraction) {
        out.bad("scaling.max_unhealthy_fraction", "must be in [0, 1]");
    }
    // Zero would fail every new worker on the next tick and start another: a create/fail loop.
    // (The cooldowns and `underutilized_for` may be zero: they only wait.)
    if s.max_node_provision_time.is_zero() {
        out.bad("scaling.max_node_provision_time", "must be positive");
    }
    if s.drain_timeout.is_zero() {
        out.bad(
            "scaling.drain_timeout",
            "must be positive (no drain finishes in 0 s)",
        );
    }
    // Zero would retry a failing create at once, over and over: the storm the backoff prevents.
    if s.provision_retry_backoff.is_zero() {
        out.bad("scaling.provision_retry_backoff", "must be positive");
    }
    if s.provision_retry_backoff_max < s.provision_retry_backoff {
        out.bad(
            "scaling.provision_retry_backoff_max",
            "must be at least scaling.provision_retry_backoff",
        );
    }
}

fn workers(w: &Workers, out: &mut Problems) {
    if w.name_prefix.is_empty() {
        out.bad("workers.name_prefix", "must not be empty");
    }
    if w.image.is_empty() {
        out.bad("workers.image", "must not be empty");
    }
    if w.cpu <= 0.0 {
        out.bad("workers.cpu", "must be positive");
    }
    if w.memory == 0 {
        out.bad("workers.memory", "must be positive");
    }
    if !matches!(
        w.restart_policy.as_str(),
        "no" | "always" | "unless-stopped" | "on-failure"
    ) {
        out.bad(
            "workers.restart_policy",
            format!(
                "`{}` is not one of no, always, unless-stopped, on-failure",
                w.restart_policy
            ),
        );
    }
}

/// Kubernetes' limit on a label value, and so on a node name used as `kubernetes.io/hostname`.
const LABEL_VALUE_MAX: usize = 63;

fn pools(a: &AutoscalerConfig, out: &mut Problems) {
    let mut seen = BTreeMap::new();
    for (i, p) in a.pools.iter().enumerate() {
        let at = |field: &str| format!("pools[{i}].{field}");
        if let Err(e) = dns_label(&p.name) {
            out.bad(&at("name"), format!("`{}` {e}", p.name));
        } else if let Some(first) = seen.insert(p.name.as_str(), i) {
            out.bad(
                &at("name"),
                format!("`{}` is also the name of pools[{first}]", p.name),
            );
        } else {
            // `<prefix><pool>-<n>` is the node name and its `kubernetes.io/hostname` label.
            let longest = format!(
                "{}{}-{}",
                a.workers.name_prefix,
                p.name,
                p.max_nodes(&a.limits).max(1)
            );
            if longest.len() > LABEL_VALUE_MAX {
                out.bad(
                    &at("name"),
                    format!(
                        "worker names like `{longest}` would be longer than {LABEL_VALUE_MAX} characters"
                    ),
                );
            }
        }
        pool_bounds(p, i, a, out);
        pool_template(p, i, out);
        let max = p.max_nodes(&a.limits);
        schedules(&p.schedules, &at("schedules"), max, out);
        if let Some(b) = &p.buffer {
            buffer(b, &at("buffer"), max, out);
        }
        for (key, value) in &p.labels {
            let field = at(&format!("labels.{key}"));
            if let Err(e) = label_key(key) {
                out.bad(&field, format!("key `{key}` {e}"));
            } else if key == bus::scheduling::POOL_LABEL || key == bus::scheduling::HOSTNAME_LABEL {
                out.bad(&field, format!("`{key}` is set by the autoscaler"));
            } else if let Err(e) = kubelet_may_set(key) {
                out.bad(&field, format!("`{key}` {e}"));
            }
            if let Err(e) = label_value(value) {
                out.bad(&field, format!("value `{value}` {e}"));
            }
        }
        for (j, taint) in p.taints.iter().enumerate() {
            let field = at(&format!("taints[{j}]"));
            match taint.parse::<bus::scheduling::Taint>() {
                Err(e) => out.bad(&field, format!("{e}; expected key=value:Effect")),
                Ok(t) => {
                    if let Err(e) = label_key(&t.key) {
                        out.bad(&field, format!("key `{}` {e}", t.key));
                    }
                    if let Err(e) = label_value(&t.value) {
                        out.bad(&field, format!("value `{}` {e}", t.value));
                    }
                }
            }
        }
    }
    let mins: u32 = a.pools.iter().map(|p| p.min_nodes).sum();
    if mins > a.limits.max_nodes {
        out.bad(
            "pools",
            format!(
                "the pools' min_nodes add up to {mins}, more than limits.max_nodes ({})",
                a.limits.max_nodes
            ),
        );
    }
}

fn pool_bounds(p: &Pool, i: usize, a: &AutoscalerConfig, out: &mut Problems) {
    let max = p.max_nodes(&a.limits);
    if p.max_nodes == Some(0) {
        out.bad(&format!("pools[{i}].max_nodes"), "must be at least 1");
    } else if max > a.limits.max_nodes {
        out.bad(
            &format!("pools[{i}].max_nodes"),
            format!(
                "{max} is more than limits.max_nodes ({})",
                a.limits.max_nodes
            ),
        );
    }
    if p.min_nodes > max {
        out.bad(
            &format!("pools[{i}].min_nodes"),
            format!(
                "min_nodes ({}) is greater than max_nodes ({max})",
                p.min_nodes
            ),
        );
    }
}

/// Scheduled minimums: a cron that parses (in UTC), a window that lasts, a minimum within the
/// scope's maximum.
fn schedules(list: &[ScheduleConfig], field: &str, max: u32, out: &mut Problems) {
    for (j, s) in list.iter().enumerate() {
        let at = |f: &str| format!("{field}[{j}].{f}");
        let schedule = handlers::policy::Schedule {
            cron: s.cron.clone(),
            duration: s.duration,
            min_nodes: s.min_nodes,
        };
        if let Err(e) = schedule.parse() {
            out.bad(
                &at("cron"),
                format!("{e} (5 fields: minute hour day-of-month month day-of-week, in UTC)"),
            );
        }
        if s.duration.is_zero() {
            out.bad(&at("duration"), "must be positive");
        }
        if s.min_nodes > max {
            out.bad(
                &at("min_nodes"),
                format!("{} is more than max_nodes ({max})", s.min_nodes),
            );
        }
    }
}

/// A capacity buffer: non-negative figures, spare workers within the maximum.
fn buffer(b: &BufferConfig, field: &str, max: u32, out: &mut Problems) {
    if b.cpu < 0.0 || !b.cpu.is_finite() {
        out.bad(
            &format!("{field}.cpu"),
            "must be a non-negative number of CPUs",
        );
    }
    if b.nodes > max {
        out.bad(
            &format!("{field}.nodes"),
            format!("{} spare workers is more than max_nodes ({max})", b.nodes),
        );
    }
}

/// The pool's own template values; those it inherits are checked under `workers`.
fn pool_template(p: &Pool, i: usize, out: &mut Problems) {
    if p.cpu.is_some_and(|c| c <= 0.0 || !c.is_finite()) {
        out.bad(&format!("pools[{i}].cpu"), "must be positive");
    }
    if p.memory == Some(0) {
        out.bad(&format!("pools[{i}].memory"), "must be positive");
    }
    if p.max_pods == Some(0) {
        out.bad(&format!("pools[{i}].max_pods"), "must be at least 1");
    }
    if p.image.as_deref().is_some_and(str::is_empty) {
        out.bad(&format!("pools[{i}].image"), "must not be empty");
    }
}

/// RFC 1123 label: what a pool name must be, since it is part of worker names and a label value.
fn dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > LABEL_VALUE_MAX {
        return Err(format!("must be 1 to {LABEL_VALUE_MAX} characters long"));
    }
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err("is not a DNS label (lowercase letters, digits and `-`, starting and ending with a letter or digit)".into())
    }
}

/// A label value: empty, or up to 63 of `[A-Za-z0-9._-]` starting and ending alphanumeric.
fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    if s.len() > LABEL_VALUE_MAX {
        return Err(format!("is longer than {LABEL_VALUE_MAX} characters"));
    }
    let alnum = |b: u8| b.is_ascii_alphanumeric();
    let bytes = s.as_bytes();
    if alnum(bytes[0])
        && alnum(bytes[bytes.len() - 1])
        && bytes
            .iter()
            .all(|&b| alnum(b) || matches!(b, b'-' | b'_' | b'.'))
    {
        Ok(())
    } else {
        Err("is not a label value (letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit)".into())
    }
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name as a non-empty label value.
fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty()
            || prefix.len() > 253
            || !prefix.split('.').all(|l| dns_label(l).is_ok())
        {
            return Err(format!(
                "has a prefix `{prefix}` that is not a DNS subdomain"
            ));
        }
    }
    if name.is_empty() {
        return Err("has an empty name".into());
    }
    label_value(name).map_err(|e| format!("has a name that {e}"))
}

/// The kubelet refuses `--node-label`s in the `kubernetes.io` and `k8s.io` namespaces except these,
/// and the agent would not start.
fn kubelet_may_set(key: &str) -> Result<(), String> {
    const ALLOWED_KEYS: &[&str] = &[
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/instance-type",
        "beta.kubernetes.io/os",
        "failure-domain.beta.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "kubernetes.io/arch",
        "kubernetes.io/os",
        "node.kubernetes.io/instance-type",
        "topology.kubernetes.io/region",
        "topology.kubernetes.io/zone",
    ];
    const ALLOWED_NAMESPACES: &[&str] = &["kubelet.kubernetes.io", "node.kubernetes.io"];
    let Some((prefix, _)) = key.split_once('/') else {
        return Ok(());
    };
    let restricted = ["kubernetes.io", "k8s.io"]
        .iter()
        .any(|ns| prefix == *ns || prefix.ends_with(&format!(".{ns}")));
    let allowed = ALLOWED_KEYS.contains(&key)
        || ALLOWED_NAMESPACES
            .iter()
            .any(|ns| prefix == *ns || prefix.ends_with(&format!(".{ns}")));
    if restricted && !allowed {
        Err("is in a namespace the kubelet refuses in --node-label (kubernetes.io, k8s.io)".into())
    } else {
        Ok(())
    }
}

fn metrics(m: &Metrics, out: &mut Problems) {
    if !METRICS_SOURCES.contains(&m.source.as_str()) {
        out.bad(
            "metrics.source",
            format!(
                "`{}` is not one of {}",
                m.source,
                METRICS_SOURCES.join(", ")
            ),
        );
    }
    if m.interval.is_zero() {
        out.bad("metrics.interval", "must be positive");
    }
}

fn docker(a: &AutoscalerConfig, out: &mut Problems) {
    let d = &a.docker;
    // Zero would time out every engine call at once and keep the circuit breaker open.
    if d.timeout.is_zero() {
        out.bad("docker.timeout", "must be positive");
    }
    if !d.host.is_empty() {
        engine_access(
            &d.host,
            &d.tls,
            &d.ssh_key_file,
            &|field| format!("docker.{field}"),
            out,
        );
    } else if !d.tls.is_empty() || !d.ssh_key_file.is_empty() {
        out.bad(
            "docker.host",
            "TLS files or an SSH key are set but no engine address (tcp://… or ssh://…)",
        );
    }
    let mut names = BTreeSet::new();
    for (i, h) in d.hosts.iter().enumerate() {
        let at = |field: &str| format!("docker.hosts[{i}].{field}");
        if let Err(e) = dns_label(&h.name) {
            out.bad(&at("name"), format!("`{}` {e}", h.name));
        } else if h.name == DEFAULT_DOCKER_HOST_NAME {
            out.bad(
                &at("name"),
                "`default` is docker.host's name: give this engine another",
            );
        } else if !names.insert(h.name.as_str()) {
            out.bad(&at("name"), format!("`{}` is named twice", h.name));
        }
        engine_access(&h.host, &h.tls, &h.ssh_key_file, &at, out);
    }
    for (i, p) in a.pools.iter().enumerate() {
        if let Some(h) = &p.docker_host {
            if h != DEFAULT_DOCKER_HOST_NAME && !names.contains(h.as_str()) {
                out.bad(
                    &format!("pools[{i}].docker_host"),
                    format!(
                        "`{h}` is not one of docker.hosts ({})",
                        std::iter::once(DEFAULT_DOCKER_HOST_NAME)
                            .chain(names.iter().copied())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
    }
    if !d.hosts.is_empty() && a.pools.is_empty() {
        out.bad(
            "docker.hosts",
            "engines are used by pools (pools[].docker_host): there are no pools",
        );
    }
}

/// An engine's address and how it is reached: bollard's schemes, TLS files with `tcp://` only
/// (all three: an engine with `--tlsverify` wants a client certificate), a key with `ssh://` only.
fn engine_access(
    host: &str,
    tls: &super::TlsFiles,
    ssh_key_file: &str,
    at: &dyn Fn(&str) -> String,
    out: &mut Problems,
) {
    let scheme = host.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("unix" | "tcp" | "http" | "ssh")) {
        out.bad(
            &at("host"),
            format!(
                "`{host}`: an engine address is unix:///path, tcp://host:port or ssh://[user@]host"
            ),
        );
    }
    if !tls.is_empty() {
        if scheme != Some("tcp") {
            out.bad(
                &at("tls"),
                format!("TLS files are set but `{host}` is not tcp://"),
            );
        }
        if tls.ca_file.is_empty() || tls.cert_file.is_empty() || tls.key_file.is_empty() {
            out.bad(
                &at("tls"),
                "an engine's TLS needs ca_file, cert_file and key_file (as `docker --tlsverify`)",
            );
        }
    }
    // bollard hands ssh the authority as a host name: a port there is not a port to ssh.
    if let Some(rest) = host.strip_prefix("ssh://") {
        let authority = rest.split('/').next().unwrap_or_default();
        let host_part = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if host_part.contains(':') {
            out.bad(
                &at("host"),
                format!("`{host}`: an ssh:// address takes no port here; name a Host of ~/.ssh/config that sets it"),
            );
        }
    }
    if !ssh_key_file.is_empty() && scheme != Some("ssh") {
        out.bad(
            &at("ssh_key_file"),
            format!("an SSH key is set but `{host}` is not ssh://"),
        );
    }
}

fn kubernetes(k: &KubernetesSettings, out: &mut Problems) {
    // The batch also repeats its report every `pending_batch_max`: zero would report in a loop.
    // (`pending_batch_idle` may be zero: each pod is then reported alone.)
    if k.pending_batch_max.is_zero() {
        out.bad("kubernetes.pending_batch_max", "must be positive");
    }
}

/// The shortest lease: it is renewed every `lease_ttl / 3`, each renewal a Redis round trip.
const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

fn leader(l: &Leader, out: &mut Problems) {
    if l.lease_ttl < MIN_LEASE_TTL {
        out.bad(
            "leader.lease_ttl",
            "must be at least 1s (the lease is renewed every lease_ttl/3)",
        );
    }
}

fn http(h: &Http, out: &mut Problems) {
    if h.listen.parse::<std::net::SocketAddr>().is_err() {
        out.bad(
            "http.listen",
            format!("`{}` is not an address like 127.0.0.1:9090", h.listen),
        );
    }
}

fn alerts(a: &Alerts, out: &mut Problems) {
    for (i, hook) in a.webhooks.iter().enumerate() {
        match url::Url::parse(&hook.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => out.bad(&format!("alerts.webhooks[{i}].url"), "not an http(s) URL"),
        }
        if !matches!(hook.format.as_str(), "json" | "slack") {
            out.bad(
                &format!("alerts.webhooks[{i}].format"),
                format!("`{}` is not json or slack", hook.format),
            );
        }
        for (j, h) in hook.headers.iter().enumerate() {
            let field = format!("alerts.webhooks[{i}].headers[{j}]");
            if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                out.bad(&field, format!("`{}` is not a header name", h.name));
            }
            if h.value_env.is_empty() == h.value_file.is_empty() {
                out.bad(&field, "set exactly one of value_env and value_file");
            }
        }
    }
}
