//! Arbitrary bytes as an upstream's `text/event-stream` to the gateway's
//! bounded SSE reader, fed whole and in two chunks split anywhere: no
//! panic, the same events (or the same refusal) either way, nothing over
//! the limit. And header values: what the gateway sends in `Mcp-Name`
//! reads back as the name.

#![no_main]

use custody_gateway::http::sse::Parser;
use custody_gateway::http::{decode_value, encode_value};
use libfuzzer_sys::fuzz_target;

const LIMIT: usize = 4096;

fn parse(chunks: &[&[u8]]) -> Result<Vec<Vec<u8>>, ()> {
    let mut parser = Parser::new(LIMIT);
    let mut events = Vec::new();
    for chunk in chunks {
        parser.feed(chunk, &mut events).map_err(|_| ())?;
    }
    Ok(events)
}

fuzz_target!(|bytes: &[u8]| {
    let Some((&split, stream)) = bytes.split_first() else {
        return;
    };
    let at = usize::from(split).min(stream.len());
    let (head, tail) = stream.split_at(at);
    let whole = parse(&[stream]);
    let split = parse(&[head, tail]);
    assert_eq!(whole, split, "split at {at}");
    if let Ok(events) = whole {
        assert!(events.iter().all(|e| e.len() <= LIMIT));
    }
    if let Ok(text) = std::str::from_utf8(stream) {
        assert_eq!(decode_value(&encode_value(text)).as_deref(), Some(text));
    }
});
