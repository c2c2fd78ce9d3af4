//! Poison-proof audit delivery, end to end: a real control plane on PostgreSQL, a real
//! sidecar and a real HTTP tool. What an agent sends (NUL characters, a 4 MB task id,
//! hundreds of large events) or a tool answers (a binary error body) is cleaned and
//! bounded by the sidecar, so it is stored, and delivery never stops: calls made
//! afterwards reach the trail within seconds, and nothing is lost or stored twice. A
//! WRITE call whose caller goes away mid-call is still recorded.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;
use toolplane_core::json::json_to_struct;
use toolplane_proto::v1 as pb;
use toolplane_tests::eventually;
use toolplane_tests::grpc::{Admin, Authed, executor, http_tool, invoke_request};
use toolplane_tests::pg::TestDb;
use toolplane_tests::procs::{ADMIN_TOKEN, Proc, control_plane, sidecar};
use toolplane_tests::tool_server::ToolServer;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);
/// How soon an ordinary call made after the odd ones must be in the trail.
const SOON: Duration = Duration::from_secs(10);

struct Rig {
    db: TestDb,
    tools: ToolServer,
    _cp: Proc,
    sidecar: Proc,
    token: String,
}

/// A tool that takes any object (so parameters reach the audit as sent) at `path`.
fn open_tool(name: &str, endpoint: &str, side_effects: pb::SideEffects) -> pb::Tool {
    let mut t = http_tool(name, endpoint);
    let schema = t.schema.as_mut().unwrap();
    schema.input_schema = json_to_struct(&json!({"type": "object"}));
    schema.output_schema = json_to_struct(&json!({"type": "object"}));
    t.side_effects = side_effects as i32;
    t.idempotent = side_effects == pb::SideEffects::None;
    t.requirements.as_mut().unwrap().timeout_ms = 10_000;
    t
}

impl Rig {
    /// `count` (word count, strict schema), `echo` and `binary` (open schemas),
    /// `slow_write` and `quick_write` (WRITE tools), all granted; `forbidden`, not.
    async fn start() -> Self {
        let db = TestDb::create().await;
        let tools = ToolServer::start().await;
        let cp = control_plane(Some(&db.url)).await;
        let mut admin = Admin::connect(&cp.url(), ADMIN_TOKEN).await;
        let agent = admin.agent("odd-agent").await;
        let granted = [
            http_tool("count", &tools.url("/word_count")),
            open_tool("echo", &tools.url("/echo"), pb::SideEffects::None),
            open_tool("binary", &tools.url("/binary_error"), pb::SideEffects::None),
            open_tool("slow_write", &tools.url("/slow"), pb::SideEffects::Write),
            open_tool("quick_write", &tools.url("/echo"), pb::SideEffects::Write),
        ];
        for t in granted {
            let t = admin.register(t).await.unwrap();
            admin.grant_full(&agent.id, &t.id).await;
        }
        admin
            .register(open_tool("forbidden", &tools.url("/echo"), pb::SideEffects::None))
            .await
            .unwrap();
        let token = admin.token(pb::Role::Agent, &agent.id).await;
        let sidecar_token = admin.token(pb::Role::Sidecar, "").await;
        let sidecar = sidecar(&cp, &sidecar_token).await;
        let rig = Self {
            db,
            tools,
            _cp: cp,
            sidecar,
            token,
        };
        eventually("the sidecar to serve", WAIT, || async {
            let mut ex = rig.executor().await;
            ex.invoke(invoke_request("count", &json!({"text": "warm up"})))
                .await
                .ok()
        })
        .await;
        rig
    }

    async fn executor(&self) -> pb::executor_client::ExecutorClient<Authed> {
        executor(&self.sidecar.url(), Some(&self.token))
            .await
            .max_decoding_message_size(16 * 1024 * 1024)
            .max_encoding_message_size(16 * 1024 * 1024)
    }

    async fn invoke(
        &self,
        tool: &str,
        task_id: &str,
        category: &str,
        params: &Value,
    ) -> Result<pb::ToolResult, tonic::Status> {
        let mut req = invoke_request(tool, params);
        req.task_id = task_id.to_owned();
        req.task_category = category.to_owned();
        let r = self.executor().await.invoke(req).await?;
        Ok(r.into_inner().result.unwrap())
    }

