//! Reading events back: `GET /v1/events`, `GET /v1/events/{id}`, the OCSF
//! export and the live stream.
//!
//! Listing answers are built from the stored JSON as it is, without decoding
//! and re-encoding each event: the store keeps exactly what was serialized on
//! the way in.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use custody_event::{EventId, RuntimeEvent};
use custody_store::{Cursor, EventQuery, Order, Store, StoredEvent};
use futures_util::Stream;
use futures_util::StreamExt as _;
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::{AppState, Params};

/// The filters of an event listing, as query parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventParams {
    /// Oldest observation time: RFC 3339, or an age such as `15m`, `2h`, `7d`.
    pub since: Option<String>,
    /// Observation time to stop before (exclusive), in the same forms.
    pub until: Option<String>,
    /// Kinds, comma-separated.
    pub kind: Option<String>,
    /// Attribution methods, comma-separated: `unattributed` lists the
    /// events nothing explains.
    pub attribution: Option<String>,
    /// The current actor's id.
    pub actor: Option<String>,
    /// The id at the root of the chain.
    pub root: Option<String>,
    /// The run id.
    pub run: Option<String>,
    /// A target key: resource, tool, target principal, server or system.
    pub target: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<usize>,
    /// `newest` (default) or `oldest` first.
    pub order: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl EventParams {
    /// The store query these parameters ask for.
    pub fn to_query(&self, now: DateTime<Utc>) -> Result<EventQuery, ApiError> {
        let kinds = list("kind", self.kind.as_deref())?;
        let attributions = list("attribution", self.attribution.as_deref())?;
        let order = match self.order.as_deref() {
            None | Some("newest") => Order::Newest,
            Some("oldest") => Order::Oldest,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "order: \"{other}\" is neither \"newest\" nor \"oldest\""
                )));
            }
        };
        let limit = self.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "limit: {limit} is not between 1 and 1000"
            )));
        }
        let cursor = self
            .cursor
            .as_deref()
            .map(|c| {
                Cursor::decode(c).map_err(|error| ApiError::BadRequest(format!("cursor: {error}")))
            })
            .transpose()?;
        Ok(EventQuery {
            since: self
                .since
                .as_deref()
                .map(|t| parse_time("since", t, now))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|t| parse_time("until", t, now))
                .transpose()?,
            kinds,
            attributions,
            actor: self.actor.clone(),
            root: self.root.clone(),
            run: self.run.clone(),
            target: self.target.clone(),
            limit,
            order,
            cursor,
        })
    }
}

/// The comma-separated values of parameter `name`; none when absent.
fn list<T: std::str::FromStr<Err = String>>(
    name: &str,
    text: Option<&str>,
) -> Result<Vec<T>, ApiError> {
    text.into_iter()
        .flat_map(|text| text.split(','))
        .map(str::trim)
        .filter(|value| !value.is_empty())
        .map(|value| {
            value
                .parse::<T>()
                .map_err(|why| ApiError::BadRequest(format!("{name}: {why}")))
        })
        .collect()
}

/// Reads a time as RFC 3339 or as an age before `now` (`30s`, `15m`, `2h`,
/// `7d`).
pub fn parse_time(field: &str, text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let bad = || {
        ApiError::BadRequest(format!(
            "{field}: \"{text}\" is neither an RFC 3339 time nor an age such as 30s, 15m, 2h or 7d"
        ))
    };
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let number: i64 = number.parse().map_err(|_| bad())?;
    let age = match unit {
        "s" => chrono::Duration::try_seconds(number),
        "m" => chrono::Duration::try_minutes(number),
        "h" => chrono::Duration::try_hours(number),
        "d" => chrono::Duration::try_days(number),
        _ => None,
    }
    .ok_or_else(bad)?;
    now.checked_sub_signed(age).ok_or_else(bad)
}

/// Runs a store read on a blocking thread: reads wait on SQLite and must not
/// hold up the async workers.
pub(crate) async fn read<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Store) -> Result<T, custody_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|error| ApiError::Internal(format!("query task failed: {error}")))?
        .map_err(ApiError::from)
}

