//! The `custody` command line, end to end: every test runs the real binary,
//! as a server and as its clients, on temporary directories only.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    Body, COMMAND_TIMEOUT, Server, answers, call, custody, exchange_form, exchange_token,
    free_port, mint_agent_token, output_within, post_event, stored_event,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// serve

#[test]
fn first_start_prints_the_admin_token_once_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    let (server, stdout) = serve_capturing_stdout(&data);
    let announcement = stdout
        .next_within(Duration::from_secs(10))
        .expect("no announcement of the admin token");
    let printed = stdout
        .next_within(Duration::from_secs(10))
        .expect("the admin token was not printed");
    assert!(
        announcement.starts_with("created admin token tok_")
            && announcement.contains("admin.token"),
        "{announcement}"
    );
    assert!(printed.starts_with("cst_"), "not a token: {printed}");
    let file = data.join("admin.token");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("{printed}\n")
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "admin.token has mode {mode:o}");
    }
    assert_eq!(
        status(&server, reqwest::Method::GET, "/v1/events", &printed, None),
        200
    );
    server.kill();
    assert_eq!(
        stdout.rest(),
        Vec::<String>::new(),
        "the first start printed more than the token"
    );

    let (server, stdout) = serve_capturing_stdout(&data);
    assert_eq!(
        status(&server, reqwest::Method::GET, "/v1/events", &printed, None),
        200
    );
    server.kill();
    assert_eq!(
        stdout.rest(),
        Vec::<String>::new(),
        "a second start printed something"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("{printed}\n"),
        "admin.token changed"
    );
}

/// Where a setting of `custody serve` comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Src {
    Flag,
    Env,
    File,
    Default,
}

#[test]
fn settings_are_taken_from_flag_then_environment_then_file_then_default() {
    use Src::*;
    // (sources setting the address, sources setting the data directory,
    // where it must listen, which data directory it must use)
    let cases: &[(&[Src], &[Src], Src, Src)] = &[
        (&[File], &[File], File, File),
        (&[Env, File], &[Env, File], Env, Env),
        (&[Flag, Env, File], &[Flag, Env, File], Flag, Flag),
        (&[Flag, File], &[File], Flag, File),
        (&[Env], &[Flag, Env], Env, Flag),
        (&[Flag], &[], Flag, Default),
    ];
    for &(listen_from, data_from, listen_expected, data_expected) in cases {
        check_settings(listen_from, data_from, listen_expected, data_expected);
    }
}

