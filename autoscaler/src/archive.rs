//! The event archive: every stream entry kept beyond the stream's `max_stream_length`, so that
//! `events replay`, `explain` and `events tail --since` can read last week as one history with
//! what is still on the stream.
//!
//! **Format** (a contract: users read it with `zcat … | jq`): files
//! `<events.archive.dir>/events-<YYYY-MM-DD>-<ms>-<seq>.jsonl.gz`, gzip, one JSON object a line.
//! The day is the UTC day of the entries' stream ids, `<ms>-<seq>` the stream id of the file's
//! first entry (13 and 6 digits, so the names sort in stream order); a day has one file per leader
//! tenure that wrote in it. A line is the stream entry: `stream_id`, then its fields, `data` and
//! `metadata` as JSON objects (as `events tail --json` prints them), every other field a string.
//! A file is a series of gzip members, one per write, so a crash loses at most the member being
//! written; a reader stops at a damaged member, reports it and goes on with the next file.
//!
//! **Writer**: the leader follows the stream and appends each entry within
//! [`FLUSH_EVERY`] of its publication, long before `MAXLEN ~` trims it (the stream holds
//! `max_stream_length` entries). Where it left off is `<dir>/position` (a stream id), written
//! after each member; entries the stream trimmed before the archive had them are reported.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bus::stream_id::StreamId;
use bus::{Audit, RawEntry};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use tokio_util::sync::CancellationToken;

/// How often the leader appends what the stream got since.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// The file holding the last archived stream id.
const POSITION: &str = "position";

/// Entries a [`History`] page holds.
const PAGE: usize = 512;

/// One archive file, named by its day and first entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFile {
    pub path: PathBuf,
    pub first: StreamId,
}

/// The archive file name for a file whose first entry is `first`.
pub fn file_name(first: StreamId) -> String {
    let day = id_day(first);
    format!("events-{day}-{:013}-{:06}.jsonl.gz", first.ms, first.seq)
}

/// The UTC day of a stream id (`YYYY-MM-DD`).
fn id_day(id: StreamId) -> String {
    id.time()
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        .format("%Y-%m-%d")
        .to_string()
}

fn parse_name(name: &str) -> Option<StreamId> {
    let rest = name.strip_prefix("events-")?.strip_suffix(".jsonl.gz")?;
    // YYYY-MM-DD-<ms>-<seq>
    let mut parts = rest.rsplitn(3, '-');
    let seq = parts.next()?.parse().ok()?;
    let ms = parts.next()?.parse().ok()?;
    Some(StreamId { ms, seq })
}

/// The archive files of `dir`, in stream order (none when the directory does not exist).
pub fn list(dir: &Path) -> std::io::Result<Vec<ArchiveFile>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files: Vec<ArchiveFile> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let first = parse_name(&e.file_name().to_string_lossy())?;
            Some(ArchiveFile {
                path: e.path(),
                first,
            })
        })
        .collect();
    files.sort_by_key(|f| f.first);
    Ok(files)
}

/// An entry as an archive line.
pub fn line(e: &RawEntry) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("stream_id".into(), e.id.clone().into());
    for (k, v) in &e.fields {
        let key = String::from_utf8_lossy(k).into_owned();
        let text = String::from_utf8_lossy(v);
        let value = if key == "data" || key == "metadata" {
            serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .filter(serde_json::Value::is_object)
                .unwrap_or_else(|| text.clone().into_owned().into())
        } else {
            text.into_owned().into()
        };
        obj.entry(key).or_insert(value);
    }
    serde_json::Value::Object(obj).to_string()
}

/// An archive line back as the stream entry.
pub fn parse_line(text: &str) -> Result<RawEntry, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let serde_json::Value::Object(obj) = v else {
        return Err("not a JSON object".into());
    };
    let id = obj
        .get("stream_id")
        .and_then(|v| v.as_str())
        .filter(|id| StreamId::parse(id).is_some())
        .ok_or("no stream_id")?
        .to_string();
    let fields = obj
        .into_iter()
        .filter(|(k, _)| k != "stream_id")
        .map(|(k, v)| {
            let value = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            (Bytes::from(k), Bytes::from(value))
        })
        .collect();
    Ok(RawEntry { id, fields })
}

/// The entries of one archive file, in order; stops at the first damaged part, with `problem` set.
struct FileReader {
    path: PathBuf,
    lines: std::io::Lines<BufReader<MultiGzDecoder<File>>>,
    read: usize,
}

