//! `custody serve`: the collector and API on the embedded store.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use custody_api::{AppState, Role};
use custody_engine::Engine;
use custody_store::Store;
use tokio::net::TcpListener;

use crate::config::{Config, KeysFrom, Trust};

/// File in the data directory holding the admin token made on first start.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// File in the data directory holding the delegation service's signing keys
/// and revocations, readable by its owner only.
pub const DELEGATION_FILE: &str = "delegation.json";

/// The longest an agent token may live.
const MAX_TOKEN_LIFETIME_HOURS: i64 = 1;

/// Runs the server until SIGINT or SIGTERM, then drains: requests in flight
/// finish, queued events are committed, and only then does it exit.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Bind first: a busy port should stop the server before it changes
    // anything in the data directory.
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {} (--listen)", config.listen))?;
    let otlp_grpc = bind_otlp(config.otlp_grpc_listen, "OTLP/gRPC", "--otlp-grpc-listen").await?;
    let otlp_http = bind_otlp(config.otlp_http_listen, "OTLP/HTTP", "--otlp-http-listen").await?;
    let _lock = lock_data_dir(&config.data_dir)?;
    let public_url = match &config.public_url {
        Some(url) => url.clone(),
        None => format!("http://{}", listener.local_addr()?),
    };
    // Before the store opens: a bad JWKS file should stop the server first.
    let trusted = trusted_issuers(&config.issuers, &public_url).await?;
    // So should a rule or a playbook that does not load.
    let detections = Arc::new(detections(&config)?);
    let playbooks = playbooks(&config.playbooks)?;
    // So should policies that do not load.
    let policies = match &config.policies {
        Some(dir) => {
            let policies = crate::policy::load_or_explain(dir)?;
            tracing::info!(
                policies = policies.len(),
                version = policies.version(),
                dir = %dir.display(),
                "policies loaded"
            );
            Some(policies)
        }
        None => None,
    };
    // And so should responders whose secrets are missing.
    let responders = custody_respond::Responders::new(&config.responders)
        .context("the responders ([responders])")?;
    let store = Store::open(&config.data_dir, config.store.clone())
        .with_context(|| format!("opening the store in `{}`", config.data_dir.display()))?;
    first_start(&store, &config.data_dir)?;
    // Attribution lives in memory (bindings, sessions), rebuilt from the
    // stored events, which carry the chains they were attributed; so does the
    // agent graph, unless `--no-graph`.
    let live = if config.graph {
        custody_graph::Live::new(
            custody_graph::Attributor::default(),
            custody_graph::Graph::new(
                custody_graph::Sensitivity::new(config.sensitive.clone())
                    .with_tags(&config.sensitive_tags),
            ),
        )
    } else {
        custody_graph::Live::without_graph(custody_graph::Attributor::default())
    };
    let replayed = {
        let (store, live) = (store.clone(), live.clone());
        tokio::task::spawn_blocking(move || crate::replay(&store, &live)).await??
    };
    restore_baselines(&store, &detections.baselines).await?;
    // Measures in force when the server stopped stay in force.
    let containment = Arc::new(custody_contain::Containment::new());
    restore_containment(&store, &containment).await?;
    let (playbooks, jobs) = custody_contain::Playbooks::new(playbooks, containment.clone());
    let playbooks = Arc::new(playbooks);
    tracing::info!(
        events = replayed.events,
        skipped = replayed.skipped,
        seconds = replayed.took.as_secs_f64(),
        "rebuilt attribution from the store"
    );
    let engine = Arc::new(
        Engine::builder(Arc::new(store.clone()))
            .attribute(live.clone())
            .detect(detections.clone())
            .decide(custody_contain::Contained(containment.clone()))
            .act(playbooks.clone())
            .build(),
    );
    tracing::info!(
        listen = %listener.local_addr()?,
        data_dir = %config.data_dir.display(),
        durability = ?config.store.durability,
        "custody is serving"
    );
    for (listener, what) in [(&otlp_grpc, "OTLP/gRPC"), (&otlp_http, "OTLP/HTTP")] {
        if let Some(listener) = listener {
            tracing::info!(listen = %listener.local_addr()?, "receiving {what} traces");
        }
    }
    let delegation = delegation(&config.data_dir, &public_url)?.trusting(trusted);
    let mut state = AppState::new(engine, store.clone(), config.limits)
        .with_delegation(delegation)
        .with_detections(detections.clone());
    if config.graph {
        state = state.with_graph(live.clone());
    }
    let approvals = custody_api::contain::ApprovalQueue::new(
        config
            .gateway
            .as_ref()
            .map_or(std::time::Duration::from_secs(300), |g| g.approval_ttl),
    );
    // Every call through the gateway is decided by the containment in
    // force, the policies (with what is known of the acting run), then each
    // upstream's tool rules: the strictest stands.
    let mut stages: Vec<Arc<dyn custody_engine::Decide>> =
        vec![Arc::new(custody_contain::Contained(containment.clone()))];
    let control = match (policies, &config.policies) {
        (Some(policies), Some(dir)) => {
            let facts = RunFacts {
                graph: config.graph.then(|| live.clone()),
                signals: playbooks.signals(),
            };
            let cedar = Arc::new(custody_policy::Cedar::new(policies).with_facts(Arc::new(facts)));
            stages.push(cedar.clone());
            let control: Arc<dyn custody_api::contain::PolicyControl> = Arc::new(PolicyDir {
                cedar,
                dir: dir.clone(),
            });
            approvals.bind_policies(control.clone());
            Some(control)
        }
        _ => None,
    };
    let decide: Arc<dyn custody_engine::Decide> = Arc::new(custody_engine::Strictest(stages));
    if let Some(gateway) = &config.gateway {
        state = with_gateway(
            state,
            gateway,
            &public_url,
            &config.issuers,
            &approvals,
            decide,
        )?;
    }
    state = state.with_containing(custody_api::contain::Containing {
        containment: containment.clone(),
        playbooks: Some(playbooks.clone()),
        approvals,
        policies: control.clone(),
    });
    let reloading = control.map(|control| tokio::spawn(reload_on_hangup(control)));
    let executing = tokio::spawn(custody_api::contain::execute(
        state.clone(),
        jobs,
        Arc::new(crate::respond::Configured(responders)),
    ));
    let listeners = custody_api::Listeners {
        api: listener,
        otlp_http,
        otlp_grpc,
    };
    let keeping = tokio::spawn(keep_baselines(store.clone(), detections.clone()));
    custody_api::serve_all(listeners, state, shutdown_signal())
        .await
        .context("serving the API")?;
    keeping.abort();
    executing.abort();
    if let Some(reloading) = reloading {
        reloading.abort();
    }
    save_baselines(&store, &detections.baselines).await;
    tracing::info!("shutting down: committing queued events");
    tokio::task::spawn_blocking(move || store.close())
        .await?
        .context("closing the store")?;
    Ok(())
}