fn check_settings(
    listen_from: &[Src],
    data_from: &[Src],
    listen_expected: Src,
    data_expected: Src,
) {
    let case = format!("listen from {listen_from:?}, data_dir from {data_from:?}");
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let data_dir = |src: Src| match src {
        Src::Default => cwd.join("custody-data"),
        other => dir.path().join(format!("{other:?}").to_lowercase()),
    };
    let ports: Vec<(Src, u16)> = [Src::Flag, Src::Env, Src::File]
        .into_iter()
        .map(|s| (s, free_port()))
        .collect();
    let address = |src: Src| {
        let port = ports
            .iter()
            .find(|(s, _)| *s == src)
            .expect("a port per source")
            .1;
        format!("127.0.0.1:{port}")
    };

    let mut command = custody();
    command
        .arg("serve")
        .current_dir(&cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut file = String::new();
    for &src in listen_from {
        match src {
            Src::Flag => _ = command.args(["--listen", &address(src)]),
            Src::Env => _ = command.env("CUSTODY_LISTEN", address(src)),
            Src::File => file.push_str(&format!("listen = \"{}\"\n", address(src))),
            Src::Default => unreachable!("the default is no setting"),
        }
    }
    for &src in data_from {
        match src {
            Src::Flag => _ = command.arg("--data-dir").arg(data_dir(src)),
            Src::Env => _ = command.env("CUSTODY_DATA_DIR", data_dir(src)),
            Src::File => file.push_str(&format!(
                "data_dir = {}\n",
                json!(data_dir(src).to_str().unwrap())
            )),
            Src::Default => unreachable!("the default is no setting"),
        }
    }
    if !file.is_empty() {
        let path = dir.path().join("custody.toml");
        std::fs::write(&path, file).unwrap();
        command.arg("--config").arg(path);
    }

    let url = format!("http://{}", address(listen_expected));
    let server = Server::attach(command.spawn().unwrap(), &url, &data_dir(data_expected));
    for &src in listen_from.iter().filter(|s| **s != listen_expected) {
        assert!(
            !answers(&format!("http://{}", address(src))),
            "{case}: it also listens on the {src:?} address"
        );
    }
    for &src in data_from.iter().filter(|s| **s != data_expected) {
        assert!(
            !data_dir(src).exists(),
            "{case}: the {src:?} data directory was created"
        );
    }
    drop(server);
}

#[test]
fn serve_listens_on_127_0_0_1_7070_by_default() {
    // Whether this test holds the port or another program does, `serve`
    // cannot bind it, and its error names the address it tried: the test
    // never needs the port to be free.
    let _held = TcpListener::bind("127.0.0.1:7070");
    let dir = tempfile::tempdir().unwrap();
    let run = run(custody()
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data")));
    assert_ne!(run.code, Some(0));
    assert!(
        run.stderr.contains("listening on 127.0.0.1:7070"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Server::start(&data, &[]);
    let port = free_port().to_string();
    let second = run(custody()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data));
    assert_eq!(second.code, Some(1), "{}", second.stderr);
    assert!(
        second.stderr.contains(&format!(
            "another `custody serve` is using `{}`",
            data.display()
        )),
        "{}",
        second.stderr
    );
    // The first server is untouched, and once it is gone the directory is
    // free again.
    assert_eq!(stored(&first).len(), 0);
    first.kill();
    let again = Server::start(&data, &[]);
    assert_eq!(stored(&again).len(), 0);
}

#[test]
fn bad_config_files_stop_serve_with_the_file_and_the_field() {
    // (file content, what the error must name besides the file)
    let cases: &[(&str, &[&str])] = &[
        ("lisen = \"127.0.0.1:1\"\n", &["unknown field `lisen`"]),
        (
            "listen = \"nowhere\"\n",
            &["listen", "invalid socket address"],
        ),
        ("listen = \"127.0.0.1:99999\"\n", &["listen"]),
        (
            "durability = \"sometimes\"\n",
            &["durability", "\"sometimes\""],
        ),
        ("queue_capacity = -1\n", &["queue_capacity"]),
    ];
    for (content, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("custody.toml");
        std::fs::write(&config, content).unwrap();
        let data = dir.path().join("data");
        let run = run(custody()
            .args(["serve", "--config"])
            .arg(&config)
            .arg("--data-dir")
            .arg(&data));
        assert_eq!(run.code, Some(1), "{content}: {}", run.stderr);
        assert!(
            run.stderr.contains(&config.display().to_string()),
            "{content}: the file is not named: {}",
            run.stderr
        );
        for fragment in *expected {
            assert!(
                run.stderr.contains(fragment),
                "{content}: no {fragment:?} in: {}",
                run.stderr
            );
        }
        assert!(
            !data.exists(),
            "{content}: a store was created despite the bad file"
        );
    }
}

#[test]
fn a_stale_admin_token_file_does_not_leave_an_admin_token_nobody_holds() {
    // The store is gone but an old admin.token is still there, as after
    // `rm custody.db*`. Refusing to start is fine; storing a fresh admin
    // token whose secret is then thrown away is not: every later start finds
    // a token in the store, makes none, and the file's secret is refused.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    Server::start(&data, &[]).kill();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("custody.db")
        {
            std::fs::remove_file(path).unwrap();
        }
    }

    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = custody()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = common::drain(child.stderr.take().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if answers(&url) {
            break None;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("custody serve neither answered nor exited within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    match exited {
        Some(status) => {
            let stderr = String::from_utf8(stderr.join().unwrap()).unwrap();
            assert!(
                !status.success() && stderr.contains("admin.token"),
                "{status}: {stderr}"
            );
            let listed = run(custody().args(["token", "list", "--data-dir"]).arg(&data)).success();
            assert_eq!(
                listed.stdout.lines().count(),
                1,
                "the failed start stored a token nobody holds:\n{}",
                listed.stdout
            );
        }
        None => {
            let server = Server::attach(child, &url, &data);
            assert_eq!(
                status(
                    &server,
                    reqwest::Method::GET,
                    "/v1/events",
                    &server.token,
                    None
                ),
                200
            );
        }
    }
}

// ---------------------------------------------------------------------------
// token

#[test]
fn tokens_are_created_listed_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);

    let created = run(custody()
        .args([
            "token",
            "create",
            "--role",
            "viewer",
            "--name",
            "grafana",
            "--data-dir",
        ])
        .arg(dir.path()))
    .success();
    let secret = created.stdout.trim().to_owned();
    assert_eq!(created.stdout.lines().count(), 1, "{}", created.stdout);
    assert!(secret.starts_with("cst_"), "{secret}");
    let id = created
        .stderr
        .split_whitespace()
        .find(|word| word.starts_with("tok_"))
        .unwrap_or_else(|| panic!("no token id on stderr: {}", created.stderr))
        .to_owned();
    assert!(
        created
            .stderr
            .contains(&format!("created viewer token {id}")),
        "{}",
        created.stderr
    );
    assert!(
        !created.stderr.contains("cst_"),
        "the secret is on stderr too"
    );

    let events = vec![
        Ev {
            action: "from-a-viewer",
            ..EV
        }
        .json(),
    ];
    assert_eq!(
        status(&server, reqwest::Method::GET, "/v1/events", &secret, None),
        200
    );
    assert_eq!(
        status(
            &server,
            reqwest::Method::POST,
            "/v1/events",
            &secret,
            Some(ndjson(&events))
        ),
        403
    );

    let listed = run(custody()
        .args(["token", "list", "--data-dir"])
        .arg(dir.path()))
    .success();
    assert!(
        !listed.stdout.contains("cst_") && !listed.stderr.contains("cst_"),
        "a secret is listed: {}",
        listed.stdout
    );
    let rows: Vec<Vec<&str>> = listed
        .stdout
        .lines()
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["ID", "ROLE", "CREATED", "REVOKED", "NAME"]);
    assert_eq!(rows.len(), 3, "{}", listed.stdout);
    let row = rows
        .iter()
        .find(|row| row[0] == id)
        .unwrap_or_else(|| panic!("{id} is not listed: {}", listed.stdout));
    assert_eq!(
        (row[1], row.len(), row[row.len() - 1]),
        ("viewer", 4, "grafana"),
        "{}",
        listed.stdout
    );
    assert!(
        rows.iter().any(|row| row[1] == "admin"),
        "the admin token is not listed: {}",
        listed.stdout
    );

    let revoked = run(custody()
        .args(["token", "revoke", &id, "--data-dir"])
        .arg(dir.path()))
    .success();
    assert!(
        revoked.stderr.contains(&format!("revoked token {id}")),
        "{}",
        revoked.stderr
    );
    assert_eq!(
        status(&server, reqwest::Method::GET, "/v1/events", &secret, None),
        401
    );
    assert_eq!(
        status(
            &server,
            reqwest::Method::GET,
            "/v1/events",
            &server.token,
            None
        ),
        200
    );
    let listed = run(custody()
        .args(["token", "list", "--data-dir"])
        .arg(dir.path()))
    .success();
    let row: Vec<&str> = listed
        .stdout
        .lines()
        .find(|line| line.starts_with(&id))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(
        row.len(),
        5,
        "the revocation time is not listed: {}",
        listed.stdout
    );

    let again = run(custody()
        .args(["token", "revoke", &id, "--data-dir"])
        .arg(dir.path()));
    assert_eq!(again.code, Some(1));
    assert!(
        again
            .stderr
            .contains(&format!("no active token has id \"{id}\"")),
        "{}",
        again.stderr
    );
}

#[test]
fn token_commands_refuse_bad_roles_and_missing_stores() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let data = server.data_dir.clone();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let nowhere = dir.path().join("nowhere");
    // (arguments, data directory, what stderr must say)
    let cases: &[(&[&str], &Path, &str)] = &[
        (
            &["token", "create", "--role", "root"],
            &data,
            "unknown role \"root\", expected one of: ingest, viewer, responder, admin",
        ),
        (
            &["token", "create", "--role", "viewer"],
            &empty,
            "no store in `",
        ),
        (
            &["token", "list"],
            &empty,
            "start `custody serve` there first, or pass --data-dir",
        ),
        (
            &["token", "revoke", "tok_000000000000"],
            &nowhere,
            "no store in `",
        ),
    ];
    for (args, data_dir, expected) in cases {
        let run = run(custody().args(*args).arg("--data-dir").arg(data_dir));
        assert_ne!(run.code, Some(0), "{args:?}");
        assert!(
            run.stderr.contains(expected),
            "{args:?}: no {expected:?} in: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
    }
    assert_eq!(
        std::fs::read_dir(&empty).unwrap().count(),
        0,
        "a store was created where there was none"
    );
    assert!(!nowhere.exists());
}

// ---------------------------------------------------------------------------
// ingest

#[test]
fn ingest_reports_bad_lines_by_file_and_line_and_sends_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let state = dir.path().join("state");
    let file = dir.path().join("events.ndjson");
    let mut no_current_id = Ev {
        action: "no-current-id",
        ..EV
    }
    .json();
    no_current_id["actor"]["current"]
        .as_object_mut()
        .unwrap()
        .remove("id");
    let valid = |action: &str| Ev { action, ..EV }.json().to_string();
    let lines = [
        valid("line-1"),
        "not json".to_owned(),
        valid("line-3"),
        r#"{"kind": "tool_call", oops}"#.to_owned(),
        no_current_id.to_string(),
        String::new(),
        Ev { kind: "nope", ..EV }.json().to_string(),
        valid("line-8"),
    ];
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let ingest = |extra: &[&str]| {
        let mut args = vec![
            "ingest",
            "--state-dir",
            state.to_str().unwrap(),
            file.to_str().unwrap(),
        ];
        args.extend(extra);
        Run::from(server.cli(&args))
    };
    let f = file.display();

    let first = ingest(&[]);
    assert_eq!(first.code, Some(2), "{}", first.stderr);
    // (line, how its message starts)
    let errors: &[(usize, &str)] = &[
        (2, "event: an event is a JSON object"),
        (
            4,
            "event: invalid JSON: key must be a string at line 1 column 23",
        ),
        (5, "actor.current: missing field `id`"),
        (
            7,
            "kind: unknown variant `nope`, expected one of `tool_call`",
        ),
    ];
    check_errors(&first.stderr, &file, errors);
    assert!(
        first
            .stderr
            .ends_with("sent 3 events from 1 files; 4 refused; 0 skipped as already sent\n"),
        "{}",
        first.stderr
    );
    assert_eq!(actions(&stored(&server)), ["line-8", "line-3", "line-1"]);

    let again = ingest(&[]);
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert_eq!(
        again.stderr,
        format!(
            "{f}: already sent (use --restart to send it again)\n\
             sent 0 events from 1 files; 0 refused; 0 skipped as already sent\n"
        )
    );
    assert_eq!(stored(&server).len(), 3);

    let restarted = ingest(&["--restart"]);
    assert_eq!(restarted.code, Some(2), "{}", restarted.stderr);
    check_errors(&restarted.stderr, &file, errors);
    assert!(
        restarted
            .stderr
            .ends_with("sent 3 events from 1 files; 4 refused; 0 skipped as already sent\n"),
        "{}",
        restarted.stderr
    );
    assert_eq!(
        actions(&stored(&server)),
        ["line-8", "line-3", "line-1"],
        "resending stored events twice"
    );
}

