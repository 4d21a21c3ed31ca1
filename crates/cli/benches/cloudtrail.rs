//! CloudTrail import benchmark: `custody ingest --format cloudtrail DIR`
//! into a server running the `custody serve` pipeline (attribution and the
//! graph) on the embedded store, against plain `serde_json` parsing of the
//! same records from the same files, measured in the same run.
//!
//! ```sh
//! cargo bench -p custody-cli --bench cloudtrail -- [RECORDS] [PER_FILE]    # defaults: 300000 1000
//! ```
//!
//! The records are generated (realistic shapes and sizes: IAM users,
//! assumed-role sessions with their issuer and source identity, AWS
//! services, data and management events, errors, resources) into delivered
//! files, `{"Records": [...]}` gzipped as CloudTrail writes them, of
//! `PER_FILE` records on average (varying from half to one and a half
//! times). The baseline gunzips and parses each file into one
//! `serde_json::Value`, on one thread and on as many as the machine has
//! cores. The measured figure is the ingest command run in-process (its own
//! runtime, as in its own process) against the API served in-process (its
//! own runtime of 2 workers): it covers reading, gunzipping, mapping,
//! sending, the server's decoding, the engine's stages, group commit with
//! fsync and every acknowledgement. Client and server share the cores. A
//! `client` line gives the client's own work alone (gunzip, mapping with
//! `custody_import`, serializing the events it sends) on one thread, and the
//! `cpu` line what the whole process spent during the import.
//!
//! Knobs: `CUSTODY_BENCH_DURABILITY=normal`, `CUSTODY_BENCH_ATTRIBUTE=
//! attribution` (no graph, as `--no-graph`).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser as _;
use custody_api::{AppState, Limits};
use custody_engine::Engine;
use custody_store::{Durability, Store, StoreOptions};
use serde_json::{Value, json};

/// The allocator the `custody` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| !a.starts_with('-'));
    let records: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(300_000);
    let per_file: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let durability = match std::env::var("CUSTODY_BENCH_DURABILITY").as_deref() {
        Ok("normal") => Durability::Normal,
        _ => Durability::Full,
    };
    let graph = std::env::var("CUSTODY_BENCH_ATTRIBUTE").as_deref() != Ok("attribution");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    let dir = tempfile::tempdir().expect("temporary directory");
    let logs = dir.path().join("AWSLogs");
    let written = write_files(&logs, records, per_file);
    println!(
        "records: {records} in {} files of {}..{} records, {} bytes on average as JSON; \
         {:.0} MB gzipped ({:.1}x)",
        written.files,
        written.fewest,
        written.most,
        written.json_bytes / records,
        written.gzip_bytes as f64 / 1e6,
        written.json_bytes as f64 / written.gzip_bytes as f64
    );
    println!(
        "durability: {durability:?}, graph: {graph}, cores: {cores}, load: {}",
        load()
    );

    let files = written.paths;
    let one = baseline(&files, 1, records);
    println!(
        "baseline  gunzip + serde_json::Value, 1 thread:  {one:>9.0} records/s   (load {})",
        load()
    );
    if cores > 1 {
        let many = baseline(&files, cores, records);
        println!(
            "baseline  gunzip + serde_json::Value, {cores} threads: {many:>9.0} records/s   (load {})",
            load()
        );
    }
    let mapped = mapping(&files, records);
    println!(
        "client    gunzip + custody_import + serialize, 1 thread: {mapped:>9.0} records/s   (load {})",
        load()
    );

    let rate = ingest(&logs, dir.path(), records, durability, graph);
    println!(
        "measured  custody ingest --format cloudtrail DIR, acknowledged durable: {rate:>9.0} records/s   (load {})",
        load()
    );
    println!(
        "ratio     ingest / 1-thread parse: {:.0}%",
        100.0 * rate / one
    );
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split(' ').next().map(str::to_owned))
        .unwrap_or_default()
}

struct Written {
    paths: Vec<PathBuf>,
    files: usize,
    fewest: usize,
    most: usize,
    json_bytes: usize,
    gzip_bytes: usize,
}

