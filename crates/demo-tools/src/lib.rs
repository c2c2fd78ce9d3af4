//! Small, useful tools that need no internet, served over HTTP the way toolplane calls
//! tools (POST JSON parameters, JSON answer). `make run` registers them.

mod calc;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

type Answer = Result<Value, (StatusCode, String)>;

fn bad(msg: impl Into<String>) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, msg.into())
}

fn text_param(p: &Value, key: &str) -> Result<String, (StatusCode, String)> {
    p[key]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| bad(format!("{key} must be a string")))
}

fn word_count(p: &Value) -> Answer {
    let text = text_param(p, "text")?;
    Ok(json!({
        "words": text.split_whitespace().count(),
        "characters": text.chars().count(),
        "lines": text.lines().count(),
    }))
}

fn sha256(p: &Value) -> Answer {
    let text = text_param(p, "text")?;
    Ok(json!({"sha256": hex::encode(Sha256::digest(text.as_bytes()))}))
}

/// Converts between units of one dimension through its base unit.
fn unit_convert(p: &Value) -> Answer {
    let value = p["value"].as_f64().ok_or_else(|| bad("value must be a number"))?;
    let from = text_param(p, "from")?;
    let to = text_param(p, "to")?;
    let temp = |u: &str, v: f64, to_base: bool| -> Option<f64> {
        Some(match (u, to_base) {
            ("c", _) => v,
            ("f", true) => (v - 32.0) * 5.0 / 9.0,
            ("f", false) => v * 9.0 / 5.0 + 32.0,
            ("k", true) => v - 273.15,
            ("k", false) => v + 273.15,
            _ => return None,
        })
    };
    let linear = |u: &str| -> Option<(&'static str, f64)> {
        Some(match u {
            "m" => ("length", 1.0),
            "km" => ("length", 1000.0),
            "mi" => ("length", 1609.344),
            "ft" => ("length", 0.3048),
            "in" => ("length", 0.0254),
            "kg" => ("mass", 1.0),
            "g" => ("mass", 0.001),
            "lb" => ("mass", 0.453_592_37),
            "oz" => ("mass", 0.028_349_523_125),
            _ => return None,
        })
    };
    let result = if let (Some(base), Some(_)) = (temp(&from, value, true), temp(&to, 0.0, false)) {
        temp(&to, base, false)
    } else {
        match (linear(&from), linear(&to)) {
            (Some((d1, f1)), Some((d2, f2))) if d1 == d2 => Some(value * f1 / f2),
            _ => None,
        }
    };
    let result = result.ok_or_else(|| bad(format!("cannot convert {from} to {to}")))?;
    Ok(json!({"value": (result * 1e9).round() / 1e9, "unit": to}))
}

fn calculator(p: &Value) -> Answer {
    let expr = text_param(p, "expression")?;
    calc::evaluate(&expr).map(|v| json!({"result": v})).map_err(bad)
}

fn route(path: &str, params: &Value) -> Answer {
    match path {
        "/word_count" => word_count(params),
        "/sha256" => sha256(params),
        "/unit_convert" => unit_convert(params),
        "/calculator" => calculator(params),
        _ => Err((StatusCode::NOT_FOUND, format!("no tool at {path}"))),
    }
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let answer = if req.method() != Method::POST {
        Err((StatusCode::METHOD_NOT_ALLOWED, "POST JSON parameters".to_owned()))
    } else {
        match req.into_body().collect().await {
            Ok(body) => match serde_json::from_slice::<Value>(&body.to_bytes()) {
                Ok(params) => route(&path, &params),
                Err(e) => Err(bad(format!("body is not JSON: {e}"))),
            },
            Err(e) => Err(bad(e.to_string())),
        }
    };
    let (status, body) = match answer {
        Ok(v) => (StatusCode::OK, v),
        Err((s, msg)) => (s, json!({"error": msg})),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

/// Serves the demo tools on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), service_fn(handle)).await;
        });
    }
}

/// Binds `addr` and serves in the background; returns the bound address.
pub async fn spawn(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(listener));
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_compute() {
        assert_eq!(word_count(&json!({"text": "a b\nc"})).unwrap()["words"], 3);
        assert_eq!(
            unit_convert(&json!({"value": 100, "from": "c", "to": "f"})).unwrap()["value"],
            212.0
        );
        assert_eq!(
            unit_convert(&json!({"value": 1, "from": "mi", "to": "km"})).unwrap()["value"],
            1.609344
        );
        assert!(unit_convert(&json!({"value": 1, "from": "kg", "to": "km"})).is_err());
        assert_eq!(
            calculator(&json!({"expression": "2 * (3 + 4) - 1"})).unwrap()["result"],
            13.0
        );
        assert_eq!(
            sha256(&json!({"text": ""})).unwrap()["sha256"].as_str().unwrap().len(),
            64
        );
    }
}
