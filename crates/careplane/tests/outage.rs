//! R3/L4: PostgreSQL stopped for 10 s under load. While it is gone every FHIR request fails fast
//! (503 with Retry-After and an OperationOutcome, long before the 30 s request deadline),
//! readiness fails, liveness passes and the process keeps running; within 10 s of the database
//! returning, creates succeed and readiness passes again; no acknowledged create is lost.
//! The figures (503 latency, readiness flip, recovery) are printed for the record.
//!
//! R3 (blackhole): the network path to PostgreSQL drops everything for 10 s, with nothing
//! refused or closed, through a proxy in this file. Queries in flight then never answer, so the
//! bound is the request deadline (`CAREPLANE_REQUEST_TIMEOUT_SECONDS`, 5 s here): every request
//! answers within it plus 3 s, 503 with Retry-After and an OperationOutcome; readiness fails
//! within its 1 s check, liveness passes; within 10 s of the path healing everything works
//! again, without a restart, and no acknowledged create is lost.
//!
//! The database is a cluster of the test's own (`OwnedCluster`) so stopping it disturbs no other
//! test; skipped, saying why, when the PostgreSQL binaries are not installed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use careplane_testdb::OwnedCluster;
use common::Server;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The requirement's outage in full; the whole test still takes about 16 s.
const OUTAGE: Duration = Duration::from_secs(10);
const BASELINE: Duration = Duration::from_millis(1500);
const CLIENTS: usize = 4;
/// Bound on every answer: the 1 s acquire timeout plus slack, far below the 30 s deadline.
const FAIL_FAST: Duration = Duration::from_secs(3);
/// Readiness caches its database check for 1 s and gives the check 1 s.
const READY_FLIP: Duration = Duration::from_millis(2500);
const RECOVERY: Duration = Duration::from_secs(10);
/// Beyond the request deadline, so a hanging request shows as one, not as a client timeout.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(35);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Create,
    Read,
    Ready,
    Live,
}

/// One request: when it started and ended (since the test's epoch) and what came back.
#[derive(Debug)]
struct Sample {
    kind: Kind,
    started: Duration,
    ended: Duration,
    /// Err: no HTTP answer at all (connection refused or reset, client timeout).
    answer: Result<Answer, String>,
}

#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

impl Sample {
    fn took(&self) -> Duration {
        self.ended - self.started
    }

    fn status(&self) -> Option<u16> {
        self.answer.as_ref().ok().map(|a| a.status)
    }
}

#[derive(Default)]
struct Record {
    samples: Mutex<Vec<Sample>>,
    /// Ids of creates answered 201: these must survive the outage.
    acked: Mutex<Vec<String>>,
}

async fn call(
    request: reqwest::RequestBuilder,
    kind: Kind,
    epoch: Instant,
    record: &Record,
) -> Option<(u16, Value)> {
    let started = epoch.elapsed();
    let answer = match request.send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or("?").to_string());
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            Ok(Answer {
                status,
                retry_after,
                body,
            })
        }
        Err(e) => Err(e.to_string()),
    };
    let ended = epoch.elapsed();
    let answer_copy = answer.as_ref().ok().map(|a| (a.status, a.body.clone()));
    record.samples.lock().unwrap().push(Sample {
        kind,
        started,
        ended,
        answer,
    });
    answer_copy
}

/// A client's loop: create a Patient, then read back the last one this client got acknowledged
/// (so reads run during the outage too).
async fn client(api: String, record: Arc<Record>, stop: Arc<AtomicBool>, epoch: Instant) {
    let http = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .unwrap();
    let mut last: Option<String> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let create = http
            .post(format!("http://{api}/fhir/Patient"))
            .header("content-type", "application/fhir+json")
            .body(
                json!({"resourceType": "Patient", "name": [{"family": format!("Out{n}")}]})
                    .to_string(),
            );
        if let Some((201, body)) = call(create, Kind::Create, epoch, &record).await {
            let id = body["id"].as_str().expect("201 without an id").to_string();
            record.acked.lock().unwrap().push(id.clone());
            last = Some(id);
        }
        if let Some(id) = &last {
            let read = http.get(format!("http://{api}/fhir/Patient/{id}"));
            call(read, Kind::Read, epoch, &record).await;
        }
    }
}