/// Writes `records` records into delivered files under `logs`, laid out as
/// CloudTrail lays them out.
fn write_files(logs: &Path, records: usize, per_file: usize) -> Written {
    let mut written = Written {
        paths: Vec::new(),
        files: 0,
        fewest: usize::MAX,
        most: 0,
        json_bytes: 0,
        gzip_bytes: 0,
    };
    let mut next = 0;
    let mut file = 0;
    while next < records {
        // Half to one and a half times `per_file`, spread over the files.
        let count = (per_file / 2 + (file * 7919) % (per_file + 1))
            .max(1)
            .min(records - next);
        let (account, region) = (ACCOUNTS[file % 3], REGIONS[file % REGIONS.len()]);
        let folder = logs.join(format!("{account}/CloudTrail/{region}/2026/11/25"));
        std::fs::create_dir_all(&folder).expect("log folder");
        let minute = file % 1440;
        let path = folder.join(format!(
            "{account}_CloudTrail_{region}_20261125T{:02}{:02}Z_{file:016x}.json.gz",
            minute / 60,
            minute % 60
        ));
        let body: Vec<Value> = (next..next + count).map(record).collect();
        let text = serde_json::to_vec(&json!({ "Records": body })).expect("serializing");
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&text).expect("gzip");
        let gzipped = encoder.finish().expect("gzip");
        std::fs::write(&path, &gzipped).expect("writing a log file");
        written.json_bytes += text.len();
        written.gzip_bytes += gzipped.len();
        written.fewest = written.fewest.min(count);
        written.most = written.most.max(count);
        written.paths.push(path);
        written.files += 1;
        next += count;
        file += 1;
    }
    written.paths.sort();
    written
}

/// Gunzips and parses every file into a `serde_json::Value` on `threads`
/// threads; records/s.
fn baseline(files: &[PathBuf], threads: usize, records: usize) -> f64 {
    let next = AtomicUsize::new(0);
    let seen = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while let Some(path) = files.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let text = gunzip(path);
                    let value: Value = serde_json::from_slice(&text).expect("valid JSON");
                    let count = value["Records"].as_array().map_or(0, Vec::len);
                    seen.fetch_add(count, Ordering::Relaxed);
                }
            });
        }
    });
    let elapsed = started.elapsed();
    assert_eq!(seen.into_inner(), records);
    records as f64 / elapsed.as_secs_f64()
}