#[test]
fn ingest_sends_only_lines_appended_since_the_last_run() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let state = dir.path().join("state");
    // A file larger than the 64 KiB the progress file fingerprints, and a
    // small one that the appended lines change within those 64 KiB.
    for (name, before) in [("large", 400), ("small", 3)] {
        let file = dir.path().join(format!("{name}.ndjson"));
        let events: Vec<Value> = (0..before).map(|n| bulk(name, n)).collect();
        std::fs::write(&file, ndjson(&events)).unwrap();
        let ingest = || {
            Run::from(server.cli(&[
                "ingest",
                "--state-dir",
                state.to_str().unwrap(),
                file.to_str().unwrap(),
            ]))
        };
        let first = ingest().success();
        assert!(
            first.stderr.ends_with(&format!(
                "sent {before} events from 1 files; 0 refused; 0 skipped as already sent\n"
            )),
            "{name}: {}",
            first.stderr
        );
        let count = stored(&server).len();

        let appended: Vec<Value> = (before..before + 2).map(|n| bulk(name, n)).collect();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap()
            .write_all(ndjson(&appended).as_bytes())
            .unwrap();
        let second = ingest().success();
        assert_eq!(stored(&server).len(), count + 2, "{name}");
        assert_eq!(
            second.stderr,
            format!(
                "{}: resuming after line {before}\n\
                 sent 2 events from 1 files; 0 refused; {before} skipped as already sent\n",
                file.display()
            ),
            "{name}: only the 2 appended lines should be sent"
        );
    }
}

#[test]
fn ingest_cuts_batches_of_large_events_to_fit_the_servers_body_limit() {
    let dir = tempfile::tempdir().unwrap();
    // The server takes bodies of up to 10 MB; 300 events of about 40 KB
    // would make one 12 MB batch of the default 1,000 events.
    let server = Server::start(&dir.path().join("data"), &["--max-body-bytes", "10000000"]);
    let padding = "x".repeat(40_000);
    let events: Vec<Value> = (0..300)
        .map(|n| {
            let mut event = bulk("large", n);
            event["raw"] = json!({ "padding": padding });
            event
        })
        .collect();
    let file = dir.path().join("large.ndjson");
    std::fs::write(&file, ndjson(&events)).unwrap();
    let run = Run::from(server.cli(&[
        "ingest",
        "--state-dir",
        dir.path().join("state").to_str().unwrap(),
        file.to_str().unwrap(),
    ]))
    .success();
    assert!(
        run.stderr
            .ends_with("sent 300 events from 1 files; 0 refused; 0 skipped as already sent\n"),
        "{}",
        run.stderr
    );
    assert_eq!(stored(&server).len(), 300);
}

