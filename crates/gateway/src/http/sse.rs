//! Reading server-sent events from an upstream, bounded.
//!
//! An upstream answers a POST (and the GET stream) with `text/event-stream`:
//! lines ending in CR, LF or CRLF; `data:` lines accumulating an event's
//! data; a blank line dispatching it; `:` lines comments. A parser that
//! buffers until the blank line holds whatever an upstream sends before
//! it, so this one refuses an event (or a line) larger than its limit
//! instead: an upstream cannot make the gateway hold more than that.

/// Why a stream was abandoned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event of the upstream's stream exceeds {limit} bytes")]
pub struct TooLarge {
    /// The limit it exceeded.
    pub limit: usize,
}

/// A server-sent events parser fed chunks as they arrive.
#[derive(Debug)]
pub struct Parser {
    /// The line being read, not yet ended.
    line: Vec<u8>,
    /// The event's data so far, lines joined by LF.
    data: Vec<u8>,
    /// A `data` field was seen for the event being read.
    has_data: bool,
    /// The event's type, when it set one.
    event: Option<String>,
    /// The last chunk ended with CR: a LF starting the next is its pair.
    after_cr: bool,
    limit: usize,
}

impl Parser {
    /// A parser refusing events larger than `limit` bytes.
    pub fn new(limit: usize) -> Parser {
        Parser {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            event: None,
            after_cr: false,
            limit,
        }
    }

    /// Reads `chunk`, appending the data of each `message` event it
    /// completes to `events`.
    pub fn feed(&mut self, chunk: &[u8], events: &mut Vec<Vec<u8>>) -> Result<(), TooLarge> {
        let mut rest = chunk;
        if self.after_cr {
            self.after_cr = false;
            if let Some(after) = rest.strip_prefix(b"\n") {
                rest = after;
            }
        }
        while let Some(end) = memchr::memchr2(b'\n', b'\r', rest) {
            let (head, tail) = rest.split_at(end);
            self.grow(head.len())?;
            self.line.extend_from_slice(head);
            let line = std::mem::take(&mut self.line);
            self.line_ended(&line, events);
            let crlf = tail.starts_with(b"\r\n");
            rest = tail.get(if crlf { 2 } else { 1 }..).unwrap_or_default();
            if !crlf && tail.first() == Some(&b'\r') && rest.is_empty() {
                self.after_cr = true;
            }
        }
        self.grow(rest.len())?;
        self.line.extend_from_slice(rest);
        Ok(())
    }

    fn grow(&self, more: usize) -> Result<(), TooLarge> {
        if self.line.len() + self.data.len() + more > self.limit {
            return Err(TooLarge { limit: self.limit });
        }
        Ok(())
    }

    fn line_ended(&mut self, line: &[u8], events: &mut Vec<Vec<u8>>) {
        if line.is_empty() {
            let data = std::mem::take(&mut self.data);
            let event = self.event.take();
            if std::mem::take(&mut self.has_data) && event.as_deref().is_none_or(|e| e == "message")
            {
                events.push(data);
            }
            return;
        }
        if line.first() == Some(&b':') {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let (field, value) = line.split_at(colon);
                let value = value.get(1..).unwrap_or_default();
                (field, value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            // `id` and `retry` serve resuming a stream, which the gateway
            // does not do: a broken stream fails the requests it carried.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(chunks: &[&[u8]], limit: usize) -> Result<Vec<String>, TooLarge> {
        let mut parser = Parser::new(limit);
        let mut events = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut events)?;
        }
        Ok(events
            .into_iter()
            .map(|e| String::from_utf8(e).unwrap())
            .collect())
    }

    #[test]
    fn events_are_read_across_chunks_and_line_endings() {
        let stream: &[u8] =
            b": hello\r\nevent: message\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\nid: 7\ndata:{}\n\n";
        for split in 0..stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(
                parse(&[a, b], 1024).unwrap(),
                vec!["{\"a\":\n1}".to_owned(), "{}".to_owned()],
                "split at {split}"
            );
        }
        assert_eq!(
            parse(&[b"data: x\r", b"\r", b"data: y\r\r"], 1024).unwrap(),
            vec!["x", "y"]
        );
    }

    #[test]
    fn other_event_types_and_empty_events_are_not_messages() {
        let events = parse(&[b"event: ping\ndata: 1\n\n\n\ndata: 2\n\n"], 1024).unwrap();
        assert_eq!(events, vec!["2"]);
    }

    #[test]
    fn an_event_over_the_limit_is_refused_even_without_line_ends() {
        assert_eq!(
            parse(&[b"data: ", &[b'x'; 100]], 64),
            Err(TooLarge { limit: 64 })
        );
        assert_eq!(
            parse(&[b"data: 0123456789\n", b"data: 0123456789\n"], 20),
            Err(TooLarge { limit: 20 })
        );
        let event: &[u8] = b"data: 0123456789\n\n";
        assert_eq!(parse(&[event; 8], 20).unwrap().len(), 8);
    }
}
