//! Watches: newline-delimited `WatchEvent`s from a resourceVersion, bookmarks only when asked, and a
//! 410 `Expired` error event for a version older than the kept history.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::status::ApiError;
use super::verbs::Selectors;
use super::{table, ApiState, Params};
use crate::resources::Kind;
use crate::store::{Change, EventType, StoreError};

/// How a watch ends when the client sets no `timeoutSeconds` (the API server picks 30–60 minutes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// The media type of a watch streaming Tables.
const TABLE_CONTENT_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// What one watch streams.
struct WatchSpec {
    kind: Kind,
    namespace: Option<String>,
    selectors: Selectors,
    bookmarks: bool,
    bookmark_interval: Duration,
    timeout: Duration,
    /// Whether objects go out as one-row Tables (`kubectl get -w`).
    table: bool,
}

impl WatchSpec {
    /// The line for an ADDED/MODIFIED/DELETED event, as a Table row when the client asked for tables.
    fn event(&self, event_type: &str, obj: &Arc<Value>, rv: u64) -> Bytes {
        if self.table {
            line(
                event_type,
                &table::table(self.kind, std::slice::from_ref(obj), rv),
            )
        } else {
            line(event_type, obj)
        }
    }

    /// The line a change makes for this watch, if any: a modification that makes an object start or
    /// stop matching the selectors is ADDED or DELETED, as the API server's watch cache sends it.
    fn change_line(&self, c: &Change) -> Option<Bytes> {
        if c.kind != self.kind {
            return None;
        }
        let now = self.wants(&c.object);
        let before = c.previous.as_deref().map(|p| self.wants(p));
        match (c.event_type, before, now) {
            (EventType::Modified, Some(false), true) => Some(self.event("ADDED", &c.object, c.rv)),
            (EventType::Modified, Some(true), false) => {
                let mut last = c.previous.as_deref().cloned().unwrap_or_default();
                last["metadata"]["resourceVersion"] = json!(c.rv.to_string());
                Some(self.event("DELETED", &Arc::new(last), c.rv))
            }
            (_, _, true) => Some(self.event(c.event_type.as_str(), &c.object, c.rv)),
            _ => None,
        }
    }

    fn wants(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"] == ns)
            && self.selectors.matches(obj)
    }
}

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut s =
        serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    s.push(b'\n');
    Bytes::from(s)
}

fn bookmark(kind: Kind, rv: u64, initial_end: bool) -> Bytes {
    let info = kind.info();
    let mut obj = json!({"kind": info.kind_name, "apiVersion": info.api_version(),
        "metadata": {"resourceVersion": rv.to_string()}});
    if initial_end {
        obj["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line("BOOKMARK", &obj)
}

/// Starts a watch and answers with its stream.
pub fn serve(
    state: &Arc<ApiState>,
    kind: Kind,
    namespace: Option<String>,
    selectors: Selectors,
    params: &Params,
    accept: &str,
) -> Result<Response, ApiError> {
    let spec = WatchSpec {
        table: table::wants_table(accept),
        kind,
        namespace,
        selectors,
        bookmarks: matches!(
            params.get("allowWatchBookmarks").map(String::as_str),
            Some("true") | Some("1")
        ),
        bookmark_interval: state.bookmark_interval,
        timeout: params
            .get("timeoutSeconds")
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TIMEOUT),
    };
    let send_initial = matches!(
        params.get("sendInitialEvents").map(String::as_str),
        Some("true")
    );
    let from: Option<u64> = params
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {v:?}")))
        })
        .transpose()?;
    let store = &state.store;
    // The first lines (replayed or synthetic events) and where live events pick up.
    let mut first: Vec<Bytes> = Vec::new();
    let (rx, start_rv) = match from {
        Some(rv) if !send_initial => match store.watch_from(kind, rv) {
            Ok((past, rx)) => {
                let mut last = rv;
                for c in past {
                    last = c.rv;
                    first.extend(spec.change_line(&c));
                }
                (rx, last)
            }
            Err(e @ StoreError::Gone { .. }) => {
                // As the API server does: a 200 whose only event is an ERROR carrying the 410 Status.
                let status = ApiError::from(e).to_status();
                return Ok(stream_response(vec![line("ERROR", &status)], None, false));
            }
            Err(e) => return Err(e.into()),
        },
        _ => {
            let (items, rv, rx) = store.snapshot_and_subscribe(kind, spec.namespace.as_deref());
            for o in items.iter().filter(|o| spec.wants(o)) {
                first.push(spec.event("ADDED", o, rv));
            }
            if send_initial && spec.bookmarks {
                first.push(bookmark(kind, rv, true));
            }
            (rx, rv)
        }
    };
    let table = spec.table;
    let (tx, body_rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(pump(spec, rx, start_rv, tx, state.shutdown.clone()));
    Ok(stream_response(first, Some(body_rx), table))
}

fn stream_response(
    first: Vec<Bytes>,
    live: Option<mpsc::Receiver<Result<Bytes, Infallible>>>,
    table: bool,
) -> Response {
    // client-go picks the watch decoder by the response's media type: Table events need it said.
    let content_type = if table {
        TABLE_CONTENT_TYPE
    } else {
        "application/json"
    };
    let head = futures::stream::iter(first.into_iter().map(Ok::<_, Infallible>));
    let body = match live {
        Some(mut rx) => Body::from_stream(futures::StreamExt::chain(
            head,
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx)),
        )),
        None => Body::from_stream(head),
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Forwards live changes to one watcher until the timeout, a lag, or the client leaving.
async fn pump(
    spec: WatchSpec,
    mut rx: broadcast::Receiver<Change>,
    mut last_rv: u64,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let deadline = tokio::time::sleep(spec.timeout);
    tokio::pin!(deadline);
    let mut ticker = tokio::time::interval(spec.bookmark_interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            _ = ticker.tick(), if spec.bookmarks => {
                // Everything up to `last_rv` went out, so resuming there loses nothing.
                loop {
                    match rx.try_recv() {
                        Ok(c) => {
                            if !forward(&spec, &c, &mut last_rv, &tx).await {
                                return;
                            }
                        }
                        Err(broadcast::error::TryRecvError::Empty) => break,
                        Err(_) => return,
                    }
                }
                if tx.send(Ok(bookmark(spec.kind, last_rv, false))).await.is_err() {
                    return;
                }
            }
            change = rx.recv() => match change {
                Ok(c) => {
                    if !forward(&spec, &c, &mut last_rv, &tx).await {
                        return;
                    }
                }
                // Lagged or closed: end the stream; the client re-watches from its last version.
                Err(_) => return,
            },
        }
    }
}

async fn forward(
    spec: &WatchSpec,
    c: &Change,
    last_rv: &mut u64,
    tx: &mpsc::Sender<Result<Bytes, Infallible>>,
) -> bool {
    if c.rv <= *last_rv {
        return true;
    }
    *last_rv = c.rv;
    match spec.change_line(c) {
        Some(line) => tx.send(Ok(line)).await.is_ok(),
        None => true,
    }
}
