//! Redis as a store the agent cannot tamper with. A throwaway `redis-server` with the
//! ACL of `deploy/redis/users.acl` (default user off, a `sidecar` user limited to
//! toolplane's keys and commands) serves real sidecars over `rediss://` with the
//! password from a file. The agent shares the sidecar's network but not that file, so
//! "holding what the agent holds" is a TCP connection without a password; "admin" is a
//! Redis superuser the test adds, to tamper with cached results.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use toolplane_core::json::value_from_pb;
use toolplane_proto::v1 as pb;
use toolplane_sidecar::cache_seal::Sealer;
use toolplane_tests::grpc::{Admin, executor, http_tool, invoke_request};
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, control_plane, sidecar_with, spool_dir};
use toolplane_tests::tool_server::ToolServer;
use toolplane_tests::{eventually, free_port};

const WAIT: Duration = Duration::from_secs(20);
const SIDECAR_PASSWORD: &str = "sidecar-password-only-in-its-container";
const ADMIN_PASSWORD: &str = "redis-admin-password";
const HMAC_KEY: &str = "hmac-key-shared-by-sidecars-0123456789";

/// A RESP reply, flattened to what the tests look at.
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Ok(String),
    Err(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Vec<Reply>),
}

impl Reply {
    fn err(&self) -> &str {
        match self {
            Reply::Err(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn text(&self) -> String {
        match self {
            Reply::Bulk(Some(s)) | Reply::Ok(s) => s.clone(),
            other => panic!("expected a string, got {other:?}"),
        }
    }
}

/// Raw RESP over TCP: what anything in the pod's network can speak.
struct Resp(BufReader<TcpStream>);

impl Resp {
    fn connect(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Self(BufReader::new(s))
    }

    fn admin(port: u16) -> Self {
        let mut c = Self::connect(port);
        assert_eq!(c.cmd(&["AUTH", "admin", ADMIN_PASSWORD]), Reply::Ok("OK".into()));
        c
    }

    fn cmd(&mut self, args: &[&str]) -> Reply {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.0.get_mut().write_all(out.as_bytes()).unwrap();
        self.read()
    }

    fn read(&mut self) -> Reply {
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1);
        match kind {
            "+" => Reply::Ok(rest.to_owned()),
            "-" => Reply::Err(rest.to_owned()),
            ":" => Reply::Int(rest.parse().unwrap()),
            "$" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return Reply::Bulk(None);
                }
                let mut buf = vec![0; usize::try_from(n).unwrap() + 2];
                std::io::Read::read_exact(&mut self.0, &mut buf).unwrap();
                buf.truncate(buf.len() - 2);
                Reply::Bulk(Some(String::from_utf8(buf).unwrap()))
            }
            "*" => {
                let n: i64 = rest.parse().unwrap();
                Reply::Array((0..n.max(0)).map(|_| self.read()).collect())
            }
            other => panic!("unexpected RESP reply {other}{rest}"),
        }
    }