/// Every detection: the Sigma rules (the built-in pack unless turned off,
/// and the files and directories configured), the thresholds and the
/// baselines. A rule or threshold that does not load stops the server,
/// every error named by file and line, or by threshold.
fn detections(config: &Config) -> anyhow::Result<custody_detect::Detections> {
    let mut files = if config.builtin_rules {
        custody_detect::builtin::files()
    } else {
        Vec::new()
    };
    for path in &config.rules {
        files.extend(
            custody_detect::rules::read(path)
                .with_context(|| format!("reading Sigma rules from `{}`", path.display()))?,
        );
    }
    let set =
        custody_detect::RuleSet::load_with(&files, &config.placeholders).map_err(|errors| {
            let listed: Vec<String> = errors.iter().map(ToString::to_string).collect();
            anyhow::anyhow!(
                "{} error(s) in the Sigma rules:\n  {}",
                errors.len(),
                listed.join("\n  ")
            )
        })?;
    tracing::info!(
        rules = set.rules.len(),
        correlations = set.correlations.len(),
        thresholds = config.thresholds.len(),
        "loaded the detections"
    );
    let sensitivity =
        custody_graph::Sensitivity::new(config.sensitive.clone()).with_tags(&config.sensitive_tags);
    custody_detect::Detections::new(
        &set,
        custody_detect::DetectionsConfig {
            thresholds: config.thresholds.clone(),
            teams: config.teams.clone(),
            sensitivity,
            baselines: config.baselines.clone(),
            ..custody_detect::DetectionsConfig::default()
        },
    )
    .map_err(|why| anyhow::anyhow!("{why}"))
}

/// The prefix under which baselines are kept in the store.
const BASELINE_STATE: &str = "baseline:";