/// The client's own work without the server: gunzip, map with
/// `custody_import` and serialize each event, on one thread; records/s.
fn mapping(files: &[PathBuf], records: usize) -> f64 {
    let now = chrono::Utc::now();
    let started = Instant::now();
    let mut bytes = 0;
    let mut count = 0;
    for path in files {
        let text = gunzip(path);
        for item in custody_import::import(&custody_import::CloudTrail, &text, now) {
            let (_, event) = item.expect("generated records import");
            bytes += serde_json::to_vec(&event).expect("serializing").len();
            count += 1;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(count, records);
    println!(
        "events    {} bytes on average as sent (NDJSON)",
        bytes / records
    );
    records as f64 / elapsed.as_secs_f64()
}

fn gunzip(path: &Path) -> Vec<u8> {
    let file = std::fs::read(path).expect("reading a log file");
    let mut text = Vec::with_capacity(file.len() * 8);
    flate2::read::MultiGzDecoder::new(&file[..])
        .read_to_end(&mut text)
        .expect("gunzip");
    text
}

/// Serves the API in-process and runs `custody ingest --format cloudtrail`
/// on `logs`; records/s.
fn ingest(logs: &Path, dir: &Path, records: usize, durability: Durability, graph: bool) -> f64 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()
        .expect("runtime");
    let data = dir.join("data");
    let store = Store::open(
        &data,
        StoreOptions {
            durability,
            ..StoreOptions::default()
        },
    )
    .expect("store");
    let token = custody_api::issue_token(&store, custody_api::Role::Ingest, None)
        .expect("token")
        .secret;
    // The attribute stage `custody serve` runs.
    let live = if graph {
        custody_graph::Live::new(
            custody_graph::Attributor::default(),
            custody_graph::Graph::default(),
        )
    } else {
        custody_graph::Live::without_graph(custody_graph::Attributor::default())
    };
    let engine = Arc::new(
        Engine::builder(Arc::new(store.clone()))
            .attribute(live.clone())
            .build(),
    );
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("listening");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    let mut state = AppState::new(engine, store.clone(), Limits::default());
    if graph {
        state = state.with_graph(live);
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(custody_api::serve(listener, state, async {
        let _ = stopped.await;
    }));

    let state_dir = dir.join("ingest-state");
    let cli = custody_cli::Cli::try_parse_from([
        "custody".as_ref(),
        "ingest".as_ref(),
        "--format".as_ref(),
        "cloudtrail".as_ref(),
        "--server".as_ref(),
        url.as_ref(),
        "--token".as_ref(),
        token.as_ref(),
        "--state-dir".as_ref(),
        state_dir.as_os_str(),
        logs.as_os_str(),
    ])
    .expect("the command line");
    let cpu_before = thread_cpu();
    let process_before = process_cpu();
    let started = Instant::now();
    let code = custody_cli::run(cli).expect("ingest");
    let elapsed = started.elapsed();
    let cpu = thread_cpu();
    let process = process_cpu() - process_before;
    assert_eq!(code, ExitCode::SUCCESS, "every record is accepted");
    let mut spent: Vec<(String, f64)> = cpu
        .iter()
        .map(|(name, seconds)| {
            (
                name.clone(),
                seconds - cpu_before.get(name).copied().unwrap_or(0.0),
            )
        })
        .filter(|(_, seconds)| *seconds > 0.01)
        .collect();
    spent.sort_by(|a, b| b.1.total_cmp(&a.1));
    let spent: Vec<String> = spent
        .iter()
        .map(|(name, seconds)| format!("{name} {:.0}%", 100.0 * seconds / elapsed.as_secs_f64()))
        .collect();
    println!(
        "cpu       during ingest, of one core: all {:.0}% (client and server); by thread still running: {}",
        100.0 * process / elapsed.as_secs_f64(),
        spent.join(", ")
    );
    let _ = stop.send(());
    let _ = runtime.block_on(server);
    let stats = store.stats();
    println!(
        "store     {} commits, {:.0} events per group commit on average",
        stats.commits,
        stats.committed_events as f64 / stats.commits.max(1) as f64
    );
    assert_eq!(
        store.count().expect("counting") as usize,
        records,
        "every acknowledged record is stored"
    );
    store.close().expect("closing the store");
    runtime.shutdown_timeout(Duration::from_secs(1));
    records as f64 / elapsed.as_secs_f64()
}

/// CPU seconds (user and system) of this process, its ended threads included.
fn process_cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds (user and system) by thread name, summed over threads of one
/// name, from `/proc/self/task` (empty where there is none).
fn thread_cpu() -> std::collections::HashMap<String, f64> {
    let mut cpu = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return cpu;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        *cpu.entry(name).or_insert(0.0) += (ticks(11) + ticks(12)) / 100.0;
    }
    cpu
}

const ACCOUNTS: [&str; 3] = ["111122223333", "444455556666", "777788889999"];
const REGIONS: [&str; 4] = ["us-east-1", "us-west-2", "eu-west-1", "ap-southeast-2"];
const USERS: [&str; 6] = ["alice", "bob", "carol", "ci-deployer", "dan", "terraform"];
const ROLES: [&str; 5] = [
    "deployer",
    "data-pipeline",
    "AWSReservedSSO_AdministratorAccess_3b1f0e2a9c8d7e6f",
    "agent-runtime",
    "OrganizationAccountAccessRole",
];
const AGENTS: [&str; 5] = [
    "aws-cli/2.15.30 Python/3.11.8 Linux/6.1.79-99.167.amzn2023.x86_64 exe/x86_64.amzn.2023 prompt/off command/s3.cp",
    "Boto3/1.34.69 md/Botocore#1.34.69 ua/2.0 os/linux#6.5.0-1016-aws md/arch#x86_64 lang/python#3.12.2 md/pyimpl#CPython cfg/retry-mode#legacy Botocore/1.34.69",
    "aws-sdk-go-v2/1.26.1 os/linux lang/go#1.22.1 md/GOOS#linux md/GOARCH#amd64 api/sts#1.28.5",
    "console.amazonaws.com",
    "Terraform/1.7.5 (+https://www.terraform.io) terraform-provider-aws/5.42.0 (+https://registry.terraform.io/providers/hashicorp/aws) aws-sdk-go-v2/1.26.0",
];

/// A hex id of `width` digits from `n`.
fn hex(n: usize, width: usize) -> String {
    let mixed = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    let text = format!("{mixed:016x}{:016x}", mixed.rotate_left(29));
    text[..width].to_owned()
}

fn uuid_of(n: usize, salt: u128) -> String {
    uuid::Uuid::from_u128((n as u128).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ salt).to_string()
}

/// Record `i`: its identity, call, parameters and outcome vary with `i`.
fn record(i: usize) -> Value {
    let account = ACCOUNTS[i % 3];
    let region = REGIONS[(i / 3) % REGIONS.len()];
    let second = i % 86_400;
    let time = format!(
        "2026-11-25T{:02}:{:02}:{:02}Z",
        second / 3600,
        second / 60 % 60,
        second % 60
    );
    let session = format!("run-{:05}", i % 2000);
    let identity = match i % 10 {
        0..=2 => {
            let user = USERS[i % USERS.len()];
            json!({
                "type": "IAMUser",
                "principalId": format!("AIDA{}", hex(i % 50, 17).to_uppercase()),
                "arn": format!("arn:aws:iam::{account}:user/{user}"),
                "accountId": account,
                "accessKeyId": format!("AKIA{}", hex(i % 50, 16).to_uppercase()),
                "userName": user,
            })
        }
        3..=8 => {
            let role = ROLES[i % ROLES.len()];
            let mut identity = json!({
                "type": "AssumedRole",
                "principalId": format!("AROA{}:{session}", hex(i % 5, 17).to_uppercase()),
                "arn": format!("arn:aws:sts::{account}:assumed-role/{role}/{session}"),
                "accountId": account,
                "accessKeyId": format!("ASIA{}", hex(i % 2000, 16).to_uppercase()),
                "sessionContext": {
                    "sessionIssuer": {
                        "type": "Role",
                        "principalId": format!("AROA{}", hex(i % 5, 17).to_uppercase()),
                        "arn": format!("arn:aws:iam::{account}:role/{role}"),
                        "accountId": account,
                        "userName": role
                    },
                    "webIdFederationData": {},
                    "attributes": {
                        "creationDate": format!("2026-11-25T{:02}:00:00Z", second / 3600),
                        "mfaAuthenticated": "false"
                    }
                }
            });
            if i.is_multiple_of(3) {
                identity["sessionContext"]["sourceIdentity"] =
                    json!(format!("agent-{}@example.com", i % 40));
            }
            identity
        }
        _ => json!({"type": "AWSService", "invokedBy": "cloudtrail.amazonaws.com"}),
    };
    let bucket = format!("customer-exports-{account}");
    let key = format!("2026/11/25/part-{:05}.parquet", i % 4096);
    let (source, name, read_only, category, parameters, response, resources) = match i % 9 {
        0 | 1 => (
            "s3.amazonaws.com",
            "GetObject",
            true,
            "Data",
            json!({"bucketName": bucket, "Host": format!("{bucket}.s3.{region}.amazonaws.com"), "key": key}),
            Value::Null,
            json!([
                {"type": "AWS::S3::Object", "ARN": format!("arn:aws:s3:::{bucket}/{key}")},
                {"accountId": account, "type": "AWS::S3::Bucket", "ARN": format!("arn:aws:s3:::{bucket}")}
            ]),
        ),
        2 => (
            "s3.amazonaws.com",
            "PutObject",
            false,
            "Data",
            json!({"bucketName": bucket, "Host": format!("{bucket}.s3.{region}.amazonaws.com"), "key": key, "x-amz-server-side-encryption": "aws:kms"}),
            json!({"x-amz-server-side-encryption": "aws:kms", "x-amz-server-side-encryption-aws-kms-key-id": format!("arn:aws:kms:{region}:{account}:key/{}", uuid_of(i % 7, 1))}),
            json!([
                {"type": "AWS::S3::Object", "ARN": format!("arn:aws:s3:::{bucket}/{key}")},
                {"accountId": account, "type": "AWS::S3::Bucket", "ARN": format!("arn:aws:s3:::{bucket}")}
            ]),
        ),
        3 => (
            "ec2.amazonaws.com",
            "DescribeInstances",
            true,
            "Management",
            json!({"instancesSet": {"items": [{"instanceId": format!("i-{}", hex(i % 300, 17))}]}, "filterSet": {"items": [{"name": "tag:team", "valueSet": {"items": [{"value": "payments"}]}}]}}),
            Value::Null,
            Value::Null,
        ),
        4 => (
            "sts.amazonaws.com",
            "AssumeRole",
            true,
            "Management",
            json!({"roleArn": format!("arn:aws:iam::{account}:role/{}", ROLES[i % ROLES.len()]), "roleSessionName": session, "durationSeconds": 3600, "sourceIdentity": format!("agent-{}@example.com", i % 40)}),
            json!({
                "credentials": {"accessKeyId": format!("ASIA{}", hex(i % 2000 + 1, 16).to_uppercase()), "sessionToken": hex(i, 32), "expiration": "Nov 25, 2026, 11:05:12 PM"},
                "assumedRoleUser": {"assumedRoleId": format!("AROA{}:{session}", hex(i % 5, 17).to_uppercase()), "arn": format!("arn:aws:sts::{account}:assumed-role/{}/{session}", ROLES[i % ROLES.len()])},
                "sourceIdentity": format!("agent-{}@example.com", i % 40)
            }),
            json!([{"accountId": account, "type": "AWS::IAM::Role", "ARN": format!("arn:aws:iam::{account}:role/{}", ROLES[i % ROLES.len()])}]),
        ),
        5 => (
            "kms.amazonaws.com",
            "Decrypt",
            true,
            "Management",
            json!({"encryptionAlgorithm": "SYMMETRIC_DEFAULT", "encryptionContext": {"aws:s3:arn": format!("arn:aws:s3:::{bucket}/{key}")}}),
            Value::Null,
            json!([{"accountId": account, "type": "AWS::KMS::Key", "ARN": format!("arn:aws:kms:{region}:{account}:key/{}", uuid_of(i % 7, 1))}]),
        ),
        6 => (
            "iam.amazonaws.com",
            "AttachRolePolicy",
            false,
            "Management",
            json!({"roleName": ROLES[i % ROLES.len()], "policyArn": "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess"}),
            Value::Null,
            Value::Null,
        ),
        7 => (
            "secretsmanager.amazonaws.com",
            "GetSecretValue",
            true,
            "Management",
            json!({"secretId": format!("arn:aws:secretsmanager:{region}:{account}:secret:prod/payments/db-{}", hex(i % 20, 6))}),
            Value::Null,
            Value::Null,
        ),
        _ => (
            "lambda.amazonaws.com",
            "Invoke",
            false,
            "Data",
            json!({"functionName": format!("arn:aws:lambda:{region}:{account}:function:export-worker-{}", i % 12), "invocationType": "RequestResponse"}),
            Value::Null,
            json!([{"accountId": account, "type": "AWS::Lambda::Function", "ARN": format!("arn:aws:lambda:{region}:{account}:function:export-worker-{}", i % 12)}]),
        ),
    };
    let mut record = json!({
        "eventVersion": "1.10",
        "userIdentity": identity,
        "eventTime": time,
        "eventSource": source,
        "eventName": name,
        "awsRegion": region,
        "sourceIPAddress": if i % 10 == 9 { "cloudtrail.amazonaws.com".to_owned() } else { format!("10.{}.{}.{}", i % 4, i % 250, i % 199) },
        "userAgent": if i % 10 == 9 { "cloudtrail.amazonaws.com" } else { AGENTS[i % AGENTS.len()] },
        "requestParameters": parameters,
        "responseElements": response,
        "requestID": hex(i, 32).to_uppercase(),
        "eventID": uuid_of(i, 0x5eed),
        "readOnly": read_only,
        "eventType": "AwsApiCall",
        "managementEvent": category == "Management",
        "recipientAccountId": account,
        "eventCategory": category,
        "tlsDetails": {
            "tlsVersion": "TLSv1.3",
            "cipherSuite": "TLS_AES_128_GCM_SHA256",
            "clientProvidedHostHeader": format!("{}.{region}.amazonaws.com", source.trim_end_matches(".amazonaws.com"))
        }
    });
    if !resources.is_null() {
        record["resources"] = resources;
    }
    if category == "Data" {
        record["additionalEventData"] = json!({
            "SignatureVersion": "SigV4",
            "CipherSuite": "TLS_AES_128_GCM_SHA256",
            "bytesTransferredIn": 0,
            "AuthenticationMethod": "AuthHeader",
            "x-amz-id-2": hex(i, 32),
            "bytesTransferredOut": (i % 9000) * 113
        });
        record["sharedEventID"] = json!(uuid_of(i, 0xfeed));
    }
    if i % 20 == 7 {
        record["errorCode"] = json!("AccessDenied");
        record["errorMessage"] = json!(format!(
            "User: arn:aws:sts::{account}:assumed-role/agent-runtime/{session} is not authorized to perform: {}:{name} because no identity-based policy allows the action",
            source.trim_end_matches(".amazonaws.com")
        ));
    }
    record
}
