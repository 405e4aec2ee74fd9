//! Redaction of response bodies while they stream: an `http_body::Body` adapter that rewrites
//! `application/json` bodies through the streaming [`JsonRedactor`] and `text/event-stream`
//! bodies piece by piece: the events are tokenized as bytes arrive ([`SseTokenizer`]) and each
//! event's `data` is fed through its own [`JsonRedactor`] and re-framed as it comes out. No
//! byte leaves the agent unredacted and no response, nor any single event of it, is held
//! whole: memory stays at the redactor's window whatever the size of the body.
//!
//! On malformed JSON the stream is cut (an error frame): what was already sent had been
//! redacted, and nothing unredacted follows.
use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame};

use super::{
    TextRedactor,
    json::{JsonError, JsonLimits, JsonRedactor, Summary, is_ws},
};
use crate::mcp::{SsePiece, SseTokenizer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What kind of body is being rewritten.
pub enum Kind {
    Json {
        redactor: Box<JsonRedactor>,
        /// A byte other than JSON whitespace arrived: the body must be one whole document.
        /// A body of nothing (or only whitespace) is passed as it is.
        started: bool,
    },
    Sse(Box<SseRewriter>),
}

/// Where the counts and pseudonyms of a response end up (read by the exchange record).
pub type Evidence = Arc<Mutex<Summary>>;

/// A body whose data frames are redacted before they are passed on.
pub struct Redacting<B> {
    inner: B,
    kind: Kind,
    evidence: Evidence,
    done: bool,
}

impl<B> Redacting<B> {
    pub fn json(inner: B, r: Arc<dyn TextRedactor>, evidence: Evidence) -> Self {
        Redacting {
            inner,
            kind: Kind::Json {
                redactor: Box::new(JsonRedactor::new(r, JsonLimits::default())),
                started: false,
            },
            evidence,
            done: false,
        }
    }

    pub fn sse(inner: B, r: Arc<dyn TextRedactor>, evidence: Evidence) -> Self {
        Redacting {
            inner,
            kind: Kind::Sse(Box::new(SseRewriter::new(r, JsonLimits::default()))),
            evidence,
            done: false,
        }
    }

    /// Rewrites one chunk; returns the bytes to forward (possibly empty).
    fn rewrite(&mut self, chunk: &[u8]) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::with_capacity(chunk.len() + 64);
        match &mut self.kind {
            Kind::Json { redactor, started } => {
                *started = *started || !chunk.iter().all(|&b| is_ws(b));
                redactor.push(chunk, &mut out)?;
            }
            Kind::Sse(sse) => {
                sse.push(chunk, &mut out)?;
                merge(&self.evidence, sse.take_summary());
            }
        }
        Ok(out)
    }

    fn finish(&mut self) -> Result<Vec<u8>, BoxError> {
        let mut out = Vec::new();
        if let Kind::Json {
            redactor,
            started: true,
        } = &mut self.kind
        {
            let s = redactor.finish(&mut out)?;
            merge(&self.evidence, s);
        }
        Ok(out)
    }
}

fn merge(evidence: &Evidence, s: Summary) {
    if s.total() == 0 && s.strings_redacted == 0 {
        return;
    }
    let mut e = evidence.lock().unwrap_or_else(|p| p.into_inner());
    e.merge(s, super::json::MAX_FINDINGS);
}

/// How the `data` of the current event is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataMode {
    /// No `data` line yet in this event.
    None,
    /// A JSON document (every MCP message), redacted.
    Json,
    /// The `endpoint` event of the 2024-11-05 transport: a URL, passed as it is.
    Raw,
}

/// Rewrites an event stream as it arrives: `event`, `id` and `retry` fields are passed on
/// (other fields are dropped; a comment line is passed as a bare `:`, without its text, so a
/// server's keep-alive still reaches the caller), each event's `data` is redacted as one JSON
/// document streamed through a [`JsonRedactor`], and re-framed into `data:` lines as the
/// redacted bytes come out.
pub struct SseRewriter {
    tok: SseTokenizer,
    json: JsonRedactor,
    mode: DataMode,
    /// The current event is an `endpoint` event (seen before its data).
    endpoint: bool,
    /// A JSON byte other than whitespace was fed for the current event.
    started: bool,
    /// An output `data:` line is open (its line break not written yet).
    line_open: bool,
    /// Something of the current event was written (fields or data).
    written: bool,
    summary: Summary,
}

