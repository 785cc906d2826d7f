//! A built-in sample model backend that behaves like the Azure ML inference server (azmlinfsrv):
//! `GET /` → "Healthy", `POST /score` → predictions, `GET /swagger.json` → a Swagger 2.0 document
//! (`?version=3` for OpenAPI 3). The model is a real, small one: multinomial logistic regression
//! over the four iris features, with fixed weights fitted on the iris data set.
//!
//! Input: `{"data": [[sepal_length, sepal_width, petal_length, petal_width], ...]}` (or
//! `{"input_data": {"data": [...]}}`, the Azure ML v2 shape). Output:
//! `{"predictions": ["setosa", ...], "probabilities": [[p_setosa, p_versicolor, p_virginica], ...]}`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const CLASSES: [&str; 3] = ["setosa", "versicolor", "virginica"];

/// Coefficients (rows: classes; columns: sepal length, sepal width, petal length, petal width)
/// and intercepts of a multinomial logistic regression fitted on the 150 iris samples.
const COEF: [[f64; 4]; 3] = [
    [-0.423, 0.967, -2.517, -1.079],
    [0.534, -0.321, -0.206, -0.944],
    [-0.111, -0.646, 2.723, 2.023],
];
const INTERCEPT: [f64; 3] = [9.849, 2.238, -12.087];
/// A "retrained" variant for the demo's second deployment (contract §8): the same model fitted
/// with stronger regularisation — weights shrunk by a tenth, so probabilities move a little and
/// a borderline flower now and then gets another class.
const SHRINK: f64 = 0.9;

/// Which of the built-in models answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// The fitted classifier.
    Iris,
    /// The same classifier with shrunk weights (a slightly different candidate).
    Retrained,
}

/// Class probabilities for one flower (softmax of the linear scores).
pub fn predict(x: &[f64; 4]) -> [f64; 3] {
    predict_with(Model::Iris, x)
}

/// `predict` with `model`.
pub fn predict_with(model: Model, x: &[f64; 4]) -> [f64; 3] {
    let k = match model {
        Model::Iris => 1.0,
        Model::Retrained => SHRINK,
    };
    let z: Vec<f64> = (0..3)
        .map(|c| k * (INTERCEPT[c] + (0..4).map(|j| COEF[c][j] * x[j]).sum::<f64>()))
        .collect();
    let m = z.iter().cloned().fold(f64::MIN, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    [e[0] / s, e[1] / s, e[2] / s]
}

fn rows(v: &Value) -> Option<&Vec<Value>> {
    v.get("data")
        .or_else(|| v.get("input_data").and_then(|d| d.get("data")))
        .and_then(Value::as_array)
}

/// Scores a request body, or says what is wrong with it (azmlinfsrv answers bad input with 400).
pub fn score(body: &[u8]) -> Result<Value, String> {
    score_with(Model::Iris, body)
}

/// `score` with `model`.
pub fn score_with(model: Model, body: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    let rows = rows(&v).ok_or("expected {\"data\": [[4 numbers], ...]}")?;
    let mut preds = Vec::with_capacity(rows.len());
    let mut probs = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let nums: Vec<f64> = r
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let x: [f64; 4] = nums.try_into().map_err(|_| {
            format!(
                "row {i} must be 4 numbers (sepal length, sepal width, petal length, petal width)"
            )
        })?;
        let p = predict_with(model, &x);
        let best = (0..3).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        preds.push(json!(CLASSES[best]));
        probs.push(json!(p.map(|v| (v * 1e4).round() / 1e4)));
    }
    Ok(json!({"predictions": preds, "probabilities": probs}))
}

fn swagger(v3: bool) -> Value {
    let input = json!({
        "type": "object",
        "properties": {"data": {"type": "array", "items": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}}},
        "example": {"data": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]}
    });
    let output = json!({
        "type": "object",
        "properties": {
            "predictions": {"type": "array", "items": {"type": "string", "enum": CLASSES}},
            "probabilities": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}
        }
    });
    if v3 {
        json!({
            "openapi": "3.0.1",
            "info": {"title": "iris (scoregate sample model)", "version": "1.0"},
            "paths": {"/score": {"post": {
                "requestBody": {"content": {"application/json": {"schema": input}}},
                "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": output}}}}
            }}}
        })
    } else {
        json!({
            "swagger": "2.0",
            "info": {"title": "iris (scoregate sample model)", "version": "1.0"},
            "schemes": ["https"],
            "consumes": ["application/json"],
            "produces": ["application/json"],
            "paths": {"/score": {"post": {
                "parameters": [{"name": "body", "in": "body", "required": true, "schema": input}],
                "responses": {"200": {"description": "OK", "schema": output}}
            }}}
        })
    }
}

fn reply(status: StatusCode, ct: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
    r
}

async fn handle(model: Model, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    Ok(match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/") => reply(StatusCode::OK, "text/plain", "Healthy"),
        (&Method::GET, "/swagger.json") => {
            let v3 = parts
                .uri
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "version=3"));
            reply(StatusCode::OK, "application/json", swagger(v3).to_string())
        }
        (&Method::POST, "/score") => match Limited::new(body, 1 << 20).collect().await {
            Ok(b) => match score_with(model, &b.to_bytes()) {
                Ok(v) => reply(StatusCode::OK, "application/json", v.to_string()),
                Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", e),
            },
            Err(_) => reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "text/plain",
                "body too large",
            ),
        },
        (_, "/" | "/score" | "/swagger.json") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "Method Not Allowed",
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "Not Found"),
    })
}

/// Serves the sample model on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener) {
    serve_model(listener, Model::Iris).await
}

/// Serves `model` on `listener` until the task is dropped.
pub async fn serve_model(listener: TcpListener, model: Model) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service_fn(move |r| handle(model, r)))
                .await;
        });
    }
}

/// Binds the sample model on a free loopback port and serves it in the background.
pub async fn spawn() -> std::io::Result<SocketAddr> {
    spawn_model(Model::Iris).await
}

/// Binds `model` on a free loopback port and serves it in the background.
pub async fn spawn_model(model: Model) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(serve_model(l, model));
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_textbook_flowers() {
        let v = score(
            br#"{"data": [[5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5], [6.3, 3.3, 6.0, 2.5]]}"#,
        )
        .unwrap();
        assert_eq!(
            v["predictions"],
            json!(["setosa", "versicolor", "virginica"])
        );
        let p = v["probabilities"][0].as_array().unwrap();
        let sum: f64 = p.iter().map(|x| x.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-3);
    }

    #[test]
    fn the_retrained_model_is_close_but_not_the_same() {
        let flowers = [
            [5.1, 3.5, 1.4, 0.2],
            [6.0, 2.9, 4.5, 1.5],
            [6.3, 3.3, 6.0, 2.5],
        ];
        for x in &flowers {
            let (a, b) = (predict(x), predict_with(Model::Retrained, x));
            assert!(a != b);
            assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 0.2));
        }
        let body = br#"{"data": [[5.1, 3.5, 1.4, 0.2], [6.0, 2.9, 4.5, 1.5]]}"#;
        assert_eq!(
            score(body).unwrap()["predictions"],
            score_with(Model::Retrained, body).unwrap()["predictions"]
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(score(b"not json").is_err());
        assert!(score(br#"{"data": [[1, 2, 3]]}"#).is_err());
        assert!(score(br#"{"rows": []}"#).is_err());
    }
}
