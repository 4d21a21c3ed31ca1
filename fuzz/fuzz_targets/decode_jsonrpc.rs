//! Arbitrary bytes as a client's JSON-RPC line to the gateway's decode
//! layer (and as a server's line to its classifier): no panic, and an
//! accepted request's canonical body decodes to the same request, so what
//! Custody decided on is exactly what the server is sent.

#![no_main]

use custody_gateway::decode::{self, ClientMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = decode::server(bytes);
    let Ok(ClientMessage::Request(request)) = decode::client(bytes, decode::DEFAULT_MAX_MESSAGE)
    else {
        return;
    };
    match decode::client(&request.canonical, usize::MAX) {
        Ok(ClientMessage::Request(again)) => assert_eq!(again, request),
        other => panic!("the canonical body of an accepted request decodes to {other:?}"),
    }
    if let Some(arguments) = request.arguments() {
        let _ = custody_gateway::redact::redact(arguments);
        let _ = custody_gateway::redact::digest(arguments);
    }
});