#[test]
fn ingest_reads_arrays_pretty_objects_gzip_and_directories() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let state = dir.path().join("state");
    let files = dir.path().join("files");
    let tree = files.join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();

    let array = files.join("array.json");
    std::fs::write(
        &array,
        serde_json::to_string_pretty(&batch("array", 3)).unwrap(),
    )
    .unwrap();
    let pretty = files.join("examples.json");
    let mut examples: Vec<PathBuf> = std::fs::read_dir(repo().join("examples/events"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    examples.sort();
    let example_ids: Vec<String> = examples
        .iter()
        .map(|path| {
            let event: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            event["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let text: String = examples
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap() + "\n")
        .collect();
    std::fs::write(&pretty, text).unwrap();
    let gzipped = files.join("events.ndjson.gz");
    std::fs::write(&gzipped, gzip(ndjson(&batch("gzip", 4)).as_bytes())).unwrap();
    std::fs::write(tree.join("a.ndjson"), ndjson(&batch("tree-a", 2))).unwrap();
    std::fs::write(
        tree.join("sub/b.json"),
        serde_json::to_string(&batch("tree-b", 2)).unwrap(),
    )
    .unwrap();
    std::fs::write(
        tree.join("sub/deeper/c.ndjson.gz"),
        gzip(ndjson(&batch("tree-c", 2)).as_bytes()),
    )
    .unwrap();

    // (what is sent, how many events it holds)
    let cases: &[(&Path, usize)] = &[
        (&array, 3),
        (&pretty, examples.len()),
        (&gzipped, 4),
        (&tree, 6),
    ];
    let mut expected = 0;
    for (path, events) in cases {
        let run = Run::from(server.cli(&[
            "ingest",
            "--state-dir",
            state.to_str().unwrap(),
            path.to_str().unwrap(),
        ]));
        assert_eq!(run.code, Some(0), "{}: {}", path.display(), run.stderr);
        let files = if *path == tree.as_path() { 3 } else { 1 };
        assert!(
            run.stderr.ends_with(&format!(
                "sent {events} events from {files} files; 0 refused; 0 skipped as already sent\n"
            )),
            "{}: {}",
            path.display(),
            run.stderr
        );
        expected += events;
        assert_eq!(stored(&server).len(), expected, "{}", path.display());
    }
    let records = stored(&server);
    let ids: HashSet<&str> = records
        .iter()
        .map(|r| r["event"]["id"].as_str().unwrap())
        .collect();
    for id in &example_ids {
        assert!(
            ids.contains(id.as_str()),
            "example event {id} was not stored with its own id"
        );
    }
    let actions: HashSet<String> = actions(&records).into_iter().collect();
    for action in ["tree-a-1", "tree-b-1", "tree-c-1", "gzip-3", "array-2"] {
        assert!(actions.contains(action), "{action} is missing");
    }
}

#[test]
fn interrupted_ingest_resumes_and_stores_every_event_once() {
    const EVENTS: usize = 30_000;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let state = dir.path().join("state");
    let file = dir.path().join("big.ndjson");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for n in 0..EVENTS {
            writeln!(out, "{}", bulk("big", n)).unwrap();
        }
        out.flush().unwrap();
    }
    let args = [
        "ingest",
        "--batch",
        "500",
        "--state-dir",
        state.to_str().unwrap(),
        file.to_str().unwrap(),
    ];

    let mut child = custody()
        .args(args)
        .env("CUSTODY_SERVER", &server.url)
        .env("CUSTODY_TOKEN", &server.token)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if progress(&state).is_some_and(|p| p["done_through"].as_u64().unwrap_or(0) > 0) {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("ingest ended ({status}) before it recorded any progress");
        }
        assert!(
            Instant::now() < deadline,
            "ingest recorded no progress within 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let interrupted = progress(&state).unwrap();
    assert_eq!(
        interrupted["complete"], false,
        "ingest finished before it was killed: {interrupted}"
    );
    let done = interrupted["done_through"].as_u64().unwrap() as usize;
    assert!(done < EVENTS, "{interrupted}");

    let resumed = Run::from(server.cli(&args)).success();
    assert_eq!(
        resumed.stderr,
        format!(
            "{}: resuming after line {done}\n\
             sent {} events from 1 files; 0 refused; {done} skipped as already sent\n",
            file.display(),
            EVENTS - done
        )
    );
    let records = stored(&server);
    assert_eq!(records.len(), EVENTS);
    let actions: HashSet<String> = actions(&records).into_iter().collect();
    assert_eq!(actions.len(), EVENTS, "an event is stored twice");
}

// ---------------------------------------------------------------------------
// events

#[test]
fn events_are_shown_as_a_table_and_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    post(
        &server,
        &[
            Ev {
                kind: "tool_call",
                action: "a1",
                at: "2026-11-25T10:00:00Z",
                root: "alice",
                agents: &["planner"],
                current: "worker-1",
                run: "run-1",
                target: "repo-a",
            }
            .json(),
            Ev {
                kind: "data_access",
                action: "a2",
                at: "2026-11-25T10:10:00Z",
                root: "alice",
                agents: &[],
                current: "worker-2",
                run: "run-2",
                target: "bucket-b",
            }
            .json(),
            Ev {
                kind: "agent_spawn",
                action: "a3",
                at: "2026-11-25T10:20:00Z",
                root: "bob",
                agents: &["planner"],
                current: "worker-1",
                run: "run-3",
                target: "repo-c",
            }
            .json(),
            Ev {
                kind: "other",
                action: "a4",
                at: "2026-11-25T10:30:00Z",
                root: "bob",
                agents: &[],
                current: "worker-3",
                run: "run-1",
                target: "repo-a",
            }
            .json(),
        ],
    );

    let table = Run::from(server.cli(&["events"])).success();
    let rows: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(rows.len(), 5, "{}", table.stdout);
    let header: Vec<&str> = rows[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "OBSERVED",
            "KIND",
            "ACTION",
            "CHAIN",
            "ATTRIBUTION",
            "TARGET",
            "OUTCOME",
            "VERDICT"
        ]
    );
    let expected = [
        ("other", "a4", "bob > worker-3"),
        ("agent_spawn", "a3", "bob > planner > worker-1"),
        ("data_access", "a2", "alice > worker-2"),
        ("tool_call", "a1", "alice > planner > worker-1"),
    ];
    for (row, (kind, action, chain)) in rows[1..].iter().zip(expected) {
        let words: Vec<&str> = row.split_whitespace().collect();
        assert_eq!((words[1], words[2]), (kind, action), "{row}");
        assert!(
            row.contains(&format!(" {chain} ")),
            "no chain {chain:?} in {row}"
        );
        // Posted with an API token, the chains are only reported.
        assert!(row.contains(" unattributed "), "{row}");
    }

    // (filters, the actions listed, in order)
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &["a4", "a3", "a2", "a1"]),
        (&["--kind", "tool_call"], &["a1"]),
        (&["--kind", "tool_call,data_access"], &["a2", "a1"]),
        (&["--actor", "worker-1"], &["a3", "a1"]),
        (&["--root", "bob"], &["a4", "a3"]),
        (&["--run", "run-1"], &["a4", "a1"]),
        (&["--target", "repo-a"], &["a4", "a1"]),
        (&["--target", "bucket-b"], &["a2"]),
        (&["--target", "filesystem"], &["a4", "a3", "a2", "a1"]),
        (&["--since", "2026-11-25T10:15:00Z"], &["a4", "a3"]),
        (&["--until", "2026-11-25T10:15:00Z"], &["a2", "a1"]),
        (&["--root", "alice", "--kind", "data_access"], &["a2"]),
        (&["--actor", "nobody"], &[]),
        // Posted with an API token, nothing explains them.
        (
            &["--attribution", "unattributed"],
            &["a4", "a3", "a2", "a1"],
        ),
        (&["--attribution", "authenticated,bound"], &[]),
        (&["--oldest-first"], &["a1", "a2", "a3", "a4"]),
        (&["--limit", "2"], &["a4", "a3"]),
        (
            &["--limit", "2", "--oldest-first", "--root", "bob"],
            &["a3", "a4"],
        ),
    ];
    for (filters, expected) in cases {
        let mut args = vec!["events", "--json"];
        args.extend(*filters);
        let run = Run::from(server.cli(&args)).success();
        assert_eq!(actions(&records(&run.stdout)), *expected, "{filters:?}");
    }
}

