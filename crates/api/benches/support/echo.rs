//! An echo MCP upstream the gateway benchmarks put behind the gateway.

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{Value, json};

/// An MCP server over streamable HTTP answering `tools/call` with its
/// `message` argument: the least an upstream can do.
pub async fn serve_echo() -> String {
    async fn mcp(headers: HeaderMap, body: axum::body::Bytes) -> axum::response::Response {
        let Ok(request) = serde_json::from_slice::<Value>(&body) else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        let Some(id) = request.get("id") else {
            return StatusCode::ACCEPTED.into_response();
        };
        let method = request["method"].as_str().unwrap_or_default();
        let result = match method {
            "initialize" => json!({"protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}}, "serverInfo": {"name": "echo", "version": "1"}}),
            "tools/list" => json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}),
            "tools/call" => json!({"content": [{"type": "text",
                "text": request["params"]["arguments"]["message"]}]}),
            _ => json!({}),
        };
        let answer = json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string();
        let mut response = (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            answer,
        )
            .into_response();
        if method == "initialize" && !headers.contains_key("mcp-session-id") {
            let session = uuid::Uuid::new_v4().simple().to_string();
            response
                .headers_mut()
                .insert("mcp-session-id", session.parse().expect("a header value"));
        }
        response
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listening");
    let url = format!("http://{}/mcp", listener.local_addr().expect("address"));
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::post(mcp).get(|| async { StatusCode::METHOD_NOT_ALLOWED }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}
