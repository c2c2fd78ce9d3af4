//! Encrypted by default: neither binary speaks plaintext gRPC across a network unless an
//! operator says so, and `/healthz` answers the probes that cannot speak TLS.

#![allow(clippy::unwrap_used)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use toolplane_tests::procs::{ADMIN_TOKEN, MASTER_KEY, Proc, bin};

/// Runs `name` and waits for it to exit; the exit code and its stderr.
async fn run_to_exit(name: &str, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(bin(name));
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the process exits on its own")
        .unwrap();
    (status.code(), stderr)
}

#[tokio::test]
async fn the_control_plane_refuses_plaintext_on_a_non_loopback_address() {
    let env = [
        ("TOOLPLANE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("TOOLPLANE_MASTER_KEY", MASTER_KEY),
    ];
    let (code, stderr) = run_to_exit("toolplane-control-plane", &["--listen", "0.0.0.0:0"], &env).await;
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("refusing to serve plaintext gRPC on 0.0.0.0:0")
            && stderr.contains("TOOLPLANE_ALLOW_PLAINTEXT"),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "it never listened: {stderr}");

    // Loopback stays plaintext-friendly (make run, tests), and an operator can opt in.
    let allowed = Proc::start(
        "toolplane-control-plane",
        &["--listen", "0.0.0.0:0"],
        &[
            ("TOOLPLANE_ADMIN_TOKEN", ADMIN_TOKEN),
            ("TOOLPLANE_ALLOW_PLAINTEXT", "true"),
        ],
    )
    .await;
    toolplane_tests::eventually("the plaintext warning in its log", Duration::from_secs(10), || async {
        allowed.logs().contains("serving plaintext gRPC").then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_sidecar_refuses_plaintext_to_a_remote_control_plane_and_on_a_remote_listener() {
    // Refused before any connection is attempted: nothing is sent to that address.
    let env = [("TOOLPLANE_SIDECAR_TOKEN", "tpk_not_a_real_token_but_long_enough")];
    let (code, stderr) = run_to_exit(
        "toolplane-sidecar",
        &[
            "--listen",
            "127.0.0.1:0",
            "--control-plane",
            "http://control-plane.example.internal:50051",
            "--spool-dir",
            "",
        ],
        &env,
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains(
            "refusing to reach the control plane at http://control-plane.example.internal:50051 in plaintext"
        ),
        "{stderr}"
    );
    let (code, stderr) = run_to_exit(
        "toolplane-sidecar",
        &[
            "--listen",
            "0.0.0.0:0",
            "--control-plane",
            "http://127.0.0.1:9",
            "--spool-dir",
            "",
        ],
        &env,
    )
    .await;
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("refusing to serve plaintext gRPC on 0.0.0.0:0"),
        "{stderr}"
    );
}

#[tokio::test]
async fn healthz_mirrors_the_grpc_health_service_for_probes_without_tls() {
    let port = toolplane_tests::free_port();
    let metrics = format!("127.0.0.1:{port}");
    let cp = Proc::start(
        "toolplane-control-plane",
        &["--listen", "127.0.0.1:0"],
        &[
            ("TOOLPLANE_ADMIN_TOKEN", ADMIN_TOKEN),
            ("TOOLPLANE_METRICS_LISTEN", &metrics),
        ],
    )
    .await;
    let get = |path: &'static str| {
        let metrics = metrics.clone();
        async move {
            let mut s = tokio::net::TcpStream::connect(&metrics).await.ok()?;
            use tokio::io::AsyncWriteExt;
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
                .await
                .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).await.ok()?;
            Some(out)
        }
    };
    let answer = toolplane_tests::eventually("/healthz to answer", Duration::from_secs(10), || get("/healthz")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("SERVING\n"), "{answer}");
    drop(cp);
}

/// Debian's clusters serve TLS with the `ssl-cert` package's snakeoil certificate, made
/// for `localhost` (and `make test`'s throwaway server uses it too).
const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

/// Whether every connection the control plane holds to `db` is encrypted: `None` while
/// it holds none.
async fn control_plane_connections_encrypted(db: &toolplane_tests::pg::TestDb) -> Option<bool> {
    let client = db.client().await;
    let rows = client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.datname = $1 AND a.application_name = 'tls-under-test'",
            &[&db.name],
        )
        .await
        .unwrap();
    if rows.is_empty() {
        return None;
    }
    Some(rows.iter().all(|r| r.get::<_, bool>(0)))
}

async fn control_plane_on(url: &str) -> Proc {
    toolplane_tests::procs::control_plane(Some(url)).await
}

#[tokio::test]
async fn postgres_connections_honour_sslmode() {
    let db = toolplane_tests::pg::TestDb::create().await;
    let admin = db.client().await;
    let ssl: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
    assert_eq!(
        ssl, "on",
        "the test PostgreSQL must serve TLS (Debian's default; make test's own server does)"
    );
    assert!(
        std::path::Path::new(SNAKEOIL).exists(),
        "{SNAKEOIL} (package ssl-cert) is needed"
    );
    let with = |host: &str, params: &str| {
        format!(
            "{}?application_name=tls-under-test&{params}",
            db.url.replacen("127.0.0.1", host, 1)
        )
    };

    for (params, encrypted) in [("sslmode=require", true), ("sslmode=disable", false)] {
        let cp = control_plane_on(&with("127.0.0.1", params)).await;
        let seen = toolplane_tests::eventually("the control plane's connections", Duration::from_secs(10), || {
            control_plane_connections_encrypted(&db)
        })
        .await;
        assert_eq!(seen, encrypted, "{params}");
        cp.kill().await;
        toolplane_tests::eventually("its connections to close", Duration::from_secs(10), || async {
            control_plane_connections_encrypted(&db).await.is_none().then_some(())
        })
        .await;
    }

    // verify-full: the certificate must chain to sslrootcert and name the host.
    let verified = with("localhost", &format!("sslmode=verify-full&sslrootcert={SNAKEOIL}"));
    let cp = control_plane_on(&verified).await;
    let seen = toolplane_tests::eventually("the verified connections", Duration::from_secs(10), || {
        control_plane_connections_encrypted(&db)
    })
    .await;
    assert!(seen);
    cp.kill().await;
    let env = [
        ("TOOLPLANE_ADMIN_TOKEN", ADMIN_TOKEN),
        (
            "DATABASE_URL",
            &*with("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={SNAKEOIL}")),
        ),
    ];
    let (code, stderr) = run_to_exit("toolplane-control-plane", &["--listen", "127.0.0.1:0"], &env).await;
    assert_ne!(code, Some(0), "a certificate for localhost does not name 127.0.0.1");
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    // verify-ca checks the chain only.
    let cp = control_plane_on(&with("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={SNAKEOIL}"))).await;
    assert!(
        toolplane_tests::eventually("the chain-verified connections", Duration::from_secs(10), || {
            control_plane_connections_encrypted(&db)
        })
        .await
    );
    drop(cp);
}