#[test]
fn events_follow_pages_beyond_a_thousand() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, ndjson(&batch("page", 1500))).unwrap();
    let state = dir.path().join("state");
    Run::from(server.cli(&[
        "ingest",
        "--state-dir",
        state.to_str().unwrap(),
        file.to_str().unwrap(),
    ]))
    .success();

    // (arguments, how many lines, the first and last actions)
    let cases: &[(&[&str], usize, &str, &str)] = &[
        (&["--limit", "1200"], 1200, "page-1499", "page-300"),
        (
            &["--limit", "1200", "--oldest-first"],
            1200,
            "page-0",
            "page-1199",
        ),
        (&["--limit", "5000"], 1500, "page-1499", "page-0"),
        (&["--limit", "1000"], 1000, "page-1499", "page-500"),
    ];
    for (extra, lines, first, last) in cases {
        let mut args = vec!["events", "--json"];
        args.extend(*extra);
        let run = Run::from(server.cli(&args)).success();
        let actions = actions(&records(&run.stdout));
        assert_eq!(actions.len(), *lines, "{extra:?}");
        assert_eq!(
            (actions[0].as_str(), actions[lines - 1].as_str()),
            (*first, *last),
            "{extra:?}"
        );
        assert_eq!(
            actions.iter().collect::<HashSet<_>>().len(),
            *lines,
            "{extra:?}: an event is listed twice"
        );
    }
}

// ---------------------------------------------------------------------------
// tail

#[test]
fn tail_prints_events_as_they_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"), &[]);
    let all = Tail::start(&server, &[]);
    let data_access = Tail::start(&server, &["--kind", "data_access"]);

    // The stream only carries events stored after it is open: send probes
    // until both followers have printed one.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        all.poll();
        data_access.poll();
        if !all.seen.borrow().is_empty() && !data_access.seen.borrow().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "custody tail printed nothing within 20 s"
        );
        post(
            &server,
            &[with_id(
                Ev {
                    kind: "data_access",
                    action: "probe",
                    ..EV
                }
                .json(),
            )],
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let tool_calls: Vec<Value> = (0..3)
        .map(|n| {
            with_id(
                Ev {
                    kind: "tool_call",
                    action: &format!("call-{n}"),
                    ..EV
                }
                .json(),
            )
        })
        .collect();
    let reads: Vec<Value> = (0..3)
        .map(|n| {
            with_id(
                Ev {
                    kind: "data_access",
                    action: &format!("read-{n}"),
                    ..EV
                }
                .json(),
            )
        })
        .collect();
    post(&server, &tool_calls);
    post(&server, &reads);

    let everything: Vec<&Value> = tool_calls.iter().chain(&reads).collect();
    all.wait_for(&everything, Duration::from_secs(10));
    let reads_only: Vec<&Value> = reads.iter().collect();
    data_access.wait_for(&reads_only, Duration::from_secs(10));
    // The tool calls were stored before the reads, so a follower that lets
    // them through would have printed them by now.
    for record in data_access.seen.borrow().iter() {
        assert_eq!(record["event"]["kind"], "data_access", "{record}");
    }
}

// ---------------------------------------------------------------------------
// no token, schema

#[test]
fn client_commands_without_a_token_say_how_to_give_one() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let file = dir.path().join("events.ndjson");
    std::fs::write(&file, ndjson(&batch("unsent", 1))).unwrap();
    let state = dir.path().join("state");
    let server = format!("http://127.0.0.1:{}", free_port());
    let cases: &[(&[&str], &Path)] = &[
        (&["events"], &empty),
        (&["tail", "--json"], &empty),
        (
            &[
                "ingest",
                "--state-dir",
                state.to_str().unwrap(),
                file.to_str().unwrap(),
            ],
            &empty,
        ),
        (&["events"], &dir.path().join("missing")),
    ];
    for (args, data_dir) in cases {
        let run = run(custody()
            .args(*args)
            .env("CUSTODY_SERVER", &server)
            .env("CUSTODY_DATA_DIR", data_dir));
        assert_eq!(run.code, Some(1), "{args:?}: {}", run.stderr);
        let expected = format!(
            "error: no token given (--token or CUSTODY_TOKEN) and `{}` is not readable",
            data_dir.join("admin.token").display()
        );
        assert!(
            run.stderr.starts_with(&expected),
            "{args:?}: {}",
            run.stderr
        );
        assert!(run.stdout.is_empty(), "{args:?}: {}", run.stdout);
    }
}

#[test]
fn schema_prints_the_committed_json_schemas() {
    let cases: &[(&[&str], &str)] = &[
        (&["schema"], "schema/runtime-event.v1.schema.json"),
        (&["schema", "--new"], "schema/new-event.v1.schema.json"),
    ];
    for (args, committed) in cases {
        let run = run(custody().args(*args)).success();
        let printed: Value = serde_json::from_str(&run.stdout).unwrap();
        let committed: Value =
            serde_json::from_slice(&std::fs::read(repo().join(committed)).unwrap()).unwrap();
        assert_eq!(printed, committed, "{args:?}");
    }
}

// ---------------------------------------------------------------------------
// helpers

/// What a finished command exited with and printed.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }
}

impl Run {
    /// The run, after checking it succeeded.
    fn success(self) -> Run {
        assert_eq!(self.code, Some(0), "the command failed: {}", self.stderr);
        self
    }
}

