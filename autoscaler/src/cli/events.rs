//! `autoscaler events …`: tail, publish, dead letters, replay.
//!
//! Usage errors (an unknown event type, bad data, a position that is neither id nor time, a bad config)
//! exit 2 before anything is written; Redis failures exit 1.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bus::stream_id::{parse_position, StreamId};
use bus::{Audit, Envelope, Event, Metadata, Query, RawEntry, RetryTo, EVENT_TYPES};
use chrono::Utc;
use primitives::Backoff;
use uuid::Uuid;

use super::EXIT_BAD_CONFIG;
use crate::config::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Print the audit trail, one readable line per event (or JSON lines).
    Tail(TailArgs),
    /// Publish one event, validated against the catalogue (operators, tests).
    Publish(PublishArgs),
    /// Dead letters: list, retry one, purge.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Re-deliver recorded events to a consumer group (dry run unless --execute).
    Replay(ReplayArgs),
}

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Keep printing new events as they are published.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only events of this type (repeatable).
    #[arg(long = "type", value_name = "T")]
    pub types: Vec<String>,
    /// Start at a stream id, an RFC 3339 time, or a duration ago (`10m`).
    #[arg(long, value_name = "ID|TIME")]
    pub since: Option<String>,
    /// At most this many events (default without --since: the newest 20).
    #[arg(short = 'n', long)]
    pub count: Option<usize>,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The event type, e.g. `PendingPodsDetected`.
    pub event_type: String,
    /// The event's data as a JSON object.
    #[arg(long)]
    pub data: String,
    /// The publishing component.
    #[arg(long, default_value = "cli")]
    pub source: String,
    /// The `event_id` of the event that caused this one.
    #[arg(long, value_name = "EVENT_ID")]
    pub cause: Option<Uuid>,
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// The dead letters, oldest first.
    List {
        #[arg(short = 'n', long, default_value_t = 100)]
        count: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Put a dead letter back on the stream and remove it from the DLQ. Only the group that dead-lettered
    /// it handles it again (the entry carries `retry_for`), unless `--all-groups`.
    Retry {
        /// The dead letter's id in the DLQ (see `dlq list`).
        id: String,
        /// Deliver it again to every group, as if it were published anew.
        #[arg(long)]
        all_groups: bool,
    },
    /// Delete every dead letter.
    Purge {
        /// Really delete them.
        #[arg(long)]
        yes: bool,
    },
}

/// `events replay`: previews or rewinds a group's delivery position, or (`--what-if`) runs the
/// recorded stream through the handlers under `--config` with no side effects.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The consumer group (= handler name) to re-deliver to.
    #[arg(long, required_unless_present = "what_if")]
    pub group: Option<String>,
    /// Run the recorded observations through the handlers under `--config` (no side effects) and print
    /// each decision beside the recorded one, then a summary.
    #[arg(long, conflicts_with_all = ["execute", "force", "group"])]
    pub what_if: bool,
    /// First entry to re-deliver: a stream id, an RFC 3339 time or a duration ago (`1h`).
    #[arg(long, value_name = "ID|TIME")]
    pub from: String,
    /// Last entry to show in the dry run (default: the newest). Not allowed with --execute: a rewind
    /// re-delivers everything after --from.
    #[arg(long, value_name = "ID|TIME")]
    pub to: Option<String>,
    /// Rewind the group (XGROUP SETID) instead of printing what would be re-delivered.
    #[arg(long)]
    pub execute: bool,
    /// Rewind even while the group has recently active consumers.
    #[arg(long)]
    pub force: bool,
    /// Entries printed by the dry run.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// With --what-if: the report as one JSON object (decisions side by side, then the summary
    /// figures) instead of text.
    #[arg(long, requires = "what_if")]
    pub json: bool,
    /// With --what-if: also draw the report as an SVG picture in FILE (workers over time recorded vs
    /// what-if with the decisions as marks, and the pods pending).
    #[arg(long, value_name = "FILE", requires = "what_if")]
    pub plot: Option<std::path::PathBuf>,
}