/// Puts back the baselines kept by the last run. One that no longer reads
/// is left out, with a warning: its type learns again.
async fn restore_baselines(
    store: &Store,
    baselines: &custody_detect::Baselines,
) -> anyhow::Result<()> {
    let kept = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.states(BASELINE_STATE)).await??
    };
    let mut restored = Vec::new();
    for (name, body) in kept {
        match serde_json::from_str::<custody_detect::TypeBaseline>(&body) {
            Ok(baseline) => restored.push(baseline),
            Err(error) => {
                tracing::warn!(%name, %error, "a kept baseline does not read; its type learns again")
            }
        }
    }
    tracing::info!(types = restored.len(), "restored the learned baselines");
    baselines.restore(restored);
    Ok(())
}

/// Keeps the baselines that changed, every 30 seconds.
async fn keep_baselines(store: Store, detections: Arc<custody_detect::Detections>) {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        save_baselines(&store, &detections.baselines).await;
    }
}

async fn save_baselines(store: &Store, baselines: &custody_detect::Baselines) {
    let changed: Vec<(String, String)> = baselines
        .take_changed()
        .into_iter()
        .filter_map(|b| {
            let body = serde_json::to_string(&b).ok()?;
            Some((format!("{BASELINE_STATE}{}", b.agent_type), body))
        })
        .collect();
    if changed.is_empty() {
        return;
    }
    let store = store.clone();
    let count = changed.len();
    match tokio::task::spawn_blocking(move || store.put_state(&changed)).await {
        Ok(Ok(())) => tracing::debug!(types = count, "kept the baselines"),
        Ok(Err(error)) => {
            tracing::warn!(%error, "keeping the baselines failed; retried with the next change")
        }
        Err(error) => tracing::warn!(%error, "keeping the baselines failed"),
    }
}

/// The listener of an OTLP receiver, unless it is off. A busy port stops
/// the server, naming the flag that moves or disables the receiver.
async fn bind_otlp(
    address: Option<std::net::SocketAddr>,
    what: &str,
    flag: &str,
) -> anyhow::Result<Option<TcpListener>> {
    let Some(address) = address else {
        return Ok(None);
    };
    TcpListener::bind(address).await.map(Some).with_context(|| {
        format!("listening on {address} for {what} ({flag}; `{flag} off` disables it)")
    })
}

/// The state serving the MCP gateway too: its callers authenticated by the
/// delegation service, its calls recorded through the engine.
fn with_gateway(
    state: AppState,
    gateway: &crate::config::Gateway,
    public_url: &str,
    issuers: &[Trust],
    queue: &custody_api::contain::ApprovalQueue,
    decide: Arc<dyn custody_engine::Decide>,
) -> anyhow::Result<AppState> {
    let mut config = gateway.config.clone();
    config.resource = format!("{}{}", public_url.trim_end_matches('/'), config.path);
    // The authorization servers whose tokens the gateway takes: Custody's
    // own token endpoint, and each trusted issuer.
    config.authorization_servers = std::iter::once(public_url.trim_end_matches('/').to_owned())
        .chain(issuers.iter().map(|t| t.config.issuer.clone()))
        .collect();
    let approvals: Arc<dyn custody_gateway::Approvals> = match &gateway.approvals_dir {
        Some(dir) => Arc::new(custody_gateway::approval::Directory::new(
            dir,
            std::time::Duration::from_millis(200),
        )),
        None => Arc::new(queue.clone()),
    };
    let auth = custody_api::GatewayAuth::new(state.clone(), gateway.anonymous.clone());
    let http =
        custody_gateway::http::HttpGateway::new(config, Arc::new(auth), approvals, Some(decide))
            .map_err(|why| anyhow::anyhow!("the gateway: {why}"))?;
    tracing::info!(
        path = http.path(),
        upstreams = gateway.config.upstreams.len(),
        "serving the MCP gateway"
    );
    Ok(state.with_gateway(http))
}

/// What the policies know of the acting run beyond the event: its blast
/// radius and age from the agent graph, and what detection raised on it.
struct RunFacts {
    graph: Option<custody_graph::Live>,
    signals: Arc<custody_contain::RunSignals>,
}