fn run(command: &mut Command) -> Run {
    Run::from(output_within(command, COMMAND_TIMEOUT))
}

/// Checks that the `FILE:LINE: ` lines of `stderr` are exactly `expected`:
/// for each bad line, its number and how its message starts.
fn check_errors(stderr: &str, file: &Path, expected: &[(usize, &str)]) {
    let prefix = format!("{}:", file.display());
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with(&prefix))
        .collect();
    assert_eq!(errors.len(), expected.len(), "{stderr}");
    for (error, (line, start)) in errors.iter().zip(expected) {
        let wanted = format!("{prefix}{line}: {start}");
        assert!(
            error.starts_with(&wanted),
            "expected {wanted:?}, got {error:?}"
        );
    }
}

/// A test event's fields that the tests look at.
#[derive(Clone, Copy)]
struct Ev<'a> {
    kind: &'a str,
    action: &'a str,
    at: &'a str,
    root: &'a str,
    agents: &'a [&'a str],
    current: &'a str,
    run: &'a str,
    target: &'a str,
}

const EV: Ev<'static> = Ev {
    kind: "tool_call",
    action: "tools/call",
    at: "2026-11-25T10:00:00Z",
    root: "alice",
    agents: &["planner"],
    current: "worker-1",
    run: "run-1",
    target: "repo-a",
};

impl Ev<'_> {
    /// The event as submitted, without an id.
    fn json(self) -> Value {
        let agents: Vec<Value> = self
            .agents
            .iter()
            .map(|id| json!({"type": "agent", "id": id}))
            .collect();
        json!({
            "version": 1,
            "kind": self.kind,
            "action": self.action,
            "observed_at": self.at,
            "source": {"type": "gateway", "name": "gw-test"},
            "actor": {
                "root": {"type": "human", "id": self.root},
                "agents": agents,
                "current": {"type": "agent", "id": self.current, "run_id": self.run}
            },
            "target": {"tool": "read_file", "server": "filesystem", "resource": self.target},
            "outcome": {"status": "success", "duration_ms": 3}
        })
    }
}

/// The `n`th event of a numbered series, a second after the one before.
fn bulk(series: &str, n: usize) -> Value {
    let at = format!(
        "2026-11-25T{:02}:{:02}:{:02}Z",
        10 + n / 3600,
        (n / 60) % 60,
        n % 60
    );
    Ev {
        action: &format!("{series}-{n}"),
        at: &at,
        target: &format!("file:///repo/{n}.rs"),
        ..EV
    }
    .json()
}

fn batch(series: &str, count: usize) -> Vec<Value> {
    (0..count).map(|n| bulk(series, n)).collect()
}

fn with_id(mut event: Value) -> Value {
    event["id"] = json!(uuid::Uuid::now_v7().to_string());
    event
}

fn ndjson(events: &[Value]) -> String {
    events
        .iter()
        .map(|event| event.to_string() + "\n")
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every stored event, newest first, through `custody events --json`.
fn stored(server: &Server) -> Vec<Value> {
    let run = Run::from(server.cli(&["events", "--json", "--limit", "1000000"])).success();
    records(&run.stdout)
}

fn records(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn actions(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|record| record["event"]["action"].as_str().unwrap().to_owned())
        .collect()
}

/// The progress file of the only file ingested with `state`, if written.
fn progress(state: &Path) -> Option<Value> {
    let entries = std::fs::read_dir(state).ok()?;
    let path = entries
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))?;
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The status of an API call with `token`, with an NDJSON body if given.
fn status(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    token: &str,
    ndjson: Option<String>,
) -> u16 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", server.url))
            .bearer_auth(token)
            .timeout(Duration::from_secs(30));
        if let Some(body) = ndjson {
            request = request
                .header("content-type", "application/x-ndjson")
                .body(body);
        }
        request
            .send()
            .await
            .expect("calling the server")
            .status()
            .as_u16()
    })
}

/// Posts `events` with the admin token and checks they were all accepted.
fn post(server: &Server, events: &[Value]) {
    assert_eq!(
        status(
            server,
            reqwest::Method::POST,
            "/v1/events",
            &server.token,
            Some(ndjson(events))
        ),
        200
    );
}

/// Starts `custody serve` on `data_dir` with its stdout captured line by line.
fn serve_capturing_stdout(data_dir: &Path) -> (Server, Lines) {
    let port = free_port();
    let mut child = custody()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = Lines::of(&mut child);
    (
        Server::attach(child, &format!("http://127.0.0.1:{port}"), data_dir),
        lines,
    )
}

/// The lines a child process prints on stdout, read on a thread.
struct Lines(mpsc::Receiver<String>);

impl Lines {
    fn of(child: &mut Child) -> Lines {
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Lines(receiver)
    }

    fn next_within(&self, timeout: Duration) -> Option<String> {
        self.0.recv_timeout(timeout).ok()
    }

    /// Every line left, once the process is gone.
    fn rest(self) -> Vec<String> {
        let mut rest = Vec::new();
        while let Ok(line) = self.0.recv_timeout(Duration::from_secs(10)) {
            rest.push(line);
        }
        rest
    }
}

/// A running `custody tail --json`, and the records it printed so far.
struct Tail {
    child: Child,
    lines: Lines,
    seen: std::cell::RefCell<Vec<Value>>,
}

impl Tail {
    fn start(server: &Server, filters: &[&str]) -> Tail {
        let mut child = custody()
            .args(["tail", "--json"])
            .args(filters)
            .env("CUSTODY_SERVER", &server.url)
            .env("CUSTODY_TOKEN", &server.token)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Lines::of(&mut child);
        Tail {
            child,
            lines,
            seen: Default::default(),
        }
    }

    /// Takes in what was printed so far.
    fn poll(&self) {
        while let Ok(line) = self.lines.0.try_recv() {
            self.seen
                .borrow_mut()
                .push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
        }
    }