pub(crate) async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    Params(params): Params<EventParams>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let query = params.to_query(Utc::now())?;
    let page = read(&state, move |store| store.query(&query)).await?;
    let mut body =
        String::with_capacity(page.events.iter().map(|e| e.body.len() + 64).sum::<usize>() + 64);
    body.push_str("{\"events\":[");
    for (i, stored) in page.events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        push_record(&mut body, stored);
    }
    body.push_str("],\"next_cursor\":");
    push_cursor(&mut body, page.next.as_ref());
    body.push('}');
    Ok(json_response(body))
}

/// An event id from a request path.
pub(crate) fn event_id(text: &str) -> Result<EventId, ApiError> {
    text.parse()
        .map_err(|error| ApiError::BadRequest(format!("event id \"{text}\": {error}")))
}

pub(crate) async fn get_event(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let id = event_id(&id)?;
    let stored = read(&state, move |store| store.get(id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no event has id {id}")))?;
    let mut body = String::with_capacity(stored.body.len() + 64);
    push_record(&mut body, &stored);
    Ok(json_response(body))
}

pub(crate) async fn export_ocsf(
    State(state): State<AppState>,
    caller: Caller,
    Params(params): Params<EventParams>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let query = params.to_query(Utc::now())?;
    let page = read(&state, move |store| store.query(&query)).await?;
    let events = page
        .events
        .iter()
        .map(|stored| {
            stored
                .event()
                .map(|event| custody_event::ocsf::to_ocsf(&event))
                .map_err(|error| {
                    ApiError::Internal(format!(
                        "stored event {} does not decode: {error}",
                        stored.seq
                    ))
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(axum::Json(serde_json::json!({
        "ocsf_version": custody_event::ocsf::OCSF_VERSION,
        "events": events,
        "next_cursor": page.next.map(|c| c.encode()),
    }))
    .into_response())
}

pub(crate) async fn stream_events(
    State(state): State<AppState>,
    caller: Caller,
    Params(params): Params<EventParams>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    caller.require(Role::Viewer)?;
    // The stream takes a listing's filters, but nothing that pages or orders:
    // it carries events as they are stored.
    for (name, given) in [
        ("since", params.since.is_some()),
        ("until", params.until.is_some()),
        ("limit", params.limit.is_some()),
        ("order", params.order.is_some()),
        ("cursor", params.cursor.is_some()),
    ] {
        if given {
            return Err(ApiError::BadRequest(format!(
                "{name}: the live stream takes only kind, attribution, actor, root, run and target"
            )));
        }
    }
    let filter = params.to_query(Utc::now())?;
    // Only committed, durable events reach the stream.
    let stopping = state.stopping.subscribe();
    Ok(live(
        stopping,
        state.store.subscribe(),
        move |stored: &StoredEvent| {
            if !stored.event().is_ok_and(|event| matches(&filter, &event)) {
                return None;
            }
            let mut data = String::with_capacity(stored.body.len() + 64);
            push_record(&mut data, stored);
            Some(
                SseEvent::default()
                    .event("event")
                    .id(stored.seq.to_string())
                    .data(data),
            )
        },
    ))
}

/// A live tail as server-sent events: each item of each published batch
/// that `message` turns into a message, until the server stops. A
/// subscriber too slow to keep up is told how many batches it missed (a
/// `lagged` message) rather than silently skipping them.
pub(crate) fn live<T: Send + Sync + 'static>(
    mut stopping: tokio::sync::watch::Receiver<bool>,
    receiver: tokio::sync::broadcast::Receiver<std::sync::Arc<Vec<T>>>,
    mut message: impl FnMut(&T) -> Option<SseEvent> + Send + 'static,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = BroadcastStream::new(receiver)
        .map(move |published| match published {
            Ok(batch) => batch
                .iter()
                .filter_map(&mut message)
                .map(Ok)
                .collect::<Vec<_>>(),
            Err(BroadcastStreamRecvError::Lagged(missed)) => {
                vec![Ok(SseEvent::default()
                    .event("lagged")
                    .data(missed.to_string()))]
            }
        })
        .flat_map(futures_util::stream::iter)
        .take_until(async move {
            // An error means the server is gone, which also ends the stream.
            let _ = stopping.wait_for(|stopping| *stopping).await;
        });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Whether an event passes a stream's filters.
fn matches(filter: &EventQuery, event: &RuntimeEvent) -> bool {
    let equals = |wanted: &Option<String>, have: Option<&str>| {
        wanted.as_deref().is_none_or(|w| have == Some(w))
    };
    (filter.kinds.is_empty() || filter.kinds.contains(&event.kind))
        && (filter.attributions.is_empty()
            || filter.attributions.contains(&event.attribution.method))
        && equals(&filter.actor, Some(event.actor.current.id.as_str()))
        && equals(&filter.root, event.actor.root_id())
        && equals(&filter.run, event.actor.run_id())
        && filter
            .target
            .as_deref()
            .is_none_or(|t| event.target.keys().any(|k| k == t))
}

/// Appends `{"seq": ..., "event": ..., "decision": ...}` from stored JSON.
fn push_record(out: &mut String, stored: &StoredEvent) {
    out.push_str("{\"seq\":");
    out.push_str(&stored.seq.to_string());
    out.push_str(",\"event\":");
    out.push_str(&stored.body);
    out.push_str(",\"decision\":");
    out.push_str(
        stored
            .decision
            .as_deref()
            .unwrap_or("{\"verdict\":\"allow\"}"),
    );
    out.push('}');
}

fn push_cursor(out: &mut String, cursor: Option<&Cursor>) {
    match cursor {
        Some(cursor) => {
            out.push('"');
            out.push_str(&cursor.encode());
            out.push('"');
        }
        None => out.push_str("null"),
    }
}

fn json_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use custody_event::{AttributionMethod, EventKind};

    use super::*;

    #[test]
    fn times_are_rfc3339_or_ages() {
        let now: DateTime<Utc> = "2026-11-25T12:00:00Z".parse().unwrap();
        let check = |text: &str, expected: &str| {
            assert_eq!(
                parse_time("since", text, now).unwrap(),
                expected.parse::<DateTime<Utc>>().unwrap(),
                "{text}"
            )
        };
        check("2026-11-25T10:00:00+01:00", "2026-11-25T09:00:00Z");
        check("30s", "2026-11-25T11:59:30Z");
        check("15m", "2026-11-25T11:45:00Z");
        check("2h", "2026-11-25T10:00:00Z");
        check("7d", "2026-11-18T12:00:00Z");
        for bad in ["", "h", "5y", "-5m", "yesterday", "99999999999999999d"] {
            let error = parse_time("since", bad, now).unwrap_err();
            assert!(error.to_string().starts_with("since: "), "{bad}: {error}");
        }
    }

    #[test]
    fn parameters_are_checked() {
        let now = Utc::now();
        let check = |params: EventParams, message: &str| {
            let error = params.to_query(now).unwrap_err();
            assert!(error.to_string().contains(message), "{error}");
        };
        check(
            EventParams {
                kind: Some("tool_call,bogus".into()),
                ..Default::default()
            },
            "unknown event kind \"bogus\"",
        );
        check(
            EventParams {
                attribution: Some("unattributed,guessed".into()),
                ..Default::default()
            },
            "attribution: unknown attribution method \"guessed\"",
        );
        check(
            EventParams {
                limit: Some(0),
                ..Default::default()
            },
            "limit: 0",
        );
        check(
            EventParams {
                limit: Some(1001),
                ..Default::default()
            },
            "limit: 1001",
        );
        check(
            EventParams {
                order: Some("up".into()),
                ..Default::default()
            },
            "order: \"up\"",
        );
        check(
            EventParams {
                cursor: Some("!!".into()),
                ..Default::default()
            },
            "cursor: ",
        );
        let query = EventParams {
            kind: Some("tool_call, other".into()),
            attribution: Some("bound,unattributed".into()),
            ..Default::default()
        }
        .to_query(now)
        .unwrap();
        assert_eq!(query.kinds, [EventKind::ToolCall, EventKind::Other]);
        assert_eq!(
            query.attributions,
            [AttributionMethod::Bound, AttributionMethod::Unattributed]
        );
        assert_eq!(query.limit, 100);
    }
}
