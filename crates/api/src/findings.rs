//! Findings: `GET /v1/findings`, `GET /v1/findings/{id}` and the live
//! stream `GET /v1/findings/stream`. `format=ocsf` answers with OCSF
//! Detection Findings. The learned baselines: `GET /v1/baselines`,
//! `GET /v1/baselines/{agent_type}`, `DELETE /v1/baselines/{agent_type}`.

use std::convert::Infallible;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use custody_event::{FindingId, Severity};
use custody_store::{FindingQuery, MAX_FINDINGS, StoredFinding};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::query::read;
use crate::{AppState, Params};

/// The filters of a findings listing, as query parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FindingParams {
    /// The rule's id.
    pub rule: Option<String>,
    /// The run the finding's chain acts in.
    pub run: Option<String>,
    /// The root of the finding's chain.
    pub root: Option<String>,
    /// The least severity: informational, low, medium, high, critical.
    pub severity: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// `custody` (default) or `ocsf`.
    pub format: Option<String>,
}

/// How findings are written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Custody,
    Ocsf,
}

impl FindingParams {
    fn format(&self) -> Result<Format, ApiError> {
        match self.format.as_deref() {
            None | Some("custody") => Ok(Format::Custody),
            Some("ocsf") => Ok(Format::Ocsf),
            Some(other) => Err(ApiError::BadRequest(format!(
                "format: \"{other}\" is neither \"custody\" nor \"ocsf\""
            ))),
        }
    }

    fn to_query(&self) -> Result<FindingQuery, ApiError> {
        let limit = self.limit.unwrap_or(100);
        if !(1..=MAX_FINDINGS).contains(&limit) {
            return Err(ApiError::BadRequest(format!(
                "limit: {limit} is not between 1 and {MAX_FINDINGS}"
            )));
        }
        let min_severity = self
            .severity
            .as_deref()
            .map(|s| {
                s.parse::<Severity>()
                    .map_err(|why| ApiError::BadRequest(format!("severity: {why}")))
            })
            .transpose()?;
        Ok(FindingQuery {
            rule: self.rule.clone(),
            run: self.run.clone(),
            root: self.root.clone(),
            min_severity,
            limit,
            cursor: self.cursor.clone(),
        })
    }
}

/// A stored finding as the API writes it.
fn render(stored: &StoredFinding, format: Format) -> Value {
    match format {
        Format::Ocsf => {
            let mut ocsf = custody_event::ocsf::finding_to_ocsf(&stored.finding);
            if let Some(info) = ocsf.get_mut("finding_info") {
                info["count"] = json!(stored.repeats + 1);
            }
            ocsf
        }
        Format::Custody => json!({
            "seq": stored.seq,
            "finding": stored.finding,
            "repeats": stored.repeats,
        }),
    }
}

pub(crate) async fn list_findings(
    State(state): State<AppState>,
    caller: Caller,
    Params(params): Params<FindingParams>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let format = params.format()?;
    let query = params.to_query()?;
    let page = read(&state, move |store| store.findings(&query)).await?;
    let findings: Vec<Value> = page.findings.iter().map(|f| render(f, format)).collect();
    Ok(Json(json!({"findings": findings, "next_cursor": page.next})).into_response())
}

pub(crate) async fn get_finding(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Params(params): Params<FindingParams>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let format = params.format()?;
    let id: FindingId = id
        .parse()
        .map_err(|error| ApiError::BadRequest(format!("finding id \"{id}\": {error}")))?;
    let stored = read(&state, move |store| store.finding(id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no finding has id {id}")))?;
    Ok(Json(render(&stored, format)).into_response())
}

pub(crate) async fn stream_findings(
    State(state): State<AppState>,
    caller: Caller,
    Params(params): Params<FindingParams>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    caller.require(Role::Viewer)?;
    if params.limit.is_some() || params.cursor.is_some() {
        return Err(ApiError::BadRequest(
            "the live stream takes only rule, run, root, severity and format".into(),
        ));
    }
    let format = params.format()?;
    let filter = params.to_query()?;
    Ok(crate::query::live(
        state.stopping.subscribe(),
        state.store.subscribe_findings(),
        move |stored: &StoredFinding| {
            matches(&filter, stored).then(|| {
                SseEvent::default()
                    .event("finding")
                    .id(stored.seq.to_string())
                    .data(render(stored, format).to_string())
            })
        },
    ))
}

fn matches(filter: &FindingQuery, stored: &StoredFinding) -> bool {
    let finding = &stored.finding;
    let equals = |wanted: &Option<String>, have: Option<&str>| {
        wanted.as_deref().is_none_or(|w| have == Some(w))
    };
    equals(&filter.rule, Some(finding.analytic.id.as_str()))
        && equals(&filter.run, finding.chain.run_id())
        && equals(&filter.root, finding.chain.root_id())
        && filter
            .min_severity
            .is_none_or(|least| finding.severity >= least)
}

fn baselines(state: &AppState) -> Result<&custody_detect::Baselines, ApiError> {
    state
        .detections
        .as_deref()
        .map(|d| &d.baselines)
        .ok_or_else(|| ApiError::NotFound("this server keeps no baselines".into()))
}

/// A baseline as listed: what it holds, counted.
fn summary(baseline: &custody_detect::TypeBaseline) -> Value {
    json!({
        "agent_type": baseline.agent_type,
        "state": if baseline.enforced_since.is_some() { "enforced" } else { "learning" },
        "learning_since": baseline.learning_since,
        "enforced_since": baseline.enforced_since,
        "events": baseline.events,
        "tools": baseline.tools.len(),
        "servers": baseline.servers.len(),
        "resources": baseline.resources.len(),
        "systems": baseline.systems.len(),
        "transitions": baseline.transitions.len(),
        "peak_calls_per_minute": baseline.peak_calls_per_minute,
        "truncated": baseline.truncated,
    })
}

pub(crate) async fn list_baselines(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let all: Vec<Value> = baselines(&state)?.list().iter().map(summary).collect();
    Ok(Json(json!({ "baselines": all })).into_response())
}

pub(crate) async fn get_baseline(
    State(state): State<AppState>,
    caller: Caller,
    Path(agent_type): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let baseline = baselines(&state)?.get(&agent_type).ok_or_else(|| {
        ApiError::NotFound(format!("no baseline for the agent type `{agent_type}`"))
    })?;
    let mut body = summary(&baseline);
    body["baseline"] = serde_json::to_value(&baseline)
        .map_err(|e| ApiError::Internal(format!("writing a baseline: {e}")))?;
    Ok(Json(body).into_response())
}

/// Forgets a type's baseline, in memory and in the store: it learns again.
pub(crate) async fn reset_baseline(
    State(state): State<AppState>,
    caller: Caller,
    Path(agent_type): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Role::Responder)?;
    let forgot = baselines(&state)?.reset(&agent_type);
    let name = format!("baseline:{agent_type}");
    let kept = read(&state, move |store| store.delete_state(&name)).await?;
    if !forgot && !kept {
        return Err(ApiError::NotFound(format!(
            "no baseline for the agent type `{agent_type}`"
        )));
    }
    tracing::info!(%agent_type, by = %caller.token_id, "baseline reset");
    Ok(Json(json!({ "agent_type": agent_type, "reset": true })).into_response())
}