pub async fn run(cmd: EventsCommand, config: &Path) -> anyhow::Result<ExitCode> {
    let settings = match Settings::load(config) {
        Ok(s) => s,
        Err(e) => {
            for p in e.problems() {
                eprintln!("{p}");
            }
            return Ok(ExitCode::from(EXIT_BAD_CONFIG));
        }
    };
    match cmd {
        EventsCommand::Tail(args) => tail(&settings, args).await,
        EventsCommand::Publish(args) => publish(&settings, args).await,
        EventsCommand::Dlq(cmd) => dlq(&settings, cmd).await,
        EventsCommand::Replay(args) => replay(&settings, args).await,
    }
}

fn usage(message: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("error: {message}");
    Ok(ExitCode::from(EXIT_BAD_CONFIG))
}

async fn connect(settings: &Settings) -> anyhow::Result<bus::Bus> {
    bus::connect(crate::runtime::bus_config(settings))
        .await
        .context("connecting to the event bus")
}

/// Archive (when `events.archive.dir` is set) and stream as one history from `start` to `end`.
pub fn history(
    settings: &Settings,
    audit: &Audit,
    start: StreamId,
    end: Option<StreamId>,
) -> crate::archive::History {
    let dir = settings.autoscaler.events.archive.path();
    crate::archive::History::new(dir.as_deref(), Some(audit.clone()), start, end)
}

/// Reports a history's damaged archive files and gaps on stderr (they never stop the command).
pub fn warn_problems(history: &mut crate::archive::History) {
    for p in history.take_problems() {
        eprintln!("warning: {p}");
    }
}

/// Writes a line to stdout; false when stdout is gone (e.g. `| head`), so the caller stops quietly.
fn emit(line: &str) -> bool {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

// ---- tail -----------------------------------------------------------------------------------------

async fn tail(settings: &Settings, args: TailArgs) -> anyhow::Result<ExitCode> {
    for t in &args.types {
        if !EVENT_TYPES.contains(&t.as_str()) {
            return usage(format!(
                "unknown event type `{t}`; known: {}",
                EVENT_TYPES.join(", ")
            ));
        }
    }
    let start = match &args.since {
        Some(s) => match parse_position(s, Utc::now()) {
            Ok(id) => Some(id.to_string()),
            Err(e) => return usage(e),
        },
        None => None,
    };
    let bus = connect(settings).await?;
    let audit = bus.audit();
    let mut last = None;
    match start.as_deref().and_then(StreamId::parse) {
        // From a position: archive and stream as one history, a page at a time.
        Some(since) => {
            let mut history = history(settings, &audit, since, None);
            let mut left = args.count.unwrap_or(usize::MAX);
            'pages: while left > 0 {
                let page = history.next_page().await.context("reading the stream");
                warn_problems(&mut history);
                let Some(page) = page? else { break };
                for e in &page {
                    last = Some(e.id.clone());
                    if !matches_types(e, &args.types) {
                        continue;
                    }
                    if !emit(&render(e, args.json)) {
                        return Ok(ExitCode::SUCCESS);
                    }
                    left -= 1;
                    if left == 0 {
                        break 'pages;
                    }
                }
            }
        }
        None => {
            let query = Query {
                start: "-".into(),
                types: args.types.clone(),
                count: args.count.or(Some(20)),
                newest: true,
                ..Query::default()
            };
            let entries = audit.query(&query).await.context("reading the stream")?;
            last = entries.last().map(|e| e.id.clone());
            for e in &entries {
                if !emit(&render(e, args.json)) {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    // Nothing matched: follow from the stream's end.
    let from = last.unwrap_or_else(|| "$".to_string());
    follow(&audit, &from, &args).await
}

async fn follow(audit: &Audit, from: &str, args: &TailArgs) -> anyhow::Result<ExitCode> {
    let mut follower = audit.follow(from).await.context("following the stream")?;
    let stop = crate::shutdown::signal();
    tokio::pin!(stop);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        tokio::select! {
            () = &mut stop => return Ok(ExitCode::SUCCESS),
            batch = follower.next_batch() => match batch {
                Ok(entries) => {
                    backoff.reset();
                    for e in entries.iter().filter(|e| matches_types(e, &args.types)) {
                        if !emit(&render(e, args.json)) {
                            return Ok(ExitCode::SUCCESS);
                        }
                    }
                }
                Err(e) => {
                    // Redis restarting: keep following.
                    let delay = backoff.next_delay();
                    eprintln!("warning: {e}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                }
            },
        }
    }
}

fn matches_types(e: &RawEntry, types: &[String]) -> bool {
    types.is_empty() || e.get_str("event_type").is_some_and(|t| types.contains(&t))
}

/// One entry as a line: readable, or JSON (`Envelope::to_json` plus `stream_id`).
pub fn render(e: &RawEntry, json: bool) -> String {
    let retry_for = e.get_str(bus::RETRY_FOR);
    match (e.decode(), json) {
        (Ok(env), true) => {
            let mut v = env.to_json();
            if let Some(obj) = v.as_object_mut() {
                obj.insert("stream_id".into(), e.id.clone().into());
                if let Some(g) = retry_for {
                    obj.insert(bus::RETRY_FOR.into(), g.into());
                }
            }
            v.to_string()
        }
        (Ok(env), false) => match retry_for {
            Some(g) => format!(
                "{}  (dead letter retried for {g} only)",
                readable(&e.id, &env)
            ),
            None => readable(&e.id, &env),
        },
        (Err(err), true) => serde_json::json!({
            "stream_id": e.id,
            "undecodable": err.to_string(),
            "fields": raw_fields_json(e),
        })
        .to_string(),
        (Err(err), false) => format!(
            "{}  !! undecodable entry {} ({err}): {}",
            id_time(&e.id),
            e.id,
            raw_fields_text(e)
        ),
    }
}

fn raw_fields_json(e: &RawEntry) -> serde_json::Value {
    let map: serde_json::Map<String, serde_json::Value> = e
        .fields
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned().into(),
            )
        })
        .collect();
    map.into()
}

fn raw_fields_text(e: &RawEntry) -> String {
    e.fields
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                String::from_utf8_lossy(k),
                clip(&String::from_utf8_lossy(v), 60)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn id_time(id: &str) -> String {
    StreamId::parse(id)
        .and_then(|i| i.time())
        .map(bus::envelope::format_timestamp)
        .unwrap_or_else(|| id.to_string())
}

fn short(id: &Uuid) -> String {
    id.simple().to_string()[..8].to_string()
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max).collect::<String>())
    }
}

