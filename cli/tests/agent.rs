//! `kat-agent init | run | etcd-env` as an operator runs them, against the installed
//! etcd (skipped with a printed reason when etcd is missing). Every agent is stopped by
//! PID when its guard drops, also when a test fails; its etcd dies with it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Agent, api_port, cluster_file, etcd_pid, settle, wait_dead};
use kat_actors::pki::pin::JoinCredential;
use kat_tests::programs::find_program;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

#[test]
fn init_leads_survives_etcd_crash_resumes_and_stops_cleanly() {
    let Some(etcdctl) = find_program("etcdctl") else {
        return;
    };
    if find_program("etcd").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_file(dir.path());
    let state = dir.path().join("state");
    let (config, state_str) = (config.to_str().unwrap(), state.to_str().unwrap());
    let init = [
        "init",
        "--config",
        config,
        "--state-dir",
        state_str,
        "--node-name",
        "n1",
        "--advertise-address",
        "127.0.0.1",
    ];

    let started = Instant::now();
    let mut agent = Agent::start(&init, &dir.path().join("agent1.log"));
    let leader = agent.wait_for("became leader", 1, Duration::from_secs(15));
    assert_eq!(leader["fields"]["node"], "n1");
    eprintln!("leader after {:?}", started.elapsed());
    let created = agent.wait_for("cluster created", 1, Duration::from_secs(10));
    let uid = created["fields"]["uid"].as_str().unwrap().to_owned();

    // The node's identity and the first join token are on disk, keys private.
    agent.wait_for(
        "join token written (single use, expires in 24 h)",
        1,
        Duration::from_secs(10),
    );
    let mode = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode(&state.join("pki/node.key")), 0o600);
    assert_eq!(mode(&state.join("join-token")), 0o600);
    let node_cert = std::fs::read_to_string(state.join("pki/node.crt")).unwrap();
    assert!(node_cert.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(
        std::fs::read_to_string(state.join("pki/ca.crt"))
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let join_token = std::fs::read_to_string(state.join("join-token")).unwrap();
    let credential = JoinCredential::parse(&join_token).unwrap();
    let (token_id, _) = kat_actors::pki::tokens::parse(&credential.token).unwrap();

    // The cluster configuration is readable with etcdctl at the documented key.
    let env = Command::new(env!("CARGO_BIN_EXE_kat-agent"))
        .args(["etcd-env", "--state-dir", state_str])
        .output()
        .unwrap();
    assert!(env.status.success());
    let env = String::from_utf8(env.stdout).unwrap();
    let vars: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let endpoint = vars
        .iter()
        .find(|(k, _)| k == "ETCDCTL_ENDPOINTS")
        .unwrap()
        .1
        .clone();
    assert!(endpoint.starts_with("https://127.0.0.1:"), "{endpoint}");
    let etcdctl_cmd = |args: &[&str]| {
        Command::new(&etcdctl)
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(args)
            .output()
            .unwrap()
    };
    let get = etcdctl_cmd(&["get", "--print-value-only", "/kat/config/cluster_uid"]);
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        uid,
        "{}",
        String::from_utf8_lossy(&get.stderr)
    );
    // etcd speaks only mTLS: without the node's certificate it answers nothing.
    let plain = Command::new(&etcdctl)
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &endpoint,
            "--command-timeout=2s",
            "get",
            "/kat/config/cluster_uid",
        ])
        .output()
        .unwrap();
    assert!(
        !plain.status.success(),
        "etcd answered a client without a certificate"
    );
    let config_key = etcdctl_cmd(&["get", "--keys-only", "/kat/config/cluster"]);
    assert!(String::from_utf8_lossy(&config_key.stdout).contains("/kat/config/cluster"));
    let stored = etcdctl_cmd(&["get", "--keys-only", "--prefix", "/kat/"]);
    let keys = String::from_utf8_lossy(&stored.stdout).into_owned();
    assert!(keys.contains("/kat/pki/ca"), "{keys}");
    assert!(
        keys.contains(&format!("/kat/tokens/join/{token_id}")),
        "only the token's hash is stored, under its id: {keys}"
    );
    assert!(!keys.contains(join_token.trim()), "the secret is not a key");

    // kill -9 of the etcd child: restarted, and the node leads again (the time is
    // printed; the bound is loose for a loaded machine).
    let first_etcd = etcd_pid(&agent.wait_for("etcd member starting", 1, Duration::from_secs(1)));
    kill(Pid::from_raw(first_etcd as i32), Signal::SIGKILL).unwrap();
    let crashed = Instant::now();
    agent.wait_for("became leader", 2, Duration::from_secs(20));
    eprintln!("leader again {:?} after etcd was killed", crashed.elapsed());
    let second_etcd = etcd_pid(&agent.wait_for("etcd member starting", 2, Duration::from_secs(1)));
    assert_ne!(first_etcd, second_etcd);

    // SIGTERM: the agent stops in order and leaves no etcd behind.
    agent.signal(Signal::SIGTERM);
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "agent exit: {status}");
    wait_dead(second_etcd, Duration::from_secs(2));
    drop(agent);

    // Re-running init on the same state dir resumes: same cluster, nothing overwritten.
    let mut again = Agent::start(&init, &dir.path().join("agent2.log"));
    again.wait_for(
        "state directory already initialised; resuming",
        1,
        Duration::from_secs(5),
    );
    let resumed = again.wait_for("cluster exists; resuming", 1, Duration::from_secs(10));
    assert_eq!(resumed["fields"]["uid"], uid.as_str());
    settle(Duration::from_millis(300));
    assert_eq!(
        std::fs::read_to_string(state.join("pki/node.crt")).unwrap(),
        node_cert,
        "kept, not re-issued"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("join-token")).unwrap(),
        join_token,
        "kept, not re-issued"
    );
    again.signal(Signal::SIGTERM);
    assert!(again.child.wait().unwrap().success());

    // `run` restarts it from the state directory alone.
    let mut run = Agent::start(
        &["run", "--state-dir", state_str],
        &dir.path().join("agent3.log"),
    );
    run.wait_for("became leader", 1, Duration::from_secs(10));
    run.signal(Signal::SIGINT);
    assert!(run.child.wait().unwrap().success());
}