impl FileReader {
    fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            lines: BufReader::with_capacity(256 * 1024, MultiGzDecoder::new(file)).lines(),
            read: 0,
        })
    }

    /// The next entry, `Ok(None)` at the end, `Err` (a message) when the rest is unreadable.
    fn next_entry(&mut self) -> Result<Option<RawEntry>, String> {
        loop {
            match self.lines.next() {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(format!(
                        "archive file {} is damaged after {} entries ({e}); skipped the rest of it",
                        self.path.display(),
                        self.read
                    ))
                }
                Some(Ok(l)) if l.trim().is_empty() => continue,
                Some(Ok(l)) => match parse_line(&l) {
                    Ok(e) => {
                        self.read += 1;
                        return Ok(Some(e));
                    }
                    // A line cut short by a crash is the last of its member; the next may be fine.
                    Err(e) => {
                        return Err(format!(
                            "archive file {} has a bad line after {} entries ({e}); skipped the rest of it",
                            self.path.display(),
                            self.read
                        ))
                    }
                },
            }
        }
    }
}

/// Archive and stream as one history, oldest first, a page at a time: the archive files that can
/// hold entries of the range, then the stream from after the last archived entry. Entries are
/// yielded once each, in stream-id order (an entry in two files, or in the archive and the
/// stream, comes once). Damaged files and gaps are reported in [`History::take_problems`].
pub struct History {
    files: std::vec::IntoIter<ArchiveFile>,
    current: Option<FileReader>,
    start: StreamId,
    end: Option<StreamId>,
    /// The last entry yielded.
    last: Option<StreamId>,
    audit: Option<Audit>,
    stream: Option<bus::Pages>,
    problems: Vec<String>,
    done: bool,
}