/// `time  type  source  short-id  key=value…  ← cause`
fn readable(stream_id: &str, env: &Envelope) -> String {
    let mut line = format!(
        "{}  {:<24} {:<22} {}  {}",
        bus::envelope::format_timestamp(env.timestamp),
        env.event_type(),
        env.source,
        short(&env.event_id),
        data_summary(&env.event.data_json()),
    );
    if env.metadata.dry_run {
        line.push_str("  [dry-run]");
    }
    if let Some(c) = env.causation_id {
        line.push_str(&format!("  ← {}", short(&c)));
    }
    line.push_str(&format!("  ({stream_id})"));
    line
}

/// The data's top-level fields as `key=value`; lists of scalars joined, lists of objects counted.
fn data_summary(data: &serde_json::Value) -> String {
    use serde_json::Value;
    let Some(obj) = data.as_object() else {
        return data.to_string();
    };
    let scalar = |v: &Value| match v {
        Value::String(s) => clip(s, 40),
        other => other.to_string(),
    };
    obj.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
                    format!(
                        "[{}]",
                        items.iter().map(scalar).collect::<Vec<_>>().join(",")
                    )
                }
                Value::Array(items) => format!("[{} items]", items.len()),
                Value::Object(o) => format!("{{{} fields}}", o.len()),
                other => scalar(other),
            };
            format!("{k}={v}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

// ---- publish --------------------------------------------------------------------------------------

async fn publish(settings: &Settings, args: PublishArgs) -> anyhow::Result<ExitCode> {
    if !EVENT_TYPES.contains(&args.event_type.as_str()) {
        return usage(format!(
            "unknown event type `{}`; known: {}",
            args.event_type,
            EVENT_TYPES.join(", ")
        ));
    }
    let event = match Event::from_parts(&args.event_type, &args.data) {
        Ok(e) => e,
        Err(e) => return usage(format!("invalid --data: {e}")),
    };
    let a = &settings.autoscaler;
    let bus = connect(settings).await?;
    let envelope = match args.cause {
        None => Envelope::root(&args.source, event, Metadata::new(&a.cluster_id, &a.region)),
        Some(cause) => match find_event(&bus.audit(), cause).await? {
            Some(parent) => Envelope::caused_by(&parent, &args.source, event),
            None => {
                eprintln!(
                    "warning: no event {cause} on the stream (trimmed?); using it as the correlation id"
                );
                let mut e =
                    Envelope::root(&args.source, event, Metadata::new(&a.cluster_id, &a.region));
                e.correlation_id = cause;
                e.causation_id = Some(cause);
                e
            }
        },
    };
    let id = bus
        .publisher()
        .publish(&envelope)
        .await
        .context("publishing")?;
    emit(&format!("{id} {}", envelope.event_id));
    Ok(ExitCode::SUCCESS)
}

/// The event with `event_id` (the newest entry with it), a page of the stream at a time.
async fn find_event(audit: &Audit, event_id: Uuid) -> anyhow::Result<Option<Envelope>> {
    let wanted = event_id.to_string();
    let mut pages = audit.pages("-", "+");
    let mut found = None;
    while let Some(page) = pages.next_page().await.context("searching the stream")? {
        if let Some(e) = page
            .iter()
            .rev()
            .find(|e| e.get("event_id") == Some(wanted.as_bytes()))
        {
            found = e.decode().ok();
        }
    }
    Ok(found)
}

// ---- dlq ------------------------------------------------------------------------------------------

async fn dlq(settings: &Settings, cmd: DlqCommand) -> anyhow::Result<ExitCode> {
    let bus = connect(settings).await?;
    let audit = bus.audit();
    match cmd {
        DlqCommand::List { count, json } => {
            let letters = audit.dlq(count).await.context("reading the DLQ")?;
            let total = audit.dlq_len().await.context("reading the DLQ")?;
            for d in &letters {
                let event_type = d
                    .entry
                    .get_str("event_type")
                    .unwrap_or_else(|| "<none>".into());
                let line = if json {
                    serde_json::json!({
                        "id": d.id,
                        "original_id": d.original_id,
                        "group": d.group,
                        "error": d.error,
                        "deliveries": d.deliveries,
                        "failed_at": d.failed_at,
                        "event_type": event_type,
                        "fields": raw_fields_json(&d.entry),
                    })
                    .to_string()
                } else {
                    format!(
                        "{}  {}  group={} deliveries={} original={} {}  error: {}",
                        d.id,
                        d.failed_at,
                        d.group,
                        d.deliveries,
                        d.original_id,
                        event_type,
                        d.error
                    )
                };
                if !emit(&line) {
                    return Ok(ExitCode::SUCCESS);
                }
            }
            if !json && (letters.len() as u64) < total {
                eprintln!("({} of {total} dead letters shown)", letters.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Retry { id, all_groups } => {
            let to = if all_groups {
                RetryTo::AllGroups
            } else {
                RetryTo::Group
            };
            match audit.dlq_retry(&id, to).await {
                Ok(r) => {
                    let whom = match &r.group {
                        Some(g) => format!("for group {g} only"),
                        None => "for every group".to_string(),
                    };
                    emit(&format!("{id} re-published as {} {whom}", r.stream_id));
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        DlqCommand::Purge { yes } => {
            if !yes {
                let n = audit.dlq_len().await.context("reading the DLQ")?;
                return usage(format!(
                    "this deletes {n} dead letter(s) from {}; run again with --yes",
                    bus.config().dlq
                ));
            }
            let n = audit.dlq_purge().await.context("purging the DLQ")?;
            emit(&format!("purged {n} dead letter(s)"));
            Ok(ExitCode::SUCCESS)
        }
    }
}

// ---- replay ---------------------------------------------------------------------------------------

async fn replay(settings: &Settings, args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let now = Utc::now();
    let from = match parse_position(&args.from, now) {
        Ok(id) => id,
        Err(e) => return usage(e),
    };
    let to = match args.to.as_deref().map(|t| parse_position(t, now)) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(e)) => return usage(e),
    };
    if args.execute && to.is_some() {
        return usage(
            "--to cannot be used with --execute: a rewind re-delivers everything after --from",
        );
    }
    let bus = connect(settings).await?;
    let audit = bus.audit();
    if args.what_if {
        return what_if(settings, &audit, from, to, args.json, args.plot.as_deref()).await;
    }
    let group_name = args.group.clone().unwrap_or_default();
    let group = audit
        .group(&group_name)
        .await
        .context("reading the consumer groups")?;

    if !args.execute {
        if group.is_none() {
            eprintln!(
                "note: group `{}` does not exist yet; it will read the whole stream when created",
                group_name
            );
        }
        // The stream only: a rewind re-delivers what the stream holds, not the archive.
        let mut pages = audit.pages(
            &from.to_string(),
            &to.map(|t| t.to_string()).unwrap_or_else(|| "+".into()),
        );
        let mut shown = Vec::new();
        let mut total = 0usize;
        while let Some(page) = pages.next_page().await.context("reading the stream")? {
            for e in page {
                if shown.len() < args.limit {
                    shown.push(e);
                }
                total += 1;
            }
        }
        emit(&format!(
            "dry run: {} entr{} from {} would be re-delivered to group `{}`:",
            total,
            if total == 1 { "y" } else { "ies" },
            from,
            group_name
        ));
        for e in &shown {
            if !emit(&format!("  {}", render(e, false))) {
                return Ok(ExitCode::SUCCESS);
            }
        }
        if total > args.limit {
            emit(&format!("  … and {} more", total - args.limit));
        }
        emit("run again with --execute to rewind the group");
        return Ok(ExitCode::SUCCESS);
    }

    let Some(group) = group else {
        eprintln!(
            "error: no consumer group `{}` on {}",
            group_name,
            bus.config().stream
        );
        return Ok(ExitCode::FAILURE);
    };
    // A consumer that read, claimed or sent its heartbeat within two BLOCK periods (+ the heartbeat
    // interval) is running: rewinding under it works (it just re-delivers) but is most likely not what the
    // operator meant.
    let window = bus.config().block * 2 + bus::consumer::HEARTBEAT_EVERY;
    let active: Vec<_> = group
        .consumers
        .iter()
        .filter(|c| c.active_within(window))
        .collect();
    if !active.is_empty() && !args.force {
        eprintln!(
            "error: group `{}` has active consumers ({}); stop them or use --force",
            group.name,
            active
                .iter()
                .map(|c| format!("{} idle {} ms", c.name, c.idle_ms))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    let set_to = from
        .previous()
        .map(|p| p.to_string())
        .unwrap_or_else(|| "0".into());
    audit
        .rewind(&group.name, &set_to)
        .await
        .context("rewinding the group")?;
    emit(&format!(
        "group `{}` rewound (was at {}): entries from {} on will be re-delivered",
        group.name, group.last_delivered_id, from
    ));
    Ok(ExitCode::SUCCESS)
}

/// `events replay --what-if`: the recorded observations between `from` and `to` through the handlers under
/// this configuration's policy, with a simulated world; nothing is published or changed.
async fn what_if(
    settings: &Settings,
    audit: &Audit,
    from: StreamId,
    to: Option<StreamId>,
    json: bool,
    plot: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    // The handlers the configuration runs, as the recorded process did (unknown names are
    // refused by `config check` and by `run`).
    let handlers: Vec<handlers::Handler> = settings
        .autoscaler
        .events
        .handlers
        .iter()
        .filter_map(|h| handlers::Handler::from_name(h))
        .collect();
    let policy = crate::runtime::policy(settings);
    let mut replay = handlers::replay::WhatIf::new(&policy, &handlers);
    // Read and decoded two pages ahead, beside the replay (which is one CPU-bound thread).
    let mut pages = history(settings, audit, from, to).decoded(2, |p| eprintln!("warning: {p}"));
    while let Some(page) = pages.recv().await {
        for e in page.context("reading the stream")? {
            replay.push(e);
        }
    }
    let report = replay.finish();
    if let Some(path) = plot {
        super::plot::write(&report, path)?;
    }
    if json {
        emit(&serde_json::to_string(&report).context("encoding the report")?);
    } else {
        emit(&report.render());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_summaries_show_scalars_join_lists_and_count_objects() {
        let d = serde_json::json!({"pending_count": 3, "affected_deployments": ["app1", "app2"], "pods": [{"a": 1}]});
        assert_eq!(
            data_summary(&d),
            "affected_deployments=[app1,app2] pending_count=3 pods=[1 items]"
        );
    }
}