impl SseRewriter {
    pub fn new(r: Arc<dyn TextRedactor>, limits: JsonLimits) -> SseRewriter {
        SseRewriter {
            tok: SseTokenizer::new(),
            json: JsonRedactor::new(r, limits),
            mode: DataMode::None,
            endpoint: false,
            started: false,
            line_open: false,
            written: false,
            summary: Summary::default(),
        }
    }

    /// Findings of the events completed so far, starting afresh.
    pub fn take_summary(&mut self) -> Summary {
        std::mem::take(&mut self.summary)
    }

    /// Feeds the next bytes of the stream; appends what can be forwarded to `out`. After an
    /// error the stream must be cut (what `out` holds of this call may be forwarded: it is
    /// redacted).
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<(), JsonError> {
        let SseRewriter { tok, .. } = self;
        let mut tok = std::mem::take(tok);
        let mut err = None;
        tok.push(chunk, &mut |piece| {
            if err.is_none() {
                err = self.piece(piece, out).err();
            }
        });
        self.tok = tok;
        err.map_or(Ok(()), Err)
    }

    fn piece(&mut self, piece: SsePiece<'_>, out: &mut Vec<u8>) -> Result<(), JsonError> {
        match piece {
            SsePiece::Field { name, value } => {
                if name == b"event" {
                    self.endpoint = value == b"endpoint";
                }
                if matches!(name, b"event" | b"id" | b"retry") {
                    self.close_line(out);
                    out.extend_from_slice(name);
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(value);
                    out.push(b'\n');
                    self.written = true;
                }
            }
            SsePiece::DataLineStart => match self.mode {
                DataMode::None => {
                    self.written = true;
                    if self.endpoint {
                        self.mode = DataMode::Raw;
                    } else {
                        self.mode = DataMode::Json;
                        self.json.reset();
                        self.started = false;
                    }
                    self.open_line(out);
                }
                DataMode::Raw => {
                    self.close_line(out);
                    self.open_line(out);
                }
                DataMode::Json => self.json_data(b"\n", out)?,
            },
            SsePiece::Data(bytes) => match self.mode {
                DataMode::Json => self.json_data(bytes, out)?,
                // A data line always starts with `DataLineStart`; `Raw` (and, defensively,
                // anything else) passes the URL as it is.
                _ => self.emit(bytes, out),
            },
            SsePiece::Comment => {
                // The keep-alive, not its text (which nothing redacts).
                self.close_line(out);
                out.extend_from_slice(b":\n");
            }
            SsePiece::EventEnd => {
                if self.mode == DataMode::Json && self.started {
                    let mut buf = Vec::new();
                    let s = self.json.finish(&mut buf)?;
                    self.emit(&buf, out);
                    self.summary.merge(s, self.json.limits().max_findings);
                }
                if self.written {
                    self.close_line(out);
                    out.push(b'\n');
                }
                self.mode = DataMode::None;
                self.endpoint = false;
                self.started = false;
                self.written = false;
            }
        }
        Ok(())
    }

    /// Redacts bytes of the current event's JSON data and writes what comes out.
    fn json_data(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), JsonError> {
        self.started = self.started || !bytes.iter().all(|&b| is_ws(b));
        let mut buf = Vec::with_capacity(bytes.len() + 16);
        self.json.push(bytes, &mut buf)?;
        self.emit(&buf, out);
        Ok(())
    }

    /// Writes data bytes: each `\n` ends the open `data:` line and opens the next one.
    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let mut lines = bytes.split(|&b| b == b'\n');
        if let Some(first) = lines.next().filter(|l| !l.is_empty()) {
            if !self.line_open {
                // A field line came between two pieces of this data line's output.
                self.open_line(out);
            }
            out.extend_from_slice(first);
        }
        for line in lines {
            self.close_line(out);
            self.open_line(out);
            out.extend_from_slice(line);
        }
    }

    fn open_line(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: ");
        self.line_open = true;
    }

    fn close_line(&mut self, out: &mut Vec<u8>) {
        if self.line_open {
            out.push(b'\n');
            self.line_open = false;
        }
    }
}