#[test]
fn a_killed_agent_leaves_no_etcd_running() {
    if find_program("etcd").is_none() {
        return;
    }
    let (_dir, _config, _state, mut agent) = init_node1();
    agent.wait_for("became leader", 1, Duration::from_secs(10));
    let etcd = etcd_pid(&agent.wait_for("etcd member starting", 1, Duration::from_secs(1)));
    agent.signal(Signal::SIGKILL);
    let _ = agent.child.wait();
    wait_dead(etcd, Duration::from_secs(2));
}

#[test]
fn init_refuses_bad_input_without_touching_the_state_dir() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.kat");
    std::fs::write(&bad, "apiVersion: kat.dws.rip/v1alpha1\nkind: ClusterConfiguration\nmetadata: {name: x}\nspec: {quorumSize: 2, apiPort: 0}\n").unwrap();
    let state = dir.path().join("state");
    let out = Command::new(env!("CARGO_BIN_EXE_kat-agent"))
        .args([
            "init",
            "--config",
            bad.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--etcd-bin",
            "/bin/true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spec.quorumSize: 2 is not a valid quorum size"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.apiPort: must be at least 1"),
        "{stderr}"
    );
    assert!(!state.exists(), "a refused init creates nothing");

    let good = cluster_file(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_kat-agent"))
        .args([
            "init",
            "--config",
            good.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "--node-name",
            "Bad_Name",
            "--etcd-bin",
            "/bin/true",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--node-name: \"Bad_Name\" is not a DNS label"),
        "{stderr}"
    );
    assert!(!state.join("agent.json").exists());

    let out = Command::new(env!("CARGO_BIN_EXE_kat-agent"))
        .args(["etcd-env", "--state-dir", state.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not an initialised state directory"));
}

/// A temp dir with a cluster file, and `kat-agent init` of node n1 on 127.0.0.1 in it.
fn init_node1() -> (tempfile::TempDir, PathBuf, PathBuf, Agent) {
    init_node1_with(&[])
}

/// [`init_node1`] with `extra` arguments to init.
fn init_node1_with(extra: &[&str]) -> (tempfile::TempDir, PathBuf, PathBuf, Agent) {
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_file(dir.path());
    let state = dir.path().join("state");
    let mut args = vec![
        "init",
        "--config",
        config.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--node-name",
        "n1",
        "--advertise-address",
        "127.0.0.1",
    ];
    args.extend_from_slice(extra);
    let agent = Agent::start(&args, &dir.path().join("agent.log"));
    (dir, config, state, agent)
}

#[test]
fn a_node_joins_through_the_api_that_init_serves() {
    use kat_proto::v1alpha1::JoinRequest;
    use kat_proto::v1alpha1::node_api_client::NodeApiClient;
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    if find_program("etcd").is_none() {
        return;
    }
    let (_dir, config, state, mut agent) = init_node1();
    agent.wait_for("API listening", 1, Duration::from_secs(10));
    agent.wait_for(
        "join token written (single use, expires in 24 h)",
        1,
        Duration::from_secs(10),
    );
    // The token is written by the leader's bootstrap; the API serves as leader once
    // the Api actor, started after it, has put the leader's context in place.
    agent.wait_for("API serving as leader", 1, Duration::from_secs(10));
    let token = JoinCredential::parse(&std::fs::read_to_string(state.join("join-token")).unwrap())
        .unwrap()
        .token;
    let ca = std::fs::read_to_string(state.join("pki/ca.crt")).unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca));
        let url = format!("https://127.0.0.1:{}", api_port(&config));
        let channel = Channel::from_shared(url)
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = NodeApiClient::new(channel);
        let join = |name: &str| {
            let (_key, csr) = kat_actors::pki::ca::node_key_and_csr(name).unwrap();
            JoinRequest {
                token: token.clone(),
                node_name: name.to_owned(),
                csr_pem: csr,
                advertise_address: "127.0.0.2".to_owned(),
                ..Default::default()
            }
        };
        let joined = client.join(join("n2")).await.unwrap().into_inner();
        assert!(
            joined
                .certificate_pem
                .starts_with("-----BEGIN CERTIFICATE-----")
        );
        assert_eq!(joined.ca_pem, ca);
        let again = client.join(join("n3")).await.unwrap_err();
        assert_eq!(
            again.code(),
            tonic::Code::Unauthenticated,
            "init's token is single use"
        );
    });
    agent.signal(Signal::SIGTERM);
    assert!(agent.child.wait().unwrap().success());
}

