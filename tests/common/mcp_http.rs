//! A plain MCP client over streamable HTTP, for checking the gateway's HTTP
//! behaviour message by message (statuses, headers, the events of a
//! stream). The SDK clients (Python `mcp`, rmcp) check it as an agent
//! would; this one sees what they hide.

#![allow(dead_code)]

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{Value, json};

/// What one POST (or GET) came back with.
#[derive(Debug)]
pub struct Answered {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// The JSON body, or each event of a `text/event-stream`, in order.
    pub messages: Vec<Value>,
    /// Whether the answer was a stream.
    pub streamed: bool,
}

impl Answered {
    /// The last message: the answer to the request.
    pub fn answer(&self) -> &Value {
        self.messages.last().unwrap_or(&Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A client of one MCP endpoint.
pub struct McpHttp {
    pub url: String,
    pub token: Option<String>,
    pub session: Option<String>,
    pub version: String,
    client: reqwest::Client,
    next_id: u64,
}

impl McpHttp {
    pub fn new(url: &str, token: Option<&str>) -> McpHttp {
        McpHttp {
            url: url.to_owned(),
            token: token.map(str::to_owned),
            session: None,
            version: "2025-11-25".into(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            next_id: 0,
        }
    }

    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn with_headers(&self, mut request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(session) = &self.session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", &self.version);
        }
        request
    }

    /// POSTs `body` with `headers` added, and reads the whole answer; each
    /// request of the server's met on the way is answered by `answer` (a
    /// POST of its own) before reading on.
    pub async fn post_with(
        &mut self,
        body: &Value,
        headers: &[(&str, &str)],
        answer: &mut (dyn FnMut(&str, &Value) -> Value + Send),
    ) -> Answered {
        let mut request = self
            .with_headers(self.client.post(&self.url))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("posting to the gateway");
        self.read(response, answer).await
    }

    pub async fn post(&mut self, body: &Value) -> Answered {
        self.post_with(body, &[], &mut refuse_server_requests).await
    }

    async fn read(
        &mut self,
        response: reqwest::Response,
        answer: &mut (dyn FnMut(&str, &Value) -> Value + Send),
    ) -> Answered {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let streamed = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        let mut messages = Vec::new();
        if streamed {
            let mut parser = custody_gateway::http::sse::Parser::new(64 << 20);
            let mut body = response.bytes_stream();
            let mut events = Vec::new();
            while let Some(chunk) = body.next().await {
                parser
                    .feed(&chunk.expect("reading the stream"), &mut events)
                    .unwrap();
                for event in events.drain(..) {
                    let message: Value = serde_json::from_slice(&event).expect("an event is JSON");
                    if let (Some(method), Some(id)) =
                        (message["method"].as_str(), message.get("id"))
                    {
                        let result = answer(method, &message["params"]);
                        let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
                        let replied = self
                            .with_headers(self.client.post(&self.url))
                            .header("content-type", "application/json")
                            .header("accept", "application/json, text/event-stream")
                            .body(reply.to_string())
                            .send()
                            .await
                            .expect("answering the server's request");
                        assert_eq!(replied.status().as_u16(), 202, "answering {method}");
                    }
                    messages.push(message);
                }
            }
        } else {
            let bytes = response.bytes().await.expect("reading the body");
            if !bytes.is_empty() {
                messages.push(serde_json::from_slice(&bytes).unwrap_or(Value::Null));
            }
        }
        Answered {
            status,
            headers,
            messages,
            streamed,
        }
    }

    /// The 2025-11-25 handshake: `initialize` (keeping the session id the
    /// answer gives), then `notifications/initialized`.
    pub async fn initialize(&mut self, capabilities: Value) -> Answered {
        let id = self.next_id();
        let initialized = self
            .post(
                &json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
                    "protocolVersion": self.version,
                    "capabilities": capabilities,
                    "clientInfo": {"name": "custody-tests", "version": "1"},
                }}),
            )
            .await;
        self.session = initialized.header("mcp-session-id").map(str::to_owned);
        let notified = self
            .post(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        assert_eq!(notified.status, 202, "{:?}", notified.messages);
        initialized
    }

    /// A request; its answer is the last message.
    pub async fn request(&mut self, method: &str, params: Value) -> Answered {
        let id = self.next_id();
        self.post(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await
    }

    /// A `tools/call`, answering the server's requests with `answer`.
    pub async fn call_with(
        &mut self,
        tool: &str,
        arguments: Value,
        answer: &mut (dyn FnMut(&str, &Value) -> Value + Send),
    ) -> Answered {
        let id = self.next_id();
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}});
        self.post_with(&body, &[], answer).await
    }

    pub async fn call(&mut self, tool: &str, arguments: Value) -> Answered {
        self.call_with(tool, arguments, &mut refuse_server_requests)
            .await
    }

    /// Ends the session.
    pub async fn delete(&mut self) -> u16 {
        let response = self
            .with_headers(self.client.delete(&self.url))
            .send()
            .await
            .expect("deleting the session");
        response.status().as_u16()
    }

    /// Opens the session's GET stream and reads it for `within`.
    pub async fn listen(&self, within: Duration) -> (u16, Vec<Value>) {
        let response = self
            .with_headers(self.client.get(&self.url))
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("opening the GET stream");
        let status = response.status().as_u16();
        let mut messages = Vec::new();
        let mut parser = custody_gateway::http::sse::Parser::new(1 << 20);
        let mut body = response.bytes_stream();
        let mut events = Vec::new();
        let _ = tokio::time::timeout(within, async {
            while let Some(Ok(chunk)) = body.next().await {
                parser.feed(&chunk, &mut events).unwrap();
                messages.extend(
                    events
                        .drain(..)
                        .map(|e| serde_json::from_slice(&e).unwrap()),
                );
            }
        })
        .await;
        (status, messages)
    }
}

/// The text of a tool's result.
pub fn text_of(answer: &Value) -> String {
    answer["result"]["content"]
        .as_array()
        .map(|content| {
            content
                .iter()
                .filter_map(|c| c["text"].as_str())
                .collect::<String>()
        })
        .unwrap_or_default()
}

fn refuse_server_requests(method: &str, _params: &Value) -> Value {
    panic!("the server sent an unexpected request: {method}")
}
