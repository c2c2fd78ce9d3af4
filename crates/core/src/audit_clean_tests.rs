use chrono::Utc;
use serde_json::json;
use uuid::Uuid;

use super::*;
use crate::model::{AuditAction, ExecutionStatus};

fn audit(task_id: &str, params: Value) -> AuditEvent {
    AuditEvent {
        event_id: Uuid::now_v7(),
        action: AuditAction::ToolInvoked,
        invocation_id: Some(Uuid::now_v7()),
        actor_id: Uuid::nil().to_string(),
        agent_id: Some(Uuid::nil()),
        tool_id: None,
        tool_version: 1,
        task_id: task_id.to_owned(),
        occurred_at: Utc::now(),
        sanitized_parameters: params,
        result: None,
        success: true,
        detail: String::new(),
        compliance_frameworks: vec![],
        data_classification: None,
        sidecar_id: "s".into(),
        permission_id: None,
    }
}

fn invocation(task_id: &str, category: &str, params: Value, error: &str) -> InvocationRecord {
    let mut i = crate::testutil::invocation(Uuid::nil(), ExecutionStatus::ExecutionError, 1);
    i.task_id = task_id.to_owned();
    i.task_category = category.to_owned();
    i.parameters = params;
    i.result.error = error.to_owned();
    i
}

/// Every string in the value, keys included.
fn strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(m) => {
            for (k, x) in m {
                out.push(k.clone());
                strings(x, out);
            }
        }
        _ => {}
    }
}

#[test]
fn nul_is_escaped_everywhere_an_agent_reaches() {
    let params = json!({"a\u{0}b": "x\u{0}y", "nested": {"k\u{0}": ["\u{0}", 1]}});
    let mut e = SyncEvent::Audit(audit("t\u{0}1", params.clone()));
    if let SyncEvent::Audit(a) = &mut e {
        a.detail = "why\u{0}".into();
        a.actor_id = "a\u{0}".into();
        a.sidecar_id = "s\u{0}".into();
    }
    clean_event(&mut e);
    let SyncEvent::Audit(a) = &e else { unreachable!() };
    assert_eq!(a.task_id, "t\\u00001");
    assert_eq!(a.detail, "why\\u0000");
    assert_eq!(a.actor_id, "a\\u0000");
    assert_eq!(a.sidecar_id, "s\\u0000");
    assert_eq!(
        a.sanitized_parameters,
        json!({"a\\u0000b": "x\\u0000y", "nested": {"k\\u0000": ["\\u0000", 1]}})
    );

    let mut i = SyncEvent::Invocation(invocation("t\u{0}", "c\u{0}", params, "boom\u{0}"));
    clean_event(&mut i);
    let SyncEvent::Invocation(i) = &i else { unreachable!() };
    let mut all = vec![i.task_id.clone(), i.task_category.clone(), i.result.error.clone()];
    strings(&i.parameters, &mut all);
    assert!(all.iter().all(|s| !s.contains('\0')), "{all:?}");
    assert_eq!(i.task_category, "c\\u0000");
}

#[test]
fn long_text_is_cut_at_a_char_boundary_and_says_what_was_cut() {
    // A multi-byte character straddles the limit.
    let original = format!("{}é{}", "a".repeat(200), "b".repeat(4_000_000));
    let mut s = original.clone();
    clean_text(&mut s, MAX_TASK_ID_BYTES);
    assert!(s.len() <= MAX_TASK_ID_BYTES, "{}", s.len());
    assert!(s.starts_with(&"a".repeat(150)));
    let digest = &hex::encode(Sha256::digest(original.as_bytes()))[..SHORT_DIGEST_HEX];
    assert!(s.contains(digest), "{s}");
    let kept = s.find('…').unwrap_or(0);
    assert!(s.contains(&format!("{} bytes cut", original.len() - kept)), "{s}");

    // NULs count as their escape; a cut never splits one.
    let mut nuls = "\u{0}".repeat(100);
    clean_text(&mut nuls, 64);
    assert!(nuls.len() <= 64, "{nuls}");
    let head = nuls.split('…').next().unwrap_or_default();
    assert_eq!(head.len() % NUL_ESCAPE.len(), 0, "{nuls}");
    assert!(!nuls.contains('\0'));
}