/// Polls an admin probe every 100 ms.
async fn probe(
    url: String,
    kind: Kind,
    record: Arc<Record>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
) {
    let http = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .unwrap();
    while !stop.load(Ordering::SeqCst) {
        call(http.get(&url), kind, epoch, &record).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Every FHIR answer came within `bound` and is a success or 503 + Retry-After +
/// OperationOutcome: never a 500, never a dropped connection.
fn assert_answers(api: &[&Sample], bound: Duration) {
    for s in api {
        let answer = s.answer.as_ref().unwrap_or_else(|e| {
            panic!("{:?} at {:.2}s got no answer: {e}", s.kind, secs(s.started))
        });
        assert!(
            s.took() <= bound,
            "{:?} at {:.2}s took {:.2}s (bound {bound:?}), status {}",
            s.kind,
            secs(s.started),
            secs(s.took()),
            answer.status
        );
        match answer.status {
            200 | 201 => {}
            503 => {
                let retry = answer.retry_after.as_deref().unwrap_or_default();
                assert!(
                    retry.parse::<u64>().is_ok_and(|s| s > 0),
                    "503 without a usable Retry-After ({:?}) at {:.2}s",
                    answer.retry_after,
                    secs(s.started)
                );
                assert_eq!(
                    answer.body["resourceType"], "OperationOutcome",
                    "503 body: {}",
                    answer.body
                );
            }
            other => panic!(
                "{:?} at {:.2}s answered {other}: {}",
                s.kind,
                secs(s.started),
                answer.body
            ),
        }
    }
}

/// The test's own PostgreSQL cluster in `dir`, or `None`, saying why, when the PostgreSQL
/// binaries are not installed.
fn own_cluster(dir: &Path) -> Option<OwnedCluster> {
    if !OwnedCluster::binaries_installed() {
        eprintln!("SKIPPED: no PostgreSQL binaries (initdb, pg_ctl) installed");
        return None;
    }
    Some(OwnedCluster::start(dir).unwrap())
}

/// `careplane` on the database at `url`, without a worker, plus `extra` settings. Waiting for a
/// connection is what a request does while the database is gone: it waits at most 1 s.
fn start_server(dir: &Path, url: &str, extra: &[(&str, &str)]) -> Server {
    let mut env = vec![
        ("CAREPLANE_DATABASE_URL", url),
        ("CAREPLANE_DATABASE_ACQUIRE_TIMEOUT_SECONDS", "1"),
    ];
    env.extend_from_slice(extra);
    env.push(("CAREPLANE_WORKER", "off"));
    Server::start(dir, &env)
}

/// Which instant of a request places it in a phase (after the database is back, after
/// readiness flipped): the stop test goes by when a request ended, the blackhole test by when
/// it began (a request begun in the dark may end after the path heals).
type Edge = fn(&Sample) -> Duration;

fn ended(s: &Sample) -> Duration {
    s.ended
}

fn started(s: &Sample) -> Duration {
    s.started
}

/// When the first `kind` request placed (by `at`) after `back` answered `ok`.
fn recovered_at(
    samples: &[Sample],
    kind: Kind,
    ok: u16,
    back: Duration,
    at: Edge,
) -> Option<Duration> {
    samples
        .iter()
        .filter(|s| s.kind == kind && at(s) >= back && s.status() == Some(ok))
        .map(|s| s.ended)
        .min()
}

/// The load: `CLIENTS` clients and a poller on each admin probe, all recording into one
/// `Record`, on a clock that starts with them.
struct Load {
    record: Arc<Record>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(rt: &tokio::runtime::Runtime, server: &Server) -> Load {
        let record = Arc::new(Record::default());
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let mut tasks: Vec<_> = (0..CLIENTS)
            .map(|_| {
                rt.spawn(client(
                    server.api.clone(),
                    record.clone(),
                    stop.clone(),
                    epoch,
                ))
            })
            .collect();
        for (path, kind) in [("readyz", Kind::Ready), ("livez", Kind::Live)] {
            let url = format!("http://{}/{path}", server.admin);
            tasks.push(rt.spawn(probe(url, kind, record.clone(), stop.clone(), epoch)));
        }
        Load {
            record,
            stop,
            epoch,
            tasks,
        }
    }

    /// The time on the samples' clock.
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Waits for both signs of recovery after `back` (bounded), keeps the load on a little
    /// longer, then stops it: the samples and the ids of the acknowledged creates.
    fn finish(
        self,
        rt: &tokio::runtime::Runtime,
        back: Duration,
        at: Edge,
    ) -> (Vec<Sample>, Vec<String>) {
        let recovered = || {
            let samples = self.record.samples.lock().unwrap();
            recovered_at(&samples, Kind::Create, 201, back, at).is_some()
                && recovered_at(&samples, Kind::Ready, 200, back, at).is_some()
        };
        let deadline = Instant::now() + RECOVERY + Duration::from_secs(5);
        while !recovered() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(1));
        self.stop.store(true, Ordering::SeqCst);
        let tasks = self.tasks;
        rt.block_on(async {
            for task in tasks {
                task.await.unwrap();
            }
        });
        let samples = std::mem::take(&mut *self.record.samples.lock().unwrap());
        let acked = std::mem::take(&mut *self.record.acked.lock().unwrap());
        (samples, acked)
    }
}

/// The FHIR requests (creates and reads) among the samples.
fn fhir(samples: &[Sample]) -> Vec<&Sample> {
    samples
        .iter()
        .filter(|s| matches!(s.kind, Kind::Create | Kind::Read))
        .collect()
}

/// Some create succeeded before `down`, so the load worked before the `label` began.
fn check_created_before(api: &[&Sample], down: Duration, label: &str) {
    assert!(
        api.iter()
            .any(|s| s.ended < down && s.status() == Some(201)),
        "no create succeeded before the {label}"
    );
}

/// Nothing succeeds while the database is out of reach: every FHIR request begun at `from` or
/// later and ended by `to` answers 503, and there are enough of them to tell. Returns how many.
fn check_during(api: &[&Sample], from: Duration, to: Duration, label: &str) -> usize {
    let during: Vec<&&Sample> = api
        .iter()
        .filter(|s| s.started >= from && s.ended <= to)
        .collect();
    assert!(
        during.len() >= CLIENTS,
        "too few requests during the {label}: {}",
        during.len()
    );
    for s in &during {
        assert_eq!(
            s.status(),
            Some(503),
            "{:?} at {:.2}s during the {label}",
            s.kind,
            secs(s.started)
        );
    }
    during.len()
}

/// The longest a 503 took.
fn slowest_503(api: &[&Sample]) -> Duration {
    api.iter()
        .filter(|s| s.status() == Some(503))
        .map(|s| s.took())
        .max()
        .unwrap()
}

/// Liveness never looks at the database: a database outage must not get the pod restarted.
fn check_liveness(samples: &[Sample]) {
    for s in samples.iter().filter(|s| s.kind == Kind::Live) {
        assert_eq!(
            s.status(),
            Some(200),
            "/livez at {:.2}s: {:?}",
            secs(s.started),
            s.answer
        );
        assert!(s.took() <= FAIL_FAST, "/livez took {:.2}s", secs(s.took()));
    }
}

/// Readiness: passes before `down`, fails within READY_FLIP of it and stays failed until
/// `back` (a pass placed by `at` after the flip counts against it). Returns the flip time.
fn check_readiness(
    samples: &[Sample],
    down: Duration,
    back: Duration,
    at: Edge,
    label: &str,
) -> Duration {
    let ready: Vec<&Sample> = samples.iter().filter(|s| s.kind == Kind::Ready).collect();
    assert!(
        ready
            .iter()
            .any(|s| s.ended < down && s.status() == Some(200)),
        "/readyz never passed before the {label}"
    );
    for s in &ready {
        assert!(
            matches!(s.status(), Some(200 | 503)) && s.took() <= FAIL_FAST,
            "/readyz at {:.2}s took {:.2}s: {:?}",
            secs(s.started),
            secs(s.took()),
            s.answer
        );
    }
    let flipped = ready
        .iter()
        .filter(|s| s.ended >= down && s.status() == Some(503))
        .map(|s| s.ended)
        .min()
        .unwrap_or_else(|| panic!("/readyz never failed during the {label}"));
    let flip = flipped - down;
    assert!(
        flip <= READY_FLIP,
        "/readyz failed only {:.2}s into the {label}",
        secs(flip)
    );
    assert!(
        !ready
            .iter()
            .any(|s| at(s) > flipped && s.ended < back && s.status() == Some(200)),
        "/readyz passed again during the {label}"
    );
    flip
}

/// Recovery, counted from `back`, the moment the database is reachable again: creates succeed
/// and /readyz passes within RECOVERY, and once a create succeeds the pool has reconnected for
/// good. Returns how long creates and /readyz took to recover.
fn check_recovery(
    samples: &[Sample],
    api: &[&Sample],
    back: Duration,
    at: Edge,
) -> (Duration, Duration) {
    let create_back = recovered_at(samples, Kind::Create, 201, back, at)
        .expect("creates never succeeded again")
        - back;
    let ready_back = recovered_at(samples, Kind::Ready, 200, back, at)
        .expect("/readyz never passed again")
        - back;
    let recovery = create_back.max(ready_back);
    assert!(
        recovery <= RECOVERY,
        "recovery took {:.2}s (creates {:.2}s, /readyz {:.2}s)",
        secs(recovery),
        secs(create_back),
        secs(ready_back)
    );
    let settled = back + create_back;
    let relapses: Vec<String> = api
        .iter()
        .filter(|s| s.started >= settled && !matches!(s.status(), Some(200 | 201)))
        .map(|s| format!("{:?} at {:.2}s: {:?}", s.kind, secs(s.started), s.status()))
        .collect();
    assert!(relapses.is_empty(), "failures after recovery: {relapses:?}");
    (create_back, ready_back)
}

/// No acknowledged write lost: each acked create reads back, whenever it was acked.
async fn check_acked(http: &reqwest::Client, api: &str, acked: &[String]) {
    for id in acked {
        let response = http
            .get(format!("http://{api}/fhir/Patient/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "acked Patient/{id} lost");
        // And the right one: a pooled connection left mid-query would answer out of turn.
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["id"], id.as_str());
    }
}

#[test]
fn postgres_outage_fails_fast_and_recovers_without_losing_acked_writes() {
    // Directories first: they are dropped after the server and the cluster.
    let pg_dir = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Some(mut cluster) = own_cluster(pg_dir.path()) else {
        return;
    };
    let url = cluster.url();
    // The 30 s request deadline stays, so a request waiting for the database shows up.
    let mut server = start_server(dir.path(), &url, &[]);
    let pid = server.pid();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let load = Load::start(&rt, &server);

    std::thread::sleep(BASELINE);
    let down = load.now();
    cluster.stop().unwrap();
    let gone = load.now(); // the fast shutdown has finished: nothing listens
    std::thread::sleep(OUTAGE.saturating_sub(gone - down));
    assert!(
        server.exited().is_none(),
        "careplane exited during the outage"
    );
    let restarting = load.now();
    cluster.start_again().unwrap();
    let back = load.now(); // accepting connections again

    let (samples, acked) = load.finish(&rt, back, ended);
    assert!(server.exited().is_none(), "careplane exited");
    let api = fhir(&samples);

    // Every answer, whatever the phase: fast, and either success or 503 + Retry-After +
    // OperationOutcome; never a 500, never a dropped connection.
    assert_answers(&api, FAIL_FAST);

    // While nothing listens, nothing succeeds.
    let during = check_during(&api, gone, restarting, "outage");
    let max_503 = slowest_503(&api);
    check_liveness(&samples);
    let flip = check_readiness(&samples, down, back, ended, "outage");
    let (create_back, ready_back) = check_recovery(&samples, &api, back, ended);

    eprintln!(
        "R3/L4: outage {:.1}s (stop took {:.2}s); {} requests ({during} during the outage, all \
         503); 503 latency max {:.0} ms; /readyz 503 {:.2}s after the stop; recovery after the \
         database returned: creates {:.2}s, /readyz {:.2}s; {} acked creates; pid {pid} never exited",
        secs(back - down),
        secs(gone - down),
        api.len(),
        max_503.as_secs_f64() * 1000.0,
        secs(flip),
        secs(create_back),
        secs(ready_back),
        acked.len(),
    );
    check_created_before(&api, down, "outage");

    rt.block_on(check_acked(&reqwest::Client::new(), &server.api, &acked));
    assert!(server.terminate().success());
}

/// A TCP proxy to PostgreSQL that can blackhole the path, as a partition that drops packets
/// does: while on, no byte moves in either direction and new connections are accepted but never
/// forwarded, and nothing is closed or refused. Turned off, the held bytes flow again, as TCP
/// would retransmit them once the path heals.
struct Blackhole {
    addr: SocketAddr,
    on: watch::Sender<bool>,
}

impl Blackhole {
    async fn start(upstream: SocketAddr) -> Blackhole {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (on, gate) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut gate = gate.clone();
                tokio::spawn(async move {
                    // Accepted, then silence until the path heals.
                    if gate.wait_for(|on| !on).await.is_err() {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pump(client_read, server_write, gate.clone()),
                        pump(server_read, client_write, gate),
                    );
                });
            }
        });
        Blackhole { addr, on }
    }

    fn set(&self, on: bool) {
        self.on.send_replace(on);
    }
}