    /// An ordinary call made now reaches PostgreSQL within [`SOON`]: delivery goes on.
    async fn delivery_goes_on(&self) {
        let r = self
            .invoke("count", "ordinary", "", &json!({"text": "still audited"}))
            .await
            .unwrap();
        assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32);
        let id = Uuid::parse_str(&r.invocation_id).unwrap();
        let client = self.db.client().await;
        eventually("an ordinary call after the odd ones in the trail", SOON, || {
            let client = &client;
            async move {
                let n: i64 = client
                    .query_one(
                        "SELECT (SELECT count(*) FROM audit_events WHERE invocation_id = $1 AND action = 'tool_invoked') \
                         + (SELECT count(*) FROM invocations WHERE invocation_id = $1)",
                        &[&id],
                    )
                    .await
                    .unwrap()
                    .get(0);
                (n == 2).then_some(())
            }
        })
        .await;
    }

    /// Nothing is stored twice, and the sync stream never broke (a refused batch
    /// closes it; the sidecar logs each reconnect).
    async fn nothing_twice_and_no_broken_stream(&self) {
        let client = self.db.client().await;
        let twice: i64 = client
            .query_one(
                "SELECT count(*) FROM (SELECT event_id FROM audit_events GROUP BY event_id HAVING count(*) > 1) d",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(twice, 0, "an audit event was stored twice");
        let invoked_twice: i64 = client
            .query_one(
                "SELECT count(*) FROM (SELECT invocation_id FROM audit_events WHERE action = 'tool_invoked' \
                 GROUP BY invocation_id HAVING count(*) > 1) d",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(invoked_twice, 0, "a call was audited twice");
        let logs = self.sidecar.logs();
        assert!(
            !logs.contains("sync with control plane failed"),
            "the sync stream broke:\n{logs}"
        );
    }

    /// Waits for exactly `n` audit rows matching `filter` (SQL over audit_events).
    async fn audit_rows(&self, filter: &str, n: usize) -> Vec<tokio_postgres::Row> {
        let client = self.db.client().await;
        let sql = format!("SELECT * FROM audit_events WHERE {filter} ORDER BY seq");
        let rows = eventually(filter, WAIT, || {
            let (client, sql) = (&client, &sql);
            async move {
                let rows = client.query(sql.as_str(), &[]).await.unwrap();
                (rows.len() >= n).then_some(rows)
            }
        })
        .await;
        assert_eq!(rows.len(), n, "{filter}");
        rows
    }

    async fn invocation_row(&self, id: &str) -> tokio_postgres::Row {
        let id = Uuid::parse_str(id).unwrap();
        let client = self.db.client().await;
        eventually("the invocation row", WAIT, || {
            let client = &client;
            async move {
                client
                    .query_opt("SELECT * FROM invocations WHERE invocation_id = $1", &[&id])
                    .await
                    .unwrap()
            }
        })
        .await
    }
}

#[tokio::test]
async fn nul_characters_and_a_binary_error_body_are_cleaned_and_delivery_goes_on() {
    let rig = Rig::start().await;
    let params = json!({"key\u{0}x": "a\u{0}b", "nested": {"list": ["\u{0}", 1]}});

    // Allowed: the call succeeds and is stored with its NULs escaped.
    let ok = rig
        .invoke("echo", "nul\u{0}task", "cat\u{0}egory", &params)
        .await
        .unwrap();
    assert_eq!(ok.status, pb::ToolExecutionStatus::Success as i32);

    // Refused: permission denied, and a schema violation.
    let denied = rig
        .invoke("forbidden", "denied\u{0}task", "", &params)
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let invalid = rig
        .invoke("count", "invalid\u{0}task", "", &json!({"text": 5, "k\u{0}": "\u{0}"}))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);

    // A tool whose error answer is binary: NUL bytes and invalid UTF-8.
    let binary = rig.invoke("binary", "binary", "", &json!({})).await.unwrap();
    assert_eq!(binary.status, pb::ToolExecutionStatus::ExecutionError as i32);
    assert!(binary.error.contains("oops\\u0000\u{fffd}"), "{}", binary.error);
    assert!(!binary.error.contains('\0'));

    rig.delivery_goes_on().await;

    let rows = rig.audit_rows("task_id = 'nul\\u0000task'", 1).await;
    let event: Value = rows[0].get("sanitized_parameters");
    assert_eq!(
        event,
        json!({"key\\u0000x": "a\\u0000b", "nested": {"list": ["\\u0000", 1]}})
    );
    let inv = rig.invocation_row(&ok.invocation_id).await;
    assert_eq!(inv.get::<_, String>("task_id"), "nul\\u0000task");
    assert_eq!(inv.get::<_, String>("task_category"), "cat\\u0000egory");
    assert_eq!(inv.get::<_, Value>("parameters"), event);

    let denials = rig
        .audit_rows(
            "task_id = 'denied\\u0000task' AND action = 'permission_checked' AND NOT success",
            1,
        )
        .await;
    assert_eq!(
        denials[0].get::<_, Value>("sanitized_parameters")["key\\u0000x"],
        "a\\u0000b"
    );
    let invalids = rig
        .audit_rows("task_id = 'invalid\\u0000task' AND action = 'error_occurred'", 1)
        .await;
    assert_eq!(
        invalids[0].get::<_, Value>("sanitized_parameters")["k\\u0000"],
        "\\u0000"
    );

    let failed = rig
        .audit_rows(
            &format!("invocation_id = '{}' AND action = 'tool_invoked'", binary.invocation_id),
            1,
        )
        .await;
    let detail: String = failed[0].get("detail");
    assert!(detail.contains("oops\\u0000\u{fffd}"), "{detail}");
    let inv = rig.invocation_row(&binary.invocation_id).await;
    assert!(inv.get::<_, String>("error").contains("oops\\u0000"));

    rig.nothing_twice_and_no_broken_stream().await;
}

