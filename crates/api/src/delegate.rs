//! The delegation service over HTTP: OAuth 2.0 authorization server
//! metadata (RFC 8414), the JWKS, RFC 8693 token exchange, minting a root
//! agent token, and revocation; and the verification of every agent token
//! presented to the API, Custody's or a trusted external issuer's.
//!
//! The metadata, the JWKS and the token endpoint are open, as OAuth needs
//! them to be: the token endpoint is authenticated by the subject token it
//! is given. Minting a root token needs an `admin` API token and revoking a
//! `responder` one. Every token minted is recorded as an `agent_spawn`
//! event, durable before the token is handed out.

use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{Duration, Utc};
use custody_delegation::{
    ACCESS_TOKEN_TYPE, Accepted, Claims, ExchangeError, ExternalIssuer, Issuer, IssuerState,
    Minted, TokenError, Verifier,
};
use custody_event::{Principal, PrincipalKind};
use serde::Deserialize;

use crate::AppState;
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::issuers::{JwksFetcher, TrustedIssuer, UNKNOWN_KEY_WAIT};

/// The RFC 8693 grant type.
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// How long a minted token lives unless the request asks for less.
const DEFAULT_LIFETIME_SECS: i64 = 15 * 60;

/// Called with the issuer's state whenever it changes, to save it.
pub type SaveState = Arc<dyn Fn(&IssuerState) -> std::io::Result<()> + Send + Sync>;

/// The delegation service's state.
pub struct Delegation {
    issuer: RwLock<Issuer>,
    /// The URL clients reach this server at; the issuer's URL.
    public_url: String,
    save: SaveState,
    /// The external issuers whose tokens are accepted too.
    trusted: Vec<Arc<ExternalIssuer>>,
    /// Those whose keys come from a URL.
    fetchers: Vec<Arc<JwksFetcher>>,
}