    fn keys(&mut self, pattern: &str) -> Vec<String> {
        match self.cmd(&["KEYS", pattern]) {
            Reply::Array(keys) => {
                let mut keys: Vec<String> = keys.iter().map(Reply::text).collect();
                keys.sort();
                keys
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A throwaway `redis-server`: plaintext on `port` (the test's own connections), TLS on
/// `tls_port` (the sidecars'), the shipped ACL plus a test admin; killed on drop.
struct TestRedis {
    child: Child,
    dir: PathBuf,
    port: u16,
    tls_port: u16,
}

impl TestRedis {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("toolplane-redis-trust-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let shipped =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/redis/users.acl")).unwrap();
        assert!(shipped.contains(">REPLACE-with-the-sidecar-password"), "{shipped}");
        let acl = shipped.replace(">REPLACE-with-the-sidecar-password", &format!(">{SIDECAR_PASSWORD}"))
            + &format!("user admin on >{ADMIN_PASSWORD} ~* &* +@all\n");
        std::fs::write(dir.join("users.acl"), acl).unwrap();
        write_pki(&dir);
        let (port, tls_port) = (free_port(), free_port());
        let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--port", &port.to_string(), "--tls-port", &tls_port.to_string()])
            .args([
                "--tls-cert-file",
                &file("redis.crt"),
                "--tls-key-file",
                &file("redis.key"),
            ])
            .args(["--tls-ca-cert-file", &file("ca.crt"), "--tls-auth-clients", "no"])
            .args(["--dir", &file(""), "--aclfile", &file("users.acl")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make test names the package)");
        let redis = Self {
            child,
            dir,
            port,
            tls_port,
        };
        let deadline = std::time::Instant::now() + WAIT;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// What the sidecar container is given: a `rediss://` URL naming its ACL user, the
    /// password file, the CA and the HMAC key.
    fn sidecar_env(&self) -> Vec<(String, String)> {
        vec![
            (
                "REDIS_URL".to_owned(),
                format!("rediss://sidecar@127.0.0.1:{}", self.tls_port),
            ),
            (
                "TOOLPLANE_REDIS_PASSWORD_FILE".to_owned(),
                self.path("sidecar-password"),
            ),
            ("TOOLPLANE_REDIS_CA_FILE".to_owned(), self.path("ca.crt")),
            ("TOOLPLANE_REDIS_HMAC_KEY".to_owned(), HMAC_KEY.to_owned()),
        ]
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA, Redis's server certificate for 127.0.0.1, and the sidecar's password file.
fn write_pki(dir: &std::path::Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "toolplane redis test CA");
    let ca = params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(dir.join("redis.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("redis.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("sidecar-password"), format!("{SIDECAR_PASSWORD}\n")).unwrap();
}

/// Redis, a control plane, a word-counting tool that is cacheable, rate limited and
/// under a daily budget, and an agent allowed to use it.
struct Stack {
    redis: TestRedis,
    tools: ToolServer,
    cp: Proc,
    sidecar_token: String,
    token: String,
}

impl Stack {
    async fn start() -> Self {
        let redis = TestRedis::start();
        let tools = ToolServer::start().await;
        let cp = control_plane(None).await;
        let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
        let mut tool = http_tool("cached_count", &tools.url("/word_count"));
        tool.cacheable = true;
        tool.cache_ttl_seconds = 600;
        // One call a second: each call moves the shared state a second ahead.
        tool.requirements.as_mut().unwrap().rate_limit_rpm = 60;
        let tool = admin.register(tool).await.unwrap();
        let agent = admin.agent("tempted").await;
        admin
            .permissions
            .grant(pb::GrantRequest {
                permission: Some(pb::Permission {
                    agent_id: agent.id.clone(),
                    tool_id: tool.id.clone(),
                    r#type: pb::PermissionType::LimitedInvocations as i32,
                    max_invocations_per_day: 1000,
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        let token = admin.token(pb::Role::Agent, &agent.id).await;
        let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
        Self {
            redis,
            tools,
            cp,
            sidecar_token,
            token,
        }
    }

    /// A sidecar on this Redis, serving metrics on the returned port.
    async fn sidecar(&self) -> (Proc, u16) {
        let metrics_port = free_port();
        let metrics = format!("127.0.0.1:{metrics_port}");
        let mut env = self.redis.sidecar_env();
        env.push(("TOOLPLANE_METRICS_LISTEN".to_owned(), metrics));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let sc = sidecar_with(&self.cp, &self.sidecar_token, &spool_dir(), &env).await;
        (sc, metrics_port)
    }

    async fn call(&self, sidecar: &Proc, text: &str) -> pb::ToolResult {
        let ex = executor(&sidecar.url(), Some(&self.token)).await;
        let req = invoke_request("cached_count", &json!({ "text": text }));
        let r = eventually("the sidecar to serve", WAIT, || {
            let (mut ex, req) = (ex.clone(), req.clone());
            async move { ex.invoke(req).await.ok() }
        })
        .await;
        let r = r.into_inner().result.unwrap();
        assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32, "{}", r.error);
        r
    }

    fn hits(&self) -> usize {
        self.tools.hits("/word_count")
    }
}

fn output(r: &pb::ToolResult) -> Value {
    r.output.clone().map_or(Value::Null, value_from_pb)
}

/// The sidecar spoke to Redis as its ACL user and was never refused or cut off.
fn assert_redis_was_used(sc: &Proc) {
    let logs = sc.logs();
    for bad in [
        "Redis unavailable",
        "NOPERM",
        "NOAUTH",
        "WRONGPASS",
        "cannot connect to Redis",
    ] {
        assert!(!logs.contains(bad), "{bad} in the sidecar's logs:\n{logs}");
    }
}

#[tokio::test]
async fn holding_only_what_the_agent_holds_redis_refuses_every_change() {
    let s = Stack::start().await;
    let (sc, _) = s.sidecar().await;
    s.call(&sc, "count these words").await;
    assert_eq!(s.hits(), 1);
    assert_redis_was_used(&sc);

    let mut admin = Resp::admin(s.redis.port);
    let keys = admin.keys("toolplane:*");
    let find = |prefix: &str| {
        keys.iter()
            .find(|k| k.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix}* key in {keys:?}"))
            .clone()
    };
    let (quota, rate, cached) = (
        find("toolplane:quota:"),
        find("toolplane:ratelimit:"),
        find("toolplane:cache:"),
    );
    let before: Vec<Reply> = [&quota, &rate, &cached]
        .iter()
        .map(|k| admin.cmd(&["GET", k]))
        .collect();

    // The agent: the same network, no password.
    let mut agent = Resp::connect(s.redis.port);
    for key in [&quota, &rate, &cached] {
        for attempt in [
            vec!["SET", key.as_str(), "0"],
            vec!["DEL", key.as_str()],
            vec!["GET", key.as_str()],
            vec!["EXPIRE", key.as_str(), "1"],
        ] {
            let reply = agent.cmd(&attempt);
            assert!(reply.err().starts_with("NOAUTH"), "{attempt:?}: {reply:?}");
        }
    }
    assert!(agent.cmd(&["FLUSHALL"]).err().starts_with("NOAUTH"));
    for guess in [
        vec!["AUTH", "sidecar", "sidecar"],
        vec!["AUTH", ""],
        vec!["AUTH", "default", ""],
    ] {
        let reply = agent.cmd(&guess);
        assert!(reply.err().starts_with("WRONGPASS"), "{guess:?}: {reply:?}");
    }
    assert!(agent.cmd(&["GET", &quota]).err().starts_with("NOAUTH"));

    // Even the sidecar's own user cannot wipe a counter or reach past toolplane's keys.
    let mut sidecar_user = Resp::connect(s.redis.port);
    assert_eq!(
        sidecar_user.cmd(&["AUTH", "sidecar", SIDECAR_PASSWORD]),
        Reply::Ok("OK".into())
    );
    for attempt in [
        vec!["DEL", quota.as_str()],
        vec!["FLUSHALL"],
        vec!["KEYS", "*"],
        vec!["CONFIG", "SET", "aclfile", "/tmp/x"],
        vec!["GET", "elsewhere"],
    ] {
        let reply = sidecar_user.cmd(&attempt);
        assert!(reply.err().starts_with("NOPERM"), "{attempt:?}: {reply:?}");
    }

    let after: Vec<Reply> = [&quota, &rate, &cached]
        .iter()
        .map(|k| admin.cmd(&["GET", k]))
        .collect();
    assert_eq!(before, after, "nothing changed");
    assert!(
        before[2].text().starts_with("v1."),
        "cached values are sealed: {:?}",
        before[2]
    );
}

#[tokio::test]
async fn tampered_cache_values_are_not_served_and_untampered_shared_hits_are() {
    let s = Stack::start().await;
    let (a, _) = s.sidecar().await;
    let mut admin = Resp::admin(s.redis.port);
    // One text per case; word counts 1..=6 tell the answers apart.
    let texts = ["one", "one two", "one two three", "a b c d", "e f g h i", "u v w x y z"];
    let mut key_of = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let before = admin.keys("toolplane:cache:*");
        let r = s.call(&a, text).await;
        assert_eq!(output(&r), json!({ "words": i + 1 }));
        assert!(!r.cache_hit);
        let after = admin.keys("toolplane:cache:*");
        let new: Vec<&String> = after.iter().filter(|k| !before.contains(k)).collect();
        assert_eq!(new.len(), 1, "{before:?} -> {after:?}");
        key_of.push(new[0].clone());
    }
    assert_eq!(s.hits(), 6);
    assert_redis_was_used(&a);

    // With admin access to Redis (but not the sidecars' HMAC key):
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).timestamp_millis();
    // 1: the right shape, other content, written as plain JSON.
    admin.cmd(&["SET", &key_of[0], r#"{"words":99}"#]);
    // 2: the same, dressed as a sealed value with a made-up MAC.
    let forged = format!("v1.{future}.{}.{{\"words\":99}}", "00".repeat(32));
    admin.cmd(&["SET", &key_of[1], &forged]);
    // 3: a genuinely sealed value, moved from another entry (case 4's) to this one.
    let moved = admin.cmd(&["GET", &key_of[3]]).text();
    admin.cmd(&["SET", &key_of[2], &moved]);
    // 5: sealed with the real key (a sidecar gone bad), but breaking the output schema.
    let bad_shape = Sealer::new(HMAC_KEY)
        .unwrap()
        .seal(&key_of[4], future, &json!({"words": "many"}));
    admin.cmd(&["SET", &key_of[4], &bad_shape]);

    // A second sidecar (nothing in process) reads these back from Redis.
    let (b, b_metrics) = s.sidecar().await;
    for i in [0, 1, 2, 4] {
        let hits = s.hits();
        let r = s.call(&b, texts[i]).await;
        assert_eq!(output(&r), json!({ "words": i + 1 }), "case {}", i + 1);
        assert!(!r.cache_hit, "case {}: not served from the cache", i + 1);
        assert_eq!(s.hits(), hits + 1, "case {}: the tool was called instead", i + 1);
        let rewritten = admin.cmd(&["GET", &key_of[i]]).text();
        assert!(
            rewritten.starts_with("v1.") && rewritten.ends_with(&format!("{{\"words\":{}}}", i + 1)),
            "case {}: the entry is sealed afresh: {rewritten}",
            i + 1
        );
    }
    // Untampered entries written by the first sidecar are still shared.
    for i in [3, 5] {
        let hits = s.hits();
        let r = s.call(&b, texts[i]).await;
        assert_eq!(output(&r), json!({ "words": i + 1 }));
        assert!(r.cache_hit, "an untampered L2 hit is served");
        assert_eq!(s.hits(), hits);
    }
    assert_redis_was_used(&b);

    let text = toolplane_tests::http_get(format!("http://127.0.0.1:{b_metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (reason, n) in [("malformed", 1), ("mac", 2), ("schema", 1)] {
        let line = format!("toolplane_cache_rejected_total{{reason=\"{reason}\"}} {n}");
        assert!(text.contains(&line), "{line} missing from:\n{text}");
    }
    assert!(b.logs().contains("refused a result-cache value from Redis"));
}

#[tokio::test]
async fn a_rate_limit_state_deleted_behind_the_sidecars_back_is_noticed() {
    let s = Stack::start().await;
    let (a, metrics_port) = s.sidecar().await;
    let scrape = || async move {
        toolplane_tests::http_get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // Five misses put the state about five seconds ahead of Redis's clock.
    for text in ["a", "a b", "a b c", "a b c d", "a b c d e"] {
        s.call(&a, text).await;
    }
    assert!(!scrape().await.contains("toolplane_redis_state_regressions_total"));
    let mut admin = Resp::admin(s.redis.port);
    let rate = admin.keys("toolplane:ratelimit:*");
    assert_eq!(rate.len(), 1, "{rate:?}");
    assert_eq!(admin.cmd(&["DEL", &rate[0]]), Reply::Int(1));

    s.call(&a, "f").await;
    let text = scrape().await;
    assert!(
        text.contains(r#"toolplane_redis_state_regressions_total{kind="rate_limit"} 1"#),
        "{text}"
    );
    assert!(a.logs().contains("rate-limit state in Redis went backwards"));
}
