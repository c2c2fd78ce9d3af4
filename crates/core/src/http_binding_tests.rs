use serde_json::json;

use super::*;

fn binding() -> HttpBinding {
    HttpBinding {
        method: "get".into(),
        path: "/items/{item_id}/files/{name}.json".into(),
        parameters: vec![
            HttpParameter {
                name: "item_id".into(),
                location: ParamLocation::Path,
                wire_name: String::new(),
            },
            HttpParameter {
                name: "file".into(),
                location: ParamLocation::Path,
                wire_name: "name".into(),
            },
            HttpParameter {
                name: "q".into(),
                location: ParamLocation::Query,
                wire_name: String::new(),
            },
            HttpParameter {
                name: "tags".into(),
                location: ParamLocation::Query,
                wire_name: "tag".into(),
            },
            HttpParameter {
                name: "x_trace".into(),
                location: ParamLocation::Header,
                wire_name: "X-Trace".into(),
            },
        ],
        body: String::new(),
    }
}

fn schema() -> Value {
    json!({"type": "object", "required": ["item_id", "file"], "properties": {
        "item_id": {"type": "integer"}, "file": {"type": "string"}, "q": {"type": "string"},
        "tags": {"type": "array"}, "x_trace": {"type": "string"}, "payload": {"type": "object"}}})
}

#[test]
fn no_binding_posts_the_parameters_as_before() {
    let r = render("http://t.example/run", None, &json!({"b": 1, "a": 2})).unwrap();
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.url, "http://t.example/run");
    assert_eq!(r.body.as_deref(), Some(br#"{"a":2,"b":1}"#.as_slice()));
}

#[test]
fn path_query_and_header_parameters_are_placed_and_escaped() {
    let params =
        json!({"item_id": 42, "file": "a b/../c?d#e%", "q": "x&y=z é", "tags": ["p", "q r"], "x_trace": "t-1"});
    let r = render("http://t.example/api/", Some(&binding()), &params).unwrap();
    assert_eq!(r.method, Method::GET);
    assert_eq!(
        r.url,
        "http://t.example/api/items/42/files/a%20b%2F..%2Fc%3Fd%23e%25.json?q=x%26y%3Dz+%C3%A9&tag=p&tag=q+r"
    );
    assert_eq!(r.headers, vec![("x-trace".to_owned(), "t-1".to_owned())]);
    assert_eq!(r.body, None);
    // Absent optional parameters are left out.
    let r = render(
        "http://t.example",
        Some(&binding()),
        &json!({"item_id": 1, "file": "f"}),
    )
    .unwrap();
    assert_eq!(r.url, "http://t.example/items/1/files/f.json");
}

#[test]
fn a_value_that_would_change_the_path_or_break_a_header_is_refused() {
    for bad in ["..", ".", ""] {
        let e = render(
            "http://t.example",
            Some(&binding()),
            &json!({"item_id": 1, "file": bad}),
        )
        .unwrap_err();
        assert_eq!(e.field, "file", "{bad:?}");
    }
    let e = render(
        "http://t.example",
        Some(&binding()),
        &json!({"item_id": 1, "file": "f", "x_trace": "a\r\nx-evil: 1"}),
    )
    .unwrap_err();
    assert_eq!(e.field, "x_trace");
}

#[test]
fn the_body_parameter_is_sent_as_json() {
    let b = HttpBinding {
        method: "PUT".into(),
        path: "/items/{item_id}".into(),
        parameters: vec![HttpParameter {
            name: "item_id".into(),
            location: ParamLocation::Path,
            wire_name: String::new(),
        }],
        body: "payload".into(),
    };
    let r = render(
        "https://t.example",
        Some(&b),
        &json!({"item_id": "x", "payload": {"z": 1, "a": [1]}}),
    )
    .unwrap();
    assert_eq!(r.method, Method::PUT);
    assert_eq!(r.url, "https://t.example/items/x");
    assert_eq!(r.body.as_deref(), Some(br#"{"a":[1],"z":1}"#.as_slice()));
    let mut v = Violations::default();
    check(&mut v, &b, &schema());
    assert!(v.0.is_empty(), "{v}");
}

#[test]
fn check_names_each_fault() {
    let mut b = binding();
    b.method = "FETCH".into();
    b.path = "/items/{item_id}/{missing}".into();
    b.body = "nope".into();
    b.parameters.push(HttpParameter {
        name: "ghost".into(),
        location: ParamLocation::Header,
        wire_name: "bad header".into(),
    });
    let mut v = Violations::default();
    check(&mut v, &b, &schema());
    let fields: Vec<&str> = v.0.iter().map(|x| x.field.as_str()).collect();
    for want in [
        "tool.http.method",
        "tool.http.path",
        "tool.http.body",
        "tool.http.parameters[1].wire_name",
        "tool.http.parameters[5].name",
        "tool.http.parameters[5].wire_name",
    ] {
        assert!(fields.contains(&want), "{want} missing from {fields:?}");
    }
    let mut ok = Violations::default();
    check(&mut ok, &binding(), &schema());
    assert!(ok.0.is_empty(), "{ok}");
}