#[test]
fn short_clean_text_is_left_alone() {
    let mut s = "task-42".to_owned();
    clean_text(&mut s, MAX_TASK_ID_BYTES);
    assert_eq!(s, "task-42");
    let exact = "x".repeat(MAX_TASK_CATEGORY_BYTES);
    let mut t = exact.clone();
    clean_text(&mut t, MAX_TASK_CATEGORY_BYTES);
    assert_eq!(t, exact);
}

#[test]
fn a_large_value_becomes_a_marker_with_its_size_and_digest() {
    let big = "z".repeat(10_000);
    let nested = json!({"deep": ["y".repeat(5_000)]});
    let mut params = json!({"small": "ok", "big": big, "nested": nested, "n": 3});
    clean_parameters(&mut params);
    assert_eq!(params["small"], "ok");
    assert_eq!(params["n"], 3);
    let marker = &params["big"][OMITTED];
    assert_eq!(marker["size_bytes"], json_size(&json!(big)));
    assert_eq!(
        marker["sha256"],
        hex::encode(Sha256::digest(canonical(&json!(big)).as_bytes()))
    );
    // A nested value over the bound is omitted as a whole.
    assert_eq!(params["nested"][OMITTED]["size_bytes"], json_size(&nested));
    assert!(json_size(&params) < 1024);
}

#[test]
fn the_whole_parameters_object_is_bounded() {
    // Many values each under the per-value bound, together far over the whole's.
    let mut params = Value::Object(
        (0..100)
            .map(|i| (format!("k{i:03}"), json!("v".repeat(4000))))
            .collect(),
    );
    clean_parameters(&mut params);
    assert!(json_size(&params) <= MAX_PARAMETERS_BYTES);
    let kept = params
        .as_object()
        .map_or(0, |m| m.values().filter(|v| v.is_string()).count());
    assert!(kept >= 10, "as many values as fit are kept: {kept}");

    // Many tiny values: only omitting the whole object bounds it.
    let mut tiny = Value::Object((0..20_000).map(|i| (format!("key{i}"), json!(i))).collect());
    let size = json_size(&tiny);
    clean_parameters(&mut tiny);
    assert_eq!(tiny[OMITTED]["size_bytes"], size);
}

#[test]
fn cleaning_is_idempotent() {
    let mut params = json!({
        "a\u{0}": "b\u{0}",
        "big": "q".repeat(9_000),
        "many": (0..30).map(|i| json!({"i": i, "pad": "p".repeat(3_000)})).collect::<Vec<_>>(),
    });
    for i in 0..20 {
        params[format!("fill{i}")] = json!("f".repeat(3_900));
    }
    let mut e = SyncEvent::Invocation(invocation(
        &"t".repeat(1000),
        &"c\u{0}".repeat(50),
        params,
        &"e".repeat(10_000),
    ));
    clean_event(&mut e);
    let once = e.clone();
    clean_event(&mut e);
    assert_eq!(e, once);
    let SyncEvent::Invocation(i) = &e else { unreachable!() };
    assert!(i.task_id.len() <= MAX_TASK_ID_BYTES);
    assert!(i.task_category.len() <= MAX_TASK_CATEGORY_BYTES);
    assert!(i.result.error.len() <= MAX_TEXT_BYTES);
    assert!(json_size(&i.parameters) <= MAX_PARAMETERS_BYTES);
}

#[test]
fn bytes_of_any_kind_become_clean_text() {
    let body = [b'o', b'k', 0, 0xff, 0xfe, b'!', 0xc3];
    let s = text_from_bytes(&body, 64);
    assert_eq!(s, "ok\\u0000\u{fffd}\u{fffd}!\u{fffd}");
    let long = text_from_bytes(&vec![0u8; 100_000], 512);
    assert!(long.len() <= 512 && !long.contains('\0'));
}
