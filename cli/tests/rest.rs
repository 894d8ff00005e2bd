//! The user API over REST, as `curl` speaks it (issue 6): one node (`kat-agent init`,
//! real etcd, real TLS, the fake runtime) serving gRPC and HTTP/JSON on one port.
//! The workload flow — apply a bundle, instances, status, update, rollback, logs,
//! exec, node verbs, events, tokens, delete — runs over REST, and each answer is
//! compared with what `katcall` (gRPC) shows for the same object. Also: `/healthz`,
//! `/readyz`, the OpenAPI document, 401 without a token, 400 for an oversized or
//! malicious bundle with nothing stored, 404 for unknown paths, HTTP/1.1 and HTTP/2.
//! Skipped with a printed reason without etcd or curl; the agent is stopped by PID.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, api_port, cluster_file_with, katcall, ok};
use kat_tests::programs::find_program;
use nix::sys::signal::Signal;
use serde_json::Value;

struct Rest {
    base: String,
    ca: PathBuf,
    token: String,
}

struct Answer {
    status: u16,
    body: String,
    headers: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Rest {
    /// `curl -X METHOD BASE+PATH` with the token (unless `token` says otherwise) and
    /// `extra` arguments.
    fn call_with(&self, method: &str, path: &str, token: Option<&str>, extra: &[&str]) -> Answer {
        let dir = tempfile::tempdir().unwrap();
        let headers = dir.path().join("headers");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "30", "-X", method, "--cacert"])
            .arg(&self.ca)
            .arg("-D")
            .arg(&headers)
            .args(["-w", "\n%{http_code}"]);
        let bearer = format!("Authorization: Bearer {}", token.unwrap_or(&self.token));
        if token != Some("") {
            cmd.args(["-H", &bearer]);
        }
        let out = cmd
            .args(extra)
            .arg(format!("{}{path}", self.base))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl {method} {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        Answer {
            status: code.trim().parse().unwrap(),
            body: body.to_owned(),
            headers: std::fs::read_to_string(headers).unwrap_or_default(),
        }
    }

    fn call(&self, method: &str, path: &str, extra: &[&str]) -> Answer {
        self.call_with(method, path, None, extra)
    }

    fn get(&self, path: &str) -> Answer {
        self.call("GET", path, &[])
    }

    /// A call that must answer 200; its JSON.
    fn ok(&self, method: &str, path: &str, extra: &[&str]) -> Value {
        let answer = self.call(method, path, extra);
        assert_eq!(answer.status, 200, "{method} {path}: {}", answer.body);
        answer.json()
    }
}

fn katcall_json(config: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&ok(&katcall(config, &all))).unwrap()
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn bundle(dir: &Path, name: &str, from: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let src = dir.join(name);
    std::fs::create_dir(&src).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let text = std::fs::read_to_string(entry.path()).unwrap();
        std::fs::write(src.join(entry.file_name()), edit(text)).unwrap();
    }
    let out = dir.join(format!("{name}.tar.gz"));
    let status = Command::new("tar")
        .arg("czf")
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    out
}

fn running(instances: &Value, generation: &str) -> usize {
    instances["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|i| i["generation"] == generation && i["status"]["phase"] == "RUNNING")
                .count()
        })
        .unwrap_or_default()
}