impl History {
    /// The entries from `start` to `end` (inclusive, `None`: to the newest) of the archive in
    /// `dir` (if any) and of the stream `audit` reads (if any).
    pub fn new(
        dir: Option<&Path>,
        audit: Option<Audit>,
        start: StreamId,
        end: Option<StreamId>,
    ) -> Self {
        let mut problems = Vec::new();
        let files = match dir.map(list) {
            None => Vec::new(),
            Some(Ok(files)) => files,
            Some(Err(e)) => {
                problems.push(format!(
                    "archive directory {}: {e}; reading the stream only",
                    dir.map(Path::display)
                        .map(|d| d.to_string())
                        .unwrap_or_default()
                ));
                Vec::new()
            }
        };
        // A file holds entries from its first up to the next file's first.
        let mut wanted = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let next = files.get(i + 1).map(|n| n.first);
            let before_start = next.is_some_and(|n| n <= start);
            let after_end = end.is_some_and(|e| f.first > e);
            if !before_start && !after_end {
                wanted.push(f.clone());
            }
        }
        Self {
            files: wanted.into_iter(),
            current: None,
            start,
            end,
            last: None,
            audit,
            stream: None,
            problems,
            done: false,
        }
    }

    /// What went wrong since the last call (damaged files, entries in neither place).
    pub fn take_problems(&mut self) -> Vec<String> {
        std::mem::take(&mut self.problems)
    }

    /// The history's pages read and decoded on a task of their own, up to `ahead` pages ahead of
    /// the consumer: a CPU-bound consumer (the what-if replay) then overlaps with the reading and
    /// the decoding. Undecodable entries are left out, as the live handlers dead-letter them;
    /// problems (damaged archive files, gaps) are passed to `problem` as they are found. Ends
    /// after the last page, or with the read error.
    pub fn decoded(
        mut self,
        ahead: usize,
        problem: impl Fn(String) + Send + 'static,
    ) -> tokio::sync::mpsc::Receiver<Result<Vec<bus::Envelope>, bus::BusError>> {
        let (tx, rx) = tokio::sync::mpsc::channel(ahead.max(1));
        tokio::spawn(async move {
            loop {
                let page = self.next_page().await;
                for p in self.take_problems() {
                    problem(p);
                }
                let page = match page {
                    Ok(Some(page)) => Ok(page.iter().filter_map(|e| e.decode().ok()).collect()),
                    Ok(None) => return,
                    Err(e) => Err(e),
                };
                let failed = page.is_err();
                if tx.send(page).await.is_err() || failed {
                    return;
                }
            }
        });
        rx
    }

    /// Whether `id` belongs to the range and comes after what was yielded.
    fn wanted(&self, id: StreamId) -> bool {
        id >= self.start && self.last.is_none_or(|l| id > l)
    }

    fn past_end(&self, id: StreamId) -> bool {
        self.end.is_some_and(|e| id > e)
    }

    /// The next page of entries, `None` at the end.
    pub async fn next_page(&mut self) -> Result<Option<Vec<RawEntry>>, bus::BusError> {
        if self.done {
            return Ok(None);
        }
        let mut page = Vec::new();
        // The archive first.
        while page.len() < PAGE {
            if self.current.is_none() {
                let Some(f) = self.files.next() else { break };
                match FileReader::open(&f.path) {
                    Ok(r) => self.current = Some(r),
                    Err(e) => {
                        self.problems
                            .push(format!("archive file {}: {e}; skipped", f.path.display()));
                        continue;
                    }
                }
            }
            let Some(reader) = self.current.as_mut() else {
                break;
            };
            match reader.next_entry() {
                Ok(Some(e)) => {
                    let Some(id) = StreamId::parse(&e.id) else {
                        continue;
                    };
                    if self.past_end(id) {
                        // Files are in order: nothing further can be in range.
                        self.current = None;
                        self.files = Vec::new().into_iter();
                        self.audit = None;
                        break;
                    }
                    if self.wanted(id) {
                        self.last = Some(id);
                        page.push(e);
                    }
                }
                Ok(None) => self.current = None,
                Err(problem) => {
                    self.problems.push(problem);
                    self.current = None;
                }
            }
        }
        if !page.is_empty() {
            return Ok(Some(page));
        }
        // Then the stream, from after the last archived entry.
        let Some(audit) = self.audit.as_ref() else {
            self.done = true;
            return Ok(None);
        };
        let mut check_gap = false;
        if self.stream.is_none() {
            check_gap = self.last.is_some();
            let from = match self.last {
                Some(l) if l >= self.start => format!("({l}"),
                _ => self.start.to_string(),
            };
            let to = self.end.map_or("+".to_string(), |e| e.to_string());
            self.stream = Some(audit.pages(&from, &to));
        }
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        match stream.next_page().await? {
            None => {
                self.done = true;
                Ok(None)
            }
            Some(entries) => {
                let entries: Vec<RawEntry> = entries
                    .into_iter()
                    .filter(|e| StreamId::parse(&e.id).is_some_and(|id| self.wanted(id)))
                    .collect();
                if let (true, Some(first), Some(last)) = (
                    check_gap,
                    entries.first().and_then(|e| StreamId::parse(&e.id)),
                    self.last,
                ) {
                    self.note_gap(audit.clone(), last, first).await;
                }
                if let Some(id) = entries.last().and_then(|e| StreamId::parse(&e.id)) {
                    self.last = Some(id);
                }
                Ok(Some(entries))
            }
        }
    }

    /// Reports entries between the archive's last and the stream's first that neither holds
    /// (the stream trimmed them before the archive had them).
    async fn note_gap(&mut self, audit: Audit, archived: StreamId, first: StreamId) {
        // The stream's own first entry tells whether it still holds what follows the archive.
        let Ok(Some(oldest)) = audit.pages("-", "+").with_page_size(1).next_page().await else {
            return;
        };
        let oldest = oldest.first().and_then(|e| StreamId::parse(&e.id));
        if oldest.is_some_and(|o| o > archived && o == first) {
            self.problems.push(format!(
                "the stream starts at {first}, right after the archive's last entry {archived}: \
                 entries between them, if there were any, were trimmed before they were archived"
            ));
        }
    }
}

// ---- the writer ---------------------------------------------------------------------------------

/// Appends entries to the archive in `dir`: one gzip member per call, in the file of this writer's
/// current day.
pub struct Writer {
    dir: PathBuf,
    /// The file this writer appends to, and its day.
    file: Option<(String, PathBuf)>,
    last: Option<StreamId>,
}