impl std::fmt::Debug for Delegation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delegation")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl Delegation {
    /// A service around `issuer`, reached at `public_url`, saving its state
    /// with `save`.
    pub fn new(issuer: Issuer, public_url: impl Into<String>, save: SaveState) -> Delegation {
        Delegation {
            issuer: RwLock::new(issuer),
            public_url: public_url.into().trim_end_matches('/').to_owned(),
            save,
            trusted: Vec::new(),
            fetchers: Vec::new(),
        }
    }

    /// Revokes `node` (a token id, root, agent or run) and saves the
    /// issuer's state: every token whose chain passes through it is
    /// refused from now on.
    pub fn revoke_node(&self, node: &str) -> Result<(), String> {
        let mut issuer = self.write();
        issuer.revoke(node.to_owned(), Utc::now());
        (self.save)(&issuer.state()).map_err(|error| format!("saving the revocation: {error}"))
    }

    /// Lifts the revocation of `node` and saves; whether it was revoked.
    pub fn reinstate_node(&self, node: &str) -> Result<bool, String> {
        let mut issuer = self.write();
        let was = issuer.reinstate(node);
        if was {
            (self.save)(&issuer.state())
                .map_err(|error| format!("saving the reinstatement: {error}"))?;
        }
        Ok(was)
    }

    /// The same service accepting the agent tokens of `trusted` issuers
    /// too.
    pub fn trusting(mut self, trusted: Vec<TrustedIssuer>) -> Delegation {
        for issuer in trusted {
            self.trusted.push(issuer.issuer);
            self.fetchers.extend(issuer.fetcher);
        }
        self
    }

    /// The claim naming runs in the tokens of the trusted issuer `iss`, if
    /// it is one.
    pub(crate) fn run_claim_of(&self, iss: &str) -> Option<&str> {
        self.trusted
            .iter()
            .find(|trusted| trusted.issuer() == iss)
            .map(|trusted| trusted.run_claim())
    }

    /// Verifies an agent token of Custody's issuer or of a trusted one,
    /// against Custody's revocations. A token naming a key its issuer
    /// lacks, when that issuer's keys come from a URL, waits briefly for
    /// them to be fetched again, then is verified once more.
    pub async fn accept(&self, token: &str) -> Result<Accepted, TokenError> {
        let first = self.verify(token);
        if !matches!(
            first,
            Err(TokenError::UnknownKey(_) | TokenError::NoKeys { .. })
        ) {
            return first;
        }
        let Some(fetcher) = self.fetcher_for(token) else {
            return first;
        };
        fetcher.refresh_on_demand(UNKNOWN_KEY_WAIT).await;
        self.verify(token)
    }

    /// Whether a token accepted before still is: not expired, nothing in
    /// its chain revoked since. Its signature and claims are not checked
    /// again; the caller keeps the exact token it verified.
    pub fn recheck(&self, accepted: &Accepted) -> Result<(), TokenError> {
        accepted.recheck(&self.read(), Utc::now())
    }

    fn verify(&self, token: &str) -> Result<Accepted, TokenError> {
        Verifier::new(&self.read(), &self.trusted).verify(token, Utc::now())
    }

    /// Verifies the subject token of an exchange. Only Custody's own tokens
    /// are exchanged, since only they carry scopes Custody granted: one of
    /// another issuer, trusted or not, is refused as such.
    fn verify_subject(
        &self,
        token: &str,
        now: chrono::DateTime<Utc>,
    ) -> Result<Claims, TokenError> {
        let issuer = self.read();
        match custody_delegation::claimed_issuer(token) {
            Ok(claimed) if claimed != issuer.issuer() => {
                Err(TokenError::Issuer(issuer.issuer().to_owned()))
            }
            _ => issuer.verify(token, now),
        }
    }

    /// The fetcher of the keys of the issuer `token` claims, if any.
    fn fetcher_for(&self, token: &str) -> Option<&Arc<JwksFetcher>> {
        let issuer = custody_delegation::claimed_issuer(token).ok()?;
        self.fetchers
            .iter()
            .find(|fetcher| fetcher.issuer() == issuer)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Issuer> {
        self.issuer.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Issuer> {
        self.issuer.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `GET /.well-known/oauth-authorization-server`.
pub(crate) async fn metadata(State(state): State<AppState>) -> Result<Response, ApiError> {
    let delegation = service(&state)?;
    let base = &delegation.public_url;
    Ok(axum::Json(serde_json::json!({
        "issuer": delegation.read().issuer(),
        "token_endpoint": format!("{base}/oauth/token"),
        "jwks_uri": format!("{base}/oauth/jwks"),
        "grant_types_supported": [TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["none"],
        "response_types_supported": [],
        "scopes_supported": [],
    }))
    .into_response())
}

/// `GET /oauth/jwks`.
pub(crate) async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let delegation = service(&state)?;
    Ok(axum::Json(delegation.read().jwks()).into_response())
}

/// The form of an RFC 8693 request, with Custody's extension parameters
/// naming the new actor.
#[derive(Debug, Deserialize)]
pub(crate) struct ExchangeForm {
    grant_type: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    requested_token_type: Option<String>,
    scope: Option<String>,
    /// The sub-agent's id.
    custody_actor: Option<String>,
    /// The sub-agent's run.
    custody_run: Option<String>,
    /// The lifetime asked for, in seconds.
    custody_lifetime: Option<i64>,
}

/// `POST /oauth/token`: token exchange. Answers RFC 6749 errors.
pub(crate) async fn token(
    State(state): State<AppState>,
    form: Result<axum::Form<ExchangeForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    match exchange(&state, form).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn exchange(
    state: &AppState,
    form: Result<axum::Form<ExchangeForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, OauthError> {
    let delegation =
        service(state).map_err(|_| OauthError::new("server_error", "no delegation service"))?;
    let axum::Form(form) =
        form.map_err(|rejection| OauthError::invalid_request(rejection.body_text()))?;
    match form.grant_type.as_deref() {
        Some(TOKEN_EXCHANGE) => {}
        Some(other) => {
            return Err(OauthError::new(
                "unsupported_grant_type",
                format!("grant type `{other}` is not supported, only {TOKEN_EXCHANGE}"),
            ));
        }
        None => return Err(OauthError::invalid_request("`grant_type` is missing")),
    }
    let required = |value: Option<String>, name: &str| {
        value
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| OauthError::invalid_request(format!("`{name}` is missing")))
    };
    let subject_token = required(form.subject_token, "subject_token")?;
    let subject_type = required(form.subject_token_type, "subject_token_type")?;
    if subject_type != ACCESS_TOKEN_TYPE && subject_type != "urn:ietf:params:oauth:token-type:jwt" {
        return Err(OauthError::invalid_request(format!(
            "subject token type `{subject_type}` is not supported"
        )));
    }
    if let Some(requested) = form.requested_token_type.filter(|t| t != ACCESS_TOKEN_TYPE) {
        return Err(OauthError::new(
            "invalid_target",
            format!("only {ACCESS_TOKEN_TYPE} is issued, not `{requested}`"),
        ));
    }
    let actor = agent(
        required(form.custody_actor, "custody_actor")?,
        required(form.custody_run, "custody_run")?,
    );
    let scopes: Option<Vec<&str>> = form
        .scope
        .as_deref()
        .map(|s| s.split_whitespace().collect());
    let lifetime = Duration::seconds(
        form.custody_lifetime
            .unwrap_or(DEFAULT_LIFETIME_SECS)
            .max(1),
    );
    let now = Utc::now();
    // Verified apart, so the lock is not held while a refusal is recorded.
    let verified = delegation.verify_subject(&subject_token, now);
    let parent = match verified {
        Ok(parent) => parent,
        Err(error) => {
            record_refusal(state, "/oauth/token", &subject_token, &error.to_string()).await;
            return Err(OauthError::new(
                "invalid_grant",
                format!("the subject token is refused: {error}"),
            ));
        }
    };
    let (parent, minted) = {
        let issuer = delegation.read();
        let minted = issuer
            .exchange(&subject_token, &actor, scopes.as_deref(), lifetime, now)
            .map_err(|error| match error {
                ExchangeError::Scope(_) => OauthError::new("invalid_scope", error.to_string()),
                ExchangeError::SubjectToken(_) => {
                    OauthError::new("invalid_grant", error.to_string())
                }
                ExchangeError::Actor | ExchangeError::TooDeep => {
                    OauthError::invalid_request(error.to_string())
                }
                ExchangeError::Signing(_) => OauthError::new("server_error", error.to_string()),
            })?;
        (parent, minted)
    };
    let chain = parent
        .chain()
        .map_err(|error| OauthError::new("invalid_grant", error.to_string()))?;
    record_spawn(
        state,
        &chain,
        &parent.jti,
        &actor,
        &minted,
        "oauth/token-exchange",
    )
    .await
    .map_err(|error| OauthError::new("temporarily_unavailable", error.to_string()))?;
    Ok(token_response(&minted, now))
}

/// `POST /v1/agent-tokens` body: who deploys which agent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MintRequest {
    /// The human or service the agent acts for.
    subject: Subject,
    /// The agent and its run.
    agent: AgentRun,
    /// The scopes granted.
    #[serde(default)]
    scope: Vec<String>,
    /// Lifetime in seconds.
    #[serde(default)]
    expires_in: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Subject {
    #[serde(rename = "type")]
    kind: String,
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentRun {
    id: String,
    run_id: String,
}

/// `POST /v1/agent-tokens`: an administrator mints the token an agent
/// starts with, acting for a human or a service.
pub(crate) async fn mint(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<axum::Json<MintRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Admin)?;
    let delegation = service(&state)?;
    let axum::Json(request) =
        body.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let kind = match request.subject.kind.as_str() {
        "human" => PrincipalKind::Human,
        "service" => PrincipalKind::Service,
        other => {
            return Err(ApiError::BadRequest(format!(
                "subject.type `{other}` is not `human` or `service`"
            )));
        }
    };
    if request.subject.id.trim().is_empty() {
        return Err(ApiError::BadRequest("subject.id must not be empty".into()));
    }
    let root = Principal {
        kind,
        id: request.subject.id,
        name: None,
        version: None,
        run_id: None,
    };
    let actor = agent(request.agent.id, request.agent.run_id);
    let scopes: Vec<&str> = request.scope.iter().map(String::as_str).collect();
    let lifetime = Duration::seconds(request.expires_in.unwrap_or(DEFAULT_LIFETIME_SECS).max(1));
    let now = Utc::now();
    let minted = delegation
        .read()
        .mint(&root, &actor, &scopes, lifetime, now)
        .map_err(|error| ApiError::BadRequest(error.to_string()))?;
    let chain = custody_event::Actor {
        root: None,
        agents: Vec::new(),
        current: root,
        credential: None,
    };
    let voucher = format!("api token {}", caller.token_id);
    record_spawn(
        &state,
        &chain,
        &voucher,
        &actor,
        &minted,
        "custody/mint-agent-token",
    )
    .await?;
    Ok(token_response(&minted, now))
}

/// `POST /v1/revocations` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RevokeRequest {
    /// A token id, a root, an agent or a run.
    node: String,
}

/// `POST /v1/revocations`: every token whose chain passes through the node
/// is refused from now on.
pub(crate) async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<axum::Json<RevokeRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    caller.require(Role::Responder)?;
    let delegation = service(&state)?;
    let axum::Json(request) =
        body.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    if request.node.trim().is_empty() {
        return Err(ApiError::BadRequest("node must not be empty".into()));
    }
    let saved = {
        let mut issuer = delegation.write();
        issuer.revoke(request.node.clone(), Utc::now());
        (delegation.save)(&issuer.state())
    };
    saved.map_err(|error| ApiError::Internal(format!("saving the revocation: {error}")))?;
    tracing::info!(node = %request.node, "revoked");
    Ok(axum::Json(serde_json::json!({"revoked": request.node})).into_response())
}

fn service(state: &AppState) -> Result<&Arc<Delegation>, ApiError> {
    state
        .delegation
        .as_ref()
        .ok_or_else(|| ApiError::NotFound("the delegation service is not enabled".into()))
}

fn agent(id: String, run: String) -> Principal {
    Principal {
        kind: PrincipalKind::Agent,
        id,
        name: None,
        version: None,
        run_id: Some(run),
    }
}

/// Records the minting of `minted` for `actor` by `chain` as an
/// `agent_spawn` event, vouched for by `voucher` (the parent token, or the
/// administrator's API token), and waits until it is durable.
async fn record_spawn(
    state: &AppState,
    chain: &custody_event::Actor,
    voucher: &str,
    actor: &Principal,
    minted: &Minted,
    action: &str,
) -> Result<(), ApiError> {
    let expires = chrono::DateTime::from_timestamp(minted.claims.exp, 0).unwrap_or_else(Utc::now);
    let event = serde_json::json!({
        "kind": "agent_spawn",
        "action": action,
        "observed_at": Utc::now(),
        "source": {"type": "custody", "name": "delegation"},
        "actor": chain,
        "target": {"principal": actor},
        "outcome": {"status": "success"},
        "attributes": {
            "custody.minted_token": minted.claims.jti,
            "custody.token_expires": expires.to_rfc3339(),
            "custody.scope": minted.claims.scope,
        },
    });
    let event = custody_event::decode_value(event)
        .map_err(|error| ApiError::Internal(format!("building the spawn event: {error}")))?;
    let provenance = custody_engine::Provenance::Custody {
        what: format!("{action}, vouched for by {voucher}"),
        chain: chain.clone(),
    };
    let ingested = state
        .engine
        .ingest_batch_as(vec![event], Utc::now(), &provenance)?;
    ingested.receipt.durable().await?;
    Ok(())
}

/// Records a refused agent token as a `denied` authentication event, by an
/// unknown actor: what the token claims is kept as unverified attributes
/// (cut to 256 characters), never as the event's chain.
pub(crate) async fn record_refusal(state: &AppState, at: &str, token: &str, reason: &str) {
    let claims: serde_json::Value = token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
        })
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    // A trusted issuer may name runs by a claim of its own.
    let run_claim = claims
        .get("iss")
        .and_then(|iss| iss.as_str())
        .and_then(|iss| state.delegation.as_ref()?.run_claim_of(iss))
        .unwrap_or("custody_run");
    let run_pointer = format!("/act/{}", run_claim.replace('~', "~0").replace('/', "~1"));
    let claim = |pointer: &str| {
        claims
            .pointer(pointer)
            .and_then(|v| v.as_str())
            .map(|v| v.chars().take(256).collect::<String>())
    };
    let mut attributes = serde_json::Map::new();
    for (name, pointer) in [
        ("custody.unverified_sub", "/sub"),
        ("custody.unverified_jti", "/jti"),
        ("custody.unverified_actor", "/act/sub"),
        ("custody.unverified_run", run_pointer.as_str()),
        ("custody.unverified_iss", "/iss"),
    ] {
        if let Some(value) = claim(pointer) {
            attributes.insert(name.into(), value.into());
        }
    }
    let event = serde_json::json!({
        "kind": "authentication",
        "action": "custody/agent-token-refused",
        "observed_at": Utc::now(),
        "source": {"type": "custody", "name": "delegation"},
        "actor": {"current": {"type": "unknown", "id": "unverified agent token"}},
        "target": {"system": at},
        "outcome": {"status": "denied", "reason": reason.chars().take(1024).collect::<String>()},
        "attributes": attributes,
    });
    let Ok(event) = custody_event::decode_value(event) else {
        return;
    };
    let provenance = custody_engine::Provenance::Custody {
        what: format!("an agent token refused at {at}"),
        chain: event.actor.clone(),
    };
    // The answer goes out whatever happens here; a refusal that cannot be
    // recorded is logged instead.
    match state
        .engine
        .ingest_batch_as(vec![event], Utc::now(), &provenance)
    {
        Ok(ingested) => {
            if let Err(error) = ingested.receipt.durable().await {
                tracing::warn!(%error, reason, "recording a refused agent token");
            }
        }
        Err(error) => tracing::warn!(%error, reason, "recording a refused agent token"),
    }
}

fn token_response(minted: &Minted, now: chrono::DateTime<Utc>) -> Response {
    let body = serde_json::json!({
        "access_token": minted.token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": (minted.claims.exp - now.timestamp()).max(0),
        "scope": minted.claims.scope,
    });
    let mut response = axum::Json(body).into_response();
    // RFC 6749 5.1: tokens are never cached.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An RFC 6749 error answer: `{"error": code, "error_description": ...}`.
#[derive(Debug)]
struct OauthError {
    code: &'static str,
    description: String,
}

impl OauthError {
    fn new(code: &'static str, description: impl Into<String>) -> OauthError {
        OauthError {
            code,
            description: description.into(),
        }
    }

    fn invalid_request(description: impl Into<String>) -> OauthError {
        OauthError::new("invalid_request", description)
    }
}

impl From<ApiError> for OauthError {
    fn from(error: ApiError) -> OauthError {
        OauthError::new("server_error", error.to_string())
    }
}

impl IntoResponse for OauthError {
    fn into_response(self) -> Response {
        let status = match self.code {
            "server_error" => StatusCode::INTERNAL_SERVER_ERROR,
            "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        let mut response = (
            status,
            axum::Json(
                serde_json::json!({"error": self.code, "error_description": self.description}),
            ),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}