#[tokio::test]
async fn a_four_megabyte_task_id_is_capped_not_refused() {
    let rig = Rig::start().await;
    let huge = format!("big-task-{}", "x".repeat(4_000_000));
    let ok = rig
        .invoke("count", &huge, &"c".repeat(10_000), &json!({"text": "hello there"}))
        .await
        .unwrap();
    assert_eq!(ok.status, pb::ToolExecutionStatus::Success as i32);
    let denied = rig.invoke("forbidden", &huge, "", &json!({})).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    rig.delivery_goes_on().await;

    let rows = rig.audit_rows("task_id LIKE 'big-task-%'", 2).await;
    for r in &rows {
        let task_id: String = r.get("task_id");
        assert!(task_id.len() <= 256, "{}", task_id.len());
        assert!(task_id.contains("bytes cut; sha256 "), "{task_id}");
    }
    let inv = rig.invocation_row(&ok.invocation_id).await;
    assert!(inv.get::<_, String>("task_id").starts_with("big-task-xxx"));
    assert!(inv.get::<_, String>("task_category").len() <= 64);

    rig.nothing_twice_and_no_broken_stream().await;
}

#[tokio::test]
async fn three_hundred_large_calls_are_all_delivered_once() {
    let rig = Rig::start().await;
    const CALLS: usize = 300;
    // Raw, each call's two events would carry ~150 KB of parameters: ~90 MB for all,
    // over the control plane's 64 MiB message limit. Cleaned, ~45 KB each stay.
    let pad = "p".repeat(3_000);
    let mut tasks = tokio::task::JoinSet::new();
    let ex = rig.executor().await;
    for i in 0..CALLS {
        let mut params = json!({"i": i, "big": "B".repeat(100_000)});
        for k in 0..15 {
            params[format!("pad{k:02}")] = json!(pad);
        }
        let mut ex = ex.clone();
        tasks.spawn(async move {
            let mut req = invoke_request("echo", &params);
            req.task_id = format!("bulk-{i}");
            let r = ex.invoke(req).await.unwrap().into_inner().result.unwrap();
            assert_eq!(r.status, pb::ToolExecutionStatus::Success as i32, "{}", r.error);
            Uuid::parse_str(&r.invocation_id).unwrap()
        });
        // A few dozen in flight at a time.
        while tasks.len() >= 32 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }

    rig.delivery_goes_on().await;

    let client = rig.db.client().await;
    eventually("all 300 calls in the trail", WAIT, || {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT (SELECT count(*) FROM audit_events WHERE task_id LIKE 'bulk-%' AND action = 'tool_invoked'), \
                     (SELECT count(*) FROM invocations WHERE task_id LIKE 'bulk-%')",
                    &[],
                )
                .await
                .unwrap();
            let (events, invocations): (i64, i64) = (row.get(0), row.get(1));
            (events == CALLS as i64 && invocations == CALLS as i64).then_some(())
        }
    })
    .await;
    let sample: Value = client
        .query_one(
            "SELECT sanitized_parameters FROM audit_events WHERE task_id = 'bulk-7' AND action = 'tool_invoked'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sample["i"], 7);
    assert_eq!(sample["pad03"], json!(pad), "values within the bound are kept");
    assert_eq!(sample["big"]["$omitted"]["size_bytes"], 100_002);

    rig.nothing_twice_and_no_broken_stream().await;
}

#[tokio::test]
async fn a_write_call_whose_caller_goes_away_is_still_recorded() {
    let rig = Rig::start().await;
    let mut ex = rig.executor().await;
    let call = tokio::spawn(async move {
        let mut req = invoke_request("slow_write", &json!({"order": 42}));
        req.task_id = "abandoned".to_owned();
        ex.invoke(req).await
    });
    // The tool has the call (and will act on it); then the agent goes away.
    eventually("the tool to receive the call", WAIT, || async {
        (rig.tools.hits("/slow") == 1).then_some(())
    })
    .await;
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());

    let client = rig.db.client().await;
    let row = eventually("the abandoned call's invocation row", WAIT, || {
        let client = &client;
        async move {
            client
                .query_opt("SELECT * FROM invocations WHERE task_id = 'abandoned'", &[])
                .await
                .unwrap()
        }
    })
    .await;
    assert!(
        row.get::<_, bool>("caller_cancelled"),
        "the row says the caller went away"
    );
    assert_eq!(row.get::<_, String>("status"), "success");
    let id: Uuid = row.get("invocation_id");
    let events = rig
        .audit_rows(
            &format!("invocation_id = '{id}' AND action = 'tool_invoked' AND success"),
            1,
        )
        .await;
    assert_eq!(events[0].get::<_, Value>("sanitized_parameters"), json!({"order": 42}));

    // A caller that waits for its answer is not marked.
    let waited = rig
        .invoke("quick_write", "waited", "", &json!({"order": 43}))
        .await
        .unwrap();
    let row = rig.invocation_row(&waited.invocation_id).await;
    assert!(!row.get::<_, bool>("caller_cancelled"));
    assert_eq!(rig.tools.hits("/slow"), 1, "the abandoned call was not retried");

    rig.nothing_twice_and_no_broken_stream().await;
}