impl Writer {
    /// A writer continuing after the last archived entry (the `position` file, else the newest
    /// file's last readable entry).
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let last = match std::fs::read_to_string(dir.join(POSITION)) {
            Ok(s) => StreamId::parse(s.trim()),
            Err(_) => None,
        }
        .or_else(|| last_archived(dir));
        Ok(Self {
            dir: dir.to_path_buf(),
            file: None,
            last,
        })
    }

    /// The last archived entry.
    pub fn last(&self) -> Option<StreamId> {
        self.last
    }

    /// Appends `entries` (in stream order; those not after [`Writer::last`] are left out).
    pub fn append(&mut self, entries: &[RawEntry]) -> std::io::Result<usize> {
        let mut written = 0;
        let mut i = 0;
        while i < entries.len() {
            // One member per day the entries fall in.
            let day_of = |e: &RawEntry| StreamId::parse(&e.id).map(id_day);
            let day = day_of(&entries[i]);
            let mut j = i;
            while j < entries.len() && day_of(&entries[j]) == day {
                j += 1;
            }
            let fresh: Vec<&RawEntry> = entries[i..j]
                .iter()
                .filter(|e| {
                    StreamId::parse(&e.id).is_some_and(|id| self.last.is_none_or(|l| id > l))
                })
                .collect();
            i = j;
            let (Some(day), Some(first)) =
                (day, fresh.first().and_then(|e| StreamId::parse(&e.id)))
            else {
                continue;
            };
            let path = match &self.file {
                Some((d, p)) if *d == day => p.clone(),
                _ => {
                    let p = self.dir.join(file_name(first));
                    self.file = Some((day, p.clone()));
                    p
                }
            };
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            let mut gz = GzEncoder::new(std::io::BufWriter::new(file), Compression::default());
            for e in &fresh {
                gz.write_all(line(e).as_bytes())?;
                gz.write_all(b"\n")?;
            }
            let file = gz
                .finish()?
                .into_inner()
                .map_err(std::io::IntoInnerError::into_error)?;
            file.sync_data()?;
            written += fresh.len();
            self.last = fresh
                .last()
                .and_then(|e| StreamId::parse(&e.id))
                .or(self.last);
            if let Some(l) = self.last {
                let tmp = self.dir.join(format!("{POSITION}.tmp"));
                std::fs::write(&tmp, l.to_string())?;
                std::fs::rename(&tmp, self.dir.join(POSITION))?;
            }
        }
        Ok(written)
    }
}

/// The last readable entry of the newest archive file.
fn last_archived(dir: &Path) -> Option<StreamId> {
    let newest = list(dir).ok()?.pop()?;
    let mut r = FileReader::open(&newest.path).ok()?;
    let mut last = None;
    while let Ok(Some(e)) = r.next_entry() {
        last = StreamId::parse(&e.id).or(last);
    }
    last.or(Some(newest.first))
}

/// The leader's archiver: appends what the stream got every [`FLUSH_EVERY`] until `token`.
/// Failures are logged and retried; they never stop the leader.
pub async fn run(audit: Audit, dir: PathBuf, token: CancellationToken) {
    let mut writer = match Writer::open(&dir) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "archive: cannot open the directory; not archiving");
            return;
        }
    };
    tracing::info!(dir = %dir.display(), after = ?writer.last().map(|l| l.to_string()), "archive: writing");
    let mut every = tokio::time::interval(FLUSH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut warned_gap = false;
    loop {
        let stop = tokio::select! {
            _ = token.cancelled() => true,
            _ = every.tick() => false,
        };
        if let Err(e) = flush(&audit, &mut writer, &mut warned_gap).await {
            tracing::warn!(dir = %dir.display(), error = %e, "archive: write failed; retrying");
        }
        if stop {
            return;
        }
    }
}

/// Archives everything the stream has after the writer's position.
pub async fn flush(
    audit: &Audit,
    writer: &mut Writer,
    warned_gap: &mut bool,
) -> anyhow::Result<usize> {
    let from = writer.last().map_or("-".to_string(), |l| format!("({l}"));
    let mut pages = audit.pages(&from, "+");
    let mut written = 0;
    let mut first = true;
    while let Some(page) = pages.next_page().await? {
        if first {
            first = false;
            if let (Some(last), Some(got)) = (
                writer.last(),
                page.first().and_then(|e| StreamId::parse(&e.id)),
            ) {
                let oldest = audit.pages("-", "+").with_page_size(1).next_page().await?;
                let oldest = oldest.and_then(|p| p.first().and_then(|e| StreamId::parse(&e.id)));
                if oldest == Some(got) && got > last && !*warned_gap {
                    *warned_gap = true;
                    tracing::warn!(after = %last, before = %got, "archive: the stream trimmed entries before they were archived");
                }
            }
        }
        // Small, buffered writes: not worth a blocking thread.
        written += writer.append(&page)?;
    }
    Ok(written)
}

/// Reads a file entirely (tests).
pub fn read_file(path: &Path) -> (Vec<RawEntry>, Option<String>) {
    let mut out = Vec::new();
    let Ok(mut r) = FileReader::open(path) else {
        return (out, Some(format!("cannot open {}", path.display())));
    };
    loop {
        match r.next_entry() {
            Ok(Some(e)) => out.push(e),
            Ok(None) => return (out, None),
            Err(p) => return (out, Some(p)),
        }
    }
}