#[test]
fn run_starts_the_node_on_the_runtime_it_was_made_with_unless_told_otherwise() {
    if find_program("etcd").is_none() {
        eprintln!("SKIPPED: etcd is not installed");
        return;
    }
    let (dir, _config, state, mut agent) = init_node1_with(&["--runtime", "fake"]);
    let state_str = state.to_str().unwrap();
    let runtime_of = |agent: &mut Agent| {
        agent.wait_for("container runtime ready", 1, Duration::from_secs(30))["fields"]["runtime"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(runtime_of(&mut agent), "Fake");
    agent.signal(Signal::SIGTERM);
    assert!(agent.child.wait().unwrap().success());
    {
        use std::os::unix::fs::PermissionsExt;
        let kept = std::fs::metadata(state.join("runtime.json")).unwrap();
        assert_eq!(kept.permissions().mode() & 0o777, 0o600);
    }
    // `run` without flags: the fake runtime again, not rootless Podman.
    let mut again = Agent::start(
        &["run", "--state-dir", state_str],
        &dir.path().join("run.log"),
    );
    assert_eq!(runtime_of(&mut again), "Fake");
    again.signal(Signal::SIGTERM);
    assert!(again.child.wait().unwrap().success());
    // A damaged file is refused, naming it, before anything starts.
    std::fs::write(state.join("runtime.json"), "{\"runtime\": \"docker\"}").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kat-agent"))
        .args(["run", "--state-dir", state_str])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("runtime.json"), "{said}");
}

#[test]
fn a_port_clash_at_init_names_the_port_last_and_a_corrected_init_starts_afresh() {
    if find_program("etcd").is_none() {
        eprintln!("skipped: etcd is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_file(dir.path());
    let state = dir.path().join("state");
    let port = api_port(&config);
    let args = |config: &Path| {
        vec![
            "init".to_owned(),
            "--config".to_owned(),
            config.display().to_string(),
            "--state-dir".to_owned(),
            state.display().to_string(),
            "--node-name".to_owned(),
            "n1".to_owned(),
            "--advertise-address".to_owned(),
            "127.0.0.1".to_owned(),
            "--runtime".to_owned(),
            "fake".to_owned(),
        ]
    };
    // Something else listens on the API port: init says so on its last line, at
    // once, and writes nothing.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kat-agent"))
        .args(args(&config))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!("apiPort {port}")) && last.contains("Address already in use"),
        "{stderr}"
    );
    assert!(!state.exists(), "a refused init writes nothing");
    drop(squatter);

    // An init that never finished (killed while its etcd would not start, so its
    // leader never wrote katcall.yaml or the join token) does not block one with
    // corrected settings: that one starts afresh, and the first is set aside.
    let mut broken = args(&config);
    broken.extend(["--etcd-bin".to_owned(), "/bin/false".to_owned()]);
    let mut first = Agent::start(
        &broken.iter().map(String::as_str).collect::<Vec<_>>(),
        &dir.path().join("first.log"),
    );
    first.wait_for("state directory initialised", 1, Duration::from_secs(20));
    first.signal(Signal::SIGKILL);
    let _ = first.child.wait();
    drop(first);
    assert!(state.join("init-pending").exists());
    assert!(!state.join("katcall.yaml").exists());
    let fixed_dir = dir.path().join("fixed");
    std::fs::create_dir(&fixed_dir).unwrap();
    let fixed = cluster_file(&fixed_dir);
    let mut second = Agent::start(
        &args(&fixed).iter().map(String::as_str).collect::<Vec<_>>(),
        &dir.path().join("second.log"),
    );
    second.wait_for(
        "katcall configuration written (admin API token)",
        1,
        Duration::from_secs(20),
    );
    assert_eq!(
        std::fs::read_to_string(state.join("cluster.kat")).unwrap(),
        std::fs::read_to_string(&fixed).unwrap(),
        "the corrected configuration"
    );
    let aside: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("discarded-"))
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "the unfinished init is set aside, not deleted"
    );
    assert!(state.join(&aside[0]).join("pki/ca.key").exists());
    // Finished now: the marker is gone, and init with yet other settings is refused
    // as before, changing nothing.
    let mut finished = Duration::ZERO;
    while state.join("init-pending").exists() {
        assert!(finished < Duration::from_secs(10), "init-pending stays");
        std::thread::sleep(Duration::from_millis(100));
        finished += Duration::from_millis(100);
    }
    second.signal(Signal::SIGTERM);
    assert!(second.child.wait().unwrap().success());
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = cluster_file(&other_dir);
    let refused = Command::new(env!("CARGO_BIN_EXE_kat-agent"))
        .args(args(&other))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("was initialised with a different cluster configuration"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("cluster.kat")).unwrap(),
        std::fs::read_to_string(&fixed).unwrap()
    );
}