/// Copies one direction while the path is open; bytes read just before the blackhole began are
/// held until it ends, and nothing more is read meanwhile (it stays in the kernel's buffers).
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut gate: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if gate.wait_for(|on| !on).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if gate.wait_for(|on| !on).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

/// The request deadline the blackhole test configures, and the slack allowed beyond it.
const DEADLINE: Duration = Duration::from_secs(5);
const DEADLINE_SLACK: Duration = Duration::from_secs(3);

#[test]
fn postgres_blackhole_answers_within_the_deadline_and_recovers_without_losing_acked_writes() {
    let pg_dir = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let Some(cluster) = own_cluster(pg_dir.path()) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let upstream: SocketAddr = format!("127.0.0.1:{}", cluster.port()).parse().unwrap();
    let blackhole = rt.block_on(Blackhole::start(upstream));
    let url = format!("postgres://postgres@{}/postgres", blackhole.addr);
    let deadline = DEADLINE.as_secs().to_string();
    let mut server = start_server(
        dir.path(),
        &url,
        &[("CAREPLANE_REQUEST_TIMEOUT_SECONDS", deadline.as_str())],
    );
    let pid = server.pid();
    let load = Load::start(&rt, &server);

    std::thread::sleep(BASELINE);
    let down = load.now();
    blackhole.set(true);
    std::thread::sleep(OUTAGE);
    assert!(
        server.exited().is_none(),
        "careplane exited during the blackhole"
    );
    let back = load.now();
    blackhole.set(false);

    let (samples, acked) = load.finish(&rt, back, started);
    assert!(server.exited().is_none(), "careplane exited");
    let api = fhir(&samples);
    check_created_before(&api, down, "blackhole");

    // Never a hang: the request deadline bounds a query that will not answer.
    assert_answers(&api, DEADLINE + DEADLINE_SLACK);

    // While the path is dark nothing succeeds; requests that began during it answer 503.
    let during = check_during(&api, down, back, "blackhole");
    let max_503 = slowest_503(&api);
    // Requests that found the pool dark fail at the acquire timeout, not the deadline.
    let slowest_fresh = api
        .iter()
        .filter(|s| s.started >= down + DEADLINE && s.ended <= back)
        .map(|s| s.took())
        .max()
        .unwrap_or_default();

    check_liveness(&samples);
    let flip = check_readiness(&samples, down, back, started, "blackhole");
    let (create_back, ready_back) = check_recovery(&samples, &api, back, started);

    // No acknowledged write lost: each acked create reads back, and the Patients stored are at
    // least as many (a create cut off by the deadline may still have committed).
    let stored = rt.block_on(async {
        let http = reqwest::Client::new();
        check_acked(&http, &server.api, &acked).await;
        let count: Value = http
            .get(format!("http://{}/fhir/Patient?_summary=count", server.api))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        count["total"].as_u64().expect("a total")
    });
    assert!(
        stored >= acked.len() as u64,
        "{stored} Patients stored, {} acked",
        acked.len()
    );
    eprintln!(
        "R3 blackhole: {:.1}s dark; {} requests ({during} during it, all 503); 503 latency max \
         {:.2}s (deadline {DEADLINE:?}), requests begun past the deadline max {:.2}s; /readyz \
         503 {:.2}s in; recovery after the path healed: creates {:.2}s, /readyz {:.2}s; {} \
         acked creates, {stored} stored; pid {pid} never exited",
        secs(back - down),
        api.len(),
        secs(max_503),
        secs(slowest_fresh),
        secs(flip),
        secs(create_back),
        secs(ready_back),
        acked.len(),
    );
    assert!(server.terminate().success());
    drop(cluster);
}