#[test]
fn the_user_api_over_rest_matches_grpc() {
    if find_program("etcd").is_none() {
        eprintln!("SKIP: etcd not found (scripts/install-deps.sh installs it)");
        return;
    }
    if find_program("curl").is_none() {
        eprintln!("SKIP: curl not found (scripts/install-deps.sh installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let volumes = dir.path().join("volumes");
    let backups = dir.path().join("backups");
    let config = cluster_file_with(
        dir.path(),
        &format!(
            "  agentTickSeconds: 1\n  volumeBasePath: {}\n  backupPath: {}\n",
            volumes.display(),
            backups.display()
        ),
    );
    let state = dir.path().join("n1");
    let mut agent = Agent::start(
        &[
            "init",
            "--config",
            config.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--node-name",
            "n1",
            "--advertise-address",
            "127.0.0.1",
            "--runtime",
            "fake",
        ],
        &dir.path().join("n1.log"),
    );
    agent.wait_for(
        "katcall configuration written (admin API token)",
        1,
        Duration::from_secs(15),
    );
    let kc = state.join("katcall.yaml");
    let kc_file = kat_actors::client::KatcallConfig::parse(
        "katcall.yaml",
        &std::fs::read_to_string(&kc).unwrap(),
    )
    .unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &kc_file.certificate_authority).unwrap();
    let rest = Rest {
        base: format!("https://127.0.0.1:{}", api_port(&config)),
        ca,
        token: kc_file.token.clone(),
    };

    // Health, readiness and the document need no token.
    let health = rest.call_with("GET", "/healthz", Some(""), &[]);
    assert_eq!((health.status, health.body.trim()), (200, "ok"));
    let ready = rest.call_with("GET", "/readyz", Some(""), &[]);
    assert_eq!(ready.status, 200, "{}", ready.body);
    let doc = rest.call_with("GET", "/v1alpha1/openapi.json", Some(""), &[]);
    assert_eq!(doc.status, 200);
    let doc = doc.json();
    assert_eq!(doc["openapi"], "3.0.3");
    assert!(doc["paths"]["/v1alpha1/n/{ns}/workloads"]["post"].is_object());
    assert!(doc["components"]["schemas"]["Quadlet"].is_object());

    // No token, a wrong token: 401 and nothing else.
    for token in ["", "abc.def"] {
        let refused = rest.call_with("GET", "/v1alpha1/nodes", Some(token), &[]);
        assert_eq!(refused.status, 401, "token {token:?}: {}", refused.body);
        assert_eq!(refused.json()["message"], "missing or invalid API token");
        assert!(
            refused
                .headers
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{}",
            refused.headers
        );
    }
    let unknown = rest.get("/v1alpha1/no-such-thing");
    assert_eq!(unknown.status, 404, "{}", unknown.body);

    // Both HTTP versions work on the one port.
    for version in ["--http1.1", "--http2"] {
        let nodes = rest.call("GET", "/v1alpha1/nodes", &[version]);
        assert_eq!(nodes.status, 200, "{version}: {}", nodes.body);
    }
    wait_until("n1 Ready", Duration::from_secs(15), || {
        rest.ok("GET", "/v1alpha1/nodes/n1", &[])["status"]["state"] == "READY"
    });
    // Parity: the node as REST and as katcall show it (heartbeat times aside).
    let mut over_rest = rest.ok("GET", "/v1alpha1/nodes/n1", &[]);
    let mut over_grpc = katcall_json(&kc, &["get", "node", "n1"]);
    for v in [&mut over_rest, &mut over_grpc] {
        v["status"].as_object_mut().unwrap().remove("lastHeartbeat");
    }
    assert_eq!(over_rest["spec"], over_grpc["spec"]);
    assert_eq!(over_rest["metadata"], over_grpc["metadata"]);

    // Bad bundles: 400 with the reason, nothing stored.
    let junk = dir.path().join("junk.tar.gz");
    std::fs::write(&junk, b"this is not a gzip'd tar").unwrap();
    let refused = rest.call(
        "POST",
        "/v1alpha1/n/default/workloads",
        &["--data-binary", &format!("@{}", junk.display())],
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.json()["status"], "InvalidArgument");
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; 2 << 20]).unwrap();
    let refused = rest.call(
        "POST",
        "/v1alpha1/n/default/workloads",
        &["--data-binary", &format!("@{}", big.display())],
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.json()["message"]
            .as_str()
            .unwrap()
            .contains("at most 1048576 bytes (compressed)"),
        "{}",
        refused.body
    );
    let escape = dir.path().join("escape");
    std::fs::create_dir(&escape).unwrap();
    std::fs::write(escape.join("workload.kat"), "x").unwrap();
    let evil = dir.path().join("evil.tar.gz");
    let status = Command::new("tar")
        .arg("czf")
        .arg(&evil)
        .arg("-P")
        .arg("--transform=s,^.*escape,../../etc,")
        .arg(&escape)
        .status()
        .unwrap();
    assert!(status.success());
    let refused = rest.call(
        "POST",
        "/v1alpha1/n/default/workloads",
        &["--data-binary", &format!("@{}", evil.display())],
    );
    assert_eq!(refused.status, 400, "{}", refused.body);
    let listed = rest.ok("GET", "/v1alpha1/workloads", &[]);
    assert!(
        listed["items"].as_array().is_none_or(Vec::is_empty),
        "a refused bundle stored something: {listed}"
    );

    // Apply over REST: the workload as katcall shows it, three instances running.
    let web = bundle(dir.path(), "web", &examples().join("web"), |t| t);
    let applied = rest.ok(
        "POST",
        "/v1alpha1/n/default/workloads",
        &[
            "-H",
            "Content-Type: application/gzip",
            "--data-binary",
            &format!("@{}", web.display()),
        ],
    );
    assert_eq!(applied["workload"]["metadata"]["name"], "web");
    assert_eq!(applied["workload"]["metadata"]["generation"], "1");
    wait_until("three instances running", Duration::from_secs(30), || {
        running(
            &rest.ok("GET", "/v1alpha1/n/default/workloads/web/instances", &[]),
            "1",
        ) == 3
    });
    let over_rest = rest.ok("GET", "/v1alpha1/n/default/workloads/web", &[]);
    let over_grpc = katcall_json(&kc, &["get", "workload", "web"]);
    assert_eq!(over_rest["workload"]["spec"], over_grpc["workload"]["spec"]);
    assert_eq!(
        over_rest["workload"]["metadata"],
        over_grpc["workload"]["metadata"]
    );
    let ids = |v: &Value| -> Vec<String> {
        let mut ids: Vec<String> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let instances = rest.ok(
        "GET",
        "/v1alpha1/instances?namespace=default&workload=web",
        &[],
    );
    assert_eq!(
        ids(&instances),
        ids(&katcall_json(&kc, &["get", "instances", "web"]))
    );
    let status = rest.ok("GET", "/v1alpha1/n/default/workloads/web/status", &[]);
    assert_eq!(status["instances"].as_array().unwrap().len(), 3);

    // Logs and exec through the leader from the node's agent API.
    let id = ids(&instances)[0].clone();
    let logs = rest.get(&format!(
        "/v1alpha1/n/default/workloads/web/instances/{id}/logs?tail=5"
    ));
    assert_eq!(logs.status, 200, "{}", logs.body);
    assert!(
        logs.body.contains("fake container started"),
        "{}",
        logs.body
    );
    let via_katcall = ok(&katcall(&kc, &["logs", &id]));
    assert_eq!(via_katcall, logs.body);
    let chunks = rest.call(
        "GET",
        &format!("/v1alpha1/n/default/workloads/web/instances/{id}/logs"),
        &["-H", "Accept: application/x-ndjson"],
    );
    let first: Value = serde_json::from_str(chunks.body.lines().next().unwrap()).unwrap();
    assert_eq!(first["stream"], "STDOUT");
    let exec = rest.ok(
        "POST",
        &format!("/v1alpha1/n/default/workloads/web/instances/{id}/exec"),
        &["--data", r#"{"command": ["true"]}"#],
    );
    assert_eq!(exec["exitCode"].as_i64().unwrap_or(0), 0, "{exec}");
    let exec = katcall(&kc, &["exec", &format!("web/{id}"), "--", "true"]);
    assert!(
        exec.status.success(),
        "{}",
        String::from_utf8_lossy(&exec.stderr)
    );
    let missing = rest.call(
        "POST",
        "/v1alpha1/n/default/workloads/web/instances/00000000/exec",
        &["--data", r#"{"command": ["true"]}"#],
    );
    assert_eq!(missing.status, 404, "{}", missing.body);
    let missing = katcall(&kc, &["logs", "00000000"]);
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no instance 00000000"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    // Update over REST (PUT), then roll back: generations as katcall sees them.
    let web2 = bundle(dir.path(), "web2", &examples().join("web"), |t| {
        t.replace("nginx:1.27", "nginx:1.28")
    });
    let updated = rest.ok(
        "PUT",
        "/v1alpha1/n/default/workloads/web",
        &["--data-binary", &format!("@{}", web2.display())],
    );
    assert_eq!(updated["workload"]["metadata"]["generation"], "2");
    wait_until("generation 2 rolled out", Duration::from_secs(60), || {
        running(
            &rest.ok("GET", "/v1alpha1/n/default/workloads/web/instances", &[]),
            "2",
        ) == 3
    });
    let wrong_name = rest.call(
        "PUT",
        "/v1alpha1/n/default/workloads/other",
        &["--data-binary", &format!("@{}", web2.display())],
    );
    assert_eq!(wrong_name.status, 400, "{}", wrong_name.body);
    let rolled = rest.ok(
        "POST",
        "/v1alpha1/n/default/workloads/web/rollback",
        &["--data", r#"{"toGeneration": "1"}"#],
    );
    assert_eq!(rolled["workload"]["metadata"]["generation"], "3");
    let shown = katcall_json(&kc, &["get", "workload", "web"]);
    assert_eq!(shown["workload"]["metadata"]["generation"], "3");
    assert_eq!(
        shown["workload"]["spec"]["source"]["image"],
        "docker.io/library/nginx:1.27"
    );

    // Node verbs over REST show in katcall.
    rest.ok("POST", "/v1alpha1/nodes/n1/cordon", &[]);
    assert_eq!(
        katcall_json(&kc, &["get", "node", "n1"])["spec"]["unschedulable"],
        true
    );
    rest.ok("POST", "/v1alpha1/nodes/n1/uncordon", &[]);
    let labelled = rest.ok(
        "PUT",
        "/v1alpha1/nodes/n1/labels",
        &["--data", r#"{"labels": {"disktype": "ssd"}}"#],
    );
    assert_eq!(labelled["metadata"]["labels"]["disktype"], "ssd");
    assert_eq!(
        katcall_json(&kc, &["get", "node", "n1"])["metadata"]["labels"]["disktype"],
        "ssd"
    );
    let bad = rest.call(
        "PUT",
        "/v1alpha1/nodes/n1/labels",
        &["--data", r#"{"labels": 7}"#],
    );
    assert_eq!(bad.status, 400, "{}", bad.body);

    let tainted = rest.ok(
        "PUT",
        "/v1alpha1/nodes/n1/taints",
        &[
            "--data",
            r#"{"taints": [{"key": "spot", "value": "yes", "effect": "PREFER_NO_SCHEDULE"}]}"#,
        ],
    );
    assert_eq!(tainted["spec"]["taints"][0]["key"], "spot", "{tainted}");
    assert_eq!(
        katcall_json(&kc, &["get", "node", "n1"])["spec"]["taints"][0]["effect"],
        "PREFER_NO_SCHEDULE"
    );
    rest.ok(
        "PUT",
        "/v1alpha1/nodes/n1/taints",
        &["--data", r#"{"taints": []}"#],
    );

    // Events of one object, as katcall's filter gives them.
    let of_node = rest.ok("GET", "/v1alpha1/events?involved=node/n1", &[]);
    let items = of_node["items"].as_array().unwrap();
    assert!(
        !items.is_empty() && items.iter().all(|e| e["involvedObject"]["name"] == "n1"),
        "{of_node}"
    );
    assert_eq!(
        of_node,
        katcall_json(&kc, &["get", "events", "node/n1"]),
        "the same list both ways"
    );
    let bad_involved = rest.call("GET", "/v1alpha1/events?involved=n1", &[]);
    assert_eq!(bad_involved.status, 400, "{}", bad_involved.body);

    // Events: the same list both ways.
    let events = rest.ok("GET", "/v1alpha1/events?since=1h", &[]);
    let reasons: Vec<&str> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"RolledBack"), "{reasons:?}");
    assert!(reasons.contains(&"NodeLabeled"), "{reasons:?}");
    let bad_since = rest.call("GET", "/v1alpha1/events?since=yesterday", &[]);
    assert_eq!(bad_since.status, 400, "{}", bad_since.body);

    // A join token over REST is what kat-agent join takes: <id>.<secret>.<CA hash>.
    let join = rest.ok(
        "POST",
        "/v1alpha1/tokens/join",
        &["--data", r#"{"ttlSeconds": 600}"#],
    );
    assert_eq!(
        join["token"].as_str().unwrap().split('.').count(),
        3,
        "{join}"
    );

    // Tokens: an API token made over REST works for katcall's API, then is deleted.
    let made = rest.ok("POST", "/v1alpha1/tokens/api", &["--data", "{}"]);
    let second = made["token"].as_str().unwrap();
    let seen = rest.call_with("GET", "/v1alpha1/version", Some(second), &[]);
    assert_eq!(seen.status, 200, "{}", seen.body);
    assert_eq!(seen.json()["version"], env!("CARGO_PKG_VERSION"));
    rest.ok(
        "DELETE",
        &format!("/v1alpha1/tokens/{}", made["id"].as_str().unwrap()),
        &[],
    );
    let gone = rest.call_with("GET", "/v1alpha1/version", Some(second), &[]);
    assert_eq!(gone.status, 401);

    // Namespaces: created by katcall from namespace.kat, seen over REST; one made over
    // REST with a workload in it is refused deletion without cascade.
    let created = ok(&katcall(
        &kc,
        &[
            "apply",
            "-f",
            examples().join("namespace/namespace.kat").to_str().unwrap(),
        ],
    ));
    assert!(created.contains("namespace team-a created"), "{created}");
    let again = katcall(
        &kc,
        &[
            "apply",
            "-f",
            examples().join("namespace/namespace.kat").to_str().unwrap(),
        ],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let team = rest.ok("GET", "/v1alpha1/namespaces/team-a", &[]);
    assert_eq!(team["metadata"]["labels"]["owner"], "team-a");
    rest.ok(
        "POST",
        "/v1alpha1/namespaces",
        &["--data", r#"{"metadata": {"name": "lab"}}"#],
    );
    let bad = rest.call(
        "POST",
        "/v1alpha1/namespaces",
        &["--data", r#"{"metadata": {"name": "Not_A_Label"}}"#],
    );
    assert_eq!(bad.status, 400, "{}", bad.body);
    let in_lab = bundle(dir.path(), "lab-web", &examples().join("web"), |t| {
        t.replace("namespace: default", "namespace: lab")
    });
    rest.ok(
        "POST",
        "/v1alpha1/n/lab/workloads",
        &["--data-binary", &format!("@{}", in_lab.display())],
    );
    let names = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let listed = rest.ok("GET", "/v1alpha1/namespaces", &[]);
    assert_eq!(names(&listed), ["default", "lab", "team-a"]);
    assert_eq!(
        names(&katcall_json(&kc, &["get", "namespaces"])),
        names(&listed)
    );
    let refused = rest.call("DELETE", "/v1alpha1/namespaces/lab", &[]);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("--cascade"), "{}", refused.body);
    let refused = rest.call("DELETE", "/v1alpha1/namespaces/default", &[]);
    assert_eq!(refused.status, 400, "{}", refused.body);
    let cascaded = ok(&katcall(&kc, &["delete", "namespace", "lab", "--cascade"]));
    assert!(cascaded.contains("namespace lab deleted"), "{cascaded}");
    assert!(
        rest.ok("GET", "/v1alpha1/n/lab/workloads", &[])["items"]
            .as_array()
            .is_none_or(Vec::is_empty)
    );
    ok(&katcall(&kc, &["delete", "namespace", "team-a"]));
    assert_eq!(rest.get("/v1alpha1/namespaces/team-a").status, 404);

    // Backups: a snapshot over REST, listed by katcall.
    let made = rest.ok("POST", "/v1alpha1/backups", &[]);
    let path = PathBuf::from(made["path"].as_str().unwrap());
    assert!(path.starts_with(&backups), "{made}");
    assert!(std::fs::metadata(&path).unwrap().len() > 0);
    let listed = ok(&katcall(&kc, &["backup", "--list"]));
    assert!(listed.contains(made["name"].as_str().unwrap()), "{listed}");
    let again = ok(&katcall(&kc, &["backup"]));
    assert!(again.contains("backup kat-"), "{again}");
    assert_eq!(
        rest.ok("GET", "/v1alpha1/backups", &[])["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Metrics: Prometheus text and JSON, with the token only.
    let refused = rest.call_with("GET", "/metrics", Some(""), &[]);
    assert_eq!(refused.status, 401);
    let metrics = rest.get("/metrics");
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    for line in [
        "# TYPE kat_heartbeats_total counter",
        "kat_nodes{state=\"READY\"} 1",
        "kat_leader 1",
        "kat_workloads 1",
        "kat_scheduler_round_seconds_count",
        "process_resident_memory_bytes",
    ] {
        assert!(
            metrics.body.contains(line),
            "{line} missing:\n{}",
            metrics.body
        );
    }
    let as_json = rest.ok("GET", "/v1alpha1/metrics", &[]);
    assert_eq!(as_json["kat_nodes"]["type"], "gauge", "{as_json}");

    // katcall version names the server's too.
    let version = ok(&katcall(&kc, &["version"]));
    assert!(
        version.contains(&format!("server {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );

    // Delete over REST with the volumes (the fake runtime makes no directories, so
    // one is made here): katcall finds nothing, the node removed the directory.
    let data = volumes.join("default/web/data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("kept"), "x").unwrap();
    let deleted = rest.ok(
        "DELETE",
        "/v1alpha1/n/default/workloads/web?purgeVolumes=true",
        &[],
    );
    assert_eq!(
        deleted["purgedNodes"],
        serde_json::json!(["n1"]),
        "{deleted}"
    );
    assert!(!volumes.join("default/web").exists());
    let missing = rest.get("/v1alpha1/n/default/workloads/web");
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_eq!(missing.json()["status"], "NotFound");
    let missing = katcall(&kc, &["get", "workload", "web"]);
    assert!(!missing.status.success());

    agent.signal(Signal::SIGTERM);
    assert!(agent.child.wait().unwrap().success());
}