impl<B> Body for Redacting<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers: dropped (the length of the body changed anyway)
                    };
                    match this.rewrite(&data) {
                        Ok(out) if out.is_empty() => continue,
                        Ok(out) => return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                        Err(e) => {
                            this.done = true;
                            return Poll::Ready(Some(Err(e)));
                        }
                    }
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return match this.finish() {
                        Ok(out) if out.is_empty() => Poll::Ready(None),
                        Ok(out) => Poll::Ready(Some(Ok(Frame::data(Bytes::from(out))))),
                        Err(e) => Poll::Ready(Some(Err(e))),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::Finding;
    use http_body_util::{BodyExt, StreamBody};

    /// Masks the word "secret" (test-only; the real detectors are in `engine`).
    struct Words;
    impl TextRedactor for Words {
        fn max_match_len(&self) -> usize {
            6
        }
        fn redact(&self, text: &str) -> (String, Vec<Finding>) {
            let n = text.matches("secret").count();
            let f = (0..n)
                .map(|_| Finding {
                    entity: "WORD".into(),
                    pseudonym: crate::redact::Pseudonym::from_tag([0; 4]),
                })
                .collect();
            (text.replace("secret", "[WORD]"), f)
        }
    }

    type Frames = std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>;

    fn chunks(parts: &[&str]) -> StreamBody<futures_util::stream::Iter<Frames>> {
        let v: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from(p.to_string()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(v))
    }

    #[tokio::test]
    async fn json_bodies_are_redacted_across_chunks() {
        let ev: Evidence = Arc::default();
        let body = chunks(&[
            r#"{"result":{"content":[{"text":"a sec"#,
            r#"ret b"}]},"id":1}"#,
        ]);
        let r = Redacting::json(body, Arc::new(Words), ev.clone());
        let out = r.collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["result"]["content"][0]["text"], "a [WORD] b");
        assert_eq!(ev.lock().unwrap().counts.get("WORD"), Some(&1));
    }

    #[tokio::test]
    async fn sse_events_are_redacted_one_by_one() {
        let ev: Evidence = Arc::default();
        let body = chunks(&[
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"message\":\"secret 1\"}}\n\n",
            "data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"text\":\"se",
            "cret 2\"}}\n\n",
        ]);
        let mut r = Redacting::sse(body, Arc::new(Words), ev.clone());
        // The first event is forwarded before the second has arrived whole.
        let first = r.frame().await.unwrap().unwrap().into_data().unwrap();
        let first = String::from_utf8(first.to_vec()).unwrap();
        assert!(
            first.contains("[WORD] 1") && !first.contains("secret"),
            "{first}"
        );
        let rest = r.collect().await.unwrap().to_bytes();
        let rest = String::from_utf8(rest.to_vec()).unwrap();
        assert!(
            rest.contains("[WORD] 2") && !rest.contains("secret"),
            "{rest}"
        );
        assert_eq!(ev.lock().unwrap().counts.get("WORD"), Some(&2));
    }

    /// Runs an event stream through the rewriter in pieces of `n` bytes.
    fn rewrite_sse(input: &str, n: usize) -> (String, Summary) {
        let mut w = SseRewriter::new(Arc::new(Words), JsonLimits::default());
        let mut out = Vec::new();
        let mut sum = Summary::default();
        for c in input.as_bytes().chunks(n.max(1)) {
            w.push(c, &mut out).unwrap();
            sum.merge(w.take_summary(), 100);
        }
        (String::from_utf8(out).unwrap(), sum)
    }

    #[test]
    fn sse_rewriting_does_not_depend_on_chunking() {
        let input = "event: message\r\nid: 7\r\ndata: {\"a\":\r\ndata:  \"x secret y\",\n: comment\ndata: \"b\":[1,\"secret\"]}\n\nretry: 10\n\ndata:\ndata: {}\n\n";
        let (whole, sum) = rewrite_sse(input, input.len());
        assert_eq!(
            whole,
            "event: message\nid: 7\ndata: {\"a\":\ndata:  \"x [WORD] y\",\n:\ndata: \"b\":[1,\"[WORD]\"]}\n\nretry: 10\n\ndata: \ndata: {}\n\n"
        );
        assert_eq!(sum.counts.get("WORD"), Some(&2));
        for n in 1..24 {
            assert_eq!(rewrite_sse(input, n).0, whole, "chunks of {n}");
        }
        // What a client makes of it: the same events, with the words masked.
        let mut p = crate::mcp::SseParser::new(1 << 20);
        let evs = p.push(whole.as_bytes()).unwrap();
        assert_eq!(evs.len(), 3, "{evs:?}");
        let v: serde_json::Value = serde_json::from_str(&evs[0].data).unwrap();
        assert_eq!(v["a"], "x [WORD] y");
    }

    #[test]
    fn sse_keep_alive_comments_reach_the_caller_without_their_text() {
        // A server idle for a long call sends comments (sse-starlette: every 15 s); dropped,
        // the caller saw nothing and could time out. Their text is not passed: nothing
        // redacts it.
        let input =
            ": ping - jane.doe@example.com\r\n\r\ndata: {\"a\": \"secret\"}\n: ping\n\n:\n\n";
        let (whole, _) = rewrite_sse(input, input.len());
        assert_eq!(whole, ":\ndata: {\"a\": \"[WORD]\"}\n:\n\n:\n");
        for n in 1..12 {
            assert_eq!(rewrite_sse(input, n).0, whole, "chunks of {n}");
        }
        let mut p = crate::mcp::SseParser::new(1 << 20);
        let evs = p.push(whole.as_bytes()).unwrap();
        assert_eq!(evs.len(), 1, "{evs:?}");
        assert_eq!(evs[0].data, "{\"a\": \"[WORD]\"}");
    }

    #[test]
    fn sse_endpoint_events_and_blank_data_pass_as_they_are() {
        let input = "event: endpoint\ndata: /messages?session_id=secret\n\ndata:   \n\n";
        let (out, sum) = rewrite_sse(input, 5);
        assert_eq!(
            out,
            "event: endpoint\ndata: /messages?session_id=secret\n\ndata:   \n\n"
        );
        assert_eq!(sum.total(), 0);
        // Data that is neither: refused.
        let mut w = SseRewriter::new(Arc::new(Words), JsonLimits::default());
        let mut out = Vec::new();
        assert!(w.push(b"data: not json secret\n\n", &mut out).is_err());
        assert!(!String::from_utf8_lossy(&out).contains("secret"));
    }

    #[test]
    fn a_large_sse_event_streams_out_before_it_ends() {
        let mut w = SseRewriter::new(Arc::new(Words), JsonLimits::default());
        let mut out = Vec::new();
        w.push(b"data: {\"text\":\"", &mut out).unwrap();
        let line = "word secret word\\n".repeat(1000);
        let mut sent = 0;
        for _ in 0..200 {
            w.push(line.as_bytes(), &mut out).unwrap();
            sent += line.len();
        }
        // 3.6 MB in, the event still open: most of it already came out, masked.
        assert!(out.len() > sent / 2, "{} of {sent}", out.len());
        let so_far = String::from_utf8_lossy(&out);
        assert!(!so_far.contains("secret") && so_far.contains("[WORD]"));
        w.push(b"\"}\n\n", &mut out).unwrap();
        let s = w.take_summary();
        assert_eq!(s.counts.get("WORD"), Some(&200_000));
    }

    #[tokio::test]
    async fn empty_json_bodies_pass() {
        let ev: Evidence = Arc::default();
        let r = Redacting::json(chunks(&["", "  \n"]), Arc::new(Words), ev);
        let out = r.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"  \n");
    }

    #[tokio::test]
    async fn malformed_json_cuts_the_stream() {
        let ev: Evidence = Arc::default();
        let body = chunks(&[r#"{"a":"secret"}"#, "garbage secret"]);
        let r = Redacting::json(body, Arc::new(Words), ev);
        assert!(r.collect().await.is_err());
    }
}
