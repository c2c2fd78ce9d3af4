use rust_decimal::Decimal;
use toolplane_proto::v1 as pb;

use super::*;
use crate::testutil::tool;

fn with(sensitivity: DataSensitivity, cost: i64, latency: u32) -> Tool {
    let mut t = tool("candidate");
    t.spec.requirements.data_sensitivity = sensitivity;
    t.spec.cost_per_call = Decimal::new(cost, 2);
    t.spec.average_latency_ms = latency;
    t
}

#[test]
fn no_limits_admit_any_tool_no_more_sensitive_than_the_primary() {
    let primary = with(DataSensitivity::Internal, 1, 10);
    let none = CallLimits::default();
    assert_eq!(
        none.refuses_fallback(&primary, &with(DataSensitivity::Public, 900, 90_000)),
        None
    );
    assert_eq!(
        none.refuses_fallback(&primary, &with(DataSensitivity::Internal, 1, 10)),
        None
    );
    let why = none
        .refuses_fallback(&primary, &with(DataSensitivity::Confidential, 1, 10))
        .unwrap();
    assert!(why.contains("above the primary's internal"), "{why}");
}

#[test]
fn each_limit_is_kept_at_its_bound_and_refused_past_it() {
    let primary = with(DataSensitivity::Restricted, 1, 10);
    let limits = CallLimits {
        max_latency_ms: 100,
        max_cost: Some(Decimal::new(5, 2)),
        max_sensitivity: Some(DataSensitivity::Internal),
    };
    assert_eq!(
        limits.refuses_fallback(&primary, &with(DataSensitivity::Internal, 5, 100)),
        None
    );
    let slow = limits
        .refuses_fallback(&primary, &with(DataSensitivity::Public, 1, 101))
        .unwrap();
    assert!(slow.contains("latency"), "{slow}");
    let dear = limits
        .refuses_fallback(&primary, &with(DataSensitivity::Public, 6, 1))
        .unwrap();
    assert!(dear.contains("cost"), "{dear}");
    let secret = limits
        .refuses_fallback(&primary, &with(DataSensitivity::Confidential, 1, 1))
        .unwrap();
    assert!(secret.contains("request's internal"), "{secret}");
}

#[test]
fn constraints_are_read_as_selection_reads_them() {
    assert_eq!(CallLimits::from_pb(None).unwrap(), CallLimits::default());
    let c = pb::SelectionConstraints {
        max_latency_ms: 250,
        max_cost: "0.01".to_owned(),
        max_data_sensitivity: pb::DataSensitivity::Confidential as i32,
    };
    let limits = CallLimits::from_pb(Some(&c)).unwrap();
    assert_eq!(limits.max_cost, Some(Decimal::new(1, 2)));
    assert_eq!(limits.max_sensitivity, Some(DataSensitivity::Confidential));
    assert_eq!(limits.max_latency_ms, 250);
    let unset = CallLimits::from_pb(Some(&pb::SelectionConstraints::default())).unwrap();
    assert_eq!(unset, CallLimits::default(), "empty cost and UNSPECIFIED limit nothing");
    let bad = pb::SelectionConstraints {
        max_cost: "cheap".to_owned(),
        ..Default::default()
    };
    assert!(CallLimits::from_pb(Some(&bad)).is_err());
}