impl custody_policy::Facts for RunFacts {
    fn facts(&self, event: &custody_event::RuntimeEvent) -> custody_policy::RunFacts {
        let raised = self.signals.raised(&event.actor);
        let mut facts = custody_policy::RunFacts {
            findings: raised.findings,
            baseline: raised.baseline,
            ..custody_policy::RunFacts::default()
        };
        let (Some(graph), Some(run)) = (&self.graph, custody_contain::acting_run(&event.actor))
        else {
            return facts;
        };
        let key = custody_graph::NodeKey {
            kind: custody_graph::NodeKind::Run,
            id: run.to_owned(),
        };
        // One lookup: the node's view carries its blast radius.
        let Some(node) = graph.read(|graph| graph.node_view(&key)).flatten() else {
            return facts;
        };
        let radius = &node.blast_radius;
        facts.blast = custody_policy::Blast {
            systems: radius.systems as u64,
            resources: radius.resources as u64,
            sensitive: radius.sensitive_resources as u64,
            credentials: radius.credentials_created as u64,
            privileged: radius.privileged_actions,
            fan_out: radius.fan_out as u64,
        };
        facts.run_age_secs = (chrono::Utc::now() - node.first_seen).num_seconds().max(0);
        facts
    }
}

/// The policy directory, reloaded on demand.
struct PolicyDir {
    cedar: Arc<custody_policy::Cedar>,
    dir: std::path::PathBuf,
}

impl custody_api::contain::PolicyControl for PolicyDir {
    fn reload(&self) -> Result<usize, Vec<String>> {
        self.cedar
            .reload_dir(&self.dir)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    fn version(&self) -> String {
        self.cedar.policies().version().to_owned()
    }
}

/// Reloads the policies on each SIGHUP; a set that does not load is
/// logged, and the running one stays.
async fn reload_on_hangup(control: Arc<dyn custody_api::contain::PolicyControl>) {
    #[cfg(unix)]
    {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hangups.recv().await.is_some() {
            match control.reload() {
                Ok(count) => {
                    tracing::info!(policies = count, version = %control.version(), "policies reloaded");
                }
                Err(errors) => {
                    for error in &errors {
                        tracing::error!(%error, "policy reload refused; the running policies stay");
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = control;
}

/// The playbooks of `files`, checked: a bad one stops the server, naming
/// its file and line.
fn playbooks(files: &[std::path::PathBuf]) -> anyhow::Result<Vec<custody_contain::Playbook>> {
    let mut all = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the playbook file `{}`", file.display()))?;
        all.extend(
            custody_contain::playbook::parse(&file.display().to_string(), &text)
                .map_err(|why| anyhow::anyhow!("the playbooks do not load: {why}"))?,
        );
    }
    custody_contain::playbook::check_unique(&all)
        .map_err(|why| anyhow::anyhow!("the playbooks do not load: {why}"))?;
    if !all.is_empty() {
        tracing::info!(playbooks = all.len(), "playbooks loaded");
    }
    Ok(all)
}

/// Puts back the measures in force when the server last stopped.
async fn restore_containment(
    store: &Store,
    containment: &custody_contain::Containment,
) -> anyhow::Result<()> {
    let kept = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.states("containment:")).await??
    };
    let mut measures = Vec::with_capacity(kept.len());
    for (name, body) in kept {
        measures.push(
            serde_json::from_str(&body)
                .with_context(|| format!("restoring the containment kept as `{name}`"))?,
        );
    }
    let restored = containment.restore(measures);
    if restored > 0 {
        tracing::info!(measures = restored, "containment in force again");
    }
    Ok(())
}

/// Takes the data directory for this server alone: two servers writing one
/// store would each believe they own its queue and its first-start token.
/// The lock lasts as long as the returned file is open, and the operating
/// system releases it if the process dies.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating `{}`", data_dir.display()))?;
    let path = data_dir.join("serve.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening `{}`", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            anyhow::bail!("another `custody serve` is using `{}`", data_dir.display())
        }
        Err(std::fs::TryLockError::Error(error)) => {
            Err(error).with_context(|| format!("locking `{}`", path.display()))
        }
    }
}

/// On first start, with no token in the store, makes an admin token so the
/// new user is never locked out: printed once, and written to a file only
/// its owner may read.
fn first_start(store: &Store, data_dir: &Path) -> anyhow::Result<()> {
    if !store.list_tokens()?.is_empty() {
        return Ok(());
    }
    // The file is written before the token is stored, so a failure leaves
    // no admin token whose secret nobody holds. A file left from an earlier
    // store holds a token this store does not know: it is replaced.
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    if path.exists() {
        tracing::warn!(path = %path.display(), "replacing an admin token file the store has no token for");
        std::fs::remove_file(&path).with_context(|| format!("removing `{}`", path.display()))?;
    }
    let secret = custody_api::new_secret();
    write_private(&path, &secret)?;
    let record =
        custody_api::register_token(store, Role::Admin, Some("first start".into()), &secret)
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&path);
            })?;
    println!(
        "created admin token {} (shown once, also in {}):",
        record.id,
        path.display()
    );
    println!("{secret}");
    Ok(())
}