    /// Waits until every one of `events` was printed.
    fn wait_for(&self, events: &[&Value], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let wanted: HashSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        loop {
            self.poll();
            let seen = self.seen.borrow();
            let printed: HashSet<&str> = seen
                .iter()
                .map(|r| r["event"]["id"].as_str().unwrap())
                .collect();
            let missing = wanted.difference(&printed).count();
            if missing == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "custody tail did not print {missing} events within {timeout:?}"
            );
            drop(seen);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn delegation_keys_and_revocations_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // The issuer is the public URL, whatever port the server listens on.
    let public = ["--public-url", "https://custody.example.com"];
    let server = Server::start(dir.path(), &public);
    let (status, metadata) = call(
        &server,
        reqwest::Method::GET,
        "/.well-known/oauth-authorization-server",
        "",
        Body::None,
    );
    assert_eq!(status, 200);
    assert_eq!(metadata["issuer"], "https://custody.example.com");
    assert_eq!(
        metadata["token_endpoint"],
        "https://custody.example.com/oauth/token"
    );
    let file = dir.path().join("delegation.json");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the signing keys are the owner's only");
    }
    let (_, jwks) = call(&server, reqwest::Method::GET, "/oauth/jwks", "", Body::None);
    let (status, minted) = call(
        &server,
        reqwest::Method::POST,
        "/v1/agent-tokens",
        &server.token,
        Body::Json(
            json!({"subject": {"type": "human", "id": "alice@example.com"},
                          "agent": {"id": "release-bot", "run_id": "run-0"}}),
        ),
    );
    assert_eq!(status, 200, "{minted}");
    let root = minted["access_token"].as_str().unwrap().to_owned();
    let exchange = |server: &Server, token: &str, run: &str| {
        call(
            server,
            reqwest::Method::POST,
            "/oauth/token",
            "",
            exchange_form(token, "auditor", run),
        )
    };
    let (status, child) = exchange(&server, &root, "run-0.a");
    assert_eq!(status, 200, "{child}");
    let child = child["access_token"].as_str().unwrap().to_owned();
    let (status, _) = call(
        &server,
        reqwest::Method::POST,
        "/v1/revocations",
        &server.token,
        Body::Json(json!({"node": "run-0.a"})),
    );
    assert_eq!(status, 200);
    server.kill();

    // Restarted (on another port), with the same keys and revocations.
    let server = Server::start(dir.path(), &public);
    let (_, again) = call(&server, reqwest::Method::GET, "/oauth/jwks", "", Body::None);
    assert_eq!(again, jwks, "the same keys");
    let (status, _) = exchange(&server, &root, "run-0.b");
    assert_eq!(
        status, 200,
        "a token minted before the restart still exchanges"
    );
    let (status, refused) = exchange(&server, &child, "run-0.a.1");
    assert_eq!(status, 400);
    assert!(
        refused["error_description"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{refused}"
    );
}

#[test]
fn a_reported_event_with_a_minted_token_is_bound_to_its_chain_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let token = mint_agent_token(&server, "alice@example.com", "release-bot", "run-0");
    let payload = token.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let jti = claims["jti"].as_str().unwrap().to_owned();

    // A source reports an action made with that token; it names no chain,
    // and claims to be authenticated.
    let report = |server: &Server| {
        let event = json!({
            "kind": "tool_call", "action": "tools/call",
            "observed_at": chrono::Utc::now().to_rfc3339(),
            "source": {"type": "otlp"},
            "actor": {"current": {"type": "agent", "id": "release-bot", "run_id": "run-0"},
                      "credential": {"type": "custody_token", "id": jti}},
            "target": {"tool": "read_file"},
            "outcome": {"status": "success"},
            "attribution": {"method": "authenticated"},
        });
        post_event(server, &server.token, event)
    };
    let check = |event: &Value| {
        assert_eq!(event["attribution"]["method"], "bound", "{event}");
        assert_eq!(event["actor"]["root"]["id"], "alice@example.com", "{event}");
        let detail = event["attribution"]["evidence"][0]["detail"]
            .as_str()
            .unwrap();
        assert!(detail.contains(&format!("custody_token {jti}")), "{detail}");
    };
    check(&report(&server));
    server.kill();
    // The binding is learned again from the stored spawn event.
    let server = Server::start(dir.path(), &[]);
    check(&report(&server));

    // An event nothing explains stays unattributed, its claim flagged.
    let (status, answer) = call(
        &server,
        reqwest::Method::POST,
        "/v1/events",
        &server.token,
        Body::Json(json!({
            "kind": "tool_call", "action": "tools/call",
            "observed_at": chrono::Utc::now().to_rfc3339(),
            "source": {"type": "api"},
            "actor": {"root": {"type": "human", "id": "mallory@example.com"},
                      "current": {"type": "agent", "id": "impostor"}},
            "outcome": {"status": "success"},
            "attribution": {"method": "authenticated"},
        })),
    );
    assert_eq!(status, 200, "{answer}");
    let stored = stored_event(&server, answer["ids"][0].as_str().unwrap());
    assert_eq!(stored["attribution"]["method"], "unattributed");
    assert_eq!(stored["attribution"]["evidence"][0]["type"], "reported");
}