/// The delegation service, with the keys and revocations saved in the data
/// directory, or new keys saved there on first start.
fn delegation(data_dir: &Path, public_url: &str) -> anyhow::Result<custody_api::Delegation> {
    use custody_delegation::{Issuer, IssuerState};
    let path = data_dir.join(DELEGATION_FILE);
    let lifetime = chrono::Duration::hours(MAX_TOKEN_LIFETIME_HOURS);
    let issuer = match std::fs::read(&path) {
        Ok(bytes) => {
            let state: IssuerState = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading `{}`", path.display()))?;
            Issuer::restore(public_url, "custody", lifetime, &state).with_context(|| {
                format!("restoring the delegation keys from `{}`", path.display())
            })?
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let issuer = Issuer::new(public_url, "custody", lifetime);
            save_delegation(&path, &issuer.state())?;
            issuer
        }
        Err(error) => {
            return Err(error).with_context(|| format!("reading `{}`", path.display()));
        }
    };
    let save: custody_api::SaveState = Arc::new(move |state| {
        save_delegation(&path, state).map_err(|error| std::io::Error::other(format!("{error:#}")))
    });
    Ok(custody_api::Delegation::new(issuer, public_url, save))
}

/// The external issuers whose agent tokens are accepted. Keys in a file
/// are read now, and a bad file stops the server, naming it; keys at a URL
/// are fetched now, and a failure is logged, the server starting anyway
/// and refusing the issuer's tokens, saying why, until a fetch succeeds.
async fn trusted_issuers(
    issuers: &[Trust],
    public_url: &str,
) -> anyhow::Result<Vec<custody_api::TrustedIssuer>> {
    let mut trusted = Vec::with_capacity(issuers.len());
    for Trust { config, keys } in issuers {
        let issuer = &config.issuer;
        anyhow::ensure!(
            issuer.trim_end_matches('/') != public_url.trim_end_matches('/'),
            "issuer `{issuer}` is this server's own (its public URL): it needs no trust"
        );
        trusted.push(match keys {
            KeysFrom::File(path) => {
                let keys =
                    read_jwks(path).with_context(|| format!("the JWKS of issuer `{issuer}`"))?;
                for why in keys.left_out() {
                    tracing::warn!(issuer, path = %path.display(), %why, "left a JWKS key out");
                }
                custody_api::TrustedIssuer::with_keys(config.clone(), keys)
            }
            KeysFrom::Url { url, refresh } => {
                custody_api::TrustedIssuer::fetching(config.clone(), url.clone(), *refresh)
                    .await
                    .context("making the HTTP client that fetches JWKS")?
            }
        });
    }
    Ok(trusted)
}

/// The keys of the JWKS file at `path`.
fn read_jwks(path: &Path) -> anyhow::Result<custody_delegation::KeySet> {
    let bytes = std::fs::read(path).with_context(|| format!("reading `{}`", path.display()))?;
    custody_delegation::KeySet::from_jwks(&bytes).with_context(|| format!("`{}`", path.display()))
}

/// Replaces the delegation file with `state`, owner-only, atomically: a
/// crash leaves the old file or the new one, never half of one.
fn save_delegation(path: &Path, state: &custody_delegation::IssuerState) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(state).context("serializing the delegation state")?;
    let temporary = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&temporary);
    write_private(&temporary, &text)?;
    std::fs::rename(&temporary, path).with_context(|| format!("replacing `{}`", path.display()))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("syncing `{}`", dir.display()))?;
    }
    Ok(())
}

/// Writes `secret` to `path`, readable and writable by its owner only.
fn write_private(path: &Path, secret: &str) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating `{}`", path.display()))?;
    writeln!(file, "{secret}").with_context(|| format!("writing `{}`", path.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing `{}`", path.display()))?;
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = interrupt => {}
            () = terminate => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