#[test]
fn a_declared_binding_attributes_records_of_its_key_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let holder = json!({
        "root": {"type": "human", "id": "alice@example.com"},
        "agents": [{"type": "agent", "id": "release-bot", "run_id": "run-0"}],
        "current": {"type": "agent", "id": "deployer", "run_id": "run-0.d"},
    });
    let declare = |server: &Server, body: Value| {
        call(
            server,
            reqwest::Method::POST,
            "/v1/bindings",
            &server.token,
            Body::Json(body),
        )
    };
    let (status, answer) = declare(
        &server,
        json!({"key": {"type": "aws_access_key", "value": "AKIAEXAMPLE000000007"}, "holder": holder}),
    );
    assert_eq!(status, 201, "{answer}");
    for (body, says) in [
        (
            json!({"key": {"type": "password", "value": "x"}, "holder": holder}),
            "is not a key that can be declared",
        ),
        (
            json!({"key": {"type": "aws_access_key", "value": "AKIA"},
                   "holder": {"current": {"type": "agent", "id": "deployer"}}}),
            "holder.current.run_id",
        ),
        (
            json!({"key": {"type": "aws_access_key", "value": "AKIA"}, "holder": holder,
                   "valid_from": "2026-11-25T10:00:00Z", "valid_until": "2026-11-25T09:00:00Z"}),
            "valid_until",
        ),
    ] {
        let (status, refused) = declare(&server, body);
        assert_eq!(status, 400, "{refused}");
        let message = refused["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
    }

    // A record made with the key, as an importer would report it.
    let record = |server: &Server, key: &str| {
        let event = json!({
            "kind": "data_access", "action": "s3:PutObject",
            "observed_at": chrono::Utc::now().to_rfc3339(),
            "source": {"type": "cloudtrail"},
            "actor": {"current": {"type": "service", "id": "iam-user/ci"},
                      "credential": {"type": "aws_access_key", "id": key}},
            "target": {"resource": "arn:aws:s3:::releases/app.tar.gz"},
            "outcome": {"status": "success"},
        });
        post_event(server, &server.token, event)
    };
    let check = |event: &Value| {
        assert_eq!(event["attribution"]["method"], "bound", "{event}");
        assert_eq!(event["actor"]["root"]["id"], "alice@example.com");
        assert_eq!(event["actor"]["agents"][1]["run_id"], "run-0.d", "{event}");
        let detail = event["attribution"]["evidence"][0]["detail"]
            .as_str()
            .unwrap();
        assert!(detail.contains("(declared)"), "{detail}");
    };
    check(&record(&server, "AKIAEXAMPLE000000007"));

    // A client posting what looks like a declaration binds nothing.
    let forged = json!({
        "kind": "other", "action": "custody/declare-binding",
        "observed_at": chrono::Utc::now().to_rfc3339(),
        "source": {"type": "custody"},
        "actor": holder,
        "outcome": {"status": "success"},
        "attribution": {"method": "authenticated", "evidence": [{"type": "custody", "detail": "trust me"}]},
        "attributes": {"custody.binding_key_type": "aws_access_key",
                       "custody.binding_key": "AKIAEXAMPLE000000008"},
    });
    let (status, _) = call(
        &server,
        reqwest::Method::POST,
        "/v1/events",
        &server.token,
        Body::Json(forged),
    );
    assert_eq!(status, 200);
    assert_eq!(
        record(&server, "AKIAEXAMPLE000000008")["attribution"]["method"],
        "unattributed"
    );

    server.kill();
    let server = Server::start(dir.path(), &[]);
    check(&record(&server, "AKIAEXAMPLE000000007"));
    assert_eq!(
        record(&server, "AKIAEXAMPLE000000008")["attribution"]["method"],
        "unattributed"
    );
}

#[test]
fn lineage_prints_the_chain_of_custody_as_a_tree() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let auditor = alice_s_auditor(&server);
    let posted = read_with(&server, &auditor, "arn:aws:s3:::payroll/q3.csv");
    let id = posted["ids"][0].as_str().unwrap().to_owned();

    let tree = Run::from(server.cli(&["lineage", &id])).success().stdout;
    let lines: Vec<&str> = tree.lines().collect();
    assert_eq!(lines[0], "human alice@example.com  (root)", "{tree}");
    let expected_start = [
        "   └─ agent release-bot [run run-0]  (agent)",
        "      spawned by alice@example.com at ",
        "      └─ agent auditor [run run-0.a]  (actor)",
        "         spawned by release-bot at ",
        "         └─ credential custody_token ",
    ];
    for (line, start) in lines[1..6].iter().zip(expected_start) {
        assert!(line.starts_with(start), "{line:?} in\n{tree}");
    }
    assert!(lines[2].ends_with("(custody/mint-agent-token)"), "{tree}");
    assert!(lines[4].ends_with("(oauth/token-exchange)"), "{tree}");
    assert!(
        lines[6].starts_with("data_access s3:GetObject at "),
        "{tree}"
    );
    assert_eq!(lines[7], "attribution: authenticated", "{tree}");

    let json = Run::from(server.cli(&["lineage", "--json", &id]))
        .success()
        .stdout;
    let lineage: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(lineage["chain"][2]["principal"]["run_id"], "run-0.a");
    let missing = Run::from(server.cli(&["lineage", "01a21539-0000-7000-8000-000000000000"]));
    assert_eq!(missing.code, Some(1));
    assert!(
        missing.stderr.contains("no event has id"),
        "{}",
        missing.stderr
    );
}

#[test]
fn graph_and_who_read_the_graph_of_a_server_that_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--sensitive", "*payroll*"]);
    let auditor = alice_s_auditor(&server);
    for resource in [
        "arn:aws:s3:::payroll/q3.csv",
        "arn:aws:s3:::releases/app.tar.gz",
    ] {
        read_with(&server, &auditor, resource);
    }

    let graph = Run::from(server.cli(&["graph", "run:run-0", "--depth", "1"]))
        .success()
        .stdout;
    let first = graph.lines().next().unwrap();
    assert_eq!(
        first,
        "run:run-0 (release-bot)  blast radius: resources 2, sensitive_resources 1, \
         identities_created 1, depth 1, fan_out 1",
        "{graph}"
    );
    assert!(
        graph.contains("  run:run-0 -delegated-> run:run-0.a  x2"),
        "{graph}"
    );
    let who = Run::from(server.cli(&["who", "arn:aws:s3:::payroll/q3.csv"]))
        .success()
        .stdout;
    assert_eq!(
        who.trim_end(),
        "human:alice@example.com -deployed-> run:run-0 -delegated-> run:run-0.a \
         -read-> resource:arn:aws:s3:::payroll/q3.csv"
    );
    let exported = Run::from(server.cli(&["graph", "run:run-0", "--opengraph"]))
        .success()
        .stdout;
    let exported: Value = serde_json::from_str(&exported).unwrap();
    assert_eq!(exported["metadata"]["source_kind"], "Custody");

    // A server told to keep no graph says so.
    server.kill();
    let server = Server::start(dir.path(), &["--no-graph"]);
    let refused = Run::from(server.cli(&["who", "x"]));
    assert_eq!(refused.code, Some(1));
    assert!(refused.stderr.contains("--no-graph"), "{}", refused.stderr);
}

/// Mints alice's `release-bot` (run `run-0`) a token and exchanges it for
/// its sub-agent `auditor` (run `run-0.a`); returns the auditor's token.
fn alice_s_auditor(server: &Server) -> String {
    let release_bot = mint_agent_token(server, "alice@example.com", "release-bot", "run-0");
    exchange_token(server, &release_bot, "auditor", "run-0.a")
}

/// Posts an S3 read of `resource` with `token`; returns the answer.
fn read_with(server: &Server, token: &str, resource: &str) -> Value {
    let (status, answer) = call(
        server,
        reqwest::Method::POST,
        "/v1/events",
        token,
        Body::Json(json!({
            "kind": "data_access", "action": "s3:GetObject",
            "observed_at": chrono::Utc::now().to_rfc3339(),
            "source": {"type": "api"},
            "actor": {"current": {"type": "agent", "id": "auditor"}},
            "target": {"resource": resource},
            "outcome": {"status": "success"},
        })),
    );
    assert_eq!(status, 200, "{answer}");
    answer
}
